"""adapter/run_guard.py: the pure non-finite decision, and its I/O on an engine's counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lightning_hyperopt.adapter.run_guard import Decision, RunGuard, evaluate


@pytest.mark.parametrize(
    "now, longest, counted, warned, stop, warn",
    [
        (0, 0, False, False, False, False),  # all finite
        (1, 1, True, False, False, True),  # the first non-finite step warns
        (0, 0, True, False, False, True),  # a non-finite tangent or hypergradient too
        (2, 2, True, True, False, False),  # warned once only
        (0, 3, True, True, True, False),  # a run of 3 = max since the last check: stop
    ],
)
def test_evaluate(now, longest, counted, warned, stop, warn):
    decision = evaluate(now, longest, counted, step=7, max_steps=3, warned=warned)
    assert (decision.stop is not None, decision.warn is not None) == (stop, warn)
    if stop:
        assert "3 training steps in a row" in decision.stop and "step 7" in decision.stop
    if warn:
        assert "non-finite values at step 7" in decision.warn
    assert isinstance(decision, Decision)


def engine(report, per_row):
    reports = iter(report)
    return SimpleNamespace(
        nonfinite_report=lambda: next(reports),
        nonfinite=per_row,
        state=SimpleNamespace(steps=5),
    )


def test_the_guard_warns_once_and_stops_on_a_long_run():
    guard = RunGuard(max_nonfinite_steps=2)
    with pytest.warns(UserWarning, match="non-finite values at step 5"):
        assert guard.check(engine([(1, 1)], [1])) == 1
    assert guard.check(engine([(0, 1)], [1])) == 0  # warned already: silent
    with pytest.raises(RuntimeError, match=r"2 training steps in a row"):
        guard.check(engine([(2, 2)], [3]))


def test_no_checkpoint_right_after_non_finite_steps():
    guard = RunGuard(max_nonfinite_steps=5)
    guard.warned = True
    guard.before_checkpoint(engine([(0, 0)], [0]))
    with pytest.raises(RuntimeError, match="not saving a checkpoint"):
        guard.before_checkpoint(engine([(1, 1)], [1]))
