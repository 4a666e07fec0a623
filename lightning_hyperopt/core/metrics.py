"""What the engine reports per hyperparameter, as device tensors (reading them is the caller's
choice): the values a logger shows under ``hyperopt/<name>``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_hyperopt.core.engine_state import EngineState
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter


def engine_metrics(
    names: Sequence[str],
    hypers: Sequence[Hyperparameter],
    state: EngineState,
    uses_tangent: bool,
    nonfinite: Tensor,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Tensor]:
    """Per hyperparameter ``name``: λ (``name``), ``name/hypergradient`` (the last),
    ``name/tangent_norm`` (‖y‖, methods with a tangent), ``name/clipped`` (ClipR),
    ``name/nonfinite`` (the skipped steps, tangents and hypergradients, ``nonfinite`` per row)
    and its kind's own (e.g. ``name/effective_lr``)."""
    out: dict[str, Tensor] = {}
    counts = nonfinite.float()
    norms = state.norms if state.norms is not None else state.tangent.norm(dim=1)
    for j, name in enumerate(names):
        out[name] = hypers[j].value.detach()
        if state.hypergradients is not None:
            out[f"{name}/hypergradient"] = state.hypergradients[j]
        if uses_tangent:
            out[f"{name}/tangent_norm"] = norms[j]
        if state.clipped is not None:
            out[f"{name}/clipped"] = state.clipped[j].float()
        out[f"{name}/nonfinite"] = counts[j]
        for key, value in hypers[j].extra_metrics(optimizer).items():
            out[f"{name}/{key}"] = value
    return out
