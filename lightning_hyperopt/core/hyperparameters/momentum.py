"""``Momentum``: SGD's momentum μ, or Adam's β₁ (or β₂), of a param group (drift source
``optimizer``)."""

from __future__ import annotations

from typing import Literal

import torch

from lightning_hyperopt.core.hyperparameters.base import Parameterization, read_setting
from lightning_hyperopt.core.hyperparameters.optimizer_setting import OptimizerSetting

Moment = Literal["first", "second"]


def momentum_key(optimizer: torch.optim.Optimizer, moment: Moment = "first") -> str:
    """The setting a momentum is in this optimizer: ``"momentum"`` (SGD), ``"beta1"`` or
    ``"beta2"`` (Adam, AdamW: ``betas[0]``, ``betas[1]``)."""
    if "betas" not in optimizer.defaults:
        return "momentum" if moment == "first" else "beta2"  # SGD has no β₂: refused later
    return "beta1" if moment == "first" else "beta2"


def read_momentum(group: dict, moment: Moment = "first") -> float:
    if "betas" in group:
        return read_setting(group["betas"][0 if moment == "first" else 1])
    return read_setting(group["momentum"])


class Momentum(OptimizerSetting):
    """The momentum of param group ``group`` (every group when ``None``), tuned online:

        SGD        b ← μ b + (1 − τ) g:              ∂b/∂λ gains ∂μ/∂λ · b
        Adam(W)    m ← β₁ m + (1 − β₁) g, c₁ = 1 − β₁ᵗ:  ∂m/∂λ gains (m − g), and the bias
                   correction's derivative −t β₁ᵗ⁻¹ enters the update

    The tangent is the exact forward-mode derivative of torch's update, the direct terms on
    the momentum buffer (first moment) and Adam's bias correction included. The tuner writes
    λ into the group (``momentum``, or ``betas[0]`` keeping β₂) after every update. λ moves in
    log-odds (a momentum near 1 moves in its horizon 1/(1 − μ)), so it cannot start at 0.

    ``moment="second"`` tunes Adam's β₂ instead (``betas[1]``): v ← β₂ v + (1 − β₂) g², with
    its direct term (v − g²) and the bias correction 1 − β₂ᵗ's derivative.

    Args:
        group: the param group; ``None``: every group (one λ for all).
        init: λ₀; ``None`` takes the group's value at fit start (it must be in (0, 1)).
        bounds: (low, high) inside [0, 1).
        parameterization: what the paper's rule steps (``"logit"`` by default).
        moment: ``"first"`` (SGD's momentum, Adam's β₁) or ``"second"`` (Adam's β₂).
    """

    short_horizon_bias = True

    def __init__(
        self,
        group: int | None = None,
        init: float | None = None,
        bounds: tuple[float, float] = (0.0, 0.999),
        parameterization: Parameterization = "logit",
        moment: Moment = "first",
    ) -> None:
        if moment not in ("first", "second"):
            raise ValueError(f"moment={moment!r} is not supported; accepted: 'first', 'second'")
        low, high = (float(b) for b in bounds)
        if not (0.0 <= low < high < 1.0):
            raise ValueError(f"Momentum bounds={bounds!r} must satisfy 0 <= low < high < 1")
        super().__init__(group, low if init is None else init, (low, high), parameterization)
        self.init_from_optimizer = init is None
        self.moment = moment

    @property
    def natural_space(self) -> Parameterization:
        return "logit"

    def optimizer_settings(self, optimizer: torch.optim.Optimizer) -> list[tuple[int, str, float]]:
        key = momentum_key(optimizer, self.moment)
        return [(k, key, 1.0) for k in self.groups(optimizer)]

    def initial_value(self, optimizer: torch.optim.Optimizer) -> float | None:
        if not self.init_from_optimizer:
            return None
        value = self.common_value(optimizer, lambda g: read_momentum(g, self.moment), "momentum")
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"Momentum(init=None) takes the optimizer's momentum, which is {value:g}: it "
                "moves in log-odds, where 0 cannot move; pass init= (e.g. init=0.9)"
            )
        return self.clamped(value)

    def write_to(self, optimizer: torch.optim.Optimizer) -> None:
        value = float(self.value)
        for k in self.groups(optimizer):
            group = optimizer.param_groups[k]
            if "betas" in group:
                beta1, beta2 = group["betas"]
                group["betas"] = (value, beta2) if self.moment == "first" else (beta1, value)
            else:
                group["momentum"] = value
