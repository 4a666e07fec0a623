"""The tangent rule of ``torch.optim.Adam`` and ``AdamW`` (amsgrad, coupled or decoupled weight
decay, maximize, foreach/fused: the same update)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_hyperopt.core.functional import adam_direction, adam_tangent
from lightning_hyperopt.core.hyperparameters.base import read_setting
from lightning_hyperopt.core.optim.rule import OptimizerRule
from lightning_hyperopt.core.optim.stages import (
    GroupTangent,
    Stage,
    coupled_weight_decay,
    decoupled_weight_decay,
    descend,
    maximize,
    scaled_learning_rate,
)

MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def adam_direction_stage(s: GroupTangent) -> None:
    """d = m̂ / (√v̂ + ε) with Adam's moments and bias corrections: ḋ and the moments'
    tangents by :func:`~lightning_hyperopt.core.functional.adam_tangent` (with β₁'s and β₂'s
    own terms where they are tuned), per parameter from torch's state (a parameter whose
    state starts later has its own step count). The update D = d itself where a scaled
    learning rate needs it."""
    assert s.g is not None, "Adam's tangent reads the gradient"
    beta1, beta2 = (read_setting(b) for b in s.group["betas"])
    amsgrad = bool(s.group.get("amsgrad", False))
    used = [name != MOMENTS[2] or amsgrad for name in MOMENTS]
    moments = tuple(
        s.layout.flatten(st.get(name) for st in s.states) if on else None
        for name, on in zip(MOMENTS, used)
    )
    steps, eps = _step_counts(s), read_setting(s.group["eps"])
    if s.wants_value:
        value = adam_direction(s.g, moments, steps, beta1, beta2, eps)  # type: ignore[arg-type]
        s.value = value.to(s.gdot.dtype) if value.dtype != s.gdot.dtype else value
    zero = s.gdot_zero and "beta1" not in s.dots and "beta2" not in s.dots
    if zero and all(t is None for t in s.carried.values()):
        # ġ = 0 with zero moment tangents and no β tuned: ḋ = 0 and the moments' tangents
        # stay 0 (first order on optimizer settings: the direction is D's and θ's terms only)
        s.delta = s.gdot
        s.state = dict.fromkeys(s.carried)
        return
    zeros = s.gdot.new_zeros(s.gdot.shape)
    tangents = tuple(
        (s.carried.get(name) if s.carried.get(name) is not None else zeros) if on else None
        for name, on in zip(MOMENTS, used)
    )
    direction, new = adam_tangent(
        s.gdot,
        s.g,
        moments,  # type: ignore[arg-type]
        tangents,  # type: ignore[arg-type]
        steps,
        beta1,
        beta2,
        eps,
        beta1_dot=s.dots.get("beta1"),
        beta2_dot=s.dots.get("beta2"),
    )
    if direction.dtype != s.gdot.dtype:  # per-entry float64 bias corrections
        direction = direction.to(s.gdot.dtype)
    s.delta = direction
    s.state = dict(zip(s.carried, new[: len(s.carried)]))


def _step_counts(s: GroupTangent) -> float | Tensor:
    """Torch's step count per parameter before this step: one number when they agree, else a
    vector over the entries (float64); device tensors (capturable, fused) stay on the device."""
    steps = [st.get("step", 0.0) for st in s.states]
    every = slice(0, len(steps))
    if all(not isinstance(t, Tensor) or t.device.type == "cpu" for t in steps):
        values = [read_setting(t) for t in steps]
        return values[0] if len(set(values)) == 1 else s.layout.expand(values, every).double()
    device = s.gdot.device  # capturable / fused state on the device: no host sync
    return torch.repeat_interleave(
        torch.stack([torch.as_tensor(t, device=device).double() for t in steps]),
        torch.tensor(s.layout.sizes[every], device=device),
    )


def _stages(group: dict) -> tuple[Stage, ...]:
    if group.get("decoupled_weight_decay", False):  # AdamW
        return (
            maximize,
            adam_direction_stage,
            decoupled_weight_decay,
            scaled_learning_rate,
            descend,
        )
    return (maximize, coupled_weight_decay, adam_direction_stage, scaled_learning_rate, descend)


def _state_names(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    if any(g.get("amsgrad", False) for g in optimizer.param_groups):
        return MOMENTS
    return MOMENTS[:2]


def _needs_theta(optimizer: torch.optim.Optimizer) -> bool:
    """Adam's coupled weight decay enters the moments: g + wd θ."""
    return any(
        read_setting(g["weight_decay"]) != 0.0 and not g.get("decoupled_weight_decay", False)
        for g in optimizer.param_groups
    )


ADAM_RULE = OptimizerRule(
    name="Adam",
    state_names=_state_names,
    stages=_stages,
    reads_grad=True,
    needs_theta=_needs_theta,
    settings=("weight_decay", "lr_scale", "beta1", "beta2"),
)
