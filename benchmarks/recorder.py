"""One recorder for every benchmark fit, on either Lightning namespace.

At each validation (outside the sanity check) it appends to :attr:`Recorder.val` the step, the
validation loss and the clocks: ``wall_s`` and ``cpu_s`` on its :class:`~.clocks.Clock` (a
system's clock, or one started at ``on_train_start``), and ``train_s``, the wall seconds less
the validation passes'. Optionally it also

- keeps the weights at the best validation loss (``keep_best``), and the λ values at each
  validation (:attr:`Recorder.lambdas`);
- stops the fit at the first validation past ``budget`` seconds on ``clock_name`` (:attr:`cut`);
- averages the training loss, the learning rate, λ and the tuner's clipping and tangent norm
  over every ``every`` steps into :attr:`curves`, with an optional progress ``bar``;
- stamps both clocks at every ``on_train_batch_start`` (``stamp_steps``: ``bench cost``'s step
  times, :meth:`step_times`).

:func:`recorder_class` gives the class for a namespace (``pytorch_lightning`` or
``lightning.pytorch``): the hooks are written once, in :class:`RecorderHooks`.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
import statistics
from collections.abc import Mapping
from typing import Any

import torch

from .clocks import CLOCKS, Clock, now


def hyperparameter_values(module: torch.nn.Module) -> dict[str, float]:
    """The module's declared hyperparameters' current values, by name."""
    from lightning_hyperopt.core.hyperparameters import find_hyperparameters

    return {k: float(h.value) for k, h in find_hyperparameters(module).items()}


class RecorderHooks:
    """The recorder's state and hooks, namespace-free (see the module doc)."""

    def __init__(
        self,
        clock: Clock | None = None,
        clock_name: str = "wall",
        budget: float | None = None,
        keep_best: bool = False,
        every: int | None = None,
        bar: Any = None,
        stamp_steps: bool = False,
    ) -> None:
        self.clock = clock
        self.clock_name = clock_name
        self.budget = budget
        self.keep_best = keep_best
        self.every = every
        self.bar = bar
        self.stamp_steps = stamp_steps
        self.val: dict[str, list[float]] = {
            "step": [],
            "val_loss": [],
            "wall_s": [],
            "cpu_s": [],
            "train_s": [],
        }
        self.lambdas: list[dict[str, float]] = []
        self.curves: dict[str, list[float]] = {"step": [], "train_loss": [], "lr": []}
        self.stamps: dict[str, list[float]] = {c: [] for c in CLOCKS}
        self.best = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.cut = False
        self.val_total = 0.0
        self.engine: Any = None
        self._val_start = 0.0
        self._losses: list[float] = []
        self._clipped: list[float] = []
        self._norms: list[float] = []

    # -------------------------------------------------------------- fit and steps
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from lightning_hyperopt import OnlineHyperparamCallback

        if self.clock is None:
            self.clock = Clock()
        tuners = [c for c in trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
        self.engine = tuners[0].engine if tuners else None

    def on_train_batch_start(self, *args: Any) -> None:
        if self.stamp_steps:
            t = now()
            for c in CLOCKS:
                self.stamps[c].append(t[c])

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every is None:
            return
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self._losses.append(float(loss))
        engine = self.engine
        if engine is not None and engine.state.clipped is not None:
            self._clipped.append(float(engine.state.clipped[0].float()))
        if engine is not None and engine.state.norms is not None:
            self._norms.append(float(engine.state.norms[0]))
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self._record_curves(trainer, pl_module, step)

    def _record_curves(self, trainer: Any, pl_module: Any, step: int) -> None:
        c = self.curves
        c["step"].append(step)
        c["train_loss"].append(statistics.fmean(self._losses) if self._losses else math.nan)
        c["lr"].append(float(trainer.optimizers[0].param_groups[0]["lr"]))
        for name, value in hyperparameter_values(pl_module).items():
            c.setdefault(f"lambda/{name}", []).append(value)
        if self._clipped:
            c.setdefault("clipped", []).append(statistics.fmean(self._clipped))
        if self._norms:
            c.setdefault("tangent_norm", []).append(statistics.median(self._norms))
        self._losses, self._clipped, self._norms = [], [], []
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def step_times(self, skip: int, clock: str = "wall") -> list[float]:
        """Seconds between consecutive steps on ``clock``, after the first ``skip`` steps."""
        s = self.stamps[clock][skip:]
        return [b - a for a, b in itertools.pairwise(s)]

    # -------------------------------------------------------------- validations
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self.clock is not None:
            self._val_start = self.clock.read()["wall"]

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.clock is None:  # a validate() outside fit
            return
        t = self.clock.read()
        self.val_total += t["wall"] - self._val_start
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        self.add_validation(trainer.global_step, float(trainer.callback_metrics["val_loss"]), t)
        self.lambdas.append(hyperparameter_values(pl_module))
        if self.keep_best and self.val["val_loss"][-1] < self.best:
            self.best = self.val["val_loss"][-1]
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        if self.budget is not None and t[self.clock_name] >= self.budget:
            self.cut = True
            trainer.should_stop = True

    def add_validation(self, step: int, loss: float, t: Mapping[str, float]) -> None:
        """One validation's row: its step, loss and the clock readings ``t``."""
        v = self.val
        v["step"].append(step)
        v["val_loss"].append(loss)
        v["wall_s"].append(t["wall"])
        v["cpu_s"].append(t["cpu"])
        v["train_s"].append(t["wall"] - self.val_total)


@functools.cache
def recorder_class(namespace: str = "pytorch_lightning") -> type:
    """The recorder as a callback of ``namespace`` (``pytorch_lightning`` or
    ``lightning.pytorch``, imported here: the latter comes with the ``bench`` extra)."""
    callback = importlib.import_module(namespace).Callback
    return type("Recorder", (RecorderHooks, callback), {"__module__": __name__})
