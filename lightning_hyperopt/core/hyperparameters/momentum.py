"""``Momentum``: SGD's momentum μ, or Adam's β₁ (or β₂), of a param group (drift source
``optimizer``)."""

from __future__ import annotations

from typing import Literal

import torch

from lightning_hyperopt.core.hyperparameters.base import (
    DriftSource,
    Hyperparameter,
    Parameterization,
    read_setting,
)
from lightning_hyperopt.core.hyperparameters.weight_decay import check_group

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


class Momentum(Hyperparameter):
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

    drift_source: DriftSource = "optimizer"

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
        if group is not None and (isinstance(group, bool) or int(group) != group or group < 0):
            raise ValueError(f"group={group!r} must be a param-group index >= 0 or None")
        low, high = (float(b) for b in bounds)
        if not (0.0 <= low < high < 1.0):
            raise ValueError(f"Momentum bounds={bounds!r} must satisfy 0 <= low < high < 1")
        super().__init__(low if init is None else init, (low, high), parameterization)
        self.group = None if group is None else int(group)
        self.init_from_optimizer = init is None
        self.moment = moment

    @property
    def natural_space(self) -> Parameterization:
        return "logit"

    def groups(self, optimizer: torch.optim.Optimizer) -> list[int]:
        return list(range(len(optimizer.param_groups))) if self.group is None else [self.group]

    def optimizer_settings(self, optimizer: torch.optim.Optimizer) -> list[tuple[int, str, float]]:
        key = momentum_key(optimizer, self.moment)
        return [(k, key, 1.0) for k in self.groups(optimizer)]

    def check_optimizer(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        if self.group is not None:
            check_group("Momentum", self.group, optimizer)

    def take_initial_value(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.init_from_optimizer:
            return
        self.check_optimizer(optimizer, "")
        groups = [optimizer.param_groups[k] for k in self.groups(optimizer)]
        values = {read_momentum(g, self.moment) for g in groups}
        if len(values) > 1:
            raise ValueError(
                f"Momentum(group=None, init=None): the param groups have different momenta "
                f"{sorted(values)}; pass group= (one Momentum per group) or init="
            )
        (value,) = values
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"Momentum(init=None) takes the optimizer's momentum, which is {value:g}: it "
                "moves in log-odds, where 0 cannot move; pass init= (e.g. init=0.9)"
            )
        self.value.fill_(min(max(value, self.bounds[0]), self.bounds[1]))

    def write_to(self, optimizer: torch.optim.Optimizer) -> None:
        value = float(self.value)
        for k in self.groups(optimizer):
            group = optimizer.param_groups[k]
            if "betas" in group:
                beta1, beta2 = group["betas"]
                group["betas"] = (value, beta2) if self.moment == "first" else (beta1, value)
            else:
                group["momentum"] = value
