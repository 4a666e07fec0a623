"""The stages an optimizer's tangent rule is composed of, one param group at a time.

A torch optimizer step, seen from the tangent y = dθ/dλ, is a chain of small maps on the
gradient g the optimizer receives and its tangent ġ = dg/dλ (one row per hyperparameter),
ending in θ' = θ − η·(direction). Each stage below is one such map, differentiated:

    maximize                g ← −g                   ġ ← −ġ
    coupled_weight_decay    g ← g + wd θ             ġ ← ġ + wd y + ẇd θ
    (direction)             d = d(g, state)          ḋ, state tangents     (sgd.py, adam.py)
    decoupled_weight_decay  θ ← θ (1 − η wd)         δ ← ḋ + ẇd θ,  y' gains −η wd y
    scaled_learning_rate    η = s·lr_t               δ ← δ + (ṡ / s) D
    descend                 θ' = θ − η d             y' = y − η δ

with ẇd = ∂wd/∂λ, the tangent of a param-group setting that a hyperparameter sets (one entry
per row, in ``GroupTangent.dots``; ``"momentum"``, ``"beta1"``, ``"beta2"`` enter the direction
stages). A tuned learning rate is a scale s = λ of the schedule's lr_t (``"lr_scale"``): the
step's update per unit learning rate is D = d (+ wd θ, decoupled), so ∂θ'/∂λ gains
−lr_t D = −η (ṡ/s) D, finite also where the schedule sets lr_t = 0. δ, the step's own
contribution per unit learning rate, is also first order's direction (y₁ = −η δ from y = 0).
Stages read and write a :class:`GroupTangent`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import read_setting
from lightning_hyperopt.core.layout import FlatLayout


class GroupTangent:
    """One param group's slice of the step being differentiated (m rows, its N_k entries).

    Inputs: the group's settings and torch's per-parameter state before the step; the carried
    tangent ``y`` (m, N_k) or ``None`` for y = 0; ``gdot`` ġ (m, N_k); ``g`` (N_k,) where a stage
    reads it, else ``None``; ``theta`` (N_k,) where read; ``dots`` the tangents (m,) of the
    settings that depend on λ; ``carried`` the optimizer-state tangents (None: zero);
    ``lr_scale`` s where a hyperparameter scales the group's learning rate (η = s·lr_t);
    ``gdot_zero``: ġ is known to be 0 (first order with optimizer settings only), which lets a
    stage skip computing derivatives of 0.
    Outputs, set by the stages: ``delta`` δ, ``state`` the new state tangents, ``y_new`` y',
    and ``value`` D, the update per unit learning rate, where a scaled learning rate needs it.
    """

    def __init__(
        self,
        group: Mapping[str, Any],
        states: Sequence[Mapping[str, Any]],
        layout: FlatLayout,
        y: Tensor | None,
        gdot: Tensor,
        g: Tensor | None,
        theta: Tensor | None,
        dots: Mapping[str, Tensor],
        carried: Mapping[str, Tensor | None],
        lr_scale: float | None = None,
        gdot_zero: bool = False,
    ) -> None:
        self.group, self.states, self.layout = group, states, layout
        self.gdot_zero = gdot_zero
        self.lr = read_setting(group["lr"])
        self.lr_scale = lr_scale
        if lr_scale is not None:  # η = λ·lr_t, the learning rate torch will step with
            self.lr = self.lr * lr_scale
        self.wd = read_setting(group["weight_decay"])
        self.y, self.gdot, self.g, self.theta = y, gdot, g, theta
        self.dots, self.carried = dots, carried
        self.delta: Tensor = gdot
        self.state: dict[str, Tensor | None] = {}
        #: decoupled weight decay's η·wd, when it is not 0: y' gains −η wd y
        self.shrink: float | None = None
        self.y_new: Tensor | None = None
        #: D, the update per unit learning rate (θ' = θ − η D), computed where it is needed
        self.wants_value = "lr_scale" in dots
        self.value: Tensor | None = None


Stage = Callable[[GroupTangent], None]


def maximize(s: GroupTangent) -> None:
    """``maximize=True``: torch negates the loss's gradient (and only it)."""
    if s.group.get("maximize", False):
        s.gdot = -s.gdot
        s.g = None if s.g is None else -s.g


def coupled_weight_decay(s: GroupTangent) -> None:
    """g ← g + wd θ (SGD, Adam): ġ ← ġ + wd y + ẇd θ."""
    if s.wd != 0.0:
        if s.y is not None:
            s.gdot = s.gdot + s.wd * s.y
            s.gdot_zero = False
        if s.g is not None and s.theta is not None:
            s.g = s.g + s.wd * s.theta
    e = s.dots.get("weight_decay")
    if e is not None and s.theta is not None:
        s.gdot = s.gdot + e.unsqueeze(1) * s.theta
        s.gdot_zero = False  # the decay's own term: ġ is not 0 any more


def decoupled_weight_decay(s: GroupTangent) -> None:
    """θ ← θ (1 − η wd) before the update (AdamW): δ ← ḋ + ẇd θ, and y' gains −η wd y."""
    e = s.dots.get("weight_decay")
    if e is not None and s.theta is not None:
        s.delta = s.delta + e.unsqueeze(1) * s.theta
    if s.wd != 0.0:
        s.shrink = s.lr * s.wd
        if s.value is not None and s.theta is not None:
            s.value = s.value + s.wd * s.theta


def scaled_learning_rate(s: GroupTangent) -> None:
    """η = s·lr_t with s = λ (a tuned learning rate): δ ← δ + (ṡ / s) D, so that
    y' = y − η δ gains −lr_t ṡ D."""
    e = s.dots.get("lr_scale")
    if e is None or s.lr_scale is None:
        return
    if s.value is None:
        raise RuntimeError("a scaled learning rate needs the update D: its rule computes none")
    s.delta = s.delta + (e / s.lr_scale).unsqueeze(1) * s.value


def descend(s: GroupTangent) -> None:
    """θ' = θ − η d: y' = y − η δ (− η wd y after a decoupled weight decay)."""
    if s.y is None:
        return
    y_new = torch.add(s.y, s.delta, alpha=-s.lr)
    if s.shrink is not None:
        y_new = y_new - s.shrink * s.y
    s.y_new = y_new
