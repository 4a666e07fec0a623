"""The pure tensor functions of the core, against closed forms."""

import subprocess
import sys

import pytest
import torch

from lightning_hyperopt.core.functional import (
    adam_tangent,
    clip_norm_tangent,
    clip_value_tangent,
    global_norm,
    inner,
    project_l2_ball,
    second_order_drift,
    sgd_tangent,
)

f64 = torch.float64


def test_core_imports_no_lightning():
    code = (
        "import sys, lightning_hyperopt.core, lightning_hyperopt; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'lightning_fabric', 'torchmetrics')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "y, radius, expected, clipped",
    [
        ([[3.0, 0.0], [4.0]], 10.0, [[3.0, 0.0], [4.0]], False),  # inside: unchanged
        ([[3.0, 0.0], [4.0]], 5.0, [[3.0, 0.0], [4.0]], False),  # on the ball: unchanged
        ([[3.0, 0.0], [4.0]], 2.5, [[1.5, 0.0], [2.0]], True),  # outside: scaled onto it
        ([[0.0, 0.0], [0.0]], 1.0, [[0.0, 0.0], [0.0]], False),  # y = 0: no NaN
    ],
)
def test_project_l2_ball(y, radius, expected, clipped):
    ys = [torch.tensor(t, dtype=f64) for t in y]
    out, norm, was_clipped = project_l2_ball(ys, radius)
    for o, e in zip(out, expected):
        torch.testing.assert_close(o, torch.tensor(e, dtype=f64), rtol=1e-15, atol=0)
    assert float(norm) == pytest.approx(float(global_norm(ys)))
    assert bool(was_clipped) is clipped


def test_projection_keeps_direction_and_is_idempotent():
    torch.manual_seed(0)
    ys = [torch.randn(3, 4, dtype=f64), torch.randn(5, dtype=f64)]
    out, _, _ = project_l2_ball(ys, 0.7)
    assert float(global_norm(out)) == pytest.approx(0.7, rel=1e-14)
    cos = inner(out, ys) / (global_norm(out) * global_norm(ys))
    assert float(cos) == pytest.approx(1.0, rel=1e-14)
    again, _, clipped = project_l2_ball(out, 0.7)
    assert not bool(clipped)
    for a, b in zip(again, out):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_sgd_tangent_is_the_derivative_of_torch_sgd():
    """Differentiate two steps of torch.optim.SGD(momentum, dampening, Nesterov) numerically
    with respect to a shift of the gradient G = dg/dλ and compare with the tangent step."""
    torch.manual_seed(1)
    g1, g2, dg1, dg2 = (torch.randn(4, dtype=f64) for _ in range(4))
    lr = 0.1
    for cfg in (
        dict(momentum=0.9, dampening=0.2, nesterov=False),
        dict(momentum=0.8, dampening=0.0, nesterov=True),
    ):

        def two_steps(eps, cfg=cfg):
            p = torch.nn.Parameter(torch.zeros(4, dtype=f64))
            opt = torch.optim.SGD([p], lr=lr, **cfg)
            for g, dg in ((g1, dg1), (g2, dg2)):
                p.grad = g + eps * dg
                opt.step()
            return p.detach().clone()

        fd = (two_steps(1e-6) - two_steps(-1e-6)) / 2e-6
        d1, z1 = sgd_tangent(dg1, None, first_step=True, **cfg)
        d2, _ = sgd_tangent(dg2, z1, **cfg)
        torch.testing.assert_close(-lr * (d1 + d2), fd, rtol=1e-8, atol=1e-10)
        # a per-entry first step (a buffer that starts later) equals the scalar rule per entry
        late = torch.tensor([True, False, True, False])
        mixed, _ = sgd_tangent(dg2, z1, first_step=late, **cfg)
        first, _ = sgd_tangent(dg2, z1, first_step=True, **cfg)
        torch.testing.assert_close(mixed, torch.where(late, first, d2), rtol=0, atol=0)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_tangent_is_the_derivative_of_torch_adam(amsgrad):
    """Three steps of torch.optim.Adam, differentiated by central differences with respect to
    a shift of every gradient along its tangent (float64), equal the chained tangent steps."""
    torch.manual_seed(2)
    grads = [torch.randn(6, dtype=f64) for _ in range(3)]
    dgrads = [torch.randn(6, dtype=f64) for _ in range(3)]
    cfg = dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, amsgrad=amsgrad)

    def steps(eps):
        p = torch.nn.Parameter(torch.zeros(6, dtype=f64))
        opt = torch.optim.Adam([p], **cfg)
        for g, dg in zip(grads, dgrads):
            p.grad = g + eps * dg
            opt.step()
        return p.detach().clone()

    fd = (steps(1e-7) - steps(-1e-7)) / 2e-7
    zeros = torch.zeros(6, dtype=f64)
    moments = (zeros, zeros, zeros if amsgrad else None)
    tangents = (zeros, zeros, zeros if amsgrad else None)
    y = zeros
    for t, (g, dg) in enumerate(zip(grads, dgrads)):
        direction, tangents = adam_tangent(dg, g, moments, tangents, t, 0.8, 0.9, 1e-3)
        y = y - 0.01 * direction
        m, v, vmax = moments
        v_new = 0.9 * v + 0.1 * g * g
        moments = (0.8 * m + 0.2 * g, v_new, torch.maximum(vmax, v_new) if amsgrad else None)
    torch.testing.assert_close(y, fd, rtol=1e-7, atol=1e-9)


def test_adam_tangent_where_every_gradient_was_zero():
    """v = m = 0 (a parameter whose gradient has always been 0): no NaN; the tangent of the
    direction is exactly ṁ'/(c₁ ε), the derivative of m'/(c₁(√v'/√c₂ + ε)) at g = 0."""
    zeros = torch.zeros(3, dtype=f64)
    dg = torch.tensor([0.0, 1.0, -2.0], dtype=f64)
    direction, (dm, dv, _) = adam_tangent(
        dg, zeros, (zeros, zeros, None), (zeros, zeros, None), 4, 0.9, 0.999, 1e-8
    )
    assert torch.isfinite(direction).all() and torch.equal(dv, zeros)
    c1 = 1 - 0.9**5
    torch.testing.assert_close(direction, 0.1 * dg / (c1 * 1e-8), rtol=1e-12, atol=0)
    torch.testing.assert_close(dm, 0.1 * dg, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_norm_tangent_is_the_derivative_of_clip_grad_norm(max_norm):
    torch.manual_seed(3)
    g, dg = torch.randn(2, 5, dtype=f64), torch.randn(3, 10, dtype=f64)

    def clipped(eps, row):
        p = torch.nn.Parameter(torch.zeros(2, 5, dtype=f64))
        p.grad = g + eps * dg[row].view(2, 5)
        torch.nn.utils.clip_grad_norm_([p], max_norm)
        return p.grad.reshape(-1)

    fd = torch.stack([(clipped(1e-7, r) - clipped(-1e-7, r)) / 2e-7 for r in range(3)])
    torch.testing.assert_close(
        clip_norm_tangent(dg, g.reshape(-1), max_norm), fd, rtol=1e-7, atol=1e-9
    )
    # g = 0: nothing is clipped and nothing divides by 0
    zero = clip_norm_tangent(dg, torch.zeros(10, dtype=f64), max_norm)
    torch.testing.assert_close(zero, dg, rtol=0, atol=0)


def test_clip_value_tangent_is_zero_where_clamped():
    g = torch.tensor([-2.0, -0.5, 0.3, 1.5], dtype=f64)
    dg = torch.ones(2, 4, dtype=f64)
    out = clip_value_tangent(dg, g, 1.0)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 1.0, 0.0]] * 2, dtype=f64))


def test_second_order_drift_batched_equals_one_product_per_row():
    """The batched double back-prop of m rows equals m separate products, and each equals
    torch.func's jvp of the gradient (H y + ∂g/∂λ)."""
    torch.manual_seed(4)
    w1 = torch.randn(3, 4, dtype=f64, requires_grad=True)
    w2 = torch.randn(4, dtype=f64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=f64, requires_grad=True)
    x = torch.randn(5, 3, dtype=f64)

    def loss_fn(w1, w2, lam):
        return torch.tanh(x @ w1).matmul(w2).pow(2).mean() + lam * (w1**4).sum()

    ys = [torch.randn(3, 3, 4, dtype=f64), torch.randn(3, 4, dtype=f64)]
    loss = loss_fn(w1, w2, lam)
    *grads, dlam = torch.autograd.grad(loss, [w1, w2, lam], create_graph=True)
    batched = second_order_drift(grads, [w1, w2], ys, {1: dlam}, retain_graph=True)
    for j in range(3):
        hyper = {0: dlam} if j == 1 else {}
        one = second_order_drift(
            grads, [w1, w2], [y[j : j + 1] for y in ys], hyper, retain_graph=True
        )
        _, (j1, j2) = torch.func.jvp(
            lambda a, b, c: torch.func.grad(loss_fn, argnums=(0, 1))(a, b, c),
            (w1.detach(), w2.detach(), lam.detach()),
            (ys[0][j], ys[1][j], torch.tensor(float(j == 1), dtype=f64)),
        )
        for got, single, want in zip(batched, one, (j1, j2)):
            torch.testing.assert_close(got[j], single[0], rtol=1e-12, atol=1e-13)
            torch.testing.assert_close(got[j], want, rtol=1e-12, atol=1e-13)


def test_batch_dim_treats_each_row_as_its_own_problem():
    """inner/global_norm/project_l2_ball with batch_dim equal the per-row results."""
    torch.manual_seed(1)
    a = [torch.randn(4, 3, dtype=f64), torch.randn(2, 4, dtype=f64)]  # rows: dim 0, then dim 1
    b = [torch.randn(4, 3, dtype=f64), torch.randn(2, 4, dtype=f64)]
    a_rows = [[a[0][r], a[1][:, r]] for r in range(4)]
    b_rows = [[b[0][r], b[1][:, r]] for r in range(4)]
    # tensors batched along different dims: move them to one layout first
    a_t = [a[0], a[1].T]
    b_t = [b[0], b[1].T]
    expected_inner = torch.stack([inner(x, y) for x, y in zip(a_rows, b_rows)])
    torch.testing.assert_close(inner(a_t, b_t, batch_dim=0), expected_inner, rtol=1e-15, atol=0)
    torch.testing.assert_close(
        global_norm(a, batch_dim=None), global_norm([t for row in a_rows for t in row])
    )
    norms = torch.stack([global_norm(x) for x in a_rows])
    torch.testing.assert_close(global_norm(a_t, batch_dim=0), norms, rtol=1e-15, atol=0)
    radius = float(norms.median())
    out, norm, clipped = project_l2_ball(a_t, radius, batch_dim=0)
    torch.testing.assert_close(norm, norms, rtol=1e-15, atol=0)
    for r, row in enumerate(a_rows):
        want, _, was_clipped = project_l2_ball(row, radius)
        torch.testing.assert_close(out[0][r], want[0], rtol=1e-15, atol=0)
        torch.testing.assert_close(out[1][r], want[1], rtol=1e-15, atol=0)
        assert bool(clipped[r]) is bool(was_clipped)
    # batched along dim 1 gives the same as the transposed layout
    out1, _, _ = project_l2_ball([a[1]], radius, batch_dim=1)
    out0, _, _ = project_l2_ball([a[1].T], radius, batch_dim=0)
    torch.testing.assert_close(out1[0].T, out0[0], rtol=1e-15, atol=0)


def test_batch_dim_zero_rows_stay_zero():
    ys = [torch.zeros(3, 5, dtype=f64)]
    out, norm, clipped = project_l2_ball(ys, 1.0, batch_dim=0)
    assert (
        torch.equal(out[0], ys[0])
        and not clipped.any()
        and torch.equal(norm, torch.zeros(3, dtype=f64))
    )
