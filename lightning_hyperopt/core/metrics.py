"""What the engine reports per hyperparameter, as device tensors (reading them is the caller's
choice): the values a logger shows under ``hyperopt/<name>``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_hyperopt.core.engine_state import EngineState
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.methods import HyperMethod
from lightning_hyperopt.core.settings import OptimizerSettings


def engine_metrics(
    names: Sequence[str],
    hypers: Sequence[Hyperparameter],
    state: EngineState,
    method: HyperMethod,
    nonfinite: Tensor,
    settings: OptimizerSettings,
    diagnostics: bool = True,
) -> dict[str, Tensor]:
    """Per hyperparameter ``name``: λ (``name``) and its kind's own (e.g.
    ``name/effective_lr``); with ``diagnostics`` also ``name/hypergradient`` (the last),
    ``name/tangent_norm`` (‖y‖, methods with a tangent), ``name/clipped`` (ClipR) and
    ``name/nonfinite`` (the skipped steps, tangents and hypergradients, ``nonfinite`` per row)."""
    out: dict[str, Tensor] = {}
    for j, name in enumerate(names):
        out[name] = hypers[j].value.detach()
        for key, value in hypers[j].extra_metrics(settings.optimizer, settings.lr_scales).items():
            out[f"{name}/{key}"] = value
    if diagnostics:
        out.update(_diagnostics(names, state, method, nonfinite))
    return out


def _diagnostics(
    names: Sequence[str], state: EngineState, method: HyperMethod, nonfinite: Tensor
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    counts = nonfinite.float()
    norms = state.norms if state.norms is not None else state.tangent.norm(dim=1)
    for j, name in enumerate(names):
        if state.hypergradients is not None:
            out[f"{name}/hypergradient"] = state.hypergradients[j]
        if method.uses_tangent:
            out[f"{name}/tangent_norm"] = norms[j]
        if state.clipped is not None:
            out[f"{name}/clipped"] = state.clipped[j].float()
        out[f"{name}/nonfinite"] = counts[j]
    return out
