"""Table 1's vectorized driver: equal to TangentEngine row by row, and the smoke-scale table."""

import json

import pytest
import torch

from lightning_hyperopt.bench.cli import main
from lightning_hyperopt.bench.quadratic import (
    TABLE1_METHODS,
    first_order_fixed_point,
    run_vectorized,
)
from lightning_hyperopt.core import Clip, Exact, FirstOrder, Unroll
from lightning_hyperopt.problems.quadratic import (
    QuadraticInstance,
    sample_quadratic,
    tune_with_engine,
)

SCHEDULE = ((60, 0.05), (40, 0.01))  # two phases: the learning rate drops, as in the paper
WARMUP = 7
METHODS = {
    "clip2": Clip(2.0, 0.5),  # r below ‖y‖: the projection is active
    "exact": Exact(0.5),
    "unroll3": Unroll(3, 0.5),
    "first_order": FirstOrder(0.02),
}


def engine_trajectory(q: QuadraticInstance, method, init: float) -> list[float]:
    """λ after every step, from TangentEngine on one problem (the callback's engine)."""
    return tune_with_engine(q, method, SCHEDULE, init_lambda=init, warmup_steps=WARMUP)[0]


@pytest.mark.parametrize("name", METHODS)
def test_vectorized_driver_equals_the_engine_row_by_row(name):
    """Three stacked problems give, in each row, the λ trajectory of TangentEngine alone."""
    q = sample_quadratic(dim=6, repeats=3, seed=4)
    method = METHODS[name]
    run = run_vectorized(q, method, SCHEDULE, init_lambda=0.1, warmup_steps=WARMUP)
    vectorized = torch.stack(run.lambdas)  # (steps, 3)
    assert run.steps == list(range(1, 101)) and run.phase_ends == [59, 99]
    for r in range(3):
        row = QuadraticInstance(q.h[r], q.theta_bar[r], q.theta_tilde[r], q.lambda_star[r])
        expected = torch.tensor(engine_trajectory(row, method, 0.1), dtype=torch.float64)
        assert not torch.equal(expected[WARMUP + 1 :], expected[WARMUP:-1])  # λ moved
        torch.testing.assert_close(vectorized[:, r], expected, rtol=1e-12, atol=1e-14)
    if name == "clip2":
        assert run.clipped[0] == 0 and all(c == 1.0 for c in run.clipped[30:])  # y grows past r
    else:
        assert all(c != c for c in run.clipped)  # NaN: no projection


def test_first_order_fixed_point_zeroes_the_first_order_hypergradient():
    q = sample_quadratic(dim=20, repeats=4, seed=2)
    lam = first_order_fixed_point(q)
    theta = q.theta_star(lam)
    g_val = q.h * (theta - q.theta_tilde)
    dg_dlam = q.h * theta
    torch.testing.assert_close((g_val * dg_dlam).sum(-1), torch.zeros(4, dtype=torch.float64))


def test_table1_smoke(tmp_path):
    """The CLI's smoke scale writes the table, one record per method and the plot."""
    out = tmp_path / "t1"
    main(["table1", "--out", str(out), "--smoke", "--no-progress"])
    table = (out / "table.md").read_text()
    for name in TABLE1_METHODS:
        assert f"| {name} |" in table
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == list(TABLE1_METHODS)
    for r in records:
        assert r["repeats"] == 5 and len(r["phases"]) == 2
        for phase in r["phases"]:
            assert 0 <= phase["abs_lambda_error"] < 1 and phase["val_loss_increase"] >= 0
    assert (out / "table1.png").stat().st_size > 10_000


def test_table1_rejects_unknown_methods(tmp_path):
    with pytest.raises(ValueError, match=r"methods: unknown \['Clip3'\]; accepted values"):
        main(["table1", "--out", str(tmp_path), "--smoke", "--methods", "Clip3", "--no-progress"])
