"""``HyperUpdate``: when λ is updated, and how far it moves, once its hypergradient is known
(the one owner of the hyper optimizer's state).

    should_update(t)   after step t: t ≥ warm-up, the method updates at t (an update point),
                       and the point is the k-th since the last update (``hyper_every`` = k)
    move(λ, h)         g_u = h · dλ/du in each row's space u = φ(λ); u ← the hyper optimizer's
                       step; λ ← clip(φ⁻¹(u), low, high)

The spaces are the hyperparameters' declared parameterizations for the paper's rule, their
natural ones for the adaptive rule (see :class:`~lightning_hyperopt.core.hyper_optimizers.
HyperOptimizer`). The arguments arrive checked (by :class:`~lightning_hyperopt.core.engine.
TangentEngine`, or the callback's arguments).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.core.coordinates import DecayCoordinates, applied_decay_pairs
from lightning_hyperopt.core.functional import from_space, space_slope, to_space
from lightning_hyperopt.core.hyper_optimizers import HyperOptimizer, space_masks
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.methods import HyperMethod


class HyperUpdate:
    """The λ update: its schedule, the spaces, the bounds and the hyper optimizer, over m rows.

    Args:
        method: the tuning method (when it updates; the paper rule's α_t).
        spaces: each row's space u = φ(λ) (``"identity"``, ``"log"``, ``"logit"``).
        bounds: each row's (low, high).
        hyper_optimizer: the hyper step's rule; its state starts afresh (a checkpoint's is
            loaded by :meth:`load_state_dict`).
        warmup_steps: λ is not updated after steps t < warmup_steps.
        hyper_every: k ≥ 1: update λ on every k-th update point only, each update standing for
            the k points (the paper rule's step times k; the adaptive rule's window).
        like: a tensor with the device and dtype of λ.
        pairs: (learning-rate row, weight-decay row) pairs stepped in the applied-decay
            coordinates (:class:`~lightning_hyperopt.core.coordinates.DecayCoordinates`).
    """

    def __init__(
        self,
        method: HyperMethod,
        spaces: Sequence[str],
        bounds: Sequence[tuple[float, float]],
        hyper_optimizer: HyperOptimizer,
        warmup_steps: int = 0,
        hyper_every: int = 1,
        like: Tensor | None = None,
        pairs: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.method = method
        self.warmup_steps, self.hyper_every = warmup_steps, hyper_every
        self.optimizer = hyper_optimizer
        self.optimizer.load_state_dict({})  # a fresh start: no moments yet
        like = torch.zeros((), dtype=torch.float64) if like is None else like
        self.spaces = space_masks(spaces, like.device)  # type: ignore[arg-type]
        bounds_ = torch.tensor(list(bounds), dtype=like.dtype, device=like.device)
        self.low, self.high = bounds_[:, 0], bounds_[:, 1]
        self.coordinates = DecayCoordinates(pairs, like) if pairs else None
        self.update_points = 0  # steps after the warm-up at which the method updates λ
        self._counted_point = -1

    @classmethod
    def for_hyperparameters(
        cls,
        method: HyperMethod,
        names: Sequence[str],
        hypers: Sequence[Hyperparameter],
        hyper_optimizer: HyperOptimizer,
        warmup_steps: int = 0,
        hyper_every: int = 1,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> HyperUpdate:
        """The λ update of these hyperparameters: their declared spaces for the paper's rule,
        their natural ones for the adaptive rule; a λ that cannot move in its space (0 in log
        space) is an error. With a hyper optimizer's ``coordinates="applied_decay"``, the weight
        decays ``optimizer`` applies through a tuned learning rate are paired with it."""
        natural = hyper_optimizer.space == "natural"
        spaces = [h.natural_space if natural else h.parameterization for h in hypers]
        for name, h, space in zip(names, hypers, spaces):
            value = float(h.value)
            if space == "log" and not value > 0:
                raise ValueError(
                    f"{type(hyper_optimizer).__name__} moves {name!r} in log space, where "
                    f"λ = {value:g} cannot move: start it at a positive value (e.g. 1e-4)"
                )
            if space == "logit" and not 0 < value < 1:
                raise ValueError(
                    f"{type(hyper_optimizer).__name__} moves {name!r} in log-odds, where "
                    f"λ = {value:g} cannot move: start it inside (0, 1) (e.g. 0.9)"
                )
        bounds = [h.bounds for h in hypers]
        like = hypers[0].value
        pairs = (
            applied_decay_pairs(hypers, spaces, optimizer)
            if hyper_optimizer.coordinates == "applied_decay"
            else []
        )
        update = cls(
            method, spaces, bounds, hyper_optimizer, warmup_steps, hyper_every, like, pairs
        )
        update.optimizer.bind(fast_start_rows(hypers), like, window=hyper_every)
        return update

    def should_update(self, step: int) -> bool:
        """Whether λ is updated after the step just taken (t = step − 1): after the warm-up,
        when the method updates (an update point), and on every ``hyper_every``-th update
        point."""
        t = step - 1
        if not self._is_point(t):
            return False
        self._count(t)
        return self.update_points % self.hyper_every == 0

    def will_update(self, step: int) -> bool:
        """What :meth:`should_update` will answer for ``step``, counting nothing: whether the
        step t = step − 1, not yet taken, is followed by a λ update."""
        t = step - 1
        if not self._is_point(t):
            return False
        points = self.update_points + (self._counted_point != t)
        return points % self.hyper_every == 0

    def _is_point(self, t: int) -> bool:
        """Whether step t is an update point: after the warm-up, where the method updates."""
        return t >= 0 and t >= self.warmup_steps and self.method.updates_at(t)

    def _count(self, t: int) -> None:
        """Count the update point t, once."""
        if self._counted_point != t:
            self._counted_point = t
            self.update_points += 1

    def move(
        self, values: Tensor, hypergradient: Tensor, lr: float, step_ok: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(the new λ inside the bounds, the rows that moved): g_u = h · dλ/du, a row moves
        where g_u is finite after a good step (``step_ok``); the paper rule's α_t is the
        method's step at learning rate ``lr``, times ``hyper_every``."""
        log, logit = self.spaces
        grad = hypergradient.to(values.dtype) * space_slope(values, log, logit)
        u = to_space(values, log, logit)
        if self.coordinates is not None:
            u, grad = self.coordinates.to_applied(u, grad)
        rows = torch.isfinite(grad) & step_ok
        alpha = self.method.alpha(lr) * self.hyper_every
        u = self.optimizer.step(u, grad, alpha, rows)
        if self.coordinates is not None:
            u = self.coordinates.from_applied(u)  # g'_i finite implies g'_j finite: rows hold
        new = torch.minimum(torch.maximum(from_space(u, log, logit), self.low), self.high)
        return new, rows

    def state_dict(self) -> dict[str, Any]:
        return {"update_points": self.update_points, "hyper_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        self.update_points = int(state["update_points"])
        self._counted_point = step - 1
        self.optimizer.load_state_dict(state.get("hyper_optimizer", {}))


def fast_start_rows(hypers: Sequence[Hyperparameter]) -> list[bool]:
    """The rows that take the adaptive step's large first steps: the regularizers
    (:attr:`Hyperparameter.fast_start`), unless a kind with a short-horizon bias (a learning
    rate, a momentum: :attr:`Hyperparameter.short_horizon_bias`) is tuned in the same fit, in
    which case none does.

    The large first steps are for leaving an over-regularized start; with a learning rate in
    the fit they set the path the learning rate's tangent follows too, and on the benchmark's
    learning-rate task they cost starts that reached the grid's best without them (the
    measurements: docs/results.md, time to quality)."""
    if any(h.short_horizon_bias for h in hypers):
        return [False] * len(hypers)
    return [bool(h.fast_start) for h in hypers]
