"""``L2Penalty``: an L2 coefficient whose ∂g_T/∂λ is known in closed form (drift source
``closed_form``)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import (
    DriftSource,
    Hyperparameter,
    Parameterization,
    TermContext,
    is_recording,
)


class PenaltyCall:
    """One call of an :class:`L2Penalty` in a training loss: the parameters it was given and
    a = ∂L/∂(penalty), recorded by a gradient hook when the loss is back-propagated (the last
    back-prop through the call wins, so a graph differentiated twice is counted once)."""

    __slots__ = ("coefficient", "params")

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.coefficient: Tensor | None = None

    def record(self, grad: Tensor) -> None:
        self.coefficient = grad.detach()


class L2Penalty(Hyperparameter):
    """L2 penalty (λ/2)·Σ‖θ‖² over the parameters it is called on.

    ``self.l2(self.parameters())`` for one coefficient over everything, or one ``L2Penalty``
    per layer (``self.l2_first(self.first.parameters())``) for per-layer L2. It adds λ·I to
    the Hessian on those parameters, and its ∂g_T/∂λ is known in closed form:

        ∂g_T/∂λ = Σ_calls a · θ_call,   a = ∂L_T/∂(penalty)   (1 for ``loss + self.l2(...)``)

    so the tuner needs no back-prop for it: each call made while the loss is built records its
    parameters and, through a gradient hook, a. The rule this relies on: the penalty enters the
    training loss linearly (``loss + c · self.l2(params)`` for any c that does not depend on θ),
    and its ``value`` is not used elsewhere in the loss (for anything else, use a
    :class:`Hyperparameter`, which the tuner differentiates by autograd).
    """

    drift_source: DriftSource = "closed_form"
    fast_start = True
    #: None: nobody tunes this penalty, so nothing is recorded (see ``record_calls``)
    calls: list[PenaltyCall] | None = None

    def forward(self, params: Iterable[Tensor]) -> Tensor:  # type: ignore[override]
        params = list(params)
        squares = sum((p * p).sum() for p in params)
        # in the parameters' dtype: a float64 λ would otherwise promote the whole loss
        out = 0.5 * self.value.to(squares.dtype) * squares
        if (
            self.calls is not None
            and isinstance(out, Tensor)
            and out.requires_grad
            and is_recording()
        ):
            call = PenaltyCall(params)
            out.register_hook(call.record)
            self.calls.append(call)
        return out

    @property
    def natural_space(self) -> Parameterization:
        return "log"  # a coefficient's scale: steps multiply it

    def attach(self) -> None:
        super().attach()
        self.record_calls(True)

    def detach(self) -> None:
        super().detach()
        self.record_calls(False)

    def record_calls(self, enabled: bool) -> None:
        """Start (a tuner is attached) or stop recording the calls of training losses."""
        self.calls = [] if enabled else None

    def discard(self) -> None:
        """Forget the calls already back-propagated (their gradient was dropped); a call whose
        loss is built but not back-propagated yet is kept."""
        if self.calls is not None:
            self.calls = [c for c in self.calls if c.coefficient is None]

    def take_calls(self) -> list[PenaltyCall]:
        """The calls recorded since the last take, then forgets them."""
        calls = self.calls or []
        if self.calls is not None:
            self.calls = []
        return calls

    def closed_form_drift(self, row: Tensor, context: TermContext) -> None:
        """row += Σ_calls a · θ_call over the calls back-propagated since the last step."""
        spans = context.layout.spans
        used = False
        for call in self.take_calls():
            if call.coefficient is None:  # built but not back-propagated
                continue
            used = True
            coefficient = call.coefficient.to(row.dtype)
            for p in call.params:
                i = context.index.get(id(p))
                if i is not None:  # a penalized tensor the optimizer does not train
                    row[spans[i]].addcmul_(p.detach().reshape(-1), coefficient)
        if not used:
            raise ValueError(
                f"L2Penalty {context.name!r} was not part of the training loss of step "
                f"{context.step}: call it (e.g. `self.{context.name}(params)`) in the loss "
                "that training_step returns"
            )
