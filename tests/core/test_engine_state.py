"""core/engine_state.py: the engine's carried state, its start of a step and its checkpoint."""

from __future__ import annotations

import pytest
import torch

from lightning_hyperopt import Clip, Discount, FirstOrder, Unroll
from lightning_hyperopt.core.engine_state import EngineState


class Rule:
    """The optimizer-state tangents' part of a step start."""

    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def scale(self, factor):
        self.calls.append(factor)


def state(steps=0):
    s = EngineState(2, 3, torch.float64, torch.device("cpu"), lr=0.1)
    s.tangent = torch.arange(6, dtype=torch.float64).reshape(2, 3) + 1
    s.steps = steps
    return s


def test_begin_step_resets_discounts_or_keeps_y():
    s, rule = state(steps=4), Rule()
    assert s.begin_step(Unroll(2), rule) is False  # a window's start: y = 0, no H y
    assert torch.equal(s.tangent, torch.zeros(2, 3, dtype=torch.float64)) and rule.calls == [
        "reset"
    ]
    s, rule = state(steps=5), Rule()
    assert s.begin_step(Unroll(2), rule) is True and rule.calls == []
    s, rule = state(), Rule()
    assert s.begin_step(Discount(0.5), rule) is True and rule.calls == [0.5]
    assert s.tangent[0].tolist() == [0.5, 1.0, 1.5]
    s, rule = state(), Rule()
    assert s.begin_step(FirstOrder(), rule) is False and rule.calls == []  # y is never read
    assert s.begin_step(Clip(), rule) is True


def test_the_hypergradient_is_plus_y_or_minus_the_direction():
    s = state()
    g = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    assert s.hypergradient(g, uses_tangent=True).tolist() == [-2.0, -2.0]
    s.direction = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    assert s.hypergradient(g, uses_tangent=False).tolist() == [-1.0, 2.0]


def test_the_checkpoint_round_trips_and_refuses_another_shape():
    s = state(steps=7)
    s.updates, s.lr = 3, 0.05
    s.direction = torch.ones(2, 3, dtype=torch.float64)
    saved = s.state_dict()
    assert set(saved) == {"step", "updates", "lr", "tangent", "direction"}
    other = EngineState(2, 3, torch.float64, torch.device("cpu"), lr=1.0)
    other.check_tangent(saved)
    other.load_state_dict(saved)
    assert (other.steps, other.updates, other.lr) == (7, 3, 0.05)
    assert torch.equal(other.tangent, s.tangent) and torch.equal(other.direction, s.direction)
    saved["tangent"].zero_()  # a copy: the state itself is not touched
    assert not torch.equal(s.tangent, saved["tangent"])
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(2, 4\)"):
        EngineState(2, 4, torch.float64, torch.device("cpu"), lr=1.0).check_tangent(saved)
