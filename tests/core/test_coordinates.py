"""The applied-decay coordinates: (a, b) = (log λ_lr, log λ_lr·λ_wd), the chain rule through
them checked by autograd, the rows they pair, and the λ they give back."""

from __future__ import annotations

import pytest
import torch

from lightning_hyperopt.core import AdaptiveStep, L2Penalty, LearningRate, WeightDecay
from lightning_hyperopt.core.coordinates import DecayCoordinates, applied_decay_pairs
from lightning_hyperopt.core.hyper_update import HyperUpdate
from lightning_hyperopt.core.methods import Clip

f64 = torch.float64


def loss(lr, wd, l2):
    """A smooth function of three λ, whose rows interact."""
    return (lr - 2.0) ** 2 * wd + torch.sin(lr * wd) + l2 * lr


def test_the_gradient_in_applied_coordinates_is_the_chain_rule():
    """g' = C⁻ᵀ g equals the autograd gradient of L(exp a, exp(b − a), exp c) in (a, b, c)."""
    lam = torch.tensor([1.3, 0.04, 0.2], dtype=f64)  # rows: lr, wd, l2
    coords = DecayCoordinates([(0, 1)], lam)
    u = lam.log().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(*u.exp()), u)  # g = dL/du, u = log λ
    u_applied, g_applied = coords.to_applied(u.detach(), g)
    torch.testing.assert_close(u_applied, torch.stack([u[0], u[0] + u[1], u[2]]).detach())
    a = u_applied.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(a[0].exp(), (a[1] - a[0]).exp(), a[2].exp()), a)
    torch.testing.assert_close(g_applied, expected, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(coords.from_applied(u_applied), u.detach(), rtol=0, atol=1e-15)


def test_a_non_finite_row_reaches_only_its_pair():
    coords = DecayCoordinates([(0, 1)], torch.zeros(3, dtype=f64))
    _, g = coords.to_applied(torch.zeros(3, dtype=f64), torch.tensor([1.0, float("nan"), 2.0]))
    assert g[0].isnan() and g[1].isnan() and g[2] == 2.0


def groups_optimizer(kind, **kwargs):
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    make = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[kind]
    return make([{"params": [a]}, {"params": [b]}], lr=0.1, **kwargs)


@pytest.mark.parametrize(
    "kind, hypers, expected",
    [
        ("adamw", [LearningRate(), WeightDecay(init=0.1)], [(0, 1)]),
        ("sgd", [WeightDecay(init=0.1), LearningRate()], [(1, 0)]),
        # Adam's coupled decay is rescaled by its preconditioning: no product to move
        ("adam", [LearningRate(), WeightDecay(init=0.1)], []),
        # the decay of group 1, the rate of every group: it applies η·λ_lr·λ_wd to group 1
        ("adamw", [LearningRate(), WeightDecay(group=1, init=0.1)], [(0, 1)]),
        ("adamw", [LearningRate(group=1), WeightDecay(group=1, init=0.1)], [(0, 1)]),
        # the rate of group 0 does not scale group 1's decay
        ("adamw", [LearningRate(group=0), WeightDecay(group=1, init=0.1)], []),
        ("adamw", [LearningRate(), L2Penalty(1e-3)], []),
    ],
)
def test_the_pairs(kind, hypers, expected):
    assert applied_decay_pairs(hypers, ["log"] * len(hypers), groups_optimizer(kind)) == expected


def test_the_rate_moves_at_a_fixed_applied_decay():
    """A hypergradient on the learning rate alone moves λ_lr; λ_wd follows so that λ_lr·λ_wd
    stays where it was; the reported λ_wd is the decay setting itself (not the product)."""
    hypers = [LearningRate(init=1.0), WeightDecay(init=0.1)]
    opt = groups_optimizer("adamw")
    step = AdaptiveStep(initial_lr=None, coordinates="applied_decay")
    update = HyperUpdate.for_hyperparameters(Clip(), ["lr", "wd"], hypers, step, optimizer=opt)
    values = torch.tensor([1.0, 0.1], dtype=f64)
    ok = torch.ones((), dtype=torch.bool)
    new, rows = update.move(values, torch.tensor([-1.0, 0.0], dtype=f64), 0.1, ok)
    assert bool(rows.all())
    torch.testing.assert_close(new[0], values[0] * torch.exp(torch.tensor(0.01, dtype=f64)))
    torch.testing.assert_close(new[0] * new[1], values[0] * values[1], rtol=1e-15, atol=0)
    # the same hypergradient in the rows' own coordinates moves λ_lr only
    own = HyperUpdate.for_hyperparameters(
        Clip(), ["lr", "wd"], hypers, AdaptiveStep(initial_lr=None), optimizer=opt
    )
    new_own, _ = own.move(values, torch.tensor([-1.0, 0.0], dtype=f64), 0.1, ok)
    torch.testing.assert_close(new_own[1], values[1], rtol=1e-15, atol=0)
    torch.testing.assert_close(new_own[0], new[0], rtol=1e-15, atol=0)


def test_bad_coordinates_are_named():
    with pytest.raises(ValueError, match="coordinates='both' is not supported; accepted"):
        AdaptiveStep(coordinates="both")


def test_the_engine_pairs_the_rows_of_its_optimizer():
    from lightning_hyperopt.core import TangentEngine

    net = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    hypers = {"wd": WeightDecay(init=0.1), "lr": LearningRate()}
    step = AdaptiveStep(coordinates="applied_decay")
    engine = TangentEngine(Clip(), hypers, opt, hyper_optimizer=step)
    assert engine.hyper_update.coordinates.pairs == [(1, 0)]
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1)  # λ_wd, not the product
    plain = TangentEngine(Clip(), hypers, opt, hyper_optimizer=AdaptiveStep())
    assert plain.hyper_update.coordinates is None
