"""``RunGuard``: when a run with non-finite steps warns or stops, and the checks around it.

A pure decision (:func:`evaluate`, like Lightning's ``EarlyStopping._evaluate_stopping_criteria``)
apart from its I/O: the first non-finite value warns once; ``max_nonfinite_steps`` non-finite
training steps in a row stop the run with an error; no checkpoint is saved right after
non-finite steps; under DDP every process must hold the same λ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn

from lightning_hyperopt._lightning import Trainer
from lightning_hyperopt.core.engine import TangentEngine
from lightning_hyperopt.core.nonfinite import NonFiniteTrainingError


@dataclass(frozen=True)
class Decision:
    """What :func:`evaluate` decided: an error to stop with, a warning to give (or None)."""

    stop: str | None = None
    warn: str | None = None


def evaluate(
    now: int, longest: int, counted: bool, step: int, max_steps: int, warned: bool
) -> Decision:
    """The decision from the non-finite counts: ``now`` non-finite training steps in a row at
    ``step``, ``longest`` such run since the last check, ``counted`` whether anything non-finite
    was counted so far; ``warned`` whether the warning was given."""
    if longest >= max_steps:
        return Decision(
            stop=f"OnlineHyperparamCallback: {longest} training steps in a row had a non-finite "
            f"loss (max_nonfinite_steps={max_steps}); stopped at step {step}. The model's "
            "weights are likely not finite any more: resume from an earlier checkpoint with a "
            "smaller learning rate, or find where the loss overflows"
        )
    if not warned and (now or longest or counted):
        return Decision(
            warn=f"OnlineHyperparamCallback: non-finite values at step {step} (training "
            "loss, gradient, tangent or hypergradient); those steps moved neither y nor λ. "
            "Counts per hyperparameter: the summary at fit end, and hyperopt/<name>/nonfinite "
            "with log_diagnostics=True"
        )
    return Decision()


class RunGuard:
    """Reads the engine's non-finite counts (one device read) and acts on :func:`evaluate`."""

    def __init__(self, max_nonfinite_steps: int) -> None:
        self.max_nonfinite_steps = max_nonfinite_steps
        self.warned = False

    def start(self) -> None:
        self.warned = False

    def check(self, engine: TangentEngine) -> int:
        """Warn at the first non-finite value; stop after ``max_nonfinite_steps`` in a row.
        Returns the number of non-finite steps in a row now."""
        now, longest = engine.nonfinite_report()
        # one more read only while the warning is still to give
        counted = not self.warned and (bool(now or longest) or any(engine.nonfinite))
        decision = evaluate(
            now, longest, counted, engine.state.steps, self.max_nonfinite_steps, self.warned
        )
        if decision.stop is not None:
            raise NonFiniteTrainingError(decision.stop)
        if decision.warn is not None:
            self.warned = True
            rank_zero_warn(decision.warn)
        return now

    def before_checkpoint(self, engine: TangentEngine) -> None:
        """Refuse to save right after non-finite training steps (the weights are suspect)."""
        now = self.check(engine)
        if now:
            raise RuntimeError(
                f"OnlineHyperparamCallback: the last {now} training step(s) had a "
                "non-finite loss; not saving a checkpoint of these weights"
            )

    @staticmethod
    def check_processes_agree(trainer: Trainer, engine: TangentEngine) -> None:
        """Under DDP every process must hold the same λ (max − min over processes: one
        all-reduce, at the logging cadence)."""
        values = engine.values()
        both = trainer.strategy.reduce(torch.cat([values, -values]), reduce_op="max")
        spread = both[: len(values)] + both[len(values) :]  # max − min, per hyperparameter
        if bool((spread > 0).any()):
            raise RuntimeError(
                "OnlineHyperparamCallback: the hyperparameters differ between processes "
                f"(largest spread {float(spread.max()):.3g} at step {engine.state.steps}): every "
                "process must run the same number of optimizer steps on the same model"
            )
