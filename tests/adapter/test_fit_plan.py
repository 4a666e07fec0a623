"""adapter/fit_plan.py without a fit: plan_fit's decisions and build_engine's engine, on a
Trainer given its optimizer by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import pl
from torch import nn

from lightning_hyperopt import (
    AdaptiveStep,
    Clip,
    FirstOrder,
    L2Penalty,
    LearningRate,
    Momentum,
    OnlineHyperparamCallback,
    PaperStep,
    WeightDecay,
)
from lightning_hyperopt.adapter.fit_plan import build_engine, plan_fit, saved_state


class Net(pl.LightningModule):
    def __init__(self, l2: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.frozen_bias = nn.Parameter(torch.zeros(1))  # trained, but not by the optimizer
        if l2:
            self.l2 = L2Penalty(1e-3)

    def validation_loss(self, batch):
        return self.net(batch).pow(2).mean()

    def training_step(self, batch, batch_idx):
        return self.validation_loss(batch)


def trainer_with(module, **optimizer_settings):
    """An unfitted Trainer holding an SGD optimizer over ``module.net`` (as after
    ``configure_optimizers``)."""
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    settings = {"lr": 0.1, "weight_decay": 0.02, "momentum": 0.8, **optimizer_settings}
    trainer.strategy.optimizers = [torch.optim.SGD(module.net.parameters(), **settings)]
    return trainer


def plan(module, callback, continued=None, **optimizer_settings):
    trainer = trainer_with(module, **optimizer_settings)
    return plan_fit(trainer, module, callback.arguments, continued), trainer


def test_auto_chooses_first_order_for_regularizers_and_clip_50_for_a_learning_rate():
    p, _ = plan(Net(), OnlineHyperparamCallback())
    assert isinstance(p.method, FirstOrder) and p.method_chosen
    p, _ = plan(Net(), OnlineHyperparamCallback(tune={"lr": LearningRate()}))
    assert isinstance(p.method, Clip) and p.method.radius == 50.0
    given = Clip(5.0)
    p, _ = plan(Net(), OnlineHyperparamCallback(given))
    assert p.method is given and not p.method_chosen


def test_the_hyper_optimizer_is_resolved_once_from_the_method():
    """None: the paper's rule for a method given its step, the adaptive one otherwise; a name
    builds the rule at fit start (construction only checks it)."""
    p, _ = plan(Net(), OnlineHyperparamCallback(Clip(5.0, hyper_lr_scale=0.1)))
    assert isinstance(p.hyper_optimizer, PaperStep)
    callback = OnlineHyperparamCallback(Clip(5.0), hyper_optimizer="adaptive")
    assert callback.arguments.hyper_optimizer == "adaptive"  # a name, not yet an instance
    p, _ = plan(Net(), callback)
    assert isinstance(p.hyper_optimizer, AdaptiveStep)


def test_fresh_start_takes_initial_values_from_the_optimizer():
    tune = {"wd": WeightDecay(), "mu": Momentum(), "lr": LearningRate(init=2.0)}
    p, _ = plan(Net(l2=False), OnlineHyperparamCallback(tune=tune), weight_decay=0.05)
    # the learning-rate factor keeps its own init; the others start from the optimizer
    assert p.initial_values == {"wd": 0.05, "mu": 0.8}
    assert p.brought == ("wd", "mu", "lr") and p.saved == ("wd", "mu", "lr")


def test_a_continued_run_takes_the_saved_values_and_refuses_a_foreign_state():
    tune = {"wd": WeightDecay()}
    continued = {"values": {"wd": torch.tensor(0.125, dtype=torch.float64)}, "engine": {}}
    p, _ = plan(Net(l2=False), OnlineHyperparamCallback(tune=tune), continued)
    assert p.initial_values == {"wd": 0.125} and p.resume is continued
    with pytest.raises(ValueError, match=r"cannot resume.*no value for \['wd'\]"):
        plan(Net(l2=False), OnlineHyperparamCallback(tune=tune), {"values": {}})


def test_the_plan_records_the_fit_it_was_made_for():
    module = Net()
    p, trainer = plan(module, OnlineHyperparamCallback())
    assert p.optimizer is trainer.optimizers[0]
    assert list(p.hyperparameters) == ["l2"] and p.saved == ()  # the module saves its own
    assert p.extra_grad_targets == (module.frozen_bias,)
    assert (p.distributed, p.rank, p.world, p.gradient_clipping) == (False, 0, 1, None)
    assert p.patch_backward and p.plain_train and not (p.native_rnn or p.replays)
    assert not p.transfer_hooks
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.method = Clip()  # type: ignore[misc]


def test_build_engine_writes_the_initial_values_and_restores_a_continued_state():
    callback = OnlineHyperparamCallback(tune={"wd": WeightDecay()})
    p, trainer = plan(Net(l2=False), callback, weight_decay=0.05)
    engine = build_engine(p, trainer.strategy)
    assert float(callback.tune["wd"].value) == 0.05 and engine.names == ["wd"]
    assert engine.optimizer is p.optimizer and engine.hyper_update.optimizer is p.hyper_optimizer
    engine.state.steps, engine.state.updates = 7, 3
    state = {"engine": engine.state_dict(), "values": saved_state(p)}
    callback.tune["wd"].value.fill_(0.0)
    q, trainer = plan(Net(l2=False), callback, state, weight_decay=0.05)
    again = build_engine(q, trainer.strategy)
    assert (again.state.steps, again.state.updates) == (7, 3)
    assert float(callback.tune["wd"].value) == 0.05  # the saved value, not the optimizer's


def test_a_state_of_another_model_is_refused_at_build():
    callback = OnlineHyperparamCallback()
    p, trainer = plan(Net(), callback)
    state = {"engine": {**build_engine(p, trainer.strategy).state_dict(), "names": ["other"]}}
    q, trainer = plan(Net(), callback, state)
    with pytest.raises(ValueError, match=r"cannot resume.*tunes hyperparameters \['other'\]"):
        build_engine(q, trainer.strategy)
