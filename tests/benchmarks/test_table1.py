"""Table 1's driver (one engine over the stacked repeats): equal to the engine on each repeat
alone, row by row, and the smoke-scale table."""

import json

import pytest
import torch

from benchmarks.cli import build_parser, main
from benchmarks.quadratic import (
    PAPER_SCHEDULE,
    TABLE1_METHODS,
    check_stable,
    first_order_fixed_point,
    run_vectorized,
    unroll_fixed_point,
)
from experiments.quadratic import (
    QuadraticInstance,
    sample_quadratic,
    tune_with_engine,
)
from lightning_hyperopt.core import Clip, Exact, FirstOrder, Unroll

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
    """One engine over three stacked problems (one λ per problem) gives, in each row, the λ
    trajectory of TangentEngine on that problem alone: the rows do not interact."""
    q = sample_quadratic(dim=6, repeats=3, seed=4)
    method = METHODS[name]
    alone = []
    for r in range(3):
        row = QuadraticInstance(q.h[r], q.theta_bar[r], q.theta_tilde[r], q.lambda_star[r])
        alone.append(torch.tensor(engine_trajectory(row, method, 0.1), dtype=torch.float64))
    run = run_vectorized(q, method, SCHEDULE, init_lambda=0.1, warmup_steps=WARMUP)
    vectorized = torch.stack(run.lambdas)  # (steps, 3)
    assert run.steps == list(range(1, 101)) and run.phase_ends == [59, 99]
    for r, expected in enumerate(alone):
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


def test_unroll_fixed_point_is_where_the_driver_stops_and_orders_unroll_k():
    """On a wide spectrum (ηh up to 0.2) UnrollK's λ converges to λ_K, and
    |λ₁₀ − λ*| < |λ₅ − λ*| < |λ₁ − λ*| in every row; λ₁ is the first-order fixed point."""
    q = sample_quadratic(dim=6, repeats=3, seed=4, spectrum=(1.0, 100.0))
    lr = 2e-3
    fixed = {k: unroll_fixed_point(q, k, lr) for k in (1, 5, 10)}
    torch.testing.assert_close(fixed[1], first_order_fixed_point(q).clamp(0, 10))
    for k in (5, 10):
        run = run_vectorized(q, Unroll(k, 0.3), ((1000, lr),), init_lambda=0.3, record_every=1000)
        torch.testing.assert_close(run.lambdas[-1], fixed[k], rtol=0, atol=1e-5)
    errors = [(fixed[k] - q.lambda_star).abs() for k in (10, 5, 1)]
    assert (errors[0] < errors[1]).all() and (errors[1] < errors[2]).all()
    # windows of copies of Unroll1's (Kηh ≪ 1) stop where Unroll1 does; K → ∞ stops at λ*
    torch.testing.assert_close(unroll_fixed_point(q, 10, 1e-7), fixed[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(unroll_fixed_point(q, 10**6, lr), q.lambda_star)


def smoke(out, *extra: str) -> None:
    main(["table1", "--out", str(out), "--smoke", "--no-progress", *extra])


def test_spectrum_option_parses_and_changes_the_sampled_spectrum(tmp_path):
    """--spectrum 1,100 reaches the sampler; the default is the paper protocol's U[0.5, 2]."""
    assert build_parser().parse_args(["table1", "--out", "x"]).spectrum is None
    args = build_parser().parse_args(["table1", "--out", "x", "--spectrum", "1,100"])
    assert args.spectrum == (1.0, 100.0)
    default, wide = tmp_path / "default", tmp_path / "wide"
    smoke(default, "--methods", "Clip5")
    smoke(wide, "--methods", "Clip5", "--spectrum", "1,100")
    protocols = [json.loads((d / "summary.json").read_text())["protocol"] for d in (default, wide)]
    assert [p["spectrum"] for p in protocols] == [[0.5, 2.0], [1.0, 100.0]]
    assert "diag(H) ~ U[1, 100]" in (wide / "table.md").read_text()
    h = sample_quadratic(dim=20, repeats=50, seed=0, spectrum=args.spectrum).h
    assert 1.0 <= h.min() < 3.0 and 98.0 < h.max() <= 100.0


@pytest.mark.parametrize("spectrum", [(0.5, 2.0), (1.0, 100.0), (3.0, 3.0)])
def test_any_spectrum_keeps_lambda_star_and_the_tangent_norm_exact(spectrum):
    """λ* and ‖dθ*/dλ‖ are set by construction, whatever the spectrum (H ∝ I included)."""
    q = sample_quadratic(dim=20, repeats=8, seed=1, spectrum=spectrum)
    assert ((q.h >= spectrum[0]) & (q.h <= spectrum[1])).all()
    assert ((q.lambda_star >= 0.2) & (q.lambda_star <= 0.4)).all()
    norms = q.tangent_star(q.lambda_star).norm(dim=-1)
    assert ((norms >= 3.0) & (norms <= 5.0)).all()
    # λ* zeroes the true hypergradient ⟨g_V(θ*(λ)), dθ*/dλ⟩
    theta = q.theta_star(q.lambda_star)
    hypergradient = (q.h * (theta - q.theta_tilde) * q.tangent_star(q.lambda_star)).sum(-1)
    torch.testing.assert_close(hypergradient, torch.zeros(8, dtype=torch.float64))


def test_the_default_spectrum_draws_the_same_problems():
    """Omitting the option draws U[0.5, 2], the paper protocol's problems, unchanged."""
    a = sample_quadratic(dim=20, repeats=5, seed=0)
    b = sample_quadratic(dim=20, repeats=5, seed=0, spectrum=(0.5, 2.0))
    assert torch.equal(a.h, b.h) and torch.equal(a.theta_tilde, b.theta_tilde)
    assert a.h.min() >= 0.5 and a.h.max() <= 2.0


@pytest.mark.parametrize("bad", ["0,2", "-1,2", "5,2", "a,2", "1", "1,2,3", "nan,2", "1,inf"])
def test_bad_spectra_are_refused_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["table1", "--out", "x", f"--spectrum={bad}"])
    err = capsys.readouterr().err
    assert f"--spectrum {bad!r}: expected LOW,HIGH" in err and "0 < LOW <= HIGH" in err


@pytest.mark.parametrize("bad", [(0.0, 2.0), (2.0, 1.0), (1.0,), (1.0, float("inf"))])
def test_bad_spectra_are_refused_by_the_sampler(bad):
    with pytest.raises(ValueError, match=r"spectrum=.*(0 < low <= high|expected two numbers)"):
        sample_quadratic(spectrum=bad)


def test_an_unstable_schedule_for_the_spectrum_is_refused(tmp_path):
    """η·(1 + λ_max)·h_max ≥ 2 would make SGD diverge for some λ the clamp allows."""
    check_stable((1.0, 100.0), PAPER_SCHEDULE)  # 1e-3 · 11 · 100 = 1.1
    with pytest.raises(ValueError, match=r"spectrum=\(1.0, 200.0\).*= 2.2 >= 2"):
        check_stable((1.0, 200.0), PAPER_SCHEDULE)
    with pytest.raises(ValueError, match="lower the schedule's learning rates"):
        smoke(tmp_path, "--spectrum", "1,100", "--schedule", "100:1e-2")
