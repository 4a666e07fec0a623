"""``OptimizerSetting``: the base of the hyperparameters that are settings of the optimizer's
param groups (drift source ``optimizer``): ``WeightDecay``, ``LearningRate``, ``Momentum``.

    λ acts on param group k, or on every group (``group=None``): groups(optimizer) = [k] | all

The loss does not change: the optimizer's tangent rule differentiates its update with respect
to the setting (:mod:`lightning_hyperopt.core.settings`), and the engine writes λ into the
groups after every update (:meth:`Hyperparameter.write_to`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_hyperopt.core.hyperparameters.base import (
    DriftSource,
    Hyperparameter,
    Parameterization,
)


class OptimizerSetting(Hyperparameter):
    """A hyperparameter that sets a param-group setting of the optimizer.

    Args:
        group: the param group λ sets (an index ≥ 0), or ``None`` for every group (one λ for
            all of them).
        init: λ₀ (inside ``bounds``).
        bounds: (low, high).
        parameterization: what the paper's rule steps (see :class:`Hyperparameter`).
    """

    drift_source: DriftSource = "optimizer"

    def __init__(
        self,
        group: int | None,
        init: float,
        bounds: tuple[float, float],
        parameterization: Parameterization,
    ) -> None:
        if group is not None and (isinstance(group, bool) or int(group) != group or group < 0):
            raise ValueError(f"group={group!r} must be a param-group index >= 0 or None")
        super().__init__(init, bounds, parameterization)
        self.group = None if group is None else int(group)

    def groups(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """The param groups whose setting λ is."""
        return list(range(len(optimizer.param_groups))) if self.group is None else [self.group]

    def check_optimizer(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        """The group exists in ``optimizer``."""
        if self.group is not None and self.group >= len(optimizer.param_groups):
            raise ValueError(
                f"{type(self).__name__}(group={self.group}) but the optimizer has "
                f"{len(optimizer.param_groups)} param group(s)"
            )

    def common_value(
        self, optimizer: torch.optim.Optimizer, read: Callable[[dict], float], setting: str
    ) -> float:
        """The value ``read`` finds in every group λ sets; a clear error where the groups
        disagree (one λ cannot start from two values)."""
        self.check_optimizer(optimizer, "")
        values = {read(optimizer.param_groups[k]) for k in self.groups(optimizer)}
        if len(values) > 1:
            raise ValueError(
                f"{type(self).__name__}(group=None, init=None): the param groups have different "
                f"{setting} values {sorted(values)}; pass group= (one {type(self).__name__} per "
                "group) or init="
            )
        (value,) = values
        return value

    def clamped(self, value: float) -> float:
        """``value`` inside the bounds."""
        return min(max(value, self.bounds[0]), self.bounds[1])
