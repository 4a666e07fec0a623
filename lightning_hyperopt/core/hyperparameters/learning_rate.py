"""``LearningRate``: a multiplier λ of a param group's learning rate (drift source
``optimizer``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import Parameterization, read_setting
from lightning_hyperopt.core.hyperparameters.optimizer_setting import OptimizerSetting


class LearningRate(OptimizerSetting):
    """λ scales the learning rate of param group ``group`` (of every group when ``None``):

        η_t = λ · lr_t,   lr_t = ``param_groups[k]["lr"]`` at step t, as the schedule set it,

    so ∂θ_{t+1}/∂λ gains −lr_t·D_t, with D_t the step's update per unit learning rate (SGD's
    direction with momentum and weight decay, Adam's m̂/(√v̂ + ε), AdamW's plus wd·θ): the
    tangent is the exact forward-mode derivative of torch's own update at η_t. The optimizer
    steps with η_t only inside its step; outside, the group's ``"lr"`` holds the schedule's
    own value, so a chained scheduler (StepLR, ExponentialLR, ReduceLROnPlateau) never
    compounds λ and ``LearningRateMonitor`` shows the schedule. λ moves in log space (a
    multiplicative step). Where the schedule sets lr_t = 0 the step adds nothing to the
    tangent (finite); λ moves only by what the tangent carries from earlier steps (first
    order: by that step's δ = D/λ, which does not vanish).

    Logged: ``hyperopt/<name>`` (λ) and ``hyperopt/<name>/effective_lr`` (λ·lr_t of the first
    group it scales).

    Args:
        group: the param group whose learning rate λ scales; ``None``: every group.
        init: λ₀ (1: the schedule as configured).
        bounds: (low, high) with low > 0.
        parameterization: what the paper's rule steps (``"log"``: multiplicative).
    """

    short_horizon_bias = True

    def __init__(
        self,
        group: int | None = None,
        init: float = 1.0,
        bounds: tuple[float, float] = (1e-3, 1e3),
        parameterization: Parameterization = "log",
    ) -> None:
        if not float(bounds[0]) > 0:
            raise ValueError(
                f"LearningRate bounds={bounds!r} must have low > 0 (a learning rate scale)"
            )
        super().__init__(group, init, bounds, parameterization)

    @property
    def natural_space(self) -> Parameterization:
        return "log"

    def optimizer_settings(self, optimizer: torch.optim.Optimizer) -> list[tuple[int, str, float]]:
        return [(k, "lr_scale", 1.0) for k in self.groups(optimizer)]

    def extra_metrics(
        self, optimizer: torch.optim.Optimizer, lr_scales: Mapping[int, float] | None = None
    ) -> dict[str, Tensor]:
        lr = read_setting(optimizer.param_groups[self.groups(optimizer)[0]]["lr"])
        return {"effective_lr": self.value.detach() * lr}
