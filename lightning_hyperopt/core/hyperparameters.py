"""Hyperparameters a model declares: scalars kept in its ``state_dict``, never in ``parameters()``.

Each is an ``nn.Module`` holding a 0-dim buffer ``value`` (so it is saved in checkpoints and moved
by ``.to(device)``), with bounds and a parameterization for the online update.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

Parameterization = Literal["identity", "log", "logit"]
PARAMETERIZATIONS = ("identity", "log", "logit")
#: how ∂g_T/∂λ is obtained: λ in the loss's graph (autograd), in closed form from the terms the
#: hyperparameter recorded (``closed_form``: ``L2Penalty``), applied by the optimizer, or estimated
#: by central finite differences of replayed losses (see ``Hyperparameter.perturbed``)
DriftSource = Literal["autograd", "closed_form", "optimizer", "finite_difference"]

#: False while the tuner replays or evaluates losses of its own (finite differences, g_V):
#: penalties called there are not terms of the training step's loss
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lightning_hyperopt_recording", default=True
)


@contextlib.contextmanager
def not_recorded() -> Iterator[None]:
    """Within the context, penalty calls are not recorded as terms of the training loss."""
    token = _RECORDING.set(False)
    try:
        yield
    finally:
        _RECORDING.reset(token)


class Hyperparameter(nn.Module):
    """A scalar λ that the training loss L_T(θ, λ) depends on differentiably.

    Use ``self.my_hparam.value`` (or call ``self.my_hparam()``) in the training loss that
    ``training_step`` returns; the tuner differentiates through it to get ∂g_T/∂λ (through λ's
    own part of the graph).

    Args:
        init: starting value λ₀, inside ``bounds``.
        bounds: (low, high); λ is clamped into them after every update.
        parameterization: the value the paper's hyper step (:class:`PaperStep`) moves:
            ``"identity"`` λ itself; ``"log"`` u = log λ (λ = eᵘ, so the step is
            multiplicative; needs low > 0); ``"logit"`` u = log(λ/(1 − λ)) (bounds in [0, 1]).
    """

    def __init__(
        self,
        init: float,
        bounds: tuple[float, float] = (0.0, math.inf),
        parameterization: Parameterization = "identity",
    ) -> None:
        super().__init__()
        low, high = (float(b) for b in bounds)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization={parameterization!r} is not supported; "
                f"accepted values: {PARAMETERIZATIONS}"
            )
        if not low < high or math.isnan(low) or math.isnan(high):
            raise ValueError(f"bounds={bounds!r} must satisfy low < high")
        if parameterization == "log" and low <= 0:
            raise ValueError(f"parameterization='log' needs bounds with low > 0, got {bounds!r}")
        if parameterization == "logit" and not (low >= 0 and high <= 1):
            raise ValueError(f"parameterization='logit' needs bounds inside [0, 1], got {bounds!r}")
        if not low <= float(init) <= high:
            raise ValueError(f"init={init!r} is outside bounds={bounds!r}")
        self.bounds = (low, high)
        self.parameterization = parameterization
        # float64: hyper steps are often ~1e-7 of λ, below float32's resolution
        self.register_buffer("value", torch.tensor(float(init), dtype=torch.float64))

    def forward(self) -> Tensor:
        return self.value

    @property
    def natural_space(self) -> Parameterization:
        """The parameterization the adaptive hyper step (:class:`AdaptiveStep`) moves: the
        declared one here; log for penalties and weight decay, the probability itself for keep
        probabilities."""
        return self.parameterization

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # λ follows the module's device but keeps float64 under .half()/.float()/bf16-true:
        # hyper steps are often ~1e-7 of λ (float32 on MPS, which has no float64)
        master = self.value
        super()._apply(fn, recurse)
        device = self.value.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self._buffers["value"] = master.to(device=device, dtype=dtype)
        return self

    #: how the engine gets ∂g_T/∂λ for this hyperparameter
    drift_source: DriftSource = "autograd"

    @contextlib.contextmanager
    def perturbed(self, sign: int, seed: int) -> Iterator[float]:
        """For ``drift_source = "finite_difference"``: within the context, replayed training
        losses see λ shifted up (``sign=+1``) or down (``sign=-1``); it yields the value in
        use, so ∂g_T/∂λ ≈ (g_T(λ₊) − g_T(λ₋)) / (λ₊ − λ₋). ``seed`` is the same for both
        signs, for coupled random draws."""
        raise NotImplementedError(f"{type(self).__name__} has no finite-difference drift")
        yield 0.0  # pragma: no cover

    def extra_repr(self) -> str:
        return (
            f"value={self.value.item():.4g}, bounds={self.bounds}, "
            f"parameterization={self.parameterization!r}"
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
            and _RECORDING.get()
        ):
            call = PenaltyCall(params)
            out.register_hook(call.record)
            self.calls.append(call)
        return out

    @property
    def natural_space(self) -> Parameterization:
        return "log"  # a coefficient's scale: steps multiply it

    def record_calls(self, enabled: bool) -> None:
        """Start (a tuner is attached) or stop recording the calls of training losses."""
        self.calls = [] if enabled else None

    def drop_back_propagated(self) -> None:
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


class WeightDecay(Hyperparameter):
    """The ``weight_decay`` of one optimizer param group, tuned online; the loss is unchanged.

    SGD and Adam add wd·θ to the gradient of that group (coupled): ∂g/∂λ = θ there, and the
    Hessian gains wd·I. AdamW decays the weights directly (decoupled): θ ← θ(1 − η·wd) before
    its update, so ∂θ_{t+1}/∂λ gains −η·θ. The optimizer decides which rule applies; the
    tuner writes λ back into ``optimizer.param_groups[group]["weight_decay"]`` after every
    update.

    Args:
        group: index of the param group in the optimizer.
        init: starting value; ``None`` takes the group's ``weight_decay`` at fit start.
    """

    def __init__(
        self,
        group: int = 0,
        init: float | None = None,
        bounds: tuple[float, float] = (0.0, math.inf),
        parameterization: Parameterization = "identity",
    ) -> None:
        if group < 0:
            raise ValueError(f"group={group} must be a param-group index >= 0")
        low = float(bounds[0])
        super().__init__(low if init is None else init, bounds, parameterization)
        self.group = group
        self.init_from_optimizer = init is None

    drift_source: DriftSource = "optimizer"

    @property
    def natural_space(self) -> Parameterization:
        return "log"
