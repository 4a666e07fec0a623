"""The tangent rule of ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay)."""

from __future__ import annotations

import torch

from lightning_hyperopt.core.functional import sgd_direction, sgd_tangent
from lightning_hyperopt.core.hyperparameters.base import read_setting
from lightning_hyperopt.core.optim.rule import OptimizerRule
from lightning_hyperopt.core.optim.stages import (
    GroupTangent,
    coupled_weight_decay,
    descend,
    maximize,
    scaled_learning_rate,
)


def sgd_direction_stage(s: GroupTangent) -> None:
    """d = b (or g + μ b with Nesterov), b ← μ b + (1 − τ) g: ḋ and the buffer's tangent z by
    :func:`~lightning_hyperopt.core.functional.sgd_tangent` (with the momentum's own term
    where it is tuned); a parameter whose buffer torch has not created yet starts it on this
    step, as torch does. The update D = d itself where a scaled learning rate needs it."""
    first_flags = [st.get("momentum_buffer") is None for st in s.states]
    first: bool | torch.Tensor = first_flags[0]
    if len(set(first_flags)) > 1:  # a branch whose first gradient came late
        first = s.layout.expand(first_flags, slice(0, len(first_flags)))
    momentum = read_setting(s.group["momentum"])
    dampening = read_setting(s.group["dampening"])
    nesterov = bool(s.group["nesterov"])
    momentum_dot = s.dots.get("momentum")
    buffers = None
    if s.wants_value or momentum_dot is not None:
        assert s.g is not None, "the update's value needs the gradient"
        old = None
        if not all(first_flags):
            old = s.layout.flatten(st.get("momentum_buffer") for st in s.states)
        s.value, new = sgd_direction(s.g, old, momentum, dampening, nesterov, first)
        if new is not None:
            buffers = (old, new)
    direction, z = sgd_tangent(
        s.gdot,
        s.carried["momentum_buffer"],
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        first_step=first,
        momentum_dot=momentum_dot,
        buffers=buffers,
    )
    s.delta, s.state = direction, {"momentum_buffer": z}


SGD_RULE = OptimizerRule(
    name="SGD",
    state_names=lambda optimizer: ("momentum_buffer",),
    stages=lambda group: (
        maximize,
        coupled_weight_decay,
        sgd_direction_stage,
        scaled_learning_rate,
        descend,
    ),
    settings=("weight_decay", "lr_scale", "momentum"),
)
