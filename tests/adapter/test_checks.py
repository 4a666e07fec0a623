"""adapter/checks.py: each fit check on its own, without a fit."""

from __future__ import annotations

import pytest
import torch
from conftest import pl
from torch import nn

from lightning_hyperopt import Clip, FirstOrder, KeepProbability, L2Penalty
from lightning_hyperopt.adapter.checks import (
    check_hyperparameters,
    check_replays,
    check_sparse_gradients,
    check_strategy,
    check_trainer,
)


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch).mean()


class WithValidationStep(Module):
    def validation_step(self, batch, batch_idx):
        return self.net(batch).mean()


class Manual(WithValidationStep):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


class OwnClipping(WithValidationStep):
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, **kwargs):
        pass


def trainer(**kwargs):
    return pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", **kwargs)


def test_check_strategy_takes_one_device_and_ddp_only():
    assert check_strategy(pl.strategies.SingleDeviceStrategy("cpu")) is False
    assert check_strategy(pl.strategies.DDPStrategy()) is True
    with pytest.raises(ValueError, match=r"supports one device and DDP.*got FSDPStrategy"):
        check_strategy(pl.strategies.FSDPStrategy())


def test_check_trainer_names_what_the_tuner_cannot_follow():
    assert check_trainer(trainer(), WithValidationStep()) is False
    with pytest.raises(ValueError, match="needs automatic optimization"):
        check_trainer(trainer(), Manual())
    with pytest.raises(TypeError, match="Module must define `validation_loss"):
        check_trainer(trainer(), Module())
    assert check_trainer(trainer(), OwnClipping()) is False  # no clipping asked: no conflict
    with pytest.raises(ValueError, match="overrides configure_gradient_clipping"):
        check_trainer(trainer(gradient_clip_val=1.0), OwnClipping())


def test_check_replays_needs_a_training_loss_for_finite_differences():
    check_replays(Module(), {"keep": KeepProbability()})  # training_step returns the loss

    class NoStep(pl.LightningModule):
        pass

    check_replays(NoStep(), {"l2": L2Penalty(0.1)})  # nothing to replay
    with pytest.raises(TypeError, match=r"hyperparameters \['keep'\] are differentiated by"):
        check_replays(NoStep(), {"keep": KeepProbability()})


def test_check_hyperparameters_wants_something_to_tune_and_one_optimizer():
    t = trainer()
    optimizer = torch.optim.SGD(Module().parameters(), lr=0.1)
    t.strategy.optimizers = [optimizer]
    assert check_hyperparameters(t, Module(), {"l2": L2Penalty(0.1)}) is optimizer
    with pytest.raises(ValueError, match="Module declares no hyperparameter"):
        check_hyperparameters(t, Module(), {})
    t.strategy.optimizers = [optimizer, optimizer]
    with pytest.raises(ValueError, match="exactly one optimizer, got 2"):
        check_hyperparameters(t, Module(), {"l2": L2Penalty(0.1)})


def test_check_sparse_gradients_refuses_sparse_embeddings_with_a_tangent():
    module = Module()
    module.emb = nn.Embedding(4, 2, sparse=True)
    check_sparse_gradients(module, FirstOrder())  # read densely
    with pytest.raises(ValueError, match=r"Clip: emb \(Embedding\(\.\.\., sparse=True\)\)"):
        check_sparse_gradients(module, Clip())
