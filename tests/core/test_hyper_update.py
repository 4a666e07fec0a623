"""HyperUpdate: the paper's λ step in each space, the bounds, and the update schedule."""

import pytest
import torch

from lightning_hyperopt.core import Exact, PaperStep, Unroll
from lightning_hyperopt.core.hyper_update import HyperUpdate

f64 = torch.float64
OK = torch.tensor(True)


def paper_step(space: str, bounds: tuple[float, float]) -> HyperUpdate:
    """The paper's rule with α_t = c·η = 0.01 (c = 0.01 at η = 1)."""
    return HyperUpdate(Exact(0.01), [space], [bounds], PaperStep(), like=torch.zeros((), dtype=f64))


def test_identity_and_log_steps():
    lam = torch.tensor([0.2], dtype=f64)
    h = torch.tensor([3.0], dtype=f64)
    new, rows = paper_step("identity", (0.0, 1.0)).move(lam, h, 1.0, OK)
    assert float(new) == pytest.approx(0.17) and bool(rows)
    # log: u = log λ moves by −α·λ·h
    expected = 0.2 * torch.exp(torch.tensor(-0.01 * 0.2 * 3.0, dtype=f64))
    new, _ = paper_step("log", (1e-6, 1.0)).move(lam, h, 1.0, OK)
    assert float(new) == pytest.approx(float(expected), rel=1e-14)


def test_bounds_clamp_the_step():
    lam = torch.tensor([0.2], dtype=f64)
    h = torch.tensor([3.0], dtype=f64)
    assert float(paper_step("identity", (0.0, 1.0)).move(lam, h, 100.0, OK)[0]) == 0.0
    assert float(paper_step("identity", (0.0, 1.0)).move(lam, -h, 100.0, OK)[0]) == 1.0


def test_a_non_finite_hypergradient_or_a_bad_step_moves_no_row():
    lam = torch.tensor([0.2, 0.2], dtype=f64)
    step = HyperUpdate(Exact(0.01), ["identity"] * 2, [(0.0, 1.0)] * 2, PaperStep(), like=lam)
    _, rows = step.move(lam, torch.tensor([1.0, float("nan")], dtype=f64), 1.0, OK)
    assert rows.tolist() == [True, False]
    _, rows = step.move(lam, torch.tensor([1.0, 1.0], dtype=f64), 1.0, torch.tensor(False))
    assert rows.tolist() == [False, False]


def test_schedule_warm_up_method_and_every():
    """UnrollK updates after window ends t ≡ K − 1; the warm-up and hyper_every filter them."""
    step = HyperUpdate(Unroll(3), ["identity"], [(0.0, 1.0)], PaperStep(), 4, 2)
    moves = [t for t in range(12) if step.should_update(t + 1)]
    # window ends 2, 5, 8, 11; after the warm-up (t ≥ 4): 5, 8, 11; every 2nd point: 8
    assert moves == [8] and step.update_points == 3
