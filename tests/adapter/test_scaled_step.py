"""adapter/scaled_step.py: optimizer.step at λ·lr_t, the closure first, and back as it was."""

from __future__ import annotations

import torch

from lightning_hyperopt import Clip, LearningRate, TangentEngine, WeightDecay
from lightning_hyperopt.adapter.scaled_step import ScaledOptimizerStep


def setup(hyper):
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([w], lr=0.1)
    engine = TangentEngine(Clip(5.0), {"h": hyper}, optimizer)
    return w, optimizer, engine


def test_the_step_runs_the_closure_then_torchs_update_at_the_scaled_rate():
    w, optimizer, engine = setup(LearningRate(init=3.0))
    scaled = ScaledOptimizerStep()
    scaled.start(optimizer, engine)
    assert "step" in vars(optimizer)

    def closure():
        optimizer.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert float(loss) == 2.0
    # w ← w − (λ·lr)·2w with λ = 3: 1 − 0.6; the group's lr stays the schedule's
    torch.testing.assert_close(w.detach(), torch.full((2,), 0.4, dtype=torch.float64))
    assert optimizer.param_groups[0]["lr"] == 0.1
    scaled.end()
    assert "step" not in vars(optimizer)


def test_nothing_is_patched_when_no_learning_rate_is_tuned():
    _, optimizer, engine = setup(WeightDecay(init=0.1))
    scaled = ScaledOptimizerStep()
    scaled.start(optimizer, engine)
    assert "step" not in vars(optimizer)
    scaled.end()
