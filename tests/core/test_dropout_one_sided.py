"""KeepProbability(difference="one_sided"): one replay at λ₊ on the step's own uniforms against
the step's own gradient at λ, against exact expectations over every mask of the 8-unit network
of ``test_dropout`` (float64, seeded): its mean, its O(ε) bias and its variance beside the
coupled central pair's."""

import itertools
import math

import pytest
import torch
from test_dropout import (
    BATCH,
    HIDDEN,
    N_DRAWS,
    Tiny,
    Z,
    coupled_exact_moments,
    exact_derivative,
    expected_gradient,
    f64,
    flat,
    per_mask_gradients,
)

from lightning_hyperopt import KeepProbability, TunableDropout, adopt_dropout


def one_sided(lam, eps=0.05):
    keep = KeepProbability(lam, eps=eps, difference="one_sided")
    return Tiny(keep), keep


def draws(net, keep, n):
    """n estimates (g(m₊, λ₊) − g(m, λ)) / (λ₊ − λ): the step's gradient from the global RNG
    seeded s, then the replay from the same RNG state under perturbed(+1)."""
    out = []
    for s in range(n):
        torch.manual_seed(s)
        own = flat(torch.autograd.grad(net.loss(), net.params()))
        torch.manual_seed(s)
        with keep.perturbed(1, seed=12345) as plus:  # the seed is unused one-sided
            shifted = flat(torch.autograd.grad(net.loss(), net.params()))
        out.append((shifted - own) / (plus - float(keep.value)))
    return torch.stack(out)


def one_sided_exact_moments(net, keep):
    """Mean and tr Cov of the one-sided estimator, exactly: each unit is kept at both λ and
    λ₊ (prob. λ), at λ₊ only (λ₊ − λ) or at neither (1 − λ₊): 3⁸ pairs."""
    plus, lam = keep.perturbed_values()
    states = torch.tensor(list(itertools.product(range(3), repeat=BATCH * HIDDEN)))
    states = states.reshape(-1, BATCH, HIDDEN)
    m_plus, m = (states <= 1).to(f64), (states == 0).to(f64)
    prob = torch.tensor([lam, plus - lam, 1 - plus], dtype=f64)[states].flatten(1).prod(1)
    est = (per_mask_gradients(net, m_plus, plus) - per_mask_gradients(net, m, lam)) / (plus - lam)
    mean = prob @ est
    return mean, prob @ ((est - mean) ** 2).sum(1)


@pytest.fixture(scope="module")
def mid():
    return one_sided(0.5)


def test_one_sided_estimator_is_unbiased_for_the_one_sided_difference(mid):
    """Mean (E_{λ₊}[g] − E_λ[g]) / (λ₊ − λ), sampled from the layer and exactly."""
    net, keep = mid
    plus, lam = keep.perturbed_values()
    assert (plus, lam) == pytest.approx((0.55, 0.5)) and keep.replayed_signs() == (1,)
    exact = (expected_gradient(net, plus) - expected_gradient(net, lam)).detach() / (plus - lam)
    samples = draws(net, keep, N_DRAWS)
    mean, stderr = samples.mean(0), samples.std(0) / math.sqrt(N_DRAWS)
    assert ((mean - exact).abs() <= Z * stderr).all()
    exact_mean, exact_var = one_sided_exact_moments(net, keep)
    torch.testing.assert_close(exact_mean, exact, rtol=1e-12, atol=1e-14)
    squared = ((samples - mean) ** 2).sum(1)
    assert abs(float(squared.mean() - exact_var)) <= Z * float(squared.std() / math.sqrt(N_DRAWS))


def test_one_sided_bias_is_first_order_in_eps():
    """|E[estimate] − dE[g]/dλ| = O(ε): halving ε halves it. At λ = 0.5, ε = 0.05 it is 9.1%
    of |dE[g]/dλ| (the central pair's: 1.0%), far below the noise of one draw."""
    errors = []
    for eps in (0.01, 0.005):
        net, keep = one_sided(0.6, eps)
        mean, _ = one_sided_exact_moments(net, keep)
        errors.append((mean - exact_derivative(net, 0.6)).norm())
    assert float(errors[0] / errors[1]) == pytest.approx(2.0, rel=0.1)
    net, keep = one_sided(0.5)
    derivative = exact_derivative(net, 0.5)
    central = KeepProbability(0.5)
    central_mean, _ = coupled_exact_moments(Tiny(central), central)
    mean, variance = one_sided_exact_moments(net, keep)
    assert float((mean - derivative).norm() / derivative.norm()) == pytest.approx(0.0909, abs=1e-3)
    assert float((central_mean - derivative).norm() / derivative.norm()) == pytest.approx(
        0.0101, abs=1e-3
    )
    assert float(variance) > 100 * float(derivative.norm() ** 2)


def test_one_sided_variance_against_the_central_pair():
    """tr Cov of one draw, exactly: 1.81× the coupled central pair's at λ = 0.5, ε = 0.05 (its
    masks differ on a fraction ε of the units, the pair's on 2ε), with one replay instead of
    two; at ε = 0.1 (the central pair's width 2ε = 0.1) it is 0.83× the central ε = 0.05."""
    central = KeepProbability(0.5)
    _, central_var = coupled_exact_moments(Tiny(central), central)
    _, var = one_sided_exact_moments(*one_sided(0.5))
    _, wide_var = one_sided_exact_moments(*one_sided(0.5, eps=0.1))
    assert float(var / central_var) == pytest.approx(1.811, abs=0.002)
    assert float(wide_var / central_var) == pytest.approx(0.827, abs=0.002)


def test_one_sided_layers_draw_the_global_rng():
    """Under a one-sided perturbation the masks are [u < λ₊] with u from the global RNG: a
    replay from the step's RNG state sees the step's own u."""
    net, keep = one_sided(0.5)
    torch.manual_seed(3)
    u = torch.rand(BATCH, HIDDEN, dtype=torch.float32)
    torch.manual_seed(3)
    with keep.perturbed(1, 0) as plus:
        got = net.loss()
    mask = (u < torch.tensor(plus, dtype=f64)).to(f64)
    torch.testing.assert_close(got, net.masked_losses(net.params(), mask, plus), rtol=1e-15, atol=0)
    assert float(keep()) == 0.5


@pytest.mark.parametrize(
    "lam, bounds, signs, values",
    [
        (0.5, (0.1, 1.0), (1,), (0.55, 0.5)),
        (1.0, (0.1, 1.0), (-1,), (1.0, 0.95)),
        (0.97, (0.1, 1.0), (-1,), (0.97, 0.92)),  # up 0.03 < down 0.05
        (0.97, (0.95, 1.0), (1,), (1.0, 0.97)),  # up 0.03 > down 0.02
    ],
)
def test_one_sided_edges(lam, bounds, signs, values):
    keep = KeepProbability(lam, bounds, difference="one_sided")
    assert keep.replayed_signs() == signs
    assert keep.perturbed_values() == pytest.approx(values)
    for grid in [(0.1, 1.0), (0.97, 1.0), (0.2, 0.5)]:
        for v in torch.linspace(*grid, 51).tolist():
            k = KeepProbability(v, grid, eps=0.05, difference="one_sided")
            plus, minus = k.perturbed_values()
            assert grid[0] <= minus < plus <= 1.0 and v in (plus, minus)


def test_bad_difference():
    with pytest.raises(ValueError, match=r"difference='forward' is not supported; accepted"):
        KeepProbability(0.5, difference="forward")
    one = KeepProbability(0.5, difference="one_sided")
    with one.perturbed(1, 0), pytest.raises(RuntimeError, match="cannot be nested"):
        KeepProbability().perturbed(1, 0).__enter__()
    assert "one_sided" in repr(TunableDropout(one))
    layers = adopt_dropout(torch.nn.Sequential(torch.nn.Dropout(0.2)), difference="one_sided")
    assert layers["0"].keep.difference == "one_sided"
    with pytest.raises(ValueError, match=r"difference='both' is not supported"):
        adopt_dropout(torch.nn.Sequential(torch.nn.Dropout(0.2)), difference="both")
