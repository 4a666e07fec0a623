"""``OptimizerSettings``: the hyperparameters that are settings of the optimizer's param groups.

A hyperparameter of drift source ``optimizer`` sets param-group settings (WeightDecay its
group's ``weight_decay``, Momentum ``momentum`` or ``betas``, LearningRate a scale s of ``lr``).
Their λ enters the tangent only through the optimizer's update, which the tangent rule
differentiates given each setting's tangent ∂setting/∂λ_j (:mod:`lightning_hyperopt.core.optim`):

    written settings    λ is written into the group after every update (:meth:`write`)
    a learning rate     the group keeps the schedule's lr_t; the step runs at η_t = s·lr_t
                        (:meth:`scaled_learning_rates` around ``optimizer.step()``)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.layout import FlatLayout
from lightning_hyperopt.core.optim.rule import OptimizerRule, SettingTangents


def setting_tangents(
    names: Sequence[str],
    hypers: Sequence[Hyperparameter],
    optimizer: torch.optim.Optimizer,
    layout: FlatLayout,
    rule: OptimizerRule,
) -> tuple[SettingTangents, dict[int, int]]:
    """Per param group, the tangent (m,) of each setting a hyperparameter sets (row j holds
    ∂setting/∂λ_j), and the row whose λ scales each group's learning rate. Each
    hyperparameter is checked against the optimizer first; a setting the optimizer's rule
    does not differentiate, or two hyperparameters setting one group's same setting, are
    errors."""
    dots: dict[int, dict[str, Tensor]] = {}
    owner: dict[tuple[int, str], str] = {}
    scaled: dict[int, int] = {}
    for j, (name, h) in enumerate(zip(names, hypers)):
        h.check_optimizer(optimizer, name)
        if h.drift_source != "optimizer":
            continue
        for group, key, scale in h.optimizer_settings(optimizer):
            if key not in rule.settings:
                raise ValueError(
                    f"{type(h).__name__} {name!r} sets {key!r}, which the tangent rule of "
                    f"{rule.name} does not differentiate (it does: {', '.join(rule.settings)})"
                )
            if (group, key) in owner:
                raise ValueError(
                    f"two {type(h).__name__} hyperparameters tune param group {group}'s "
                    f"{key} ({owner[group, key]!r} and {name!r})"
                )
            owner[group, key] = name
            e = torch.zeros(len(hypers), dtype=layout.dtype, device=layout.device)
            e[j] = scale
            dots.setdefault(group, {})[key] = e
            if key == "lr_scale":
                scaled[group] = j
    return dots, scaled


class OptimizerSettings:
    """The settings hyperparameters set in ``optimizer``, their tangents and the lr scales.

    Args:
        names: the hyperparameters' names, one row each.
        hypers: every hyperparameter, in the same order (those of other drift sources are
            ignored).
        optimizer: the optimizer whose param groups they set.
        layout: the optimized parameters (the tangents' dtype and device).
        rule: the optimizer's tangent rule (the settings it differentiates).
    """

    def __init__(
        self,
        names: Sequence[str],
        hypers: Sequence[Hyperparameter],
        optimizer: torch.optim.Optimizer,
        layout: FlatLayout,
        rule: OptimizerRule,
    ) -> None:
        self.hypers, self.optimizer = list(hypers), optimizer
        #: per group, the tangents of the settings λ sets; the row scaling each group's lr
        self.dots, self.scaled_groups = setting_tangents(names, hypers, optimizer, layout, rule)
        #: per param group whose learning rate a λ scales, that λ (η = λ·lr_t)
        self.lr_scales: dict[int, float] = {}

    def write(self) -> None:
        """Write every λ into the settings it sets (after every update); a learning-rate scale
        is read here and applied during the step only."""
        for h in self.hypers:
            h.write_to(self.optimizer)
        self.lr_scales = {k: float(self.hypers[j].value) for k, j in self.scaled_groups.items()}

    def lr(self, group: int = 0) -> float:
        """η_t of ``group``: its lr, times its λ where one scales it."""
        return float(self.optimizer.param_groups[group]["lr"]) * self.lr_scales.get(group, 1.0)

    @contextlib.contextmanager
    def scaled_learning_rates(self) -> Iterator[None]:
        """Around ``optimizer.step()``: each group whose learning rate a λ scales steps with
        η = λ·lr_t; outside, ``param_groups[k]["lr"]`` holds the schedule's lr_t (a scheduler
        never sees λ, so a chained one cannot compound it)."""
        groups = self.optimizer.param_groups
        saved = {k: groups[k]["lr"] for k in self.lr_scales}
        try:
            for k, scale in self.lr_scales.items():
                groups[k]["lr"] = saved[k] * scale
            yield
        finally:
            for k, lr in saved.items():
                groups[k]["lr"] = lr
