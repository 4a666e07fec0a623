"""The g_V batch size apart from the loader's: the loader g_V is drawn from, rebuilt with B
samples per batch and everything else kept.

    rebatched(loader, B) = DataLoader(loader.dataset, batch_size=B, sampler=loader's sampler,
                                      drop_last, collate_fn, workers, …: loader's own)

so its batches are B consecutive samples of the order the loader's sampler draws (a shuffled
loader stays shuffled, a sequential one yields the first B samples first). Taken for a plain
``DataLoader`` (not a subclass, whose own ``__init__`` might build it otherwise) that batches
by ``batch_size`` or by a plain ``BatchSampler``; any other loader is refused, naming
``hyperopt_dataloader()`` as the way to choose g_V's batches there.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import BatchSampler, DataLoader, IterableDataset


def rebatched(loader: Any, batch_size: int) -> DataLoader:
    """``loader`` with ``batch_size`` samples per batch (see the module's docstring); a
    ``ValueError`` naming ``validation_batch_size`` where that cannot be done faithfully."""
    why = _why_not(loader)
    if why is not None:
        raise ValueError(
            f"validation_batch_size={batch_size} needs the loader g_V is drawn from to be a "
            f"torch DataLoader that batches by `batch_size` or a plain BatchSampler; {why}. "
            "Leave validation_batch_size=None, or define `hyperopt_dataloader()` on the "
            "datamodule or module to return the loader g_V is drawn from, at the batch size "
            "you want"
        )
    batches = loader.batch_sampler
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "drop_last": batches.drop_last,
        "collate_fn": loader.collate_fn,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "prefetch_factor": loader.prefetch_factor,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if hasattr(loader, "in_order"):  # torch ≥ 2.6
        kwargs["in_order"] = loader.in_order
    if not isinstance(loader.dataset, IterableDataset):
        kwargs["sampler"] = batches.sampler
    return DataLoader(loader.dataset, **kwargs)


def _why_not(loader: Any) -> str | None:
    if not isinstance(loader, DataLoader):
        return f"it is a {type(loader).__name__}"
    if type(loader) is not DataLoader:
        return f"it is a subclass of DataLoader ({type(loader).__name__})"
    if loader.batch_sampler is None:
        return "it was built with batch_size=None (it yields single samples)"
    if type(loader.batch_sampler) is not BatchSampler:
        return f"its batch_sampler is a {type(loader.batch_sampler).__name__}"
    return None
