"""Exactness of the tangent y = dθ/dλ against finite differences and reverse-mode autodiff."""

import contextlib
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lightning_hyperopt.core import Exact, FirstOrder, L2Penalty, TangentEngine, Unroll, WeightDecay
from lightning_hyperopt.core.functional import tangent_drift

SGD_VARIANTS = {
    "plain": dict(momentum=0.0),
    "momentum": dict(momentum=0.9, dampening=0.1),
    "nesterov": dict(momentum=0.8, nesterov=True),
}


class Net(nn.Module):
    def __init__(self, lam: float, kind: str = "l2") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1))
        self.kind = kind
        self.l2 = L2Penalty(lam) if kind == "l2" else WeightDecay(init=lam)
        self.double()

    def training_loss(self, x, y):
        loss = ((self.body(x) - y) ** 2).mean()
        if self.kind == "l2":
            loss = loss + self.l2(self.body.parameters())
        return loss


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    return x, torch.sin(x.sum(1, keepdim=True)), x + 0.1, torch.cos(x.sum(1, keepdim=True))


def run(data, lam, steps, sgd, kind="l2", method=None, warmup=10**9):
    x, y, xv, yv = data
    net = Net(lam, kind)
    opt = torch.optim.SGD(net.body.parameters(), lr=0.1, **sgd)
    engine = TangentEngine(method or Exact(), {"l2": net.l2}, opt, warmup_steps=warmup)
    for _ in range(steps):
        opt.zero_grad()
        engine.backward(net.training_loss(x, y))
        engine.advance()
        opt.step()
        engine.update(lambda: ((net.body(xv) - yv) ** 2).mean())
    return net, engine


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def unrolled(data, lam, steps, sgd, kind="l2", theta0=None, z0=None):
    """θ_T(λ) by plain differentiable SGD (torch's update rule written out) for reverse mode."""
    x, y, _, _ = data
    net = Net(0.0, kind)
    names = [n for n, _ in net.body.named_parameters()]
    theta = [p.detach().clone() for p in net.body.parameters()] if theta0 is None else theta0
    mu, tau, nest = sgd.get("momentum", 0.0), sgd.get("dampening", 0.0), sgd.get("nesterov", False)
    buf = z0
    for _ in range(steps):
        th = [t if t.requires_grad else t.requires_grad_(True) for t in theta]
        out = functional_call(net.body, dict(zip(names, th)), (x,))
        loss = ((out - y) ** 2).mean()
        if kind == "l2":
            loss = loss + 0.5 * lam * sum((t * t).sum() for t in th)
        grads = torch.autograd.grad(loss, th, create_graph=True)
        if kind == "wd":
            grads = [g + lam * t for g, t in zip(grads, th)]
        if mu:
            buf = (
                list(grads) if buf is None else [mu * b + (1 - tau) * g for b, g in zip(buf, grads)]
            )
            grads = [g + mu * b for g, b in zip(grads, buf)] if nest else buf
        theta = [t - 0.1 * g for t, g in zip(th, grads)]
    return flat(theta)


@pytest.mark.parametrize("sgd", SGD_VARIANTS.values(), ids=SGD_VARIANTS.keys())
@pytest.mark.parametrize("kind", ["l2", "wd"])
def test_exact_tangent_matches_finite_differences_and_reverse_mode(data, sgd, kind):
    lam, steps, delta = 0.05, 12, 1e-5
    net, engine = run(data, lam, steps, sgd, kind)
    tangent = flat(engine.tangents[0])
    plus = flat(run(data, lam + delta, steps, sgd, kind)[0].body.parameters()).detach()
    minus = flat(run(data, lam - delta, steps, sgd, kind)[0].body.parameters()).detach()
    fd = (plus - minus) / (2 * delta)
    torch.testing.assert_close(tangent, fd, rtol=1e-5, atol=1e-9)
    lam_t = torch.tensor(lam, dtype=torch.float64)
    reverse = torch.autograd.functional.jacobian(
        lambda v: unrolled(data, v, steps, sgd, kind), lam_t
    )
    torch.testing.assert_close(tangent, reverse, rtol=1e-9, atol=1e-12)
    # the engine's θ is torch's own SGD trajectory, the same as the written-out recurrence
    torch.testing.assert_close(
        flat(net.body.parameters()).detach(), unrolled(data, lam_t, steps, sgd, kind).detach()
    )


@pytest.mark.parametrize("sgd", SGD_VARIANTS.values(), ids=SGD_VARIANTS.keys())
def test_unroll_hypergradient_is_reverse_mode_through_the_window(data, sgd):
    """Unroll(K): after a window of K steps from (θ_s, b_s) with y reset, the hypergradient is
    d L_V(θ_{s+K}) / dλ with θ_s, b_s held fixed."""
    k, lam = 4, 0.03
    x, y, xv, yv = data
    net = Net(lam)
    opt = torch.optim.SGD(net.body.parameters(), lr=0.1, **sgd)
    engine = TangentEngine(Unroll(k, hyper_lr_scale=0.0), {"l2": net.l2}, opt, warmup_steps=0)
    names = [n for n, _ in net.body.named_parameters()]
    hypergrads, expected = [], []
    for t in range(3 * k):
        if t % k == 0:  # the window's start: θ_s and the momentum buffer, treated as constants
            theta0 = [p.detach().clone() for p in net.body.parameters()]
            bufs = [opt.state.get(p, {}).get("momentum_buffer") for p in net.body.parameters()]
            z0 = None if bufs[0] is None else [b.clone() for b in bufs]

            def val_after_window(v, theta0=theta0, z0=z0):
                th = unrolled(data, v, k, sgd, theta0=[t.clone() for t in theta0], z0=z0)
                shapes = [t.shape for t in theta0]
                parts = torch.split(th, [math.prod(s) for s in shapes])
                params = {n: q.view(s) for n, q, s in zip(names, parts, shapes)}
                return ((functional_call(net.body, params, (xv,)) - yv) ** 2).mean()

            lam_t = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
            expected.append(torch.autograd.grad(val_after_window(lam_t), lam_t)[0])
        opt.zero_grad()
        engine.backward(net.training_loss(x, y))
        engine.advance()
        opt.step()
        if engine.update(lambda: ((net.body(xv) - yv) ** 2).mean()):
            hypergrads.append(engine.state.hypergradients[0])
    assert len(hypergrads) == 3
    torch.testing.assert_close(torch.stack(hypergrads), torch.stack(expected), rtol=1e-9, atol=0)


@pytest.mark.parametrize("kind", ["l2", "wd"])
def test_first_order_uses_minus_dg_dlambda(data, kind):
    """Unroll1-gTgV: h = −⟨g_V(θ_{t+1}), ∂g_T/∂λ(θ_t)⟩ = −⟨g_V, θ_t⟩ for an L2 penalty or an
    SGD weight decay (the latter needs no replay at all)."""
    x, y, xv, yv = data
    net = Net(0.02, kind)
    opt = torch.optim.SGD(net.body.parameters(), lr=0.1)
    engine = TangentEngine(FirstOrder(hyper_lr=0.5), {"l2": net.l2}, opt)
    theta_t = [p.detach().clone() for p in net.body.parameters()]
    opt.zero_grad()
    engine.backward(net.training_loss(x, y))
    engine.advance()
    opt.step()
    val = ((net.body(xv) - yv) ** 2).mean()
    g_val = torch.autograd.grad(val, list(net.body.parameters()))
    expected = -sum((g * t).sum() for g, t in zip(g_val, theta_t))
    assert engine.update(lambda: ((net.body(xv) - yv) ** 2).mean())
    torch.testing.assert_close(engine.state.hypergradients[0], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        net.l2.value, torch.tensor(0.02, dtype=torch.float64) - 0.5 * expected
    )


def test_tangent_drift_matches_forward_over_reverse():
    """H y + ∂g/∂λ by double back-prop equals torch.func's jvp of the gradient."""
    torch.manual_seed(3)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    y = [torch.randn(6, dtype=torch.float64)]

    def loss_fn(w, lam):
        return torch.log1p(torch.exp(w)).sum() * (1 + lam) + lam**2 * (w**3).sum()

    (drift,) = tangent_drift(loss_fn(w, lam), [w], [lam], [y])
    grad_w = torch.func.grad(loss_fn, argnums=0)
    _, jvp = torch.func.jvp(grad_w, (w.detach(), lam.detach()), (y[0], torch.ones_like(lam)))
    torch.testing.assert_close(drift[0], jvp, rtol=1e-13, atol=1e-13)


def test_loss_not_depending_on_hyperparameter_is_an_error():
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend on hyperparameter #0"):
        tangent_drift((w**2).sum(), [w], [lam], [[torch.zeros(3, dtype=torch.float64)]])


class FiniteDifferenceScale(L2Penalty):
    """An L2 coefficient whose ∂g_T/∂λ the engine must estimate by finite differences."""

    drift_source = "finite_difference"

    def __init__(self, init, eps):
        super().__init__(init)
        self.eps, self.shift = eps, 0.0

    def forward(self, params):
        return 0.5 * (self.value + self.shift) * sum((p * p).sum() for p in params)

    @contextlib.contextmanager
    def perturbed(self, sign, seed):
        self.shift = sign * self.eps
        try:
            yield float(self.value) + self.shift
        finally:
            self.shift = 0.0


@pytest.mark.parametrize("sgd", SGD_VARIANTS.values(), ids=SGD_VARIANTS.keys())
def test_finite_difference_drift_matches_autograd(data, sgd):
    """Central differences of replayed losses give the same tangent as autograd."""
    x, y, _, _ = data
    tangents = []
    for penalty in (L2Penalty(0.05), FiniteDifferenceScale(0.05, eps=1e-3)):
        net = Net(0.05)
        net.l2 = penalty.double()
        opt = torch.optim.SGD(net.body.parameters(), lr=0.1, **sgd)
        engine = TangentEngine(Exact(), {"l2": net.l2}, opt, warmup_steps=10**9)
        for _ in range(10):
            opt.zero_grad()
            engine.backward(net.training_loss(x, y))
            engine.advance(replay=lambda net=net: [net.training_loss(x, y)])
            opt.step()
        tangents.append(flat(engine.tangents[0]))
    # the penalty is linear in λ, so the central difference is exact up to rounding
    torch.testing.assert_close(tangents[1], tangents[0], rtol=1e-8, atol=1e-11)


def test_reset_steps_skip_the_hessian_vector_product(data, monkeypatch):
    """Right after UnrollK's reset y = 0, so H y = 0: no double back-prop on those steps
    (L2Penalty's ∂g/∂λ is closed-form), and a finite-difference λ needs only its two perturbed
    replays at every step; both give the same tangent at every step."""
    from lightning_hyperopt.core import functional as functional_module

    x, y, _, _ = data
    products = []
    original = functional_module.second_order_drift

    def counting(*args, **kwargs):
        products[-1] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(functional_module, "second_order_drift", counting)
    tangents, replays, per_kind = [], [], []
    for penalty in (L2Penalty(0.05), FiniteDifferenceScale(0.05, eps=1e-3)):
        net = Net(0.05)
        net.l2 = penalty.double()
        opt = torch.optim.SGD(net.body.parameters(), lr=0.1, momentum=0.9)
        engine = TangentEngine(Unroll(3), {"l2": net.l2}, opt, warmup_steps=10**9)
        calls, per_step, hvps = [0], [], []

        def losses(net=net, calls=calls):
            calls[0] += 1
            return [net.training_loss(x, y)]

        trajectory = []
        for _ in range(7):
            opt.zero_grad()
            calls[0] = 0
            products.append(0)
            engine.backward(net.training_loss(x, y))
            engine.advance(replay=losses if penalty.drift_source != "closed_form" else None)
            per_step.append(calls[0])
            hvps.append(products[-1])
            opt.step()
            trajectory.append(flat(engine.tangents[0]))
        tangents.append(torch.stack(trajectory))
        replays.append(per_step)
        per_kind.append(hvps)
    assert per_kind[0] == per_kind[1] == [0, 1, 1, 0, 1, 1, 0]  # steps 0, 3, 6 start a window
    assert replays == [[0] * 7, [2] * 7]
    torch.testing.assert_close(tangents[1], tangents[0], rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("mu", [0.0, 0.7, 1.0])
def test_discounted_tangent_follows_its_recurrence(data, mu):
    """Discount(μ): (y, z)_{t+1} = μ A_t (y, z)_t + B_t for the joint state (θ, b) of SGD
    momentum, with A_t and B_t the forward-mode derivatives of the explicit step map
    (θ, b, λ) ↦ (θ', b') (torch.func.jvp), independent of the engine; μ = 1 is Exact."""
    from lightning_hyperopt import Discount

    x, y, _, _ = data
    lam, lr, momentum, steps = 0.05, 0.1, 0.9, 6
    net = Net(lam)
    engine_opt = torch.optim.SGD(net.body.parameters(), lr=lr, momentum=momentum)
    engine = TangentEngine(Discount(mu), {"l2": net.l2}, engine_opt, warmup_steps=10**9)
    names = [n for n, _ in net.body.named_parameters()]
    theta = [p.detach().clone() for p in net.body.parameters()]
    buf = [torch.zeros_like(t) for t in theta]
    yt = [torch.zeros_like(t) for t in theta]
    zt = [torch.zeros_like(t) for t in theta]

    def step(th, b, lm, first):
        def loss(*ps):
            out = functional_call(net.body, dict(zip(names, ps)), (x,))
            return ((out - y) ** 2).mean() + 0.5 * lm * sum((p * p).sum() for p in ps)

        g = torch.func.grad(loss, argnums=tuple(range(len(th))))(*th)
        nb = list(g) if first else [momentum * bi + gi for bi, gi in zip(b, g)]
        return [t - lr * bi for t, bi in zip(th, nb)], nb

    for t in range(steps):
        engine_opt.zero_grad()
        engine.backward(net.training_loss(x, y))
        engine.advance()
        engine_opt.step()
        first = t == 0
        lm = torch.tensor(lam, dtype=torch.float64)

        def mapped(th, b, lm_, first=first):
            return step(list(th), list(b), lm_, first)

        carried = ([mu * v for v in yt], [mu * v for v in zt], torch.zeros_like(lm))
        own = (
            [torch.zeros_like(v) for v in yt],
            [torch.zeros_like(v) for v in zt],
            torch.ones_like(lm),
        )
        (theta_new, buf_new), (ay, az) = torch.func.jvp(mapped, (theta, buf, lm), carried)
        _, (by, bz) = torch.func.jvp(mapped, (theta, buf, lm), own)
        yt = [a + b for a, b in zip(ay, by)]
        zt = [a + b for a, b in zip(az, bz)]
        theta, buf = theta_new, buf_new
    torch.testing.assert_close(flat(engine.tangents[0]), flat(yt), rtol=1e-10, atol=1e-12)
