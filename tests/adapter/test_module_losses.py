"""adapter/module_losses.py: where L_V and L_T come from, and the isolation of the tuner's
passes (no logging, metrics put back)."""

from __future__ import annotations

import pytest
import torch
from conftest import pl
from torchmetrics import MeanMetric

from lightning_hyperopt.adapter.module_losses import ModuleLoss, NoLoss, PassIsolation, step_loss


class Steps(pl.LightningModule):
    def __init__(self, output="tensor") -> None:
        super().__init__()
        self.output, self.mean, self.logged = output, MeanMetric(), []

    def log(self, name, value, **kwargs):
        self.logged.append(name)

    def validation_step(self, batch, batch_idx):
        loss = batch.sum() * (batch_idx + 1)
        self.mean.update(loss)
        self.log("val_loss", loss)
        return {"tensor": loss, "dict": {"loss": loss}, "none": None}[self.output]


class Dedicated(Steps):
    def validation_loss(self, batch):
        return batch.sum() * 10


def test_the_dedicated_method_wins_else_the_steps_loss():
    batch = torch.ones(2)
    assert (
        float(ModuleLoss(Dedicated(), "validation_loss", "validation_step")(Dedicated(), batch, 0))
        == 20
    )
    for output in ("tensor", "dict"):
        module = Steps(output)
        loss = ModuleLoss(module, "validation_loss", "validation_step")
        assert loss.name == "validation_step" and float(loss(module, batch, 2)) == 6


def test_a_step_without_a_loss_names_both_ways_out():
    module = Steps("none")
    with pytest.raises(NoLoss, match=r"Steps.validation_step returned None.*validation_loss"):
        ModuleLoss(module, "validation_loss", "validation_step")(module, torch.ones(2), 0)
    assert step_loss({"logits": torch.ones(1)}) is None


def test_inside_the_isolation_nothing_is_logged_and_metrics_come_back():
    module = Steps()
    module.mean.update(torch.tensor(1.0))
    isolation = PassIsolation()
    isolation.start(module)
    with isolation(module):
        module.validation_step(torch.ones(2), 0)
    assert module.logged == [] and float(module.mean.compute()) == 1.0
    module.validation_step(torch.ones(2), 0)
    assert module.logged == ["val_loss"] and float(module.mean.compute()) == 1.5
