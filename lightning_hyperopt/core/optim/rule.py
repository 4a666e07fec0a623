"""``TangentRule``: y' = dθ_{t+1}/dλ through one optimizer step, composed of stages.

The gradient the optimizer receives is first clipped (the caller's global clipping, if any:
:class:`~lightning_hyperopt.core.optim.clipping.GradientClipping`), then each param group runs
its optimizer's chain of stages (:mod:`lightning_hyperopt.core.optim.stages`). An optimizer is
supported by one :class:`OptimizerRule`: its state tangents and its chain per group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import read_setting
from lightning_hyperopt.core.layout import FlatLayout
from lightning_hyperopt.core.optim.clipping import GradientClipping
from lightning_hyperopt.core.optim.stages import GroupTangent, Stage

#: per param group k, the tangents (m,) of the settings hyperparameters set: {"weight_decay": e}
SettingTangents = Mapping[int, Mapping[str, Tensor]]


def _never(optimizer: torch.optim.Optimizer) -> bool:
    return False


@dataclass(frozen=True)
class OptimizerRule:
    """How one torch optimizer's update is differentiated.

    Attributes:
        name: the optimizer, for messages.
        state_names: the per-parameter state whose tangents ride along y (e.g. the momentum
            buffer), given the optimizer.
        stages: the chain of stages for a param group, given its settings.
        reads_grad: whether the chain reads the gradient itself, not only its tangent.
        needs_theta: whether the chain reads θ whatever the hyperparameters (else θ is read
            only for a weight-decay setting's tangent).
        settings: the param-group settings whose tangents the chain differentiates.
    """

    name: str
    state_names: Callable[[torch.optim.Optimizer], tuple[str, ...]]
    stages: Callable[[dict], Sequence[Stage]]
    reads_grad: bool = False
    needs_theta: Callable[[torch.optim.Optimizer], bool] = _never
    settings: tuple[str, ...] = ("weight_decay",)


class TangentRule:
    """The tangent of one optimizer's step; ``state`` holds its own tangents, (m, N) each.

    Args:
        optimizer: the torch optimizer (its param groups and state are read at every step).
        rule: how its update is differentiated.
        layout: the optimized parameters (those requiring grad) in group order.
        group_of: the param-group index of each parameter.
        clipping: the caller's gradient clipping before the step, or ``None``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        rule: OptimizerRule,
        layout: FlatLayout,
        group_of: Sequence[int],
        clipping: GradientClipping | None = None,
    ) -> None:
        self.optimizer, self.rule, self.layout, self.clipping = optimizer, rule, layout, clipping
        # contiguous runs of parameters per group (the layout follows the group order):
        # (group, its parameters, its entries, its own layout)
        self.groups: list[tuple[int, slice, slice, FlatLayout]] = []
        start = 0
        for k in range(len(optimizer.param_groups)):
            n = sum(1 for g in group_of if g == k)
            if n:
                spans = layout.spans[start : start + n]
                entries = slice(spans[0].start, spans[-1].stop)
                own = (
                    layout
                    if n == len(layout.params)
                    else FlatLayout(layout.params[start : start + n])
                )
                self.groups.append((k, slice(start, start + n), entries, own))
            start += n
        self.state: dict[str, Tensor | None] = dict.fromkeys(rule.state_names(optimizer))

    def reads_grad(self, dots: SettingTangents) -> bool:
        """Whether :meth:`step` needs the flat gradient: clipping, a rule that reads it, or a
        tuned learning rate or momentum (their terms need the update's value)."""
        tuned = any(k in d for d in dots.values() for k in ("lr_scale", "momentum"))
        return self.clipping is not None or self.rule.reads_grad or tuned

    def needs_theta(self, dots: SettingTangents) -> bool:
        """Whether :meth:`step` reads θ: for a weight-decay setting's tangent (∂(wd θ)/∂λ = θ),
        where the rule reads it anyway (Adam's coupled weight decay enters the moments), and
        for the update's value under weight decay when a learning rate is tuned."""
        if any("weight_decay" in d for d in dots.values()):
            return True
        if self.rule.needs_theta(self.optimizer):
            return True
        return any(
            "lr_scale" in dots.get(k, {})
            and read_setting(self.optimizer.param_groups[k]["weight_decay"]) != 0.0
            for k, _, _, _ in self.groups
        )

    def reset(self) -> None:
        """Zero tangents of the optimizer state (the window start of UnrollK)."""
        self.state = dict.fromkeys(self.rule.state_names(self.optimizer))

    def scale(self, factor: float) -> None:
        """Multiply the optimizer-state tangents by ``factor`` (a discounted tangent)."""
        self.state = {k: None if t is None else t * factor for k, t in self.state.items()}

    def state_dict(self) -> dict[str, Tensor | None]:
        return {k: None if t is None else t.detach().clone() for k, t in self.state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor | None], like: Tensor) -> None:
        """The state tangents of a checkpoint, moved to ``like``'s device and dtype."""
        if set(state) != set(self.state):
            raise ValueError(
                f"the checkpoint carries optimizer tangents {sorted(state)} but this optimizer "
                f"needs {sorted(self.state)}"
            )
        self.state = {
            k: None if t is None else t.to(like.device, like.dtype) for k, t in state.items()
        }

    def step(
        self,
        tangent: Tensor | None,
        grad_tangent: Tensor,
        grad: Tensor | None,
        theta: Tensor | None,
        dots: SettingTangents,
        lr_scales: Mapping[int, float] | None = None,
        grad_tangent_zero: bool = False,
    ) -> tuple[Tensor | None, Tensor, dict[str, Tensor | None]]:
        """y', δ and the new state tangents for the step about to run.

        ``tangent`` is y (m, N), or ``None`` for y = 0 with zero state tangents (first
        order: y' is then not computed); ``grad_tangent`` ġ (m, N) and ``grad`` g (N,) are the
        gradient's tangent and the gradient before clipping (g is read only where
        :attr:`reads_grad`); ``theta`` is θ (N,) (read when :meth:`needs_theta`); ``dots[k]``
        the tangents of group k's settings; ``lr_scales[k]`` the scale of group k's learning
        rate (η = s·lr_t) where one is tuned. y' = y (1 − η wd_decoupled) − η δ: δ is the
        step's own contribution per unit learning rate (first order's direction).
        ``grad_tangent_zero``: ġ is known to be 0 (first order tuning optimizer settings
        only), so the stages may skip its derivatives. Returns new tensors; the inputs are
        not modified.
        """
        if self.clipping is not None and grad is not None:
            grad_tangent, grad = self.clipping.apply(grad_tangent, grad)
        outs: list[Tensor] = []
        deltas: list[Tensor] = []
        new_state: dict[str, list[Tensor | None]] = {name: [] for name in self.state}
        for k, pspan, span, own in self.groups:
            s = GroupTangent(
                self.optimizer.param_groups[k],
                [self.optimizer.state.get(p, {}) for p in self.layout.params[pspan]],
                own,
                None if tangent is None else tangent[:, span],
                grad_tangent[:, span],
                None if grad is None else grad[span],
                None if theta is None else theta[span],
                dots.get(k, {}),
                {
                    name: None if t is None or tangent is None else t[:, span]
                    for name, t in self.state.items()
                },
                None if lr_scales is None else lr_scales.get(k),
                grad_tangent_zero and tangent is None,
            )
            y_new, delta, moments = self._group_step(s, pspan)
            if y_new is not None:
                outs.append(y_new)
            deltas.append(delta)
            for name, t in moments.items():
                new_state[name].append(t)
        state = {name: _join_state(ts, deltas) for name, ts in new_state.items()}
        return (_join(outs) if outs else None), _join(deltas), state

    def _group_step(
        self, s: GroupTangent, pspan: slice
    ) -> tuple[Tensor | None, Tensor, dict[str, Tensor | None]]:
        """(y', δ, state tangents) of one param group, through its chain of stages; the
        parameters torch skips (no gradient) keep their tangents."""
        for stage in self.rule.stages(s.group):  # type: ignore[arg-type]
            stage(s)
        delta, moments, y_new = s.delta, s.state, s.y_new
        stepped = [p.grad is not None for p in self.layout.params[pspan]]
        if not all(stepped):  # torch skips parameters without a gradient
            mask = self.layout.expand(stepped, pspan)
            if y_new is not None and s.y is not None:
                y_new = torch.where(mask, y_new, s.y)
            delta = torch.where(mask, delta, 0.0)
            moments = {
                name: _keep(mask, new, s.carried[name], s.gdot) for name, new in moments.items()
            }
        return y_new, delta, moments


def _join(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _join_state(parts: list[Tensor | None], like: list[Tensor]) -> Tensor | None:
    """One (m, N) state tangent from the groups' parts; ``None`` (zero) when every part is."""
    if all(t is None for t in parts):
        return None
    return _join([t if t is not None else y.new_zeros(y.shape) for t, y in zip(parts, like)])


def _keep(mask: Tensor, new: Tensor | None, old: Tensor | None, like: Tensor) -> Tensor | None:
    """``new`` where ``mask`` (parameters the optimizer steps), ``old`` (zeros: None) elsewhere."""
    if new is None:
        return None
    return torch.where(mask, new, old if old is not None else like.new_zeros(like.shape))
