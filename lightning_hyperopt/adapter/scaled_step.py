"""``ScaledOptimizerStep``: the optimizer steps at the tuned learning rates, η = λ·lr_t, and only
then.

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

from lightning_hyperopt._lightning import Patch
from lightning_hyperopt.core.engine import TangentEngine


class ScaledOptimizerStep:
    """Stands in for ``optimizer.step`` during a fit whose engine scales learning rates."""

    def __init__(self) -> None:
        self._patch: Patch | None = None

    def start(self, optimizer: torch.optim.Optimizer, engine: TangentEngine) -> None:
        self.end()
        if not engine.scales_learning_rates:
            return
        original = optimizer.step  # torch's, or a scheduler's wrapper of it

        @functools.wraps(original)  # keeps a scheduler's mark on the step it wrapped
        def step(closure: Any = None, **kwargs: Any) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            with engine.scaled_learning_rates():
                original(**kwargs)
            return loss

        self._patch = Patch(optimizer, "step", step)

    def end(self) -> None:
        """The optimizer's ``step`` as it was."""
        if self._patch is not None:
            self._patch.restore()
            self._patch = None
