"""The tangent rule of ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay)."""

from __future__ import annotations

import torch

from lightning_hyperopt.core.functional import sgd_tangent
from lightning_hyperopt.core.hyperparameters.base import read_setting
from lightning_hyperopt.core.optim.rule import OptimizerRule
from lightning_hyperopt.core.optim.stages import (
    GroupStep,
    coupled_weight_decay,
    descend,
    maximize,
)


def sgd_direction(s: GroupStep) -> None:
    """d = b (or g + μ b with Nesterov), b ← μ b + (1 − τ) g: ḋ and the buffer's tangent z by
    :func:`~lightning_hyperopt.core.functional.sgd_tangent`; a parameter whose buffer torch
    has not created yet starts it on this step, as torch does."""
    first_flags = [st.get("momentum_buffer") is None for st in s.states]
    first: bool | torch.Tensor = first_flags[0]
    if len(set(first_flags)) > 1:  # a branch whose first gradient came late
        first = s.layout.expand(first_flags, slice(0, len(first_flags)))
    direction, z = sgd_tangent(
        s.gdot,
        s.carried["momentum_buffer"],
        momentum=read_setting(s.group["momentum"]),
        dampening=read_setting(s.group["dampening"]),
        nesterov=bool(s.group["nesterov"]),
        first_step=first,
    )
    s.delta, s.state = direction, {"momentum_buffer": z}


SGD_RULE = OptimizerRule(
    name="SGD",
    state_names=lambda optimizer: ("momentum_buffer",),
    stages=lambda group: (maximize, coupled_weight_decay, sgd_direction, descend),
)
