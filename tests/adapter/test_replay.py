"""adapter/replay.py without a fit: the step's batches and RNG state, replayed."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from conftest import pl
from torch import nn

from lightning_hyperopt.adapter.replay import LossReplay, restoring_buffers

TRAINER = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")


class Module(pl.LightningModule):
    """A training loss that draws dropout masks and updates batch-norm statistics."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))
        self.logged = []

    def log(self, name, value, **kwargs):  # what Lightning would log
        self.logged.append(name)

    def training_step(self, batch, batch_idx):
        loss = self.net(batch).pow(2).mean()
        self.log("train_loss", loss)
        return loss


def started(replays: bool = True) -> tuple[LossReplay, Module]:
    module = Module()
    replay = LossReplay()
    replay.start(SimpleNamespace(replays=replays), module)
    return replay, module


def test_a_committed_step_replays_with_its_own_masks_and_logs_nothing():
    replay, module = started()
    batches = [torch.randn(6, 4), torch.randn(6, 4)]
    originals = []
    for i, batch in enumerate(batches):
        replay.capture(TRAINER, module, batch, i)
        originals.append(module.net(batch).pow(2).mean().detach())  # the step draws its masks
        replay.commit()
    torch.randn(100)  # the global RNG moves on
    replayed = [loss.detach() for loss in replay.losses(TRAINER, module)]
    # accumulate_grad_batches = 1: each replayed loss is the step's own, its masks included
    assert [float(a) for a in replayed] == [float(b) for b in originals]
    assert module.logged == []  # the replays' self.log calls were dropped
    module.training_step(batches[0], 0)
    assert module.logged == ["train_loss"]


def test_only_committed_micro_batches_replay():
    replay, module = started()
    replay.capture(TRAINER, module, torch.randn(6, 4), 0)  # its step returned no loss
    replay.capture(TRAINER, module, torch.randn(6, 4), 1)
    replay.commit()
    assert len(list(replay.losses(TRAINER, module))) == 1
    replay.clear()
    assert list(replay.losses(TRAINER, module)) == []


def test_without_finite_difference_hyperparameters_nothing_is_kept():
    replay, module = started(replays=False)
    replay.capture(TRAINER, module, torch.randn(6, 4), 0)
    replay.commit()
    assert not replay.enabled and list(replay.losses(TRAINER, module)) == []


def test_replays_leave_the_batch_norm_statistics_as_the_step_left_them():
    module = Module()
    module.net(torch.randn(6, 4))
    before = [b.clone() for b in module.buffers()]
    with restoring_buffers(module):
        module.net(torch.randn(6, 4))
        assert not all(torch.equal(a, b) for a, b in zip(before, module.buffers()))
    assert all(torch.equal(a, b) for a, b in zip(before, module.buffers()))
