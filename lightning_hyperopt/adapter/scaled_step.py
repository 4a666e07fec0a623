"""``ScaledStep``: the optimizer steps at the tuned learning rates, η = λ·lr_t, and only then.

Lightning calls ``optimizer.step(closure)``; torch runs the closure (training step, backward,
``on_before_optimizer_step``, gradient clipping) inside it, then the update. During a fit that
tunes a :class:`~lightning_hyperopt.LearningRate`, the optimizer's ``step`` runs the closure
first, then torch's update inside :meth:`TangentEngine.scaled_learning_rates` (the groups' lr
multiplied by λ), and puts the schedule's lr back before Lightning steps the schedulers. Under
a grad scaler that skips the step, torch's update (and the scaling) does not run at all.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from lightning_hyperopt.core.engine import TangentEngine


class ScaledStep:
    """Stands in for ``optimizer.step`` during a fit whose engine scales learning rates."""

    def __init__(self) -> None:
        self._optimizer: torch.optim.Optimizer | None = None
        self._previous: Any = None  # an instance ``step`` already there (a scheduler's wrapper)

    def start(self, optimizer: torch.optim.Optimizer, engine: TangentEngine) -> None:
        self.end()
        if not engine.settings.scaled_groups:
            return
        self._previous = vars(optimizer).get("step")
        original = optimizer.step

        @functools.wraps(original)  # keeps a scheduler's mark on the step it wrapped
        def step(closure: Any = None, **kwargs: Any) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            with engine.scaled_learning_rates():
                original(**kwargs)
            return loss

        optimizer.step = step  # type: ignore[method-assign]
        self._optimizer = optimizer

    def end(self) -> None:
        """The optimizer's ``step`` as it was (torch's, or a scheduler's wrapper of it)."""
        optimizer, self._optimizer = self._optimizer, None
        if optimizer is None:
            return
        if self._previous is not None:
            optimizer.step = self._previous  # type: ignore[method-assign]
        elif "step" in vars(optimizer):
            del optimizer.step
