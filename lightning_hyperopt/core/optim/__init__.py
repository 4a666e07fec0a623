"""The tangent of one optimizer step, y' = dθ_{t+1}/dλ, for the optimizers whose update it
differentiates exactly: ``torch.optim.SGD``, ``Adam``, ``AdamW``.

Each rule reads the optimizer's param groups and per-parameter state *before* its step and
returns the forward-mode derivative of torch's own update, on flat vectors: the parameters are
laid end to end (:class:`FlatLayout`), a tangent is a matrix (m, N) with one row per
hyperparameter. With ġ = dg/dλ the tangent of the gradient the optimizer receives (after
clipping) and e_j = ∂wd/∂λ_j (1 on the param group whose ``weight_decay`` λ_j is):

    SGD     g' = ±g + wd θ (coupled),              θ' = θ − η d(g', b)
    Adam    g' = ±g + wd θ (coupled),              θ' = θ − η d(g', m, v)
    AdamW   g' = ±g,                               θ' = θ (1 − η wd) − η d(g', m, v)

so ġ' = ±ġ + wd y + e_j θ (coupled) and y' = y (1 − η wd) − η ḋ − η e_j θ (decoupled); ḋ is
:func:`~lightning_hyperopt.core.functional.sgd_tangent` or
:func:`~lightning_hyperopt.core.functional.adam_tangent`. ± is − with ``maximize=True``.
Parameters the optimizer skips at a step (no gradient) keep their tangents; state that torch
creates on a parameter's first step (momentum buffer, moments) is treated per parameter.

Supporting another optimizer is one :class:`OptimizerRule` (a file beside ``sgd.py``) and one
entry in :data:`RULES`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_hyperopt.core.layout import FlatLayout
from lightning_hyperopt.core.optim.adam import ADAM_RULE
from lightning_hyperopt.core.optim.clipping import GradientClipping
from lightning_hyperopt.core.optim.rule import OptimizerRule, SettingTangents, TangentRule
from lightning_hyperopt.core.optim.sgd import SGD_RULE

#: the optimizers whose update the tangent differentiates exactly (by exact type)
RULES: dict[type[torch.optim.Optimizer], OptimizerRule] = {
    torch.optim.SGD: SGD_RULE,
    torch.optim.Adam: ADAM_RULE,
    torch.optim.AdamW: ADAM_RULE,
}
SUPPORTED = tuple(RULES)
SUPPORTED_NAMES = ", ".join(f"torch.optim.{t.__name__}" for t in RULES)

__all__ = [
    "RULES",
    "SUPPORTED",
    "FlatLayout",
    "GradientClipping",
    "OptimizerRule",
    "SettingTangents",
    "TangentRule",
    "check_optimizer",
    "tangent_rule",
]


def check_optimizer(optimizer: torch.optim.Optimizer) -> OptimizerRule:
    """The rule of ``optimizer``; a clear error unless the tangent is exact for it."""
    rule = RULES.get(type(optimizer))
    if rule is None:
        raise TypeError(
            f"online hyperparameter tuning supports {SUPPORTED_NAMES} (the tangent is the "
            f"exact derivative of their update), got {type(optimizer).__name__}"
        )
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if p.requires_grad and p.is_sparse:
                raise ValueError(f"param group {i} holds a sparse parameter: not supported")
    return rule


def tangent_rule(
    optimizer: torch.optim.Optimizer,
    layout: FlatLayout,
    group_of: Sequence[int],
    clipping: GradientClipping | None = None,
) -> TangentRule:
    """The :class:`TangentRule` of ``optimizer`` over ``layout`` (checked first)."""
    return TangentRule(optimizer, check_optimizer(optimizer), layout, group_of, clipping)
