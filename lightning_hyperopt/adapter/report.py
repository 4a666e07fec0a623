"""``FitReport``: what a tuned fit leaves behind, in Lightning's ways.

    tuned_values()   name → final value, in the units the user sets (a weight decay, a keep
                     probability, a learning-rate factor and ``<name>/base_lr`` = λ · the base lr)
    at fit end       the summary (``rank_zero_info``, once, unless ``verbose=False``), the
                     values in every logger's hyperparameters (``log_hyperparams``) and, for a
                     run LightningCLI configured, ``<log_dir>/tuned.yaml``: the overlay that
                     trains with them fixed (:mod:`~lightning_hyperopt.adapter.overlay`)

The starting values (λ at the run's first fit start, and each learning rate's base) are kept
in the callback's checkpoint state, so a resumed run reports against the run's start.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_warn

from lightning_hyperopt._lightning import Trainer, info, save_config_of, saves_weights_only
from lightning_hyperopt.adapter.fit_plan import FitPlan
from lightning_hyperopt.adapter.overlay import Entry, close, tuned_overlay, write_overlay
from lightning_hyperopt.core.engine import TangentEngine
from lightning_hyperopt.core.hyperparameters import (
    Hyperparameter,
    KeepProbability,
    LearningRate,
    Momentum,
    WeightDecay,
)
from lightning_hyperopt.core.hyperparameters.base import read_setting
from lightning_hyperopt.core.methods import default_method_reason

OVERLAY = "tuned.yaml"
DROPOUT_NAMES = ("dropout", "p", "dropout_rate", "drop_rate", "dropout_p", "drop_prob")


def base_lr(h: LearningRate, optimizer: Any) -> float:
    """The configured learning rate λ multiplies: its first group's ``initial_lr`` (what a
    scheduler scales), else its ``lr``."""
    group = optimizer.param_groups[h.groups(optimizer)[0]]
    return read_setting(group.get("initial_lr", group["lr"]))


def values_in_units(
    hyperparameters: Mapping[str, Hyperparameter], values: Mapping[str, float], bases: Mapping
) -> dict[str, float]:
    """``values`` with each learning-rate factor's ``<name>/base_lr`` = λ · its base beside it."""
    out: dict[str, float] = {}
    for name, value in values.items():
        out[name] = value
        if name in bases:
            out[f"{name}/base_lr"] = value * bases[name]
    return out


def overlay_entries(
    plan: FitPlan, start: Mapping[str, float], final: Mapping[str, float], bases: Mapping
) -> list[Entry]:
    """Where each tuned value may go in a LightningCLI config, and what is written there."""
    entries = []
    for name, h in plan.hyperparameters.items():
        lam0, lam = start[name], final[name]

        def is_start(v: Any, lam0: float = lam0) -> bool:
            return close(v, lam0)

        def fixed(_: Any, lam: float = lam) -> float:
            return lam

        if isinstance(h, WeightDecay):
            entries.append(Entry(name, ("weight_decay", "wd"), is_start, fixed, optimizer=True))
        elif isinstance(h, LearningRate):
            base = bases[name]
            entries.append(
                Entry(
                    name,
                    ("lr", "learning_rate"),
                    lambda v, base=base: close(v, base),
                    lambda _, x=lam * base: x,
                    optimizer=True,
                    scale=lam,
                )
            )
        elif isinstance(h, Momentum):
            entries.append(_momentum_entry(name, h, lam0, lam))
        elif isinstance(h, KeepProbability) and name in plan.saved and name not in plan.brought:
            p0 = 1.0 - lam0  # adopted dropout: the config holds the rate p = 1 − λ
            entries.append(
                Entry(name, DROPOUT_NAMES, lambda v, p0=p0: close(v, p0), lambda _, p=1.0 - lam: p)
            )
        else:
            last = name.rsplit(".", 1)[-1]
            names = (last, f"init_{last}", f"{last}_init")
            entries.append(Entry(name, names, is_start, fixed, abbreviates=True))
    return entries


def _momentum_entry(name: str, h: Momentum, lam0: float, lam: float) -> Entry:
    index = 0 if h.moment == "first" else 1

    def matches(v: Any) -> bool:
        return (
            close(v[index], lam0) if isinstance(v, list | tuple) and len(v) == 2 else close(v, lam0)
        )

    def value(v: Any) -> Any:
        if isinstance(v, list | tuple):
            betas = list(v)
            betas[index] = lam
            return betas
        return lam

    names = ("momentum", "betas", "beta1") if index == 0 else ("betas", "beta2")
    return Entry(name, names, matches, value, optimizer=True)


class FitReport:
    """The start and end of a tuned fit, as the user sees them (see the module's docstring).

    Args:
        verbose: give the end-of-fit summary.
    """

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self.start_values: dict[str, float] = {}
        self.base_lrs: dict[str, float] = {}
        self.tuner_seconds = 0.0
        self._began = 0.0

    def start(self, trainer: Trainer, plan: FitPlan) -> None:
        """At fit start (the engine built, λ₀ written): the run's start, from a continued state
        where there is one; TensorBoard's layout of the λs; a warning where a checkpoint
        callback will leave the callback's values out."""
        state = (plan.resume or {}).get("report") or {}
        hypers = plan.hyperparameters
        start = {n: float(h.value.detach()) for n, h in hypers.items()}
        self.start_values = dict(state.get("start") or start)
        bases = {
            n: base_lr(h, plan.optimizer) for n, h in hypers.items() if isinstance(h, LearningRate)
        }
        self.base_lrs = dict(state.get("base_lr") or bases)
        self.tuner_seconds, self._began = 0.0, time.perf_counter()
        add_scalar_layout(trainer, plan)
        if plan.saved and saves_weights_only(trainer):
            rank_zero_warn(
                f"OnlineHyperparamCallback: ModelCheckpoint(save_weights_only=True) saves no "
                f"callback state, so its checkpoints will not hold the tuned {list(plan.saved)} "
                "(tune= and adopted dropout live in the callback's state, not the module's): "
                "save full checkpoints to resume the tuning, or train on with the values of "
                "tuned_values() (or tuned.yaml) fixed"
            )

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Count the time of the tuner's own work done within the context."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.tuner_seconds += time.perf_counter() - began

    def values(self, plan: FitPlan) -> dict[str, float]:
        """λ now, by name."""
        return {name: float(h.value.detach()) for name, h in plan.hyperparameters.items()}

    def state_dict(self, plan: FitPlan) -> dict[str, Any]:
        return {
            "start": dict(self.start_values),
            "final": self.values(plan),
            "base_lr": dict(self.base_lrs),
        }

    def end(self, trainer: Trainer, plan: FitPlan, engine: TangentEngine) -> None:
        """At fit end: the hyperparameters to every logger, the overlay, the summary."""
        final = self.values(plan)
        tuned = values_in_units(plan.hyperparameters, final, self.base_lrs)
        params = {f"hyperopt/{k}": v for k, v in tuned.items()}
        params["hyperopt/method"] = repr(plan.method)
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
        written, notes = self._write_overlay(trainer, plan, final)
        if self.verbose:
            info(trainer, self.summary(trainer, plan, engine, final, written, notes))

    def _write_overlay(
        self, trainer: Trainer, plan: FitPlan, final: Mapping[str, float]
    ) -> tuple[Path | None, list[str]]:
        saver = save_config_of(trainer)
        if saver is None:
            return None, []
        config = saver.config.as_dict() if hasattr(saver.config, "as_dict") else dict(saver.config)
        entries = overlay_entries(plan, self.start_values, final, self.base_lrs)
        overlay, notes = tuned_overlay(config, entries)
        path = Path(trainer.log_dir or trainer.default_root_dir) / OVERLAY
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_overlay(path, overlay, overlay_header(plan, notes))
        return path, notes

    def summary(
        self,
        trainer: Trainer,
        plan: FitPlan,
        engine: TangentEngine,
        final: Mapping[str, float],
        written: Path | None,
        notes: list[str],
    ) -> str:
        """The end-of-fit summary, one line per hyperparameter."""
        reason = (
            f' ("auto": {default_method_reason(plan.hyperparameters)})'
            if plan.method_chosen
            else ""
        )
        cadence = f" (one in {plan.hyper_every} steps)" if plan.hyper_every > 1 else ""
        lines = [
            f"OnlineHyperparamCallback: {engine.state.steps} steps, {engine.state.updates} λ "
            f"updates{cadence} with {plan.method!r}{reason}"
        ]
        width = max(len(n) for n in final)
        nonfinite = dict(zip(engine.names, engine.nonfinite))
        for name, value in final.items():
            h = plan.hyperparameters[name]
            line = f"  {name:<{width}}  {self.start_values[name]:.6g} → {value:.6g}"
            if name in self.base_lrs:
                base = self.base_lrs[name]
                line += f"  (base lr {self.start_values[name] * base:.6g} → {value * base:.6g})"
            line += _bound(h, value)
            if nonfinite.get(name):
                line += f"; {nonfinite[name]} non-finite steps skipped"
            lines.append(line)
        if self._timed(plan):
            fit = time.perf_counter() - self._began
            lines.append(
                f"  the tuner's hooks took {self.tuner_seconds:.3g} s of the fit's {fit:.3g} s "
                f"({100 * self.tuner_seconds / max(fit, 1e-9):.0f}%; the H·y inside the training "
                "step's backward is not counted)"
            )
        if written is not None:
            lines.append(
                f"  to train with these values fixed: --config {written} after your config, "
                "without this callback"
            )
        else:
            lines.append("  not configured by LightningCLI: tuned_values() returns the values")
        lines += [f"  not in the overlay: {note}" for note in notes]
        return "\n".join(lines)

    @staticmethod
    def _timed(plan: FitPlan) -> bool:
        """The tuner's time is known on the CPU only (on an accelerator its work is queued)."""
        return plan.device.type == "cpu"


def _bound(h: Hyperparameter, value: float) -> str:
    low, high = h.bounds
    if value <= low:
        return f"  at its lower bound {low:g}"
    if math.isfinite(high) and value >= high:
        return f"  at its upper bound {high:g}"
    return ""


def overlay_header(plan: FitPlan, notes: list[str]) -> list[str]:
    """The comment lines at the top of ``tuned.yaml``."""
    lines = [
        "The values OnlineHyperparamCallback tuned, to train with them fixed:",
        "  fit --config <your config> --config tuned.yaml   (without the callback's overlay)",
        f"method: {plan.method!r}",
    ]
    return lines + [f"not written: {note}" for note in notes]


def add_scalar_layout(trainer: Trainer, plan: FitPlan) -> None:
    """TensorBoard's custom-scalars layout: per hyperparameter, λ and its effective value (the
    effective learning rate, a decoupled weight decay's per-step shrink) side by side."""
    layout: dict[str, dict[str, list]] = {}
    for name, h in plan.hyperparameters.items():
        charts = {"λ": ["Multiline", [f"hyperopt/{name}"]]}
        for key in h.extra_metrics(plan.optimizer):
            charts[key] = ["Multiline", [f"hyperopt/{name}/{key}"]]
        layout[f"hyperopt/{name}"] = charts
    for logger in trainer.loggers:
        writer = getattr(logger, "experiment", None)
        if type(logger).__name__ == "TensorBoardLogger" and hasattr(writer, "add_custom_scalars"):
            writer.add_custom_scalars(layout)
