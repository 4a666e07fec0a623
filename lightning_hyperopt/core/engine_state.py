"""``EngineState``: what the engine carries from one optimizer step to the next, owned by the
engine and checkpointed as plain values.

    steps, updates    optimizer steps followed and λ updates made so far
    lr                η_t of param group 0 at the last step (the paper rule's α_t = c·η_t)
    tangent           y, one row per hyperparameter over the flat parameters: (m, N)
    direction         first order's δ, the step's tangent per unit learning rate (h = −⟨g_V, δ⟩)
    norms, clipped    ‖y‖ before the projection, and whether it was clipped (last step)
    hypergradients    h of the last λ update
    step_ok           whether the last step moved y and λ (a device flag)

The checkpoint (:meth:`EngineState.state_dict`) holds what a resumed run needs to follow the
uninterrupted one bit for bit: tensors, lists and numbers only (torch's weights-only loading
accepts them, a dataclass would not). The other parts of the engine checkpoint their own state
beside it: the optimizer-state tangents (``TangentRule``), the non-finite counts
(``FiniteGuard``) and the λ update's schedule and moments (``HyperUpdate``); λ itself is the
hyperparameters' buffer, in the module's ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_hyperopt.core.methods import HyperMethod
    from lightning_hyperopt.core.optim.rule import TangentRule


class EngineState:
    """The engine's carried state over ``rows`` hyperparameters and ``numel`` parameter entries
    (with the parameters' ``dtype`` and ``device``), at step 0: y = 0, nothing measured yet."""

    def __init__(
        self, rows: int, numel: int, dtype: torch.dtype, device: torch.device, lr: float
    ) -> None:
        self.steps = 0
        self.updates = 0
        self.lr = lr
        self.tangent = torch.zeros(rows, numel, dtype=dtype, device=device)  # row j: y_j
        self.direction: Tensor | None = None
        self.norms: Tensor | None = None
        self.clipped: Tensor | None = None
        self.hypergradients: Tensor | None = None
        self.step_ok = torch.ones((), dtype=torch.bool, device=device)

    def begin_step(self, method: HyperMethod, rule: TangentRule) -> bool:
        """Before step t's recurrence: y and the optimizer-state tangents reset to 0 where the
        method resets (UnrollK's window start), or multiplied by its discount μ; returns
        whether the step needs H y (not right after a reset, where y = 0, nor in first order,
        which never reads y)."""
        reset = method.resets_at(self.steps)
        if reset and method.uses_tangent:
            self.tangent.zero_()
            rule.reset()
        elif method.discount != 1.0:  # y ← μ y
            self.tangent.mul_(method.discount)
            rule.scale(method.discount)
        return method.uses_tangent and not reset

    def hypergradient(
        self, g_val: Tensor, uses_tangent: bool, averaged: Tensor | None = None
    ) -> Tensor:
        """h = ⟨g_V, y_j⟩ per row; first order: −⟨g_V, δ_j⟩ (y itself before a first step);
        ``averaged``: the rows ȳ (or δ̄) of the averaged iterate in place of y (or δ)."""
        if averaged is not None:
            h = torch.mv(averaged, g_val)
            return h if uses_tangent else h.neg_()
        if uses_tangent:
            return torch.mv(self.tangent, g_val)
        direction = self.direction if self.direction is not None else self.tangent
        return torch.mv(direction, g_val).neg_()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's part of this state: counters, the last lr, y and first order's δ."""
        return {
            "step": self.steps,
            "updates": self.updates,
            "lr": self.lr,
            "tangent": self.tangent.detach().clone(),
            "direction": None if self.direction is None else self.direction.detach().clone(),
        }

    def check_tangent(self, state: Mapping[str, Any]) -> None:
        """A clear error unless the checkpoint's y has this model's shape (its parameters)."""
        tangent = state.get("tangent")
        if not isinstance(tangent, Tensor) or tuple(tangent.shape) != tuple(self.tangent.shape):
            raise ValueError(
                "the checkpoint's tangents do not match the model's parameters "
                f"(expected a tensor of shape {tuple(self.tangent.shape)})"
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values (checked by :meth:`check_tangent` first), moved
        to this state's device and dtype."""
        like = self.tangent
        self.steps = int(state["step"])
        self.updates = int(state["updates"])
        self.lr = float(state["lr"])
        self.tangent = state["tangent"].to(like.device, like.dtype)
        direction = state.get("direction")
        self.direction = None if direction is None else direction.to(like.device, like.dtype)
