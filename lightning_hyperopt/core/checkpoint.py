"""The engine's state as plain values: its checkpoint (what a resumed run needs to follow the
uninterrupted one bit for bit) and its metrics (what a logger shows).

Plain tensors, lists and numbers only (torch's weights-only loading accepts them, a dataclass
would not): the tangent y and the optimizer-state tangents, first order's direction, the step
and update counters, the last learning rate, the non-finite counts, and the λ step's state (its
update points and the hyper optimizer's moments). λ itself is the hyperparameters' buffer, in
the module's ``state_dict`` (those the Lightning callback brings are in its own state).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from lightning_hyperopt.core.engine import TangentEngine


def engine_state(engine: TangentEngine) -> dict[str, Any]:
    """The engine's state as plain values."""
    return {
        "names": list(engine.names),
        "step": engine.step,
        "updates": engine.updates,
        "lr": engine.lr,
        "nonfinite": engine.nonfinite,
        "tangent": engine.tangent.detach().clone(),
        "optimizer_tangents": engine.rule.state_dict(),
        "direction": None if engine.direction is None else engine.direction.detach().clone(),
        **engine.hyper_step.state_dict(),
    }


def load_engine_state(engine: TangentEngine, state: Mapping[str, Any]) -> None:
    """Restore :func:`engine_state`'s values; a clear error when they belong to another model
    (other hyperparameters, other parameters, another optimizer)."""
    if list(state["names"]) != engine.names:
        raise ValueError(
            f"the checkpoint tunes hyperparameters {list(state['names'])} but the model "
            f"declares {engine.names}"
        )
    tangent = state.get("tangent")
    like = engine.tangent
    if not isinstance(tangent, Tensor) or tuple(tangent.shape) != tuple(like.shape):
        raise ValueError(
            "the checkpoint's tangents do not match the model's parameters "
            f"(expected a tensor of shape {tuple(like.shape)})"
        )
    engine.rule.load_state_dict(state["optimizer_tangents"], like)
    engine.step = int(state["step"])
    engine.updates = int(state["updates"])
    engine.lr = float(state["lr"])
    engine.guard.counts.load([int(n) for n in state["nonfinite"]])
    engine.tangent = tangent.to(like.device, like.dtype)
    direction = state.get("direction")
    engine.direction = None if direction is None else direction.to(like.device, like.dtype)
    engine.hyper_step.load_state_dict(
        {
            "update_points": state.get("update_points", engine.updates),
            "hyper_optimizer": state.get("hyper_optimizer", {}),
        },
        engine.step,
    )


def engine_metrics(engine: TangentEngine) -> dict[str, Tensor]:
    """Per hyperparameter ``name``: λ (``name``), ``name/hypergradient`` (the last),
    ``name/tangent_norm`` (‖y‖, methods with a tangent), ``name/clipped`` (ClipR),
    ``name/nonfinite`` (the skipped steps, tangents and hypergradients) and its kind's own
    (e.g. ``name/effective_lr``). Device tensors: reading them is the caller's choice."""
    out: dict[str, Tensor] = {}
    counts = engine.guard.counts.as_tensor().float()
    norms = engine.norms if engine.norms is not None else engine.tangent.norm(dim=1)
    for j, name in enumerate(engine.names):
        out[name] = engine.hypers[j].value.detach()
        if engine.hypergradients is not None:
            out[f"{name}/hypergradient"] = engine.hypergradients[j]
        if engine.method.uses_tangent:
            out[f"{name}/tangent_norm"] = norms[j]
        if engine.clipped is not None:
            out[f"{name}/clipped"] = engine.clipped[j].float()
        out[f"{name}/nonfinite"] = counts[j]
        for key, value in engine.hypers[j].extra_metrics(engine.optimizer).items():
            out[f"{name}/{key}"] = value
    return out
