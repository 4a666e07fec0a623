"""The drift terms of one step, row by row, by each hyperparameter's drift source.

The tangent's drift G_j = H y_j + ∂g_T/∂λ_j gets its ∂g_T/∂λ_j by the hyperparameter's drift
source (:mod:`lightning_hyperopt.core.hyperparameters.base`):

    autograd            taken in the backward itself, from the loss's graph
                        (:class:`~lightning_hyperopt.core.window.DriftWindow`: ``graph_rows``)
    closed_form         the kind's own :meth:`~Hyperparameter.closed_form_drift`, from what it
                        recorded while the step's losses were built and back-propagated
    finite_difference   (g_T(λ₊) − g_T(λ₋)) / (λ₊ − λ₋), from two replays of the step's losses
                        that share one seed (coupled random draws: ``Hyperparameter.perturbed``);
                        or one-sided, one replay at λ ± ε drawing the step's own randomness
                        against the step's own gradient p.grad at λ
    optimizer           no drift term: the param-group settings λ sets, whose tangents the
                        optimizer's rule differentiates (:mod:`lightning_hyperopt.core.settings`)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import Hyperparameter, TermContext, not_recorded
from lightning_hyperopt.core.layout import FlatLayout

Replay = Callable[[], Iterable[Tensor]]


def add_closed_form(
    drift: Tensor,
    rows: Sequence[int],
    hypers: Sequence[Hyperparameter],
    contexts: Sequence[TermContext],
) -> None:
    """drift[j] += ∂g_T/∂λ_j for the closed-form rows (in place)."""
    for j in rows:
        hypers[j].closed_form_drift(drift[j], contexts[j])


def add_finite_differences(
    drift: Tensor,
    rows: Sequence[int],
    hypers: Sequence[Hyperparameter],
    contexts: Sequence[TermContext],
    replay: Replay,
    own_gradient: Callable[[], Tensor] | None = None,
) -> None:
    """drift[j] += (g_T(λ₊) − g_T(λ₋)) / (λ₊ − λ₋) for the finite-difference rows (in place).

    Two-sided: both from replays of the step's losses sharing one seed, reproducible across
    resumes. One-sided (a hyperparameter replaying one sign): the other side is λ itself and
    its g_T the step's own gradient, ``own_gradient()`` (flat, the sum over the step's
    micro-batches), with which the replay shares the step's random draws."""
    own: Tensor | None = None
    for j in rows:
        h, context = hypers[j], contexts[j]
        params, layout = context.layout.params, context.layout
        seed = (context.step * 1_000_003 + j) % (2**62)
        sides: dict[int, tuple[Tensor, float]] = {}
        for sign in h.replayed_signs():
            acc: list[Tensor | None] = [None] * len(params)
            with h.perturbed(sign, seed) as value, not_recorded():
                for loss in replay():
                    got = torch.autograd.grad(loss, params, allow_unused=True)
                    for i, g in enumerate(got):
                        if g is not None:
                            acc[i] = g if acc[i] is None else acc[i] + g
            sides[sign] = (layout.flatten(acc), value)
        for sign in (1, -1):
            if sign not in sides:  # one-sided: λ itself, with the step's own masks
                if own is None:
                    if own_gradient is None:
                        raise ValueError(
                            f"{context.name!r} takes a one-sided difference: it needs the "
                            "step's own gradient"
                        )
                    own = own_gradient()
                sides[sign] = (own, float(h.value))
        (g_plus, plus), (g_minus, minus) = sides[1], sides[-1]
        drift[j].add_((g_plus - g_minus) / (plus - minus))


class DriftTerms:
    """The rows of each drift source, and the terms the engine adds before the optimizer step.

    Args:
        names: the hyperparameters' names, one row each.
        hypers: the hyperparameters, in the same order.
        layout: the optimized parameters.
    """

    def __init__(
        self,
        names: Sequence[str],
        hypers: Sequence[Hyperparameter],
        layout: FlatLayout,
    ) -> None:
        self.names, self.hypers, self.layout = list(names), list(hypers), layout
        rows: dict[str, list[int]] = {"autograd": [], "closed_form": [], "finite_difference": []}
        for j, h in enumerate(hypers):
            rows.setdefault(h.drift_source, []).append(j)
        #: (row, λ's value, name) of the hyperparameters in the loss's graph
        self.graph_rows = [(j, hypers[j].value, names[j]) for j in rows["autograd"]]
        self.closed_form_rows = rows["closed_form"]
        self.finite_difference_rows = rows["finite_difference"]
        self._index = {id(p): i for i, p in enumerate(layout.params)}
        self._zeros: Tensor | None = None  # a drift buffer for steps without graph terms
        #: whether some λ enters the training gradient (∂g_T/∂λ ≠ 0): False when every row is
        #: an optimizer setting (weight decay, learning rate, momentum)
        self.in_gradient = bool(
            self.graph_rows or self.closed_form_rows or self.finite_difference_rows
        )

    def complete(
        self,
        drift: Tensor | None,
        rows: int,
        step: int,
        loss_scale: Tensor | float | None,
        replay: Replay | None,
        finite_differences: bool = True,
    ) -> Tensor:
        """The step's drift (m, N): the graph's terms ``drift`` (``None``: none), plus the
        closed-form terms, divided by the loss scale the back-propagated losses carried, plus
        the finite differences of ``replay``'s (unscaled) losses. ``finite_differences=False``
        leaves the finite-difference rows without their term (for a step whose drift no λ
        update reads: first order between two updates) and replays nothing."""
        if drift is None:  # no term from the graph (first order with closed-form λ): reuse
            if self._zeros is None:
                self._zeros = torch.zeros(
                    rows, self.layout.numel, dtype=self.layout.dtype, device=self.layout.device
                )
            drift = self._zeros.zero_()
        contexts = [
            TermContext(name, j, step, self.layout, self._index)
            for j, name in enumerate(self.names)
        ]
        add_closed_form(drift, self.closed_form_rows, self.hypers, contexts)
        if loss_scale is not None:
            drift = drift / loss_scale
        if self.finite_difference_rows and finite_differences:
            if replay is None:
                raise ValueError(
                    "finite-difference hyperparameters "
                    f"{[self.names[j] for j in self.finite_difference_rows]} need `replay`"
                )
            layout = self.layout

            def own_gradient() -> Tensor:  # p.grad: unscaled by now (an AMP scaler's too)
                return layout.flatten(p.grad for p in layout.params)

            add_finite_differences(
                drift, self.finite_difference_rows, self.hypers, contexts, replay, own_gradient
            )
        return drift
