"""core/nonfinite.py: the non-finite policy on the engine's updates, and its counts, the same
branch-free (on accelerators) and with the CPU's shortcut."""

from __future__ import annotations

import pytest
import torch

from lightning_hyperopt.core.nonfinite import FiniteGuard

T, F = torch.tensor(True), torch.tensor(False)


@pytest.fixture(params=[True, False], ids=["sync_free", "cpu_shortcut"])
def guard(request):
    return FiniteGuard(rows=2, device=torch.device("cpu"), sync_free=request.param)


def test_step_flags():
    ok, bad = FiniteGuard.step_flags(T, None)
    assert bool(ok) and not bool(bad)
    ok, bad = FiniteGuard.step_flags(F, None)
    assert not bool(ok) and bool(bad)
    ok, bad = FiniteGuard.step_flags(T, T)  # the scaler skips: expected, not counted
    assert not bool(ok) and not bool(bad)


def test_a_non_finite_tangent_row_starts_again_and_a_bad_step_moves_nothing(guard):
    old = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    new = torch.tensor([[3.0, 3.0], [float("nan"), 0.0]])
    norms = new.norm(dim=1)
    kept = guard.tangent_step(T, F, norms, {"": new}, {"": old})[""]
    assert kept.tolist() == [[3.0, 3.0], [0.0, 0.0]]
    assert guard.counts.per_row() == [0, 1]
    kept = guard.tangent_step(F, T, norms, {"": new}, {"": old})[""]
    assert kept.tolist() == old.tolist()  # a skipped step: y as it was
    assert guard.counts.per_row() == [1, 2] and guard.counts.report() == (1, 1)


def test_lambda_stays_where_its_update_is_not_finite(guard):
    values = torch.tensor([0.1, 0.2], dtype=torch.float64)
    new = torch.tensor([0.15, float("inf")], dtype=torch.float64)
    tangent = torch.ones(2, 3)
    lam, (y,) = guard.lambda_step(values, new, torch.tensor([True, True]), T, [tangent])
    assert lam.tolist() == [0.15, 0.2] and y.tolist() == [[1.0] * 3, [0.0] * 3]
    assert guard.counts.per_row() == [0, 1]


def test_runs_of_non_finite_steps_are_reported_once_each(guard):
    for bad in (True, True, False, True):
        guard.counts.add_step(torch.tensor(bad), None)
    assert guard.counts.report() == (1, 2)  # one now, the longest run since: 2
    assert guard.counts.report() == (1, 1)  # the longest is reset to the current run
