"""Hyperparameter declarations: storage, dtype, bounds and the guarded update."""

import pytest
import torch
from torch import nn

from lightning_hyperopt.core import Clip, Hyperparameter, L2Penalty, TangentEngine, WeightDecay


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
