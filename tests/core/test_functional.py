"""The pure tensor functions of the core, against closed forms."""

import subprocess
import sys

import pytest
import torch

from lightning_hyperopt.core.functional import (
    global_norm,
    hyperparameter_step,
    inner,
    project_l2_ball,
    sgd_tangent_step,
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


def test_hyperparameter_step_identity_and_log():
    lam = torch.tensor(0.2, dtype=f64)
    h = torch.tensor(3.0, dtype=f64)
    assert float(hyperparameter_step(lam, h, 0.01, "identity", (0.0, 1.0))) == pytest.approx(0.17)
    # log: u = log λ moves by −α·λ·h
    expected = 0.2 * torch.exp(torch.tensor(-0.01 * 0.2 * 3.0, dtype=f64))
    assert float(hyperparameter_step(lam, h, 0.01, "log", (1e-6, 1.0))) == pytest.approx(
        float(expected), rel=1e-14
    )
    assert float(hyperparameter_step(lam, h, 1.0, "identity", (0.0, 1.0))) == 0.0  # clamped
    assert float(hyperparameter_step(lam, -h, 1.0, "identity", (0.0, 1.0))) == 1.0


def test_sgd_tangent_step_is_the_derivative_of_torch_sgd():
    """Differentiate two steps of torch.optim.SGD(momentum, dampening, Nesterov) numerically
    with respect to a shift of the gradient G = dg/dλ and compare with the tangent step."""
    torch.manual_seed(1)
    g1, g2, dg1, dg2 = (torch.randn(4, dtype=f64) for _ in range(4))
    cfg = dict(lr=0.1, momentum=0.9, dampening=0.2, nesterov=False)

    def two_steps(eps):
        p = torch.nn.Parameter(torch.zeros(4, dtype=f64))
        opt = torch.optim.SGD([p], **cfg)
        for g, dg in ((g1, dg1), (g2, dg2)):
            p.grad = g + eps * dg
            opt.step()
        return p.detach().clone()

    fd = (two_steps(1e-6) - two_steps(-1e-6)) / 2e-6
    y, z = sgd_tangent_step([torch.zeros(4, dtype=f64)], None, [dg1], first_step=True, **cfg)
    y, z = sgd_tangent_step(y, z, [dg2], **cfg)
    torch.testing.assert_close(y[0], fd, rtol=1e-8, atol=1e-10)


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
