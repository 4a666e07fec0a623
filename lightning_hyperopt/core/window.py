"""``DriftWindow``: the micro-batches of one optimizer step and their drift terms from the graph.

Per micro-batch loss L (scaled as the optimizer's gradient will see it), in place of
``L.backward()``:

    with H y (a tangent is carried):  g = ∇_θ L with create_graph; p.grad += g;
                                      G_j += ∇_θ[⟨g, y_j⟩ + ∂L/∂λ_j]  (one batched double back-prop)
    without (y = 0: first order, a reset step):
                                      G_j += ∇_θ ∂L/∂λ_j for λ_j in the graph; L.backward()

so G_j = H y_j + ∂g/∂λ_j for the autograd rows (H y_j alone for the other rows) summed over the
window's micro-batches, with the gradient in ``p.grad`` as ``loss.backward()`` leaves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from lightning_hyperopt.core import functional
from lightning_hyperopt.core.autograd_limits import (
    check_dense,
    check_twice_differentiable,
    named_limits,
)
from lightning_hyperopt.core.layout import FlatLayout, dense


class DriftWindow:
    """Accumulates the drift terms of one optimizer step's micro-batches.

    Args:
        layout: the optimized parameters.
        grad_targets: the tensors whose ``.grad`` a backward fills (the optimized parameters
            and any other trained tensor of the model).
        rows: m, the number of hyperparameters.
        graph_rows: (row j, λ_j's value, its name) for the hyperparameters in the loss's graph.
        dense_only: the method needs H·y at some step, which sparse gradients do not support:
            the first gradient seen must be dense (:meth:`check_layouts`); otherwise sparse
            gradients are read densely.
    """

    def __init__(
        self,
        layout: FlatLayout,
        grad_targets: Sequence[Tensor],
        rows: int,
        graph_rows: Sequence[tuple[int, Tensor, str]],
        dense_only: bool = True,
    ) -> None:
        self.layout, self.grad_targets, self.rows = layout, list(grad_targets), rows
        self.graph_rows = list(graph_rows)
        self.dense_only = dense_only
        self._layouts_checked = not dense_only
        self._graph_checked = False
        self.open = False
        self.micro_batches = 0
        self.drift: Tensor | None = None
        self.loss_ok: Tensor | None = None

    def begin(self) -> None:
        """A new optimizer step's window: nothing accumulated yet."""
        self.open = True
        self.micro_batches = 0
        self.drift = None
        self.loss_ok = None

    def close(self) -> None:
        self.open = False

    def discard(self) -> None:
        """Forget the micro-batches back-propagated so far (their gradient was dropped)."""
        self.begin()
        self.open = False

    @property
    def pending(self) -> bool:
        """Whether some micro-batch was back-propagated since the window began."""
        return self.open and self.micro_batches > 0

    def backward(
        self,
        loss: Tensor,
        tangent_views: Sequence[Tensor] | None,
        fill_grads: bool = True,
        run_backward: Callable[[], None] | None = None,
    ) -> None:
        """Back-propagate one micro-batch's loss and add its drift terms.

        ``tangent_views``: y as one (m, *p.shape) view per parameter when H y is needed, else
        ``None``. With ``fill_grads`` the gradient goes into ``.grad`` as ``loss.backward()``
        would put it (accumulating): computed here when the graph is needed anyway, else by
        ``run_backward`` (default ``loss.backward()``). With ``fill_grads=False`` the graph is
        kept and nothing is written: the caller back-propagates ``loss`` itself afterwards.
        """
        finite = torch.isfinite(loss.detach())
        self.loss_ok = finite if self.loss_ok is None else self.loss_ok & finite
        with named_limits("the training loss, back-propagated by OnlineHyperparamCallback"):
            self._backward(loss, tangent_views, fill_grads, run_backward)
        self.micro_batches += 1

    def _backward(
        self,
        loss: Tensor,
        tangent_views: Sequence[Tensor] | None,
        fill_grads: bool,
        run_backward: Callable[[], None] | None,
    ) -> None:
        keep = not fill_grads
        values = [value for _, value, _ in self.graph_rows]
        params = self.layout.params
        if tangent_views is not None:
            targets = self.grad_targets
            firsts = torch.autograd.grad(
                loss, [*targets, *values], create_graph=True, allow_unused=True
            )
            grads = firsts[: len(targets)]
            self.check_layouts(grads[: len(params)])
            if not self._graph_checked:  # once: the graph's kinds of nodes do not change
                check_twice_differentiable(grads, "the training loss, differentiated for H·y")
                self._graph_checked = True
            if fill_grads:
                _accumulate(targets, grads)
            found = functional.second_order_drift(
                grads[: len(params)],
                params,
                tangent_views,
                self._hyper_grads(firsts[len(targets) :]),
                retain_graph=keep,
            )
            self._add(found)
        else:
            if values:
                firsts = torch.autograd.grad(
                    loss, values, create_graph=True, retain_graph=True, allow_unused=True
                )
                found = functional.second_order_drift(
                    [None] * len(params),
                    params,
                    None,
                    self._hyper_grads(firsts),
                    rows=self.rows,
                    retain_graph=True,
                )
                self._add(found)
            if fill_grads:
                if run_backward is None:
                    loss.backward(inputs=self.grad_targets)
                else:
                    run_backward()

    def check_layouts(self, grads: Iterable[Tensor | None]) -> None:
        """Once, at the first gradient seen (a backward for H·y, or ``p.grad`` before the first
        step): every gradient dense, if the method needs H·y at some step."""
        if not self._layouts_checked:
            check_dense(grads, self.layout.params, "the training step's backward")
            self._layouts_checked = True

    def _hyper_grads(self, found: Sequence[Tensor | None]) -> dict[int, Tensor]:
        out = {}
        for (j, _, name), d in zip(self.graph_rows, found):
            if d is None:
                raise ValueError(
                    f"the training loss does not depend on hyperparameter {name!r}: use its "
                    "value (e.g. `self.my_hparam.value`) in the loss the training step returns"
                )
            out[j] = d
        return out

    def _add(self, per_param: Sequence[Tensor]) -> None:
        flat = torch.cat([dense(d).reshape(d.shape[0], -1) for d in per_param], dim=1)
        self.drift = flat if self.drift is None else self.drift.add_(flat)


def _accumulate(targets: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """t.grad += g (or t.grad = g), detached, as a backward would."""
    for t, g in zip(targets, grads):
        if g is not None:
            g = g.detach()
            if t.grad is None:
                t.grad = g
            else:
                t.grad.add_(g)
