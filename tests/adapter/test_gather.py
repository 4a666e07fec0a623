"""g_V batches gathered by index: the same batches, in the same order, from the same random
numbers as the DataLoader's own iteration, and only where that holds."""

from __future__ import annotations

import pytest
import torch
from conftest import Recorder, Regression, make_trainer, regression_data
from torch.utils.data import DataLoader, Subset, TensorDataset, random_split

from lightning_hyperopt import OnlineHyperparamCallback
from lightning_hyperopt.adapter import gather, validation

x = torch.randn(53, 4, generator=torch.Generator().manual_seed(0))
y = torch.arange(53)
DATA = TensorDataset(x, y)
DATASETS = {
    "tensors": DATA,
    "random_split": random_split(DATA, [40, 13], generator=torch.Generator().manual_seed(1))[0],
    "nested, negative indices": Subset(Subset(DATA, list(range(50))[::-1]), [3, -1, 7, 2, 9]),
}
LOADERS = {
    "sequential": dict(batch_size=8),
    "shuffled": dict(batch_size=8, shuffle=True),
    "own generator, drop_last": dict(
        batch_size=3, shuffle=True, generator=torch.Generator(), drop_last=True
    ),
}


def _batches(loader, iterate):
    if loader.generator is not None:
        loader.generator.manual_seed(3)
    torch.manual_seed(5)
    batches = list(iterate(loader))
    return batches, torch.rand(4)  # and where the global RNG was left


@pytest.mark.parametrize("dataset", DATASETS.values(), ids=DATASETS)
@pytest.mark.parametrize("settings", LOADERS.values(), ids=LOADERS)
def test_gathered_batches_equal_the_loaders_own(dataset, settings):
    loader = DataLoader(dataset, **settings)
    own, own_rng = _batches(loader, iter)
    gathered, gathered_rng = _batches(loader, gather.gathered_iterator)
    assert len(gathered) == len(own) > 0
    for a, b in zip(own, gathered, strict=True):
        assert type(a) is type(b) is list
        for u, v in zip(a, b, strict=True):
            assert u.dtype == v.dtype and torch.equal(u, v)
    assert torch.equal(own_rng, gathered_rng)


class _Transformed(TensorDataset):
    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return 2 * x, y


class _Loader(DataLoader):
    pass


@pytest.mark.parametrize(
    "loader",
    [
        _Loader(DATA, batch_size=4),
        DataLoader(DATA, batch_size=4, num_workers=1),
        DataLoader(DATA, batch_size=4, pin_memory=True),
        DataLoader(DATA, batch_size=4, collate_fn=lambda b: b),
        DataLoader(DATA, batch_size=None),
        DataLoader(_Transformed(x, y), batch_size=4),
        DataLoader(Subset(_Transformed(x, y), [0, 1]), batch_size=4),
        DataLoader(list(zip(x, y)), batch_size=4),
    ],
    ids=[
        "subclass",
        "workers",
        "pinned",
        "collate",
        "unbatched",
        "dataset subclass",
        "subset of a subclass",
        "list",
    ],
)
def test_other_loaders_are_iterated_as_they_are(loader):
    assert gather.gathered_iterator(loader) is None


def test_a_fit_draws_the_same_g_v_batches_gathered(monkeypatch):
    """A shuffled validation loader: the λ trajectory is bit for bit the one of the loader's
    own iteration, and the stream took the gathered path."""
    train, val = regression_data(n_val=96)

    def run():
        cb, rec = OnlineHyperparamCallback("clip"), Recorder()
        trainer = make_trainer([cb, rec], 12)
        trainer.fit(
            Regression(),
            DataLoader(train, batch_size=8, shuffle=True),
            DataLoader(val, batch_size=16, shuffle=True),  # 6 batches: two passes
        )
        return rec.values

    calls = []
    real = gather.gathered_iterator

    def spy(loader):
        out = real(loader)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(validation, "gathered_iterator", spy)
    torch.manual_seed(0)
    gathered = run()
    assert calls and all(calls)
    monkeypatch.setattr(validation, "gathered_iterator", lambda loader: None)
    torch.manual_seed(0)
    assert run() == gathered
