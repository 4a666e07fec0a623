"""core/window.py: one optimizer step's micro-batches, the gradient as loss.backward() leaves it
and the drift G_j = H y_j + ∂g/∂λ_j from the same graph, against torch.func (float64)."""

from __future__ import annotations

import torch
from torch.func import grad, jvp

from lightning_hyperopt.core.layout import FlatLayout
from lightning_hyperopt.core.window import DriftWindow

f64 = torch.float64


def problem():
    torch.manual_seed(0)
    w = torch.randn(3, 2, dtype=f64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=f64, requires_grad=True)
    x = torch.randn(5, 3, dtype=f64)
    y = torch.randn(2, 3, 2, dtype=f64)  # two tangent rows

    def loss_of(w_, lam_, x_=x):
        return (torch.tanh(x_ @ w_) ** 2).mean() + lam_ * (w_**3).sum()

    return w, lam, x, y, loss_of


def test_backward_fills_the_gradient_and_takes_h_y_plus_dg_dlambda():
    w, lam, _x, y, loss_of = problem()
    layout = FlatLayout([w])
    window = DriftWindow(layout, [w], rows=2, graph_rows=[(0, lam, "lam")])
    window.begin()
    window.backward(loss_of(w, lam), [y])
    expected_grad = grad(loss_of)(w, lam)
    torch.testing.assert_close(w.grad, expected_grad)
    for j in range(2):
        _, hy = jvp(lambda w_: grad(loss_of)(w_, lam), (w,), (y[j],))
        dg_dlam = jvp(lambda lam_: grad(loss_of)(w, lam_), (lam,), (torch.ones((), dtype=f64),))[1]
        expected = hy + (dg_dlam if j == 0 else 0)  # only row 0 is λ's own
        torch.testing.assert_close(window.drift[j], expected.reshape(-1), rtol=1e-12, atol=1e-14)


def test_micro_batches_accumulate_and_a_discard_forgets_them():
    w, lam, x, y, loss_of = problem()
    window = DriftWindow(FlatLayout([w]), [w], rows=2, graph_rows=[(0, lam, "lam")])
    window.begin()
    window.backward(loss_of(w, lam, x[:2]) / 2, [y])
    window.backward(loss_of(w, lam, x[2:]) / 2, [y])
    assert window.pending and window.micro_batches == 2 and bool(window.loss_ok)
    both = window.drift.clone()
    grads = w.grad.clone()
    w.grad = None
    window.discard()
    assert not window.pending and window.drift is None
    window.begin()
    window.backward(loss_of(w, lam, x[:2]) / 2, [y])
    first = window.drift.clone()
    window.backward(loss_of(w, lam, x[2:]) / 2, [y])
    torch.testing.assert_close(window.drift, both)  # the sum of the micro-batches' terms
    assert not torch.equal(first, both)
    torch.testing.assert_close(w.grad, grads)


def test_without_a_tangent_only_dg_dlambda_and_a_plain_backward():
    w, lam, _x, _y, loss_of = problem()
    window = DriftWindow(FlatLayout([w]), [w], rows=2, graph_rows=[(0, lam, "lam")])
    window.begin()
    window.backward(loss_of(w, lam), None)
    dg_dlam = jvp(lambda lam_: grad(loss_of)(w, lam_), (lam,), (torch.ones((), dtype=f64),))[1]
    torch.testing.assert_close(window.drift[0], dg_dlam.reshape(-1))
    assert torch.equal(window.drift[1], torch.zeros(6, dtype=f64))
    torch.testing.assert_close(w.grad, grad(loss_of)(w, lam))


def test_a_non_finite_loss_is_flagged_not_raised():
    w, lam, _x, _y, loss_of = problem()
    window = DriftWindow(FlatLayout([w]), [w], rows=2, graph_rows=[])
    window.begin()
    window.backward(loss_of(w, lam) * float("nan"), None)
    assert not bool(window.loss_ok)
