"""adapter/rebatch.py: the g_V loader at ``validation_batch_size`` samples per batch, its order
and settings kept; refused, before training, where that cannot be done faithfully; and through
a fit: the batches g_V is drawn from, and λ unchanged when B is the loader's own."""

from __future__ import annotations

import pytest
import torch
from conftest import Regression, make_trainer, regression_data
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from lightning_hyperopt import OnlineHyperparamCallback
from lightning_hyperopt.adapter.rebatch import rebatched

ROWS = TensorDataset(torch.arange(10, dtype=torch.float64).unsqueeze(1))


def order(loader) -> list[list[int]]:
    return [[int(v) for v in batch[0].reshape(-1)] for batch in loader]


def test_a_sequential_loader_yields_consecutive_samples_in_batches_of_b():
    loader = rebatched(DataLoader(ROWS, batch_size=4), 3)
    assert order(loader) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    dropped = rebatched(DataLoader(ROWS, batch_size=4, drop_last=True), 3)
    assert order(dropped) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_a_shuffled_loader_keeps_its_sampler_and_draws_the_same_order():
    """The rebuilt loader holds the loader's own sampler: under one seed it draws the same
    permutation, cut into batches of B."""
    generator = torch.Generator().manual_seed(5)
    loader = DataLoader(ROWS, batch_size=4, shuffle=True, generator=generator)
    rebuilt = rebatched(loader, 5)
    assert rebuilt.sampler is loader.sampler and isinstance(rebuilt.sampler, RandomSampler)
    generator.manual_seed(3)
    flat = [i for batch in order(loader) for i in batch]
    generator.manual_seed(3)
    assert order(rebuilt) == [flat[:5], flat[5:]]


def test_the_loaders_settings_are_kept():
    def collate(samples):
        return [torch.stack([s[0] for s in samples]) * 2]

    loader = DataLoader(
        ROWS, batch_sampler=BatchSampler(SequentialSampler(ROWS), 4, drop_last=True),
        collate_fn=collate,
    )  # fmt: skip
    rebuilt = rebatched(loader, 2)
    assert rebuilt.collate_fn is collate and rebuilt.drop_last
    assert order(rebuilt) == [[0, 2], [4, 6], [8, 10], [12, 14], [16, 18]]


class Stream(IterableDataset):
    def __iter__(self):
        return iter([torch.tensor([float(i)]) for i in range(7)])


def test_an_iterable_dataset_is_rebatched():
    rebuilt = rebatched(DataLoader(Stream(), batch_size=4), 3)
    assert [[int(v) for v in b.reshape(-1)] for b in rebuilt] == [[0, 1, 2], [3, 4, 5], [6]]


class Subclass(DataLoader):
    pass


class Chunks(BatchSampler):
    pass


@pytest.mark.parametrize(
    ("loader", "why"),
    [
        ([[torch.zeros(2)]], "it is a list"),
        (Subclass(ROWS, batch_size=2), "subclass of DataLoader (Subclass)"),
        (DataLoader(ROWS, batch_size=None), "batch_size=None"),
        (
            DataLoader(ROWS, batch_sampler=Chunks(SequentialSampler(ROWS), 2, False)),
            "its batch_sampler is a Chunks",
        ),
    ],
)
def test_a_loader_that_cannot_be_rebuilt_faithfully_is_refused(loader, why):
    with pytest.raises(ValueError, match="validation_batch_size=3") as caught:
        rebatched(loader, 3)
    assert why in str(caught.value) and "hyperopt_dataloader()" in str(caught.value)


# ----------------------------------------------------------------------------- in a fit
class Recording(Regression):
    """Records the size of every batch its validation loss sees."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []

    def validation_loss(self, batch):
        self.sizes.append(len(batch[0]))
        return super().validation_loss(batch)


def fit(validation_batch_size, steps=6):
    torch.manual_seed(0)
    train, val = regression_data()
    model = Recording("l2", 0.05)
    cb = OnlineHyperparamCallback(hyper_every=1, validation_batch_size=validation_batch_size)
    loaders = DataLoader(train, batch_size=6), DataLoader(val, batch_size=48, shuffle=True)
    make_trainer([cb], steps).fit(model, *loaders)
    return model, cb


def test_g_v_is_drawn_in_batches_of_b_and_b_equal_to_the_loaders_is_the_default_bit_for_bit():
    default, _ = fit(None)
    same, _ = fit(48)
    assert float(same.l2.value) == float(default.l2.value)
    assert float(default.l2.value) != 0.05
    small, cb = fit(8)
    # the probe's batch and one per step, every one of 8 samples
    assert small.sizes and set(small.sizes) == {8} and len(small.sizes) >= 6
    assert cb.validation.loader.batch_size == 8
    assert 0 < float(small.l2.value) != float(default.l2.value) > 0


@pytest.mark.parametrize("bad", [0, -2, 2.5, "8", True])
def test_a_bad_validation_batch_size_is_refused_at_construction(bad):
    with pytest.raises((ValueError, TypeError), match="validation_batch_size"):
        OnlineHyperparamCallback(validation_batch_size=bad)


def test_a_loader_that_cannot_be_rebatched_fails_before_training():
    train, val = regression_data()
    model = Recording("l2", 0.05)
    cb = OnlineHyperparamCallback(validation_batch_size=4)
    trainer = make_trainer([cb], 3)
    with pytest.raises(ValueError, match="subclass of DataLoader") as caught:
        trainer.fit(model, DataLoader(train, batch_size=6), Subclass(val, batch_size=48))
    assert "validation_batch_size=4" in str(caught.value)
    assert trainer.global_step == 0 and float(model.l2.value) == 0.05
