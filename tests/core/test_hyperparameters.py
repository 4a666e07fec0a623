"""core/hyperparameters: storage, dtype, bounds, the guarded update, and the optimizer-side
settings' base (its groups, initial values and checks)."""

import pytest
import torch
from torch import nn

from lightning_hyperopt.core import (
    Clip,
    Hyperparameter,
    L2Penalty,
    LearningRate,
    Momentum,
    OptimizerSetting,
    TangentEngine,
    WeightDecay,
)


def test_value_is_a_float64_buffer_not_a_parameter():
    module = nn.Module()
    module.lam = L2Penalty(0.25)
    assert "lam.value" in module.state_dict() and not list(module.parameters())
    module.half()
    assert module.lam.value.dtype == torch.float64 and float(module.lam.value) == 0.25


def test_overflowing_log_step_is_skipped_and_counted():
    """λ = exp(log λ − α·λ·h) overflows for a huge step: λ stays, the skip is counted."""
    w = nn.Parameter(torch.ones(3, dtype=torch.float64))
    lam = Hyperparameter(1.0, bounds=(1e-3, float("inf")), parameterization="log")
    opt = torch.optim.SGD([w], lr=0.1)
    engine = TangentEngine(Clip(1.0, hyper_lr_scale=1e6), {"lam": lam}, opt)
    for _ in range(2):
        opt.zero_grad()
        engine.backward(lam.value * (w**2).sum())
        engine.advance()
        opt.step()
        engine.update(lambda: 1e6 * (w**2).sum())  # pushes λ up, hard
    assert torch.isfinite(lam.value) and engine.nonfinite == [2]
    assert float(lam.value) == 1.0


def test_two_weight_decays_on_one_group_are_rejected():
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    hypers = {"a": WeightDecay(group=0, init=0.1), "b": WeightDecay(group=0, init=0.2)}
    with pytest.raises(ValueError, match="two WeightDecay hyperparameters tune param group 0"):
        TangentEngine(Clip(), hypers, opt)


def two_groups(**second):
    a, b = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    return torch.optim.SGD(
        [{"params": [a]}, {"params": [b], **second}], lr=0.1, momentum=0.9, weight_decay=0.01
    )


def test_optimizer_settings_act_on_one_group_or_all_of_them():
    opt = two_groups()
    for kind in (WeightDecay, LearningRate, Momentum):
        assert isinstance(kind(), OptimizerSetting) and kind().drift_source == "optimizer"
    assert WeightDecay().groups(opt) == [0] and WeightDecay(group=None).groups(opt) == [0, 1]
    assert LearningRate().groups(opt) == [0, 1] and Momentum(group=1).groups(opt) == [1]
    wd = WeightDecay(group=None, init=0.05)
    wd.write_to(opt)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.05]


def test_initial_values_come_from_the_groups_and_must_agree():
    assert WeightDecay(group=None).initial_value(two_groups()) == 0.01
    assert Momentum().initial_value(two_groups()) == 0.9
    assert WeightDecay(init=0.3).initial_value(two_groups()) is None  # its own init
    with pytest.raises(ValueError, match=r"different weight_decay values \[0.01, 0.02\]"):
        WeightDecay(group=None).initial_value(two_groups(weight_decay=0.02))
    with pytest.raises(
        ValueError, match="Momentum\\(init=None\\) takes the optimizer's momentum, which is 0"
    ):
        Momentum().initial_value(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))
    with pytest.raises(ValueError, match=r"WeightDecay\(group=2\) but the optimizer has 2"):
        WeightDecay(group=2).check_optimizer(two_groups(), "wd")


def test_only_the_learning_rate_and_momentum_have_a_short_horizon_bias():
    assert LearningRate.short_horizon_bias and Momentum.short_horizon_bias
    assert not WeightDecay.short_horizon_bias and not L2Penalty.short_horizon_bias
    with pytest.raises(ValueError, match=r"group=-1 must be a param-group index >= 0 or None"):
        WeightDecay(group=-1)
