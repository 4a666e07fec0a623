"""The module's losses that the tuner evaluates itself, and the isolation they run in.

    L_V(θ)    = validation_loss(batch)  if the module defines it, else  out(validation_step(b, i))
    L_T(θ, λ) = training_loss(batch)    if the module defines it, else  out(training_step(b, i))
    out(x)    = x (a tensor)  |  x["loss"] (a dict)  |  nothing usable (anything else)

L_T is evaluated only for the finite-difference replays of a dropout keep probability. Every
pass of the tuner runs inside :class:`PassIsolation`: the module's ``self.log``/``self.log_dict``
calls are dropped and the states of its torchmetrics ``Metric`` modules are put back
afterwards, so what Lightning logs and accumulates is its own loops' alone.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

from torch import Tensor
from torchmetrics import Metric

from lightning_hyperopt._lightning import (
    LightningModule,
    metric_state,
    namespace_of,
    patched,
    restore_metric,
)


def step_loss(output: Any) -> Tensor | None:
    """The loss in a step's output: the tensor itself, or a dict's ``"loss"``; else ``None``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("loss"), Tensor):
        return output["loss"]
    return None


def describe(output: Any) -> str:
    """What a step returned, for an error message."""
    if isinstance(output, dict):
        return f"a dict without a 'loss' tensor (keys: {sorted(map(str, output))})"
    return "None" if output is None else f"a {type(output).__name__}"


def overrides(pl_module: LightningModule, name: str) -> bool:
    """Whether the module's class defines the LightningModule hook ``name`` itself."""
    base = namespace_of(pl_module).LightningModule
    return getattr(type(pl_module), name, None) is not getattr(base, name, None)


def _takes_batch_idx(hook: Any) -> bool:
    """Lightning's rule: the step gets ``batch_idx`` if its signature has room for it."""
    params = list(inspect.signature(hook).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL or p.name == "batch_idx" for p in params):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in params) >= 2


class NoLoss(TypeError):
    """A step returned nothing the tuner can differentiate."""


class ModuleLoss:
    """One of the module's losses: its dedicated method (``validation_loss``,
    ``training_loss``) when it has one, else the loss its Lightning step returns.

    Calling it returns the dedicated method's value as it is (checked by the caller), or the
    step's loss, or raises :class:`NoLoss` (a ``TypeError``) naming both ways out when the step
    returned nothing usable.
    """

    def __init__(self, pl_module: LightningModule, dedicated: str, step: str) -> None:
        self.uses_step = not callable(getattr(pl_module, dedicated, None))
        self.dedicated, self.step = dedicated, step
        self.name = step if self.uses_step else dedicated
        self._module_name = type(pl_module).__name__
        self._with_idx = self.uses_step and _takes_batch_idx(getattr(pl_module, step))

    @staticmethod
    def available(pl_module: LightningModule, dedicated: str, step: str) -> bool:
        """Whether the module has either source of this loss."""
        return callable(getattr(pl_module, dedicated, None)) or overrides(pl_module, step)

    def __call__(self, pl_module: LightningModule, batch: Any, batch_idx: int) -> Any:
        if not self.uses_step:
            return getattr(pl_module, self.dedicated)(batch)
        hook = getattr(pl_module, self.step)
        output = hook(batch, batch_idx) if self._with_idx else hook(batch)
        loss = step_loss(output)
        if loss is None:
            raise NoLoss(self.unusable(describe(output)))
        return loss

    def unusable(self, what: str) -> str:
        """The error when the step gives no loss: name both ways out."""
        return (
            f"{self._module_name}.{self.step} returned {what}, so OnlineHyperparamCallback has "
            f"no loss to differentiate: return the loss from {self.step} (a scalar tensor, or "
            f"a dict with a 'loss' entry), or the module must define `{self.dedicated}(batch) "
            "-> Tensor`"
        )


class PassIsolation:
    """The context the tuner's own passes run in (g_V, replays, probes): the module's logging
    is dropped and the states of its torchmetrics metrics are put back afterwards, so what
    Lightning logs and accumulates is its own loops' alone."""

    def __init__(self) -> None:
        self._metrics: list[Metric] = []

    def start(self, pl_module: LightningModule) -> None:
        """A new fit: find the module's metrics once."""
        self._metrics = [m for m in pl_module.modules() if isinstance(m, Metric)]

    @contextlib.contextmanager
    def __call__(self, pl_module: LightningModule) -> Iterator[None]:
        saved_metrics = [metric_state(m) for m in self._metrics]
        with patched(pl_module, "log", _dropped), patched(pl_module, "log_dict", _dropped):
            try:
                yield
            finally:
                for m, state in zip(self._metrics, saved_metrics):
                    restore_metric(m, state)


def _dropped(*args: Any, **kwargs: Any) -> None:
    """``self.log``/``self.log_dict`` inside the tuner's passes: nothing is logged."""
