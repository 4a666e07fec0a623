"""``WeightDecay``: an optimizer param group's ``weight_decay`` (drift source ``optimizer``)."""

from __future__ import annotations

import math

import torch

from lightning_hyperopt.core.hyperparameters.base import (
    DriftSource,
    Hyperparameter,
    Parameterization,
    read_setting,
)


def check_group(kind: str, group: int, optimizer: torch.optim.Optimizer) -> None:
    """Raise unless ``group`` indexes one of ``optimizer``'s param groups."""
    if group >= len(optimizer.param_groups):
        raise ValueError(
            f"{kind}(group={group}) but the optimizer has "
            f"{len(optimizer.param_groups)} param group(s)"
        )


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
    fast_start = True

    @property
    def natural_space(self) -> Parameterization:
        return "log"

    def optimizer_settings(self, optimizer: torch.optim.Optimizer) -> list[tuple[int, str, float]]:
        return [(self.group, "weight_decay", 1.0)]

    def check_optimizer(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        check_group("WeightDecay", self.group, optimizer)

    def take_initial_value(self, optimizer: torch.optim.Optimizer) -> None:
        if self.init_from_optimizer:
            check_group("WeightDecay", self.group, optimizer)
            wd = read_setting(optimizer.param_groups[self.group]["weight_decay"])
            self.value.fill_(min(max(wd, self.bounds[0]), self.bounds[1]))

    def write_to(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.param_groups[self.group]["weight_decay"] = float(self.value)
