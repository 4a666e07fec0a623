"""The paper's quadratic problem: the sampler's guarantees and the methods' limits (Table 1)."""

import pytest
import torch

from experiments.quadratic import sample_quadratic, tune_with_engine
from lightning_hyperopt.core import Clip, Exact, FirstOrder, Unroll


@pytest.mark.parametrize("seed", range(5))
def test_sampled_problem_meets_the_paper_ranges(seed):
    q = sample_quadratic(dim=20, seed=seed)
    assert 0.2 <= q.lambda_star <= 0.4
    assert 3.0 <= q.tangent_star(q.lambda_star).norm() <= 5.0
    # λ* minimizes L_V(θ*(λ)): compare with a dense grid, and θ*(λ) minimizes L_T
    grid = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    vals = torch.stack([q.validation_loss(q.theta_star(lam)) for lam in grid])
    assert abs(grid[vals.argmin()] - q.lambda_star) <= 1e-4
    lam = torch.tensor(0.3, dtype=torch.float64)
    theta = q.theta_star(lam).requires_grad_(True)
    (grad,) = torch.autograd.grad(q.training_loss(theta, lam), theta)
    assert grad.abs().max() < 1e-12


def test_batched_sampling_matches_single():
    batch = sample_quadratic(dim=20, repeats=4, seed=3)
    assert batch.theta_bar.shape == (4, 20) and batch.lambda_star.shape == (4,)
    assert ((batch.lambda_star >= 0.2) & (batch.lambda_star <= 0.4)).all()


def tune(q, method, steps=3000, lr=0.05):
    return tune_with_engine(q, method, [(steps, lr)])[0][-1]


@pytest.fixture(scope="module")
def problem():
    return sample_quadratic(dim=20, seed=1)


@pytest.mark.parametrize("method", [Clip(10.0, 0.1), Exact(0.1)], ids=["clip10", "exact"])
def test_tangent_methods_reach_lambda_star(problem, method):
    """r = 10 > ‖dθ*/dλ‖ (5.0 here): the joint system's fixed point is λ* itself."""
    assert abs(tune(problem, method) - float(problem.lambda_star)) < 1e-3


@pytest.mark.parametrize("method", [Unroll(1, 0.1), FirstOrder(0.01)], ids=["unroll1", "gTgV"])
def test_short_horizon_methods_are_biased(problem, method):
    """Unroll1 and Unroll1-gTgV stop where ⟨g_V, ∂g_T/∂λ⟩ = 0, not at λ* (H is not ∝ I)."""
    assert abs(tune(problem, method) - float(problem.lambda_star)) > 0.02
