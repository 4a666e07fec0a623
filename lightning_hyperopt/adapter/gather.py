"""Validation batches gathered by index: the batches a ``DataLoader`` over stored tensors would
collate, with one ``index_select`` per tensor instead of B sample fetches and a stack.

    batch = [t.index_select(0, rows[idx]) for t in dataset.tensors],  idx = the batch sampler's
                                                                      next list of indices

equal, value for value, to ``default_collate([dataset[i] for i in idx])`` (a list, as the
default collate returns for the ``(x, y)`` samples of a ``TensorDataset``). Taken only where
that identity holds: a plain ``DataLoader`` (not a subclass) loading in the main process
(``num_workers=0``) without pinned memory, with the default collate and a batch sampler, over
a ``TensorDataset`` or ``Subset``\\ s of one (``random_split``'s output). The random numbers drawn
are the DataLoader's own, in its order (the batch sampler's iterator, then the loader's base
seed), so a shuffled loader yields the same batches as iterating it would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, TensorDataset, default_collate


def _stored_rows(dataset: Any) -> tuple[tuple[Tensor, ...], Tensor | None] | None:
    """(the stored tensors, the rows a ``Subset`` chain maps its indices to, or None), or None
    when ``dataset`` is not exactly a ``TensorDataset`` under plain ``Subset``\\ s."""
    rows: Tensor | None = None
    while type(dataset) is Subset:
        indices = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        # a Subset may index from the end of the dataset it wraps
        indices = torch.where(indices < 0, indices + len(dataset.dataset), indices)
        rows = indices if rows is None else indices.index_select(0, rows)
        dataset = dataset.dataset
    if type(dataset) is not TensorDataset or not dataset.tensors:
        return None
    return dataset.tensors, rows


def gathered_iterator(loader: Any) -> Iterator[list[Tensor]] | None:
    """An iterator over ``loader``'s batches gathered by index, or None where the loader's own
    iteration could differ from it (see the module's docstring)."""
    if (
        type(loader) is not DataLoader
        or loader.num_workers != 0
        or loader.pin_memory
        or loader.batch_sampler is None
        or loader.collate_fn is not default_collate
    ):
        return None
    stored = _stored_rows(loader.dataset)
    if stored is None:
        return None
    tensors, rows = stored
    # the DataLoader's iterator: iter(batch sampler), then its base seed, from the same RNGs
    indices = iter(loader.batch_sampler)
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    return _gather(indices, tensors, rows)


def _gather(
    indices: Iterator[list[int]], tensors: tuple[Tensor, ...], rows: Tensor | None
) -> Iterator[list[Tensor]]:
    for batch in indices:
        index = torch.as_tensor(batch, dtype=torch.long)
        if rows is not None:
            index = rows.index_select(0, index)
        yield [t.index_select(0, index.to(t.device)) for t in tensors]
