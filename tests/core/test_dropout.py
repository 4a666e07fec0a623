"""KeepProbability and TunableDropout: the coupled finite-difference estimate of ∂g_T/∂λ against
exact expectations over every mask of a network with 8 droppable units (float64, seeded)."""

import itertools
import math

import pytest
import torch
from torch import nn

from lightning_hyperopt import KeepProbability, TunableDropout, adopt_dropout

f64 = torch.float64
BATCH, HIDDEN = 2, 4  # 8 droppable units: 2⁸ masks, 3⁸ coupled pairs
N_DRAWS = 2000
Z = 5.0  # |Z| > 5 has probability 6e-7: with ≤ 21 components, a false alarm below 2e-5


class Tiny(nn.Module):
    """x → tanh(W₁x + b₁) → dropout → W₂ · + b₂, squared error."""

    def __init__(self, keep: KeepProbability) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(3, HIDDEN)
        self.drop = TunableDropout(keep)
        self.second = nn.Linear(HIDDEN, 1)
        self.double()
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(BATCH, 3, generator=g, dtype=f64)
        self.y = torch.randn(BATCH, 1, generator=g, dtype=f64)

    def params(self) -> list[torch.Tensor]:
        return [*self.first.parameters(), *self.second.parameters()]

    def loss(self) -> torch.Tensor:
        return ((self.second(self.drop(torch.tanh(self.first(self.x)))) - self.y) ** 2).mean()

    def masked_losses(self, params, masks, lam):
        """The loss for each mask in ``masks`` (M, BATCH, HIDDEN) at keep probability ``lam``."""
        w1, b1, w2, b2 = params
        h = torch.tanh(self.x @ w1.T + b1) * masks / lam
        return ((h @ w2.T + b2 - self.y) ** 2).mean(dim=(-2, -1))


ALL_MASKS = torch.tensor(list(itertools.product([0.0, 1.0], repeat=BATCH * HIDDEN)), dtype=f64)
ALL_MASKS = ALL_MASKS.reshape(-1, BATCH, HIDDEN)


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def mask_probability(masks, lam):
    """P(m) = Π λ^m (1 − λ)^(1 − m) under Bernoulli(λ) units."""
    return (lam**masks * (1 - lam) ** (1 - masks)).flatten(1).prod(1)


def per_mask_gradients(net, masks, lam):
    """g_T(θ, m, λ) for every mask, flattened: (M, n_params)."""
    params = [p.detach() for p in net.params()]

    def one(m):
        return torch.func.grad(lambda ps: net.masked_losses(ps, m, lam))(params)

    return torch.cat([g.flatten(1) for g in torch.func.vmap(one)(masks)], dim=1)


def expected_gradient(net, lam, scale=None):
    """E_{m∼B(λ)}[g_T(θ, m, λ)] by enumeration of all 2⁸ masks (differentiable in λ); the
    kept units are scaled by 1/``scale`` (default λ)."""
    params = [p.detach().requires_grad_(True) for p in net.params()]
    losses = net.masked_losses(params, ALL_MASKS, lam if scale is None else scale)
    expected = (mask_probability(ALL_MASKS, lam) * losses).sum()
    return flat(torch.autograd.grad(expected, params, create_graph=True))


def exact_central_difference(net, keep):
    """(E_{λ₊}[g] − E_{λ₋}[g]) / (λ₊ − λ₋): what the coupled estimator is unbiased for."""
    plus, minus = keep.perturbed_values()
    return (expected_gradient(net, plus) - expected_gradient(net, minus)).detach() / (plus - minus)


def exact_derivative(net, lam):
    """d/dλ E_m[g_T] exactly, by autograd through the enumeration."""
    lam = torch.tensor(lam, dtype=f64)
    return torch.autograd.functional.jacobian(lambda v: expected_gradient(net, v), lam)


def draws(net, keep, n, coupled=True):
    """n estimates (g(m₊) − g(m₋)) / (λ₊ − λ₋) from the layer itself; independent masks take
    another seed for the minus replay."""
    out = []
    for s in range(n):
        grads, used = [], []
        for sign, seed in ((1, s), (-1, s if coupled else s + n)):
            with keep.perturbed(sign, seed) as value:
                grads.append(flat(torch.autograd.grad(net.loss(), net.params())))
            used.append(value)
        out.append((grads[0] - grads[1]) / (used[0] - used[1]))
    return torch.stack(out)


def coupled_exact_moments(net, keep):
    """Mean and total variance tr Cov of the coupled estimator, exactly: each unit is kept by
    both masks (prob. λ₋), by m₊ only (λ₊ − λ₋) or by neither (1 − λ₊): 3⁸ pairs."""
    plus, minus = keep.perturbed_values()
    states = torch.tensor(list(itertools.product(range(3), repeat=BATCH * HIDDEN)))
    states = states.reshape(-1, BATCH, HIDDEN)
    m_plus, m_minus = (states <= 1).to(f64), (states == 0).to(f64)
    prob = torch.tensor([minus, plus - minus, 1 - plus], dtype=f64)[states].flatten(1).prod(1)
    est = (per_mask_gradients(net, m_plus, plus) - per_mask_gradients(net, m_minus, minus)) / (
        plus - minus
    )
    mean = prob @ est
    return mean, prob @ ((est - mean) ** 2).sum(1)


def independent_exact_variance(net, keep):
    """tr Cov of (g(m₊) − g(m₋)) / (λ₊ − λ₋) with independent masks: (V₊ + V₋) / (λ₊ − λ₋)²."""
    plus, minus = keep.perturbed_values()
    total = 0.0
    for lam in (plus, minus):
        prob = mask_probability(ALL_MASKS, lam)
        g = per_mask_gradients(net, ALL_MASKS, lam)
        total = total + prob @ ((g - prob @ g) ** 2).sum(1)
    return total / (plus - minus) ** 2


@pytest.fixture(scope="module")
def mid():
    keep = KeepProbability(0.5)  # the default ε = 0.05
    return Tiny(keep), keep


@pytest.fixture(scope="module")
def coupled_draws(mid):
    return draws(*mid, N_DRAWS)


def test_layer_masks_are_u_below_lambda(mid):
    """The layer's output under perturbed(±1, s) is the network with mask [u < λ±], u drawn
    from a generator seeded with s, the same u for both signs."""
    net, keep = mid
    for sign, lam in zip((1, -1), keep.perturbed_values()):
        u = torch.rand(BATCH, HIDDEN, generator=torch.Generator().manual_seed(7))
        mask = (u < torch.tensor(lam, dtype=f64)).to(f64)
        with keep.perturbed(sign, 7):
            got = net.loss()
        expected = net.masked_losses(net.params(), mask, lam)
        torch.testing.assert_close(got, expected, rtol=1e-15, atol=0)


def test_coupled_estimator_is_unbiased_against_exact_expectation(mid, coupled_draws):
    net, keep = mid
    exact_fd = exact_central_difference(net, keep)
    samples = coupled_draws
    mean = samples.mean(0)
    stderr = samples.std(0) / math.sqrt(N_DRAWS)
    assert ((mean - exact_fd).abs() <= Z * stderr).all()
    # power: the tolerance rejects a plausible mistake, keeping the 1/λ scale fixed
    plus, minus = keep.perturbed_values()
    scale = float(keep.value)
    wrong = (expected_gradient(net, plus, scale) - expected_gradient(net, minus, scale)) / (
        plus - minus
    )
    assert ((mean - wrong.detach()).abs() > Z * stderr).any()
    # and the exact mean of the coupled pair distribution is the central difference itself
    exact_mean, _ = coupled_exact_moments(net, keep)
    torch.testing.assert_close(exact_mean, exact_fd, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "lam, order", [(0.6, 2), (1.0, 1), (0.1, 1)], ids=["central", "at-one", "at-low"]
)
def test_finite_difference_converges_to_the_derivative(lam, order):
    """|FD − dE[g]/dλ| = O(ε²) for the central difference, O(ε) when one-sided at the edges:
    halving ε divides the error by 4 (by 2)."""
    errors = []
    for eps in (0.01, 0.005):
        keep = KeepProbability(lam, eps=eps)
        net = Tiny(keep)
        errors.append((exact_central_difference(net, keep) - exact_derivative(net, lam)).norm())
    assert float(errors[0] / errors[1]) == pytest.approx(2**order, rel=0.1)


def test_coupling_lowers_the_variance(mid, coupled_draws):
    """tr Cov of the estimate: the layer's sample variance matches the exact one, coupled and
    independent. At λ = 0.5, ε = 0.05 coupling divides it by 4.9 (exact ratio 0.203; it
    scales like ε: the coupled variance grows like 1/ε, the independent one like 1/ε²)."""
    net, keep = mid
    _, coupled_var = coupled_exact_moments(net, keep)
    independent_var = independent_exact_variance(net, keep)
    measured = []
    for samples, exact in (
        (coupled_draws, coupled_var),
        (draws(net, keep, N_DRAWS, coupled=False), independent_var),
    ):
        squared = ((samples - samples.mean(0)) ** 2).sum(1)
        stderr = squared.std() / math.sqrt(N_DRAWS)
        assert abs(float(squared.mean() - exact)) <= Z * float(stderr)
        measured.append(float(squared.mean()))
    assert float(coupled_var / independent_var) == pytest.approx(0.203, abs=0.001)
    assert measured[0] / measured[1] < 0.3


# --- the masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.5, 0.97, 1.0, 0.1])
def test_coupled_masks_are_nested_with_the_right_rates(lam):
    """m₋ ≤ m₊; P(m₊) = λ₊, P(m₋) = λ₋ and P(m₋ | m₊) = λ₋/λ₊ (binomial z-scores < 5)."""
    keep = KeepProbability(lam, eps=0.05)
    layer = TunableDropout(keep)
    ones = torch.ones(200_000)
    outs = {}
    for sign in (1, -1):
        with keep.perturbed(sign, 3) as value:
            out = layer(ones)
        kept = out != 0
        torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / value))
        outs[sign] = (kept, value)
    (m_plus, plus), (m_minus, minus) = outs[1], outs[-1]
    assert not (m_minus & ~m_plus).any()

    def z(k, n, p):
        return 0.0 if p in (0.0, 1.0) and k == n * p else (k - n * p) / math.sqrt(n * p * (1 - p))

    n = len(ones)
    assert abs(z(int(m_plus.sum()), n, plus)) < Z
    assert abs(z(int(m_minus.sum()), n, minus)) < Z
    assert abs(z(int(m_minus.sum()), int(m_plus.sum()), minus / plus)) < Z


def test_keep_rate_of_low_precision_inputs():
    """u is drawn in float32, so a bfloat16 input keeps the rate λ (bf16 has 8 bits)."""
    layer = TunableDropout(0.3)
    out = layer(torch.ones(200_000, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    k, n = int((out != 0).sum()), out.numel()
    assert abs(k - 0.3 * n) / math.sqrt(n * 0.3 * 0.7) < Z


def test_training_masks_come_from_the_global_rng_and_eval_is_identity():
    layer = TunableDropout(0.5).double()
    x = torch.randn(50, dtype=f64)
    state = torch.get_rng_state()
    first = layer(x)
    torch.set_rng_state(state)
    torch.testing.assert_close(layer(x), first, rtol=0, atol=0)  # a replay sees the same mask
    layer.eval()
    assert layer(x) is x


def test_perturbed_values_stay_in_bounds():
    """λ₋ ≥ low, λ₊ ≤ 1 and λ₊ > λ₋ everywhere, even for bounds narrower than ε."""
    assert KeepProbability(0.5, eps=0.05).perturbed_values() == pytest.approx((0.55, 0.45))
    assert KeepProbability(1.0, eps=0.05).perturbed_values() == pytest.approx((1.0, 0.95))
    assert KeepProbability(0.1, eps=0.05).perturbed_values() == pytest.approx((0.15, 0.1))
    for bounds in [(0.1, 1.0), (0.97, 1.0), (0.2, 0.5)]:
        for lam in torch.linspace(*bounds, 101).tolist():
            plus, minus = KeepProbability(lam, bounds, eps=0.05).perturbed_values()
            assert bounds[0] <= minus < plus <= 1.0


def test_perturbation_is_undone_and_leaves_the_global_rng():
    keep = KeepProbability(0.5)
    layer = TunableDropout(keep)
    state = torch.get_rng_state()
    with keep.perturbed(1, 0) as value:
        assert value == pytest.approx(0.55) and float(keep()) == pytest.approx(0.55)
        layer(torch.ones(10))
    assert torch.equal(torch.get_rng_state(), state)
    assert float(keep()) == 0.5 and float(keep.value) == 0.5


# --- sharing and adoption -------------------------------------------------------------------


def test_shared_keep_probability_is_one_hyperparameter():
    from lightning_hyperopt.core.hyperparameters import find_hyperparameters

    keep = KeepProbability(0.8)
    net = nn.Sequential(
        nn.Linear(2, 3), TunableDropout(keep), nn.Linear(3, 3), TunableDropout(keep)
    )
    assert list(find_hyperparameters(net)) == ["1.keep"]
    net.load_state_dict(net.state_dict())  # registered under both layers, like tied weights


def test_adopt_shared_and_per_module():
    def model():
        return nn.Sequential(
            nn.Linear(2, 4), nn.Dropout(0.2), nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        )

    shared = model()
    with pytest.raises(ValueError, match=r"different keep probabilities \[0.5, 0.8\].*init="):
        adopt_dropout(shared, "shared")
    layers = adopt_dropout(shared, "shared", init=0.7, eps=0.02)
    assert list(layers) == ["1", "2.1"]
    assert layers["1"].keep is layers["2.1"].keep
    assert float(layers["1"].keep.value) == 0.7 and layers["1"].keep.eps == 0.02
    per = model()
    layers = adopt_dropout(per, "per_module")
    assert [float(m.keep.value) for m in layers.values()] == [0.8, 0.5]
    assert adopt_dropout(per, "per_module") == layers  # adopting again changes nothing
    assert not any(isinstance(m, nn.Dropout) for m in per.modules())


def test_adopt_leaves_other_dropouts_and_warns_about_internal_ones():
    net = nn.Sequential(nn.Dropout2d(0.3), nn.LSTM(3, 3, num_layers=2, dropout=0.2), nn.Dropout())
    with pytest.warns(UserWarning, match=r"1 \(LSTM\) applies dropout=0.2 internally"):
        layers = adopt_dropout(net)
    assert list(layers) == ["2"] and isinstance(net[0], nn.Dropout2d)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: KeepProbability(0.5, bounds=(0.0, 1.0)), r"bounds=\(0.0, 1.0\) must satisfy 0 <"),
        (lambda: KeepProbability(0.5, bounds=(0.1, 1.5)), r"0 < low < high <= 1"),
        (lambda: KeepProbability(0.5, eps=0.0), r"eps=0.0 must be in \(0, 0.5\]"),
        (lambda: KeepProbability(0.5, eps=0.6), r"eps=0.6 must be"),
        (lambda: TunableDropout(1.5), r"init=1.5 is outside bounds"),
        (lambda: adopt_dropout(nn.Dropout(), "all"), r"mode='all'.*\('shared', 'per_module'\)"),
        (lambda: adopt_dropout(nn.Linear(2, 2)), r"Linear has no nn.Dropout module"),
        (lambda: adopt_dropout(nn.Dropout()), r"replaces submodules"),
        (lambda: adopt_dropout(nn.Sequential(nn.Dropout(0.95))), r"0.05 of '0' is outside bounds"),
        (lambda: KeepProbability().perturbed(0, 1).__enter__(), r"sign=0 must be \+1 or -1"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_nested_perturbation_is_refused():
    a, b = KeepProbability(), KeepProbability()
    with a.perturbed(1, 0), pytest.raises(RuntimeError, match="cannot be nested"):
        b.perturbed(1, 0).__enter__()
