"""The base of every hyperparameter: a scalar λ kept in a ``state_dict``, never in ``parameters()``.

Each is an ``nn.Module`` holding a 0-dim buffer ``value`` (so it is saved in checkpoints and moved
by ``.to(device)``), with bounds and a parameterization for the online update. A kind of
hyperparameter says how the engine obtains its term of the tangent's drift, ∂g_T/∂λ (or its
direct part in the optimizer's update), through one small protocol (``drift_source`` and the
methods below), so that a new kind is one file:

    autograd           λ's ``value`` is in the training loss's graph: the engine differentiates
                       it with the step's own backward (:class:`Hyperparameter`)
    closed_form        the kind computes ∂g_T/∂λ itself from what it recorded while the loss was
                       built (:meth:`Hyperparameter.closed_form_drift`; ``L2Penalty``)
    finite_difference  differences of replayed losses at λ ± ε, or of one replay and the
                       step's own gradient (:meth:`Hyperparameter.perturbed`,
                       :meth:`Hyperparameter.replayed_signs`; ``KeepProbability``)
    optimizer          λ is a setting of the optimizer's param groups, which the optimizer's
                       tangent rule differentiates (:meth:`Hyperparameter.optimizer_settings`;
                       ``WeightDecay``)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_hyperopt.core.layout import FlatLayout

Parameterization = Literal["identity", "log", "logit"]
PARAMETERIZATIONS = ("identity", "log", "logit")
#: how ∂g_T/∂λ is obtained (see the module's docstring)
DriftSource = Literal["autograd", "closed_form", "optimizer", "finite_difference"]

#: False while the tuner replays or evaluates losses of its own (finite differences, g_V):
#: penalties called there are not terms of the training step's loss
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lightning_hyperopt_recording", default=True
)


@dataclass(frozen=True)
class TermContext:
    """What a drift term sees of the step (the argument of
    :meth:`Hyperparameter.closed_form_drift`): row ``row`` (λ named ``name``) at step ``step``,
    the optimized parameters' ``layout`` and each one's position (``index``: id → i)."""

    name: str
    row: int
    step: int
    layout: FlatLayout
    index: Mapping[int, int]


def is_recording() -> bool:
    """Whether losses built now are terms of the training step's loss (see :func:`not_recorded`)."""
    return _RECORDING.get()


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

    #: whether :class:`AdaptiveStep`'s large first steps (``initial_lr``) apply to this kind:
    #: yes for regularizers (an over-regularized start cripples the network until λ leaves
    #: it), no for a generic scalar, a learning rate or a momentum (a 30% step on a learning
    #: rate can make the run diverge); those move by ``lr`` from the first update
    fast_start: bool = False

    #: whether the one-step (greedy) hypergradient of this kind is biased (the short-horizon
    #: bias, Wu et al. 2018): a learning rate or a momentum sets how far θ travels, and a
    #: greedy step prefers less travel now. A fit that tunes such a kind gets a carried
    #: tangent by default (:func:`~lightning_hyperopt.core.methods.default_method`) and no
    #: row takes large first steps (:func:`~lightning_hyperopt.core.hyper_update.
    #: fast_start_rows`)
    short_horizon_bias: bool = False

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # λ follows the module's device but keeps float64 under .half()/.float()/bf16-true:
        # hyper steps are often ~1e-7 of λ (float32 on MPS, which has no float64)
        master = self.value
        super()._apply(fn, recurse)
        device = self.value.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self._buffers["value"] = master.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------ the derivative-term protocol
    #: how the engine gets ∂g_T/∂λ for this hyperparameter
    drift_source: DriftSource = "autograd"

    def attach(self) -> None:
        """The engine starts tuning λ (by default: λ's value requires grad, see :meth:`track`)."""
        self.track(True)

    def detach(self) -> None:
        """The engine stops tuning λ: undo :meth:`attach`."""
        self.track(False)

    def track(self, enabled: bool) -> None:
        """For ``drift_source = "autograd"``: whether ``value`` requires grad. A training loss
        built while it does has the graph to λ that the engine's backward differentiates (the
        engine switches it off between training steps, so that reading λ elsewhere does not
        meet a tensor that requires grad)."""
        if self.drift_source == "autograd":
            self.value.requires_grad_(enabled)

    def discard(self) -> None:
        """Forget what was recorded for micro-batches whose gradient was dropped."""

    def closed_form_drift(self, row: Tensor, context: TermContext) -> None:
        """For ``drift_source = "closed_form"``: add ∂g_T/∂λ of the step's back-propagated
        losses to ``row`` (N,), the flat parameters' entries (``context`` gives the layout)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form drift")

    def optimizer_settings(self, optimizer: torch.optim.Optimizer) -> list[tuple[int, str, float]]:
        """For ``drift_source = "optimizer"``: the param-group settings λ sets, as
        (group, key, ∂setting/∂λ) (e.g. ``(0, "weight_decay", 1.0)``). The key
        ``"lr_scale"`` scales the group's learning rate (the optimizer steps with λ·lr)."""
        raise NotImplementedError(f"{type(self).__name__} sets no optimizer setting")

    def check_optimizer(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        """Raise a clear error, naming the hyperparameter ``name``, if λ cannot act on
        ``optimizer`` (a group index out of range, a setting the optimizer lacks)."""

    def initial_value(self, optimizer: torch.optim.Optimizer) -> float | None:
        """On a fresh start (not a resume): λ₀ as the optimizer sets it, where the kind takes it
        from there (e.g. ``WeightDecay(init=None)``); ``None``: λ₀ is the kind's own ``init``."""
        return None

    def write_to(self, optimizer: torch.optim.Optimizer) -> None:
        """Write λ into the optimizer, for the settings it sets (after every update)."""

    def extra_metrics(
        self, optimizer: torch.optim.Optimizer, lr_scales: Mapping[int, float] | None = None
    ) -> dict[str, Tensor]:
        """Metrics of this kind logged beside λ (``hyperopt/<name>/<key>``): its effective
        value. ``lr_scales``: per param group, the factor a tuned learning rate puts on its lr."""
        return {}

    def replayed_signs(self) -> tuple[int, ...]:
        """For ``drift_source = "finite_difference"``: the signs :meth:`perturbed` is replayed
        with, (+1, −1) for a two-sided difference; a one-sided one replays a single side and
        takes the other, λ itself, from the step's own gradient (the replays then draw the
        step's own randomness)."""
        return (1, -1)

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


def find_hyperparameters(module: nn.Module) -> dict[str, Hyperparameter]:
    """Every :class:`Hyperparameter` in ``module``'s tree, keyed by its dotted module path."""
    return {name: m for name, m in module.named_modules() if isinstance(m, Hyperparameter)}


def read_setting(value: Any) -> float:
    """A param-group setting as a float (torch allows 0-dim tensors for ``lr`` and others)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)
