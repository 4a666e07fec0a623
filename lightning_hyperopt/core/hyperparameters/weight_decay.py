"""``WeightDecay``: an optimizer param group's ``weight_decay`` (drift source ``optimizer``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import Parameterization, read_setting
from lightning_hyperopt.core.hyperparameters.optimizer_setting import OptimizerSetting


class WeightDecay(OptimizerSetting):
    """The ``weight_decay`` of one optimizer param group (or of every group), tuned online; the
    loss is unchanged.

    SGD and Adam add wd·θ to the gradient of that group (coupled): ∂g/∂λ = θ there, and the
    Hessian gains wd·I. AdamW decays the weights directly (decoupled): θ ← θ(1 − η·wd) before
    its update, so ∂θ_{t+1}/∂λ gains −η·θ. The optimizer decides which rule applies; the
    tuner writes λ back into ``optimizer.param_groups[group]["weight_decay"]`` after every
    update.

    Args:
        group: index of the param group in the optimizer; ``None``: every group (one λ).
        init: starting value; ``None`` takes the group's ``weight_decay`` at fit start.
        bounds: (low, high).
        parameterization: what the paper's rule steps (see :class:`Hyperparameter`).
    """

    fast_start = True

    def __init__(
        self,
        group: int | None = 0,
        init: float | None = None,
        bounds: tuple[float, float] = (0.0, math.inf),
        parameterization: Parameterization = "identity",
    ) -> None:
        low = float(bounds[0])
        super().__init__(group, low if init is None else init, bounds, parameterization)
        self.init_from_optimizer = init is None

    @property
    def natural_space(self) -> Parameterization:
        return "log"

    def optimizer_settings(self, optimizer: torch.optim.Optimizer) -> list[tuple[int, str, float]]:
        return [(k, "weight_decay", 1.0) for k in self.groups(optimizer)]

    def initial_value(self, optimizer: torch.optim.Optimizer) -> float | None:
        if not self.init_from_optimizer:
            return None
        wd = self.common_value(optimizer, lambda g: read_setting(g["weight_decay"]), "weight_decay")
        return self.clamped(wd)

    def extra_metrics(
        self, optimizer: torch.optim.Optimizer, lr_scales: Mapping[int, float] | None = None
    ) -> dict[str, Tensor]:
        """Under a decoupled weight decay (AdamW), ``effective_decay``: the share of θ a step
        takes off, η_t·λ, with η_t the learning rate torch steps with (a tuned factor included);
        a coupled one has none (it enters the gradient)."""
        k = self.groups(optimizer)[0]
        group = optimizer.param_groups[k]
        if not group.get("decoupled_weight_decay", False):
            return {}
        lr = read_setting(group["lr"]) * (lr_scales or {}).get(k, 1.0)
        return {"effective_decay": self.value.detach() * lr}

    def write_to(self, optimizer: torch.optim.Optimizer) -> None:
        value = float(self.value)
        for k in self.groups(optimizer):
            optimizer.param_groups[k]["weight_decay"] = value
