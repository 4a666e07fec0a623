"""core/settings.py: the param-group settings λ sets, their tangents and the scaled steps."""

from __future__ import annotations

import pytest
import torch

from lightning_hyperopt import LearningRate, Momentum, WeightDecay
from lightning_hyperopt.core.layout import FlatLayout
from lightning_hyperopt.core.optim import check_optimizer
from lightning_hyperopt.core.settings import OptimizerSettings


def optimizer():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)


def settings(names, hypers, opt):
    layout, _ = FlatLayout.of_optimizer(opt)
    return OptimizerSettings(names, hypers, opt, layout, check_optimizer(opt))


def test_each_setting_gets_its_rows_tangent_and_the_lr_scale_its_groups():
    opt = optimizer()
    s = settings(
        ["wd", "lr", "mu"],
        [WeightDecay(group=1, init=0.01), LearningRate(init=2.0), Momentum()],
        opt,
    )
    assert s.dots[1]["weight_decay"].tolist() == [1.0, 0.0, 0.0]
    assert s.dots[0]["lr_scale"].tolist() == [0.0, 1.0, 0.0] == s.dots[1]["lr_scale"].tolist()
    assert s.dots[0]["momentum"].tolist() == [0.0, 0.0, 1.0]
    assert s.scaled_groups == {0: 1, 1: 1}


def test_write_sets_the_groups_and_the_step_runs_at_lambda_times_lr():
    opt = optimizer()
    s = settings(["wd", "lr"], [WeightDecay(group=None, init=0.01), LearningRate(init=2.0)], opt)
    s.write()
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]
    assert s.lr(0) == pytest.approx(0.2) and s.lr(1) == pytest.approx(1.0)
    with s.scaled_learning_rates():
        assert [g["lr"] for g in opt.param_groups] == [0.2, 1.0]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]  # the schedule's values


def test_a_setting_set_twice_or_not_differentiated_is_refused():
    opt = optimizer()
    with pytest.raises(ValueError, match="two WeightDecay hyperparameters tune param group 0"):
        settings(["a", "b"], [WeightDecay(init=0.1), WeightDecay(init=0.2)], opt)
    with pytest.raises(ValueError, match=r"sets 'beta2', which the tangent rule of SGD does not"):
        settings(["b2"], [Momentum(moment="second", init=0.5)], opt)
