"""The tuning-free baselines of ``bench ttq``'s learning-rate tasks: Prodigy and schedule-free
AdamW, with their documented defaults, as a user who wants no learning-rate search runs them.

- ``prodigy``: ``prodigyopt.Prodigy(lr=1.0)`` (its estimate of the step size D replaces the
  learning rate) under cosine annealing to 0 over the run, as its README recommends;
- ``schedulefree``: ``schedulefree.AdamWScheduleFree(lr=0.0025)`` (its default), no schedule
  (the averaging replaces it). Its optimizer is switched to evaluation mode (the averaged
  weights x) for every validation and test and back to training mode (y) after, so the
  validation losses, the kept best weights and the test loss are those of x.

The task's other hyperparameters stay at the point given (weight decay at the grid's middle:
decoupled, on the weight matrices, as the task's own AdamW; an L2 penalty stays in the loss).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from .tasks import SettingError, lightning_pytorch

#: the tuning-free systems and the package each needs (``benchmarks/requirements.txt``)
TUNING_FREE = {"prodigy": "prodigyopt", "schedulefree": "schedulefree"}


def check_installed(system: str) -> None:
    """A SettingError naming the package if ``system``'s optimizer is not installed."""
    try:
        importlib.import_module(TUNING_FREE[system])
    except ImportError as err:
        raise SettingError(
            f"the {system} system needs {TUNING_FREE[system]}: pip install -r "
            "benchmarks/requirements.txt"
        ) from err


def _groups(model: Any) -> list[dict[str, Any]]:
    """Decoupled weight decay on the weight matrices (the task's ``wd`` value, 0 if it has none),
    none on the biases."""
    wd = 0.0 if getattr(model, "wd", None) is None else float(model.wd.value)
    weights = list(model.weights())
    ids = {id(p) for p in weights}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": weights, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def use_tuning_free(model: Any, system: str, steps: int) -> list[Any]:
    """Make ``model`` train with ``system``'s optimizer (its ``configure_optimizers`` replaced on
    the instance); returns the callbacks the system needs (``lightning.pytorch``)."""

    if system == "prodigy":
        from prodigyopt import Prodigy

        def configure() -> dict[str, Any]:
            opt = Prodigy(_groups(model), lr=1.0)
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

        model.configure_optimizers = configure
        return []
    if system == "schedulefree":
        from schedulefree import AdamWScheduleFree

        model.configure_optimizers = lambda: AdamWScheduleFree(_groups(model), lr=0.0025)
        L = lightning_pytorch()

        class Modes(L.Callback):
            """y for training steps, the average x for every evaluation."""

            def _mode(self, trainer: Any, mode: str) -> None:
                for opt in trainer.optimizers:
                    getattr(opt, mode)()

            def on_train_start(self, trainer: Any, pl_module: Any) -> None:
                self._mode(trainer, "train")

            def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
                self._mode(trainer, "eval")

            def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
                self._mode(trainer, "train")  # after the recorder's (it comes first) snapshot

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                self._mode(trainer, "eval")  # the fit ends on x

        return [Modes()]
    raise SettingError(f"system {system!r} is not tuning-free; accepted: {list(TUNING_FREE)}")
