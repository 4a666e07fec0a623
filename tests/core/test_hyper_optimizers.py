"""The hyper steps: the paper's rule and the adaptive, scale-free one (float64, closed forms)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lightning_hyperopt.core import (
    AdaptiveStep,
    Clip,
    Exact,
    FirstOrder,
    Hyperparameter,
    L2Penalty,
    LearningRate,
    PaperStep,
    TangentEngine,
    Unroll,
)
from lightning_hyperopt.core.functional import from_space, space_slope, to_space
from lightning_hyperopt.core.hyper_optimizers import resolve_hyper_optimizer
from lightning_hyperopt.core.hyperparameters import KeepProbability

f64 = torch.float64


def train(hyper_optimizer, val_scale=1.0, steps=12, hyper_every=1, lam=0.05, method=None):
    """A linear regression with an L2 penalty; returns λ after every step and the engine."""
    g = torch.Generator().manual_seed(1)
    w = nn.Parameter(torch.randn(6, generator=g, dtype=f64))
    x, xv = torch.randn(12, 6, generator=g, dtype=f64), torch.randn(40, 6, generator=g, dtype=f64)
    truth = torch.randn(6, generator=g, dtype=f64)
    y = x @ truth + torch.randn(12, generator=g, dtype=f64)
    l2 = L2Penalty(lam)
    opt = torch.optim.SGD([w], lr=0.05)
    engine = TangentEngine(
        method or Exact(), {"l2": l2}, opt, hyper_optimizer=hyper_optimizer, hyper_every=hyper_every
    )
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        engine.backward(((x @ w - y) ** 2).mean() + l2([w]))
        engine.advance()
        opt.step()
        engine.update(lambda: val_scale * ((xv @ w - xv @ truth) ** 2).mean())
        trajectory.append(float(l2.value))
    return trajectory, engine


def test_spaces_round_trip_and_slopes():
    values = torch.tensor([0.3, 0.3, 0.3, 2.0], dtype=f64)
    log = torch.tensor([False, True, False, True])
    logit = torch.tensor([False, False, True, False])
    u = to_space(values, log, logit)
    torch.testing.assert_close(u[1], torch.log(values[1]))
    torch.testing.assert_close(u[2], torch.log(values[2] / (1 - values[2])))
    torch.testing.assert_close(from_space(u, log, logit), values, rtol=1e-15, atol=0)
    eps = 1e-7
    fd = (from_space(u + eps, log, logit) - from_space(u - eps, log, logit)) / (2 * eps)
    torch.testing.assert_close(space_slope(values, log, logit), fd, rtol=1e-8, atol=0)


def test_adaptive_step_is_scale_free_and_the_paper_rule_is_not():
    """Multiplying L_V (so h) by 1000 leaves the adaptive trajectory as it was; the paper's
    rule moves 1000 times as far."""
    base, _ = train(AdaptiveStep(lr=0.05))
    scaled, _ = train(AdaptiveStep(lr=0.05), val_scale=1000.0)
    torch.testing.assert_close(torch.tensor(scaled), torch.tensor(base), rtol=1e-12, atol=0)
    assert len(set(base)) == len(base)  # it moves at every step
    paper, _ = train(PaperStep(), lam=0.05, method=Exact(1e-3))
    paper_scaled, _ = train(PaperStep(), val_scale=1000.0, method=Exact(1e-3))
    assert abs(paper_scaled[0] - 0.05) > 100 * abs(paper[0] - 0.05)


@pytest.mark.parametrize(
    "step, first_move",
    [
        (AdaptiveStep(lr=0.03, initial_lr=None), 0.03),
        (AdaptiveStep(lr=0.03, decay_updates=0), 0.03),
        (AdaptiveStep(), 0.3),  # the default starts at ρ₀ = 0.3
        (AdaptiveStep(lr=0.5, max_step=1.0), 0.5),  # ρ₀ below ρ: ρ throughout
    ],
)
def test_adaptive_first_step_moves_log_lambda_by_its_rate(step, first_move):
    """On the first update m̂/√v̂ = sign(g_u): log λ moves by exactly ρ₁ against h."""
    trajectory, engine = train(step, steps=1)
    h = float(engine.state.hypergradients[0])
    expected = math.log(0.05) - first_move * math.copysign(1, h)
    assert math.log(trajectory[0]) == pytest.approx(expected)


def test_max_step_caps_a_move():
    trajectory, _ = train(AdaptiveStep(lr=0.5, max_step=0.02), steps=3)
    moves = [abs(math.log(b) - math.log(a)) for a, b in zip([0.05, *trajectory], trajectory)]
    assert max(moves) == pytest.approx(0.02, rel=1e-12)


@pytest.mark.parametrize("start", [0.5, 1.0])
def test_keep_probability_moves_in_probability_space(start):
    """A keep probability moves by ρ per update in λ itself, also from λ = 1 (no dropout),
    which log-odds would hold at their edge."""
    keep = KeepProbability(start)
    w = nn.Parameter(torch.ones(3, dtype=f64))
    engine = TangentEngine(
        Exact(),
        {"keep": keep},
        torch.optim.SGD([w], lr=0.1),
        hyper_optimizer=AdaptiveStep(0.1, initial_lr=None),
    )
    assert engine.hyper_update.spaces == (False, False)  # identity
    values = torch.tensor([start], dtype=f64)
    u = engine.hyper_update.optimizer.step(
        to_space(values, *engine.hyper_update.spaces),
        torch.tensor([2.0], dtype=f64),
        0.0,
        torch.tensor([True]),
    )
    assert float(from_space(u, *engine.hyper_update.spaces)) == pytest.approx(start - 0.1)


def test_a_decaying_step_moves_by_its_schedule_per_row():
    """With a steady gradient m̂/√v̂ = 1, so row r's k-th move is ρ·(ρ₀/ρ)^max(0, 1 − (k−1)/K),
    counted per row: a row that skipped updates is earlier in its schedule."""
    step = AdaptiveStep(lr=0.01, initial_lr=0.08, decay_updates=3, max_step=1.0)
    u = torch.zeros(2, dtype=f64)
    grad = torch.ones(2, dtype=f64)
    moves = []
    for k in range(6):
        rows = torch.tensor([True, k % 2 == 1])  # row 1 moves on every other update
        new = step.step(u, grad, 0.0, rows)
        moves.append((u - new).tolist())
        u = new
    rho = [0.01 * 8 ** max(0.0, 1 - k / 3) for k in range(6)]  # 0.08, 0.04, 0.02, 0.01, ...
    assert [m[0] for m in moves] == pytest.approx(rho, rel=1e-12)
    assert [m[1] for m in moves] == pytest.approx([0, rho[0], 0, rho[1], 0, rho[2]], rel=1e-12)
    # resumed from its state, the schedule continues where it was
    again = AdaptiveStep(lr=0.01, initial_lr=0.08, decay_updates=3, max_step=1.0)
    again.load_state_dict(step.state_dict())
    assert (u - again.step(u, grad, 0.0, torch.tensor([True, True]))).tolist() == pytest.approx(
        [0.01, rho[3]], rel=1e-12
    )


def test_the_large_first_steps_are_for_regularizers_only():
    """An L2 penalty's first update moves log λ by ρ₀ = 0.3, a generic scalar's by ρ = 0.01;
    in a fit that tunes a learning rate every row moves by ρ (30% steps on SGD's learning rate
    diverged runs; on the L2 row they cost quality)."""
    g = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(5, generator=g, dtype=f64))
    x, y = torch.randn(8, 5, generator=g, dtype=f64), torch.randn(8, generator=g, dtype=f64)

    def first_moves(with_lr):
        l2, scalar = L2Penalty(0.05), Hyperparameter(0.5, bounds=(0.0, 1.0))
        hypers = {"l2": l2, "scalar": scalar, **({"lr": LearningRate()} if with_lr else {})}
        opt = torch.optim.SGD([w], lr=0.05)
        engine = TangentEngine(Clip(50.0), hypers, opt, hyper_optimizer=AdaptiveStep())
        before = {k: float(h.value) for k, h in hypers.items()}
        opt.zero_grad()
        engine.backward(((x @ w - y) ** 2).mean() + l2([w]) + scalar.value * (w**2).sum())
        engine.advance()
        engine.update(lambda: ((x @ w) ** 2).mean())
        return {
            k: abs(math.log(float(h.value) / before[k]))
            if k != "scalar"
            else abs(float(h.value) - before[k])
            for k, h in hypers.items()
        }

    assert first_moves(False) == pytest.approx({"l2": 0.3, "scalar": 0.01}, rel=1e-9)
    assert first_moves(True) == pytest.approx({"l2": 0.01, "scalar": 0.01, "lr": 0.01}, rel=1e-9)


def test_without_a_decay_the_step_is_the_constant_one():
    """initial_lr = None, K = 0 or ρ₀ ≤ ρ: bit for bit the constant rule."""
    base, _ = train(AdaptiveStep(lr=0.05, initial_lr=None))
    for variant in (
        AdaptiveStep(lr=0.05, initial_lr=0.5, decay_updates=0),
        AdaptiveStep(lr=0.05, initial_lr=0.05, decay_updates=10),
        AdaptiveStep(lr=0.05, initial_lr=0.01, decay_updates=10),
    ):
        assert train(variant)[0] == base
    assert train(AdaptiveStep(lr=0.05, initial_lr=0.5, decay_updates=10))[0] != base


def test_a_penalty_at_zero_cannot_start_in_log_space():
    w = nn.Parameter(torch.ones(3, dtype=f64))
    with pytest.raises(ValueError, match=r"AdaptiveStep moves 'l2' in log space.*λ = 0"):
        TangentEngine(Exact(), {"l2": L2Penalty(0.0)}, torch.optim.SGD([w], lr=0.1))
    # the paper's rule steps the declared (identity) parameterization: 0 is a fine start
    TangentEngine(Exact(1e-3), {"l2": L2Penalty(0.0)}, torch.optim.SGD([w], lr=0.1))


def test_a_skipped_row_leaves_the_moments_and_lambda_alone():
    step = AdaptiveStep(lr=0.1, initial_lr=None)
    u = torch.tensor([0.0, 0.0], dtype=f64)
    out = step.step(u, torch.tensor([1.0, math.nan], dtype=f64), 0.0, torch.tensor([True, False]))
    assert out.tolist() == pytest.approx([-0.1, 0.0])
    state = step.state_dict()
    assert state["m"][1] == 0 and state["v"][1] == 0 and state["count"].tolist() == [1.0, 0.0]


def test_none_picks_the_paper_rule_when_the_method_has_its_step():
    assert isinstance(resolve_hyper_optimizer(None, Clip(5.0, 0.1)), PaperStep)
    assert isinstance(resolve_hyper_optimizer(None, FirstOrder(hyper_lr=1e-4)), PaperStep)
    assert isinstance(resolve_hyper_optimizer(None, Clip(5.0)), AdaptiveStep)
    assert isinstance(resolve_hyper_optimizer(None, Unroll(5)), AdaptiveStep)
    assert isinstance(resolve_hyper_optimizer("paper", Clip()), PaperStep)
    with pytest.raises(ValueError, match=r"hyper_optimizer='adam' is not supported.*adaptive"):
        resolve_hyper_optimizer("adam", Clip())


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: AdaptiveStep(lr=0.0), r"lr=0.0 must be a finite number > 0"),
        (lambda: AdaptiveStep(max_step=-1.0), r"max_step=-1.0 must be"),
        (lambda: AdaptiveStep(betas=(1.0, 0.9)), r"betas=\(1.0, 0.9\) must both be in \[0, 1\)"),
        (lambda: AdaptiveStep(initial_lr=-0.1), r"initial_lr=-0.1 must be a finite number > 0"),
        (lambda: AdaptiveStep(decay_updates=-1), r"decay_updates=-1 must be an integer >= 0"),
        (lambda: Hyperparameter(0.5, bounds=(0.0, 2.0), parameterization="logit"), r"inside"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_hyper_every_counts_update_points():
    """With UnrollK, hyper_every=k moves λ at every k-th window end."""
    _, engine = train(PaperStep(), method=Unroll(3, 1e-3), steps=12, hyper_every=2)
    assert engine.hyper_update.update_points == 4 and engine.state.updates == 2


@pytest.mark.parametrize("method", [Unroll(3, 1e-3), Exact(1e-3)], ids=["unroll3", "exact"])
def test_will_update_foretells_should_update_and_counts_nothing(method):
    """HyperUpdate.will_update(step), asked any number of times before the step, is what
    should_update(step) answers after it (warm-up, update points, every k-th one)."""
    from lightning_hyperopt.core.hyper_update import HyperUpdate

    hyper = HyperUpdate(
        method, ["identity"], [(0.0, 1.0)], PaperStep(), warmup_steps=2, hyper_every=2
    )
    answers = []
    for step in range(1, 20):
        points = hyper.update_points
        told = [hyper.will_update(step) for _ in range(3)]
        assert hyper.update_points == points and len(set(told)) == 1
        answers.append(hyper.should_update(step))
        assert answers[-1] == told[0] and hyper.should_update(step) == told[0]  # asked twice
    # update points t >= 2 of 0..18: Unroll3's window ends 2, 5, …, 17 (6), Exact's 17
    assert sum(answers) == (3 if isinstance(method, Unroll) else 8)


def test_hyper_every_updates_on_every_kth_step_with_a_k_times_step():
    every2, engine = train(PaperStep(), method=Exact(1e-3), steps=6, hyper_every=2)
    assert engine.state.updates == 3
    assert every2[0] == 0.05 and every2[1] != 0.05 and every2[2] == every2[1]
    # the first move (after step 1) is twice the paper step c·η·h of its hypergradient
    _, first = train(PaperStep(), method=Exact(1e-3), steps=2, hyper_every=2)
    h = float(first.state.hypergradients[0])
    assert every2[1] == pytest.approx(0.05 - 2 * 1e-3 * 0.05 * h, rel=1e-12)
    with pytest.raises(ValueError, match=r"hyper_every=0 must be an integer >= 1"):
        train(PaperStep(), hyper_every=0)


@pytest.mark.parametrize("window", [2, 4])
def test_a_windowed_adaptive_step_keeps_the_pace_per_step(window):
    """Bound to a window of w update points (hyper_every = w), one update moves as far as the
    w single updates it replaces: w times the rate at the window's middle point, capped at
    w·δ, with β^w. With a steady gradient (m̂/√v̂ = 1), once ρ has decayed, λ after N windows is
    λ after N·w updates exactly; during the decaying start, to the midpoint rule's error."""
    like = torch.zeros(1, dtype=f64)
    grad, rows = torch.ones(1, dtype=f64), torch.tensor([True])

    def run(w, updates):
        step = AdaptiveStep(lr=0.01, initial_lr=0.3, decay_updates=40)
        step.bind([True], like, window=w)
        u, path = torch.zeros(1, dtype=f64), []
        for _ in range(updates):
            u = step.step(u, grad, 0.0, rows)
            path.append(float(u))
        return path, step

    single, _ = run(1, 100 * window)
    windowed, step = run(window, 100)
    per_window = single[window - 1 :: window]
    # the decaying start: the midpoint of a geometric decay, within 1% of the distance moved
    assert windowed[9] == pytest.approx(per_window[9], rel=0.01)
    # after the decay, each window moves exactly w·ρ, as w single updates do
    steady = [b - a for a, b in itertools.pairwise(windowed[60:])]
    assert steady == pytest.approx([-window * 0.01] * len(steady), rel=1e-12)
    assert step.betas == (0.9, 0.999)  # the configured ones stay as given
    # the cap is w·δ: a first move of the whole window's fast start
    capped = AdaptiveStep(lr=0.01, initial_lr=0.3, max_step=0.1)
    capped.bind([True], like, window=window)
    first = float(capped.step(torch.zeros(1, dtype=f64), grad, 0.0, rows))
    assert first == pytest.approx(-0.1 * window, rel=1e-12)


def test_a_window_of_one_is_the_single_update_bit_for_bit():
    plain, _ = train(AdaptiveStep(), steps=8)
    step = AdaptiveStep()
    bound, _ = train(step, steps=8)
    assert bound == plain and step._window == 1


def test_hyper_every_binds_the_window():
    """Through the engine: with hyper_every = 4, λ holds for three steps, then its first move
    (m̂/√v̂ = ±1) is 4ρ in log λ, the four single moves it stands for."""
    every4, engine = train(
        AdaptiveStep(initial_lr=None), method=FirstOrder(), steps=8, hyper_every=4
    )
    assert engine.hyper_update.optimizer._window == 4 and engine.state.updates == 2
    assert every4[:3] == [0.05] * 3 and every4[4:7] == [every4[3]] * 3
    assert abs(math.log(every4[3] / 0.05)) == pytest.approx(4 * 0.01, rel=1e-12)


def test_adaptive_state_survives_a_checkpoint():
    _, engine = train(AdaptiveStep(lr=0.05), steps=5)
    state = engine.state_dict()
    _, fresh = train(AdaptiveStep(lr=0.05), steps=0)
    fresh.load_state_dict(state)
    torch.testing.assert_close(
        fresh.hyper_update.optimizer.state_dict()["m"],
        engine.hyper_update.optimizer.state_dict()["m"],
    )


def test_first_order_skips_the_steps_no_update_reads(monkeypatch):
    """With FirstOrder and hyper_every=4, only the step before each λ update computes its
    direction (the drift terms, the rule's step); λ is the same, bit for bit, as when every
    step computes it."""
    from lightning_hyperopt.core.hyper_update import HyperUpdate
    from lightning_hyperopt.core.terms import DriftTerms

    calls = []
    complete = DriftTerms.complete

    def counted(self, *args, **kwargs):
        calls.append(1)
        return complete(self, *args, **kwargs)

    monkeypatch.setattr(DriftTerms, "complete", counted)
    skipped, engine = train(AdaptiveStep(), method=FirstOrder(), steps=12, hyper_every=4)
    assert len(calls) == engine.state.updates == 3
    monkeypatch.setattr(HyperUpdate, "will_update", lambda self, step: True)
    computed, _ = train(AdaptiveStep(), method=FirstOrder(), steps=12, hyper_every=4)
    assert len(calls) == 3 + 12
    assert skipped == computed
