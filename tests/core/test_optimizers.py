"""The tangent through torch's own optimizers: central differences of whole float64 trainings.

Every test trains a small two-group network with the engine and compares y_T = dθ_T/dλ with
(θ_T(λ + δ) − θ_T(λ − δ)) / 2δ of two more trainings, δ = 1e-6 (the truncation error is
O(δ²): about 1e-8 relative here).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_hyperopt.core import Exact, Hyperparameter, L2Penalty, TangentEngine, WeightDecay
from lightning_hyperopt.core.optim import GradientClipping

f64 = torch.float64
DELTA = 1e-6


class Net(nn.Module):
    """tanh MLP with a late branch: ``late`` gets its first gradient at step ``late_from``."""

    def __init__(self, late_from: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(4, 6)
        self.second = nn.Linear(6, 1)
        self.late = nn.Linear(4, 1)
        self.late_from = late_from
        self.double()

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        out = self.second(torch.tanh(self.first(x)))
        return out + self.late(x) if step >= self.late_from else out


def data(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g, dtype=f64)
    return x, torch.sin(x.sum(1, keepdim=True))


def train(
    lam: float,
    kind: str,
    make_optimizer,
    steps: int = 30,
    clip: GradientClipping | None = None,
    late_from: int = 0,
    sync_free: bool = False,
):
    """θ_T and the engine after ``steps`` steps with λ = ``lam`` of the given kind."""
    net = Net(late_from)
    groups = [
        {"params": [*net.late.parameters(), *net.first.parameters()]},  # the late one first
        {"params": list(net.second.parameters()), "lr": 0.03},
    ]
    optimizer = make_optimizer(groups)
    if kind == "l2":
        hyper = L2Penalty(lam)
    elif kind == "wd":
        hyper = WeightDecay(group=0, init=lam)
    else:
        hyper = Hyperparameter(lam)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    engine = TangentEngine(
        Exact(), {"lam": hyper}, optimizer, 10**9, gradient_clipping=clip, sync_free=sync_free
    )
    x, y = data()
    for t in range(steps):
        optimizer.zero_grad()
        loss = ((net(x, t) - y) ** 2).mean()
        if kind == "l2":
            loss = loss + hyper(list(net.parameters()))
        elif kind == "smooth":
            loss = loss + hyper.value * torch.sqrt(net.first.weight**2 + 1e-2).sum()
        engine.backward(loss)
        engine.advance()
        if clip is not None and clip.algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip.value)
        elif clip is not None:
            torch.nn.utils.clip_grad_value_(net.parameters(), clip.value)
        optimizer.step()
        schedule.step()
    theta = torch.cat([p.detach().reshape(-1) for p in engine.params])
    return theta, engine


def finite_difference(lam, kind, make_optimizer, **kwargs):
    plus, _ = train(lam + DELTA, kind, make_optimizer, **kwargs)
    minus, _ = train(lam - DELTA, kind, make_optimizer, **kwargs)
    return (plus - minus) / (2 * DELTA)


def adam(**kw):
    return lambda groups: torch.optim.Adam(groups, lr=0.05, **kw)


def adamw(**kw):
    return lambda groups: torch.optim.AdamW(groups, lr=0.05, **kw)


CLIPS = {
    "none": None,
    "norm": GradientClipping(0.3, "norm"),
    "value": GradientClipping(0.05, "value"),
}
OPTIMIZERS = {
    "adam": adam(),
    "adam-coupled-wd": adam(weight_decay=0.01),
    "adamw": adamw(weight_decay=0.02),
}
KINDS = {"adam": ["l2", "wd", "smooth"], "adam-coupled-wd": ["l2", "wd"], "adamw": ["l2", "wd"]}


@pytest.mark.parametrize("clip", CLIPS, ids=CLIPS)
@pytest.mark.parametrize(
    "opt, kind", [(o, k) for o, kinds in KINDS.items() for k in kinds], ids=lambda v: v
)
def test_adam_and_adamw_tangent_equals_finite_differences(opt, kind, clip):
    """Adam (coupled weight decay in the gradient) and AdamW (decoupled: θ ← θ(1 − η wd)), an
    L2 penalty, the optimizer's weight decay, or a generic λ; no clipping, norm clipping
    active on some steps, value clipping; a step schedule and two param groups."""
    lam = 0.05
    _, engine = train(lam, kind, OPTIMIZERS[opt], clip=CLIPS[clip])
    fd = finite_difference(lam, kind, OPTIMIZERS[opt], clip=CLIPS[clip])
    assert fd.abs().max() > 1e-3
    torch.testing.assert_close(engine.tangent[0], fd, rtol=1e-6, atol=1e-6 * fd.abs().max())


def test_norm_clipping_is_active_on_some_steps_only():
    """The clip radius of the tests above clips some steps and not others."""
    net, x, y = Net(), *data()
    norms = []
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for t in range(30):
        optimizer.zero_grad()
        ((net(x, t) - y) ** 2).mean().backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.3)))
        optimizer.step()
    assert min(norms) < 0.3 < max(norms)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, dampening=0.5),
        lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda g: torch.optim.Adam(g, lr=0.05),
        lambda g: torch.optim.AdamW(g, lr=0.05, amsgrad=True),
    ],
    ids=["sgd-momentum-dampening", "sgd-nesterov", "adam", "adamw-amsgrad"],
)
def test_a_branch_whose_first_gradient_comes_late(make):
    """Torch starts each parameter's momentum buffer or moments at its own first gradient:
    here a branch listed first in its group gets none before step 3."""
    _, engine = train(0.05, "l2", make, late_from=3)
    fd = finite_difference(0.05, "l2", make, late_from=3)
    torch.testing.assert_close(engine.tangent[0], fd, rtol=1e-6, atol=1e-6 * fd.abs().max())


@pytest.mark.parametrize("maximize", ["sgd", "adam"])
def test_maximize(maximize):
    def make(groups):
        if maximize == "sgd":
            return torch.optim.SGD(groups, lr=0.01, momentum=0.5, maximize=True)
        return torch.optim.Adam(groups, lr=0.01, maximize=True)

    _, engine = train(0.05, "l2", make, steps=10)
    fd = finite_difference(0.05, "l2", make, steps=10)
    torch.testing.assert_close(engine.tangent[0], fd, rtol=1e-6, atol=1e-6 * fd.abs().max())


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(fused=True)], ids=["foreach", "fused"])
def test_foreach_and_fused_adam_give_the_same_tangent(flags):
    _, reference = train(0.05, "l2", adamw(weight_decay=0.02, foreach=False))
    _, other = train(0.05, "l2", adamw(weight_decay=0.02, **flags))
    torch.testing.assert_close(other.tangent, reference.tangent, rtol=1e-9, atol=1e-12)


def test_branch_free_masking_gives_the_same_tangent():
    """The device path (no host read of the finite flags) equals the CPU fast path."""
    _, fast = train(0.05, "wd", adam(weight_decay=0.01), clip=CLIPS["norm"])
    _, branch_free = train(0.05, "wd", adam(weight_decay=0.01), clip=CLIPS["norm"], sync_free=True)
    torch.testing.assert_close(branch_free.tangent, fast.tangent, rtol=0, atol=0)
    assert branch_free.nonfinite == fast.nonfinite == [0]


def test_adam_entry_whose_gradient_is_always_zero_stays_finite():
    """A parameter with an identically zero gradient (v = m = 0): its tangent stays 0 and
    finite (ġ = 0 there), and the rest is exact."""

    class Frozen(Net):
        def forward(self, x, step):
            return super().forward(x, step) + 0.0 * self.unused.sum()

    net = Frozen()
    net.unused = nn.Parameter(torch.zeros(3, dtype=f64))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    lam = L2Penalty(0.05)
    engine = TangentEngine(Exact(), {"lam": lam}, optimizer, 10**9)
    x, y = data()
    for t in range(5):
        optimizer.zero_grad()
        engine.backward(((net(x, t) - y) ** 2).mean() + lam([net.first.weight]))
        engine.advance()
        optimizer.step()
    assert torch.isfinite(engine.tangent).all()
    assert engine.params[0] is net.unused  # own parameters come before submodules
    assert torch.equal(engine.tangents[0][0], torch.zeros(3, dtype=f64))
    assert optimizer.state[net.unused]["exp_avg_sq"].abs().max() == 0


def test_unsupported_optimizer_is_named():
    w = nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError, match=r"torch.optim.SGD, torch.optim.Adam, .* got RMSprop"):
        TangentEngine(Exact(), {"l2": L2Penalty(0.1)}, torch.optim.RMSprop([w]))


@pytest.mark.parametrize(
    "make, kinds",
    [
        (adamw(weight_decay=0.02), ("lr", "wd")),
        (adam(weight_decay=0.01), ("lr", "wd")),  # coupled: the decay enters ġ, no shortcut
        (adamw(weight_decay=0.02), ("lr", "b1")),  # β₁ tuned: its own terms, no shortcut
        (adamw(weight_decay=0.02), ("lr", "l2")),  # λ in the gradient, no shortcut
    ],
    ids=["adamw-lr-wd", "adam-coupled", "adamw-beta1", "adamw-l2"],
)
def test_first_order_direction_is_the_one_step_tangent(make, kinds):
    """FirstOrder's δ (per unit learning rate, y₁ = −η δ from y = 0) equals the exact tangent
    of one step from y = 0, after 12 steps; with optimizer settings only it skips the zero ġ's
    derivatives (checked against the full computation the exact method makes)."""
    from lightning_hyperopt.core import FirstOrder, LearningRate, Momentum

    def build(method):
        net = Net()
        optimizer = make(list(net.parameters()))
        hypers = {
            "lr": LearningRate(init=1.3),
            "wd": WeightDecay(init=0.02),
            "b1": Momentum(init=0.9),
            "l2": L2Penalty(0.01),
        }
        hypers = {k: hypers[k] for k in kinds}
        engine = TangentEngine(method, hypers, optimizer, hyper_optimizer="paper")
        return net, optimizer, engine, hypers

    x, y = data()

    def run(method, steps, last_step=None):
        net, optimizer, engine, hypers = build(method)
        for t in range(steps):
            optimizer.zero_grad()
            loss = ((net(x, t) - y) ** 2).mean()
            if "l2" in hypers:
                loss = loss + hypers["l2"](list(net.parameters()))
            if t == steps - 1 and last_step is not None:
                engine.state.tangent.zero_()  # y = 0 before the last step
                engine.rule.reset()
            engine.backward(loss)
            engine.advance()
            with engine.scaled_learning_rates():
                optimizer.step()
            engine.update(lambda t=t: ((net(x, t) - y) ** 2).mean())  # a step of 0: λ stays
        return engine, optimizer

    first, optimizer = run(FirstOrder(hyper_lr=0.0), 12)
    exact, _ = run(Exact(hyper_lr_scale=0.0), 12, last_step=True)
    eta = optimizer.param_groups[0]["lr"] * 1.3
    torch.testing.assert_close(-eta * first.state.direction, exact.tangent, rtol=1e-12, atol=1e-15)
    assert first.state.direction.abs().max() > 0
