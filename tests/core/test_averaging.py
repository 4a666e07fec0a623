"""The hypergradient at the averaged iterate: h = ⟨g_V(θ̄), ȳ⟩ against central differences of
L_V(θ̄_T) over whole float64 trainings, θ̄ computed independently from the recorded iterates."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lightning_hyperopt.core import (
    Clip,
    Discount,
    Exact,
    FirstOrder,
    LearningRate,
    TangentEngine,
    WeightDecay,
)
from lightning_hyperopt.core.averaging import IterateAverage

f64 = torch.float64
DELTA = 1e-6
STEPS = 25
BETA = 0.8


def data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 4, generator=g, dtype=f64)
    return (
        x,
        torch.sin(x.sum(1, keepdim=True)),
        x[:12] - 0.2,
        torch.cos(x[:12].sum(1, keepdim=True)),
    )


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1))
        self.double()


def validation_loss(net, xv, yv, theta=None):
    if theta is None:
        return ((net.body(xv) - yv) ** 2).mean()
    names = [n for n, _ in net.body.named_parameters()]
    shapes = [p.shape for p in net.body.parameters()]
    parts = torch.split(theta, [s.numel() for s in shapes])
    params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
    return ((functional_call(net.body, params, (xv,)) - yv) ** 2).mean()


def train(lr_scale, wd, method, steps=STEPS):
    """The engine after ``steps`` AdamW steps (cosine schedule) at fixed λ, and the iterates
    θ_1 … θ_T. λ stays fixed: the paper rule at step 0 computes h but moves nothing."""
    x, y, xv, yv = data()
    net = Net()
    opt = torch.optim.AdamW(net.body.parameters(), lr=0.05, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    hypers = {"lr": LearningRate(init=lr_scale), "wd": WeightDecay(init=wd)}
    engine = TangentEngine(method, hypers, opt)
    iterates = []
    for _ in range(steps):
        opt.zero_grad()
        engine.backward(((net.body(x) - y) ** 2).mean())
        engine.advance()
        with engine.scaled_learning_rates():
            opt.step()
        sched.step()
        engine.update(lambda: validation_loss(net, xv, yv))
        iterates.append(torch.cat([p.detach().reshape(-1) for p in net.body.parameters()]))
    return net, engine, torch.stack(iterates)


def averaged(iterates, beta=BETA):
    """θ̄_T = Σ β^{T−s} θ_s / Σ β^{T−s}, written out."""
    weights = beta ** torch.arange(len(iterates) - 1, -1, -1, dtype=f64)
    return (weights[:, None] * iterates).sum(0) / weights.sum()


def averaged_validation_loss(lr_scale, wd):
    net, _, iterates = train(lr_scale, wd, Exact(hyper_lr_scale=0.0))
    _, _, xv, yv = data()
    return validation_loss(net, xv, yv, averaged(iterates)).item()


def test_exact_hypergradient_at_the_average_is_the_derivative_of_the_averaged_loss():
    lr_scale, wd = 1.3, 0.02
    _, engine, iterates = train(lr_scale, wd, Exact(hyper_lr_scale=0.0, average=BETA))
    torch.testing.assert_close(engine.average.theta, averaged(iterates), rtol=1e-12, atol=1e-14)
    h = engine.state.hypergradients
    fd_lr = (
        averaged_validation_loss(lr_scale + DELTA, wd)
        - averaged_validation_loss(lr_scale - DELTA, wd)
    ) / (2 * DELTA)
    fd_wd = (
        averaged_validation_loss(lr_scale, wd + DELTA)
        - averaged_validation_loss(lr_scale, wd - DELTA)
    ) / (2 * DELTA)
    fd = torch.tensor([fd_lr, fd_wd], dtype=f64)
    assert fd.abs().min() > 1e-4
    torch.testing.assert_close(h, fd, rtol=1e-6, atol=1e-10)
    # and it differs from the hypergradient at the last iterate
    _, plain, _ = train(lr_scale, wd, Exact(hyper_lr_scale=0.0))
    assert (plain.state.hypergradients - h).abs().max() > 1e-3 * h.abs().max()


def test_averaging_leaves_the_trajectory_alone():
    """θ swapped to θ̄ for g_V and back, bit for bit: with λ fixed the iterates are those of a
    run without averaging, and y too."""
    _, with_avg, it_avg = train(1.0, 0.01, Clip(5.0, hyper_lr_scale=0.0, average=0.9))
    _, without, it = train(1.0, 0.01, Clip(5.0, hyper_lr_scale=0.0))
    assert torch.equal(it_avg, it)
    assert torch.equal(with_avg.tangent, without.tangent)


def test_first_order_averages_its_directions():
    """FirstOrder(average=β): h = −⟨g_V(θ̄), δ̄⟩, δ̄ the β-average of the steps' directions δ_s
    (those FirstOrder computes without averaging), g_V at θ̄ computed independently."""
    lr_scale, wd, beta = 1.0, 0.05, 0.7
    x, y, xv, yv = data()

    def run(method):
        net = Net()
        opt = torch.optim.AdamW(net.body.parameters(), lr=0.05, weight_decay=0.0)
        engine = TangentEngine(
            method, {"lr": LearningRate(init=lr_scale), "wd": WeightDecay(init=wd)}, opt
        )
        directions, iterates = [], []
        for _ in range(10):
            opt.zero_grad()
            engine.backward(((net.body(x) - y) ** 2).mean())
            engine.advance()
            directions.append(engine.state.direction.clone())
            with engine.scaled_learning_rates():
                opt.step()
            engine.update(lambda: validation_loss(net, xv, yv))
            iterates.append(torch.cat([p.detach().reshape(-1) for p in net.body.parameters()]))
        return net, engine, torch.stack(directions), torch.stack(iterates)

    _, _, directions, iterates = run(FirstOrder(hyper_lr=0.0))
    net, engine, _, it_avg = run(FirstOrder(hyper_lr=0.0, average=beta))
    assert torch.equal(it_avg, iterates)
    theta_bar = averaged(iterates, beta)
    weights = beta ** torch.arange(9, -1, -1, dtype=f64)
    delta_bar = (weights[:, None, None] * directions).sum(0) / weights.sum()
    theta_bar.requires_grad_(True)
    (g_val,) = torch.autograd.grad(validation_loss(net, xv, yv, theta_bar), theta_bar)
    torch.testing.assert_close(
        engine.state.hypergradients, -(delta_bar @ g_val), rtol=1e-10, atol=1e-14
    )


def test_resumed_average_continues_bit_for_bit():
    """A checkpoint holds θ̄, ȳ and the count: 10 + 10 steps equal 20 steps."""
    x, y, xv, yv = data()

    def run(steps, state=None):
        net = Net()
        opt = torch.optim.SGD(net.body.parameters(), lr=0.1)
        wd = WeightDecay(init=0.1 if state is None else state["wd"])
        engine = TangentEngine(Discount(0.9, average=0.95), {"wd": wd}, opt)
        if state is not None:
            net.load_state_dict(state["net"])
            engine.load_state_dict(state["engine"])
        for _ in range(steps):
            opt.zero_grad()
            engine.backward(((net.body(x) - y) ** 2).mean())
            engine.advance()
            opt.step()
            engine.update(lambda: validation_loss(net, xv, yv))
        return net, engine

    net, engine = run(10)
    state = {
        "net": net.state_dict(),
        "engine": engine.state_dict(),
        "wd": float(engine.values()[0]),
    }
    resumed_net, resumed = run(10, state)
    whole_net, whole = run(20)
    assert torch.equal(resumed.average.theta, whole.average.theta)
    assert torch.equal(resumed.average.tangent, whole.average.tangent)
    assert torch.equal(resumed.values(), whole.values())
    for a, b in zip(resumed_net.parameters(), whole_net.parameters()):
        assert torch.equal(a, b)


def test_the_first_iterate_has_weight_one_and_the_average_is_unbiased():
    avg = IterateAverage(0.9, 1, 3, f64, torch.device("cpu"))
    assert avg.weight() == 1.0
    first = torch.tensor([1.0, 2.0, 3.0], dtype=f64)
    avg.observe(first, first[None] * 2)
    assert torch.equal(avg.theta, first) and torch.equal(avg.tangent, first[None] * 2)
    avg.observe(first * 0, first[None] * 0)
    # (0.9·θ_1 + θ_2) / 1.9
    torch.testing.assert_close(avg.theta, first * 0.9 / 1.9, rtol=1e-15, atol=0)


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("method", [Clip, Exact, Discount, FirstOrder])
def test_bad_average_is_named(method, value):
    with pytest.raises(ValueError, match=r"average=.* must be in \[0, 1\)"):
        method(average=value)


def test_a_checkpoint_of_another_model_is_refused():
    avg = IterateAverage(0.9, 2, 5, f64, torch.device("cpu"))
    other = IterateAverage(0.9, 2, 7, f64, torch.device("cpu")).state_dict()
    with pytest.raises(ValueError, match="averaged iterate"):
        avg.load_state_dict(other)


def test_a_non_finite_hypergradient_restarts_y_and_its_average():
    """A NaN validation loss after a good step: λ stays, y_j and ȳ_j start again from 0 and
    the row is counted; the averaged iterate θ̄ keeps its history."""
    x, y, xv, yv = data()
    net = Net()
    opt = torch.optim.SGD(net.body.parameters(), lr=0.1)
    engine = TangentEngine(Clip(5.0, average=0.9), {"wd": WeightDecay(init=0.1)}, opt)
    for t in range(6):
        opt.zero_grad()
        engine.backward(((net.body(x) - y) ** 2).mean())
        engine.advance()
        opt.step()
        nan = t == 5
        before = engine.values().clone()
        engine.update(lambda nan=nan: validation_loss(net, xv, yv) * (float("nan") if nan else 1))
        if not nan:
            assert (engine.average.tangent != 0).any()
    assert torch.equal(engine.values(), before)
    assert not engine.tangent.any() and not engine.average.tangent.any()
    assert engine.average.theta.abs().sum() > 0 and engine.nonfinite == [1]
