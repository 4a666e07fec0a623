"""One fit of ``bench ttq``: the task's model and data on a ``lightning.pytorch`` Trainer,
recorded on its system's clock, then the test loss at its best-validation weights."""

from __future__ import annotations

import copy
import functools
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_hyperopt.core.hyper_optimizers import resolve_hyper_optimizer
from lightning_hyperopt.core.nonfinite import NonFiniteTrainingError

from ..clocks import Clock
from ..recorder import hyperparameter_values, recorder_class
from ..records import RunLog
from .tasks import LR_SCALE, Point, SettingError, Task, lightning_pytorch, run_protocol
from .tuning_free import TUNING_FREE, use_tuning_free

# ------------------------------------------------------------------------------ runs


@functools.cache
def _loaders_class() -> type:
    """The loader adapter, on ``lightning.pytorch`` (built lazily: the rest of the benchmarks
    must import without benchmarks/requirements.txt)."""
    L = lightning_pytorch()

    class Loaders(L.LightningDataModule):
        """A ``pytorch_lightning`` datamodule's loaders, served to a ``lightning.pytorch``
        Trainer (already set up: the data are loaded once per task, outside the clocks)."""

        def __init__(self, dm: Any, seed: int | None = None) -> None:
            super().__init__()
            self.dm = dm
            self.seed = seed

        def train_dataloader(self) -> Any:
            """The training loader; a shuffling datamodule's order seeded by ``seed``."""
            dm = self.dm
            if self.seed is not None and getattr(dm, "shuffle_seed", self.seed) != self.seed:
                dm = copy.copy(dm)  # shares the loaded tensors
                dm.shuffle_seed = self.seed
            return dm.train_dataloader()

        def val_dataloader(self) -> Any:
            return self.dm.val_dataloader()

        def test_dataloader(self) -> Any:
            return self.dm.test_dataloader()

        def hyperopt_dataloader(self) -> Any:
            return self.dm.hyperopt_dataloader()

    return Loaders


def build_model(
    task: Task,
    point: Point,
    seed: int,
    datamodule: Any,
    tuned: bool = False,
    extra_args: Mapping[str, Any] | None = None,
) -> Any:
    """The task's model on ``lightning.pytorch``, seeded, with its hyperparameters at ``point``.

    A learning-rate dim (:data:`LR_SCALE`) multiplies the task's ``lr`` (and ``final_lr``, where
    the schedule has one): for
    a run the tuner drives (``tuned``) the model declares it (``tune_lr``: a
    :class:`~lightning_hyperopt.LearningRate` λ, η_t = λ·lr_t), for the other systems it is a
    fixed factor of the model's learning rates. ``extra_args`` add to (or replace) the task's
    model arguments (``--online-model-args``)."""
    from experiments.models import for_namespace
    from lightning_hyperopt.core.hyperparameters import find_hyperparameters

    args = {**task.model_args, **(extra_args or {})}
    if task.data == "ptb":
        args["vocab_size"] = datamodule.vocab_size
    if task.model == "mlp":
        args["seed"] = seed
    point = dict(point)
    if LR_SCALE in point and not tuned:
        scale = point.pop(LR_SCALE)
        args["lr"] = args["lr"] * scale
        if "final_lr" in args:  # a step decay (the LSTM's) is a factor of lr already
            args["final_lr"] = args["final_lr"] * scale
    elif LR_SCALE in point:
        args["tune_lr"] = True
    torch.manual_seed(seed)
    model = for_namespace(task.model)(**args)
    hyperparameters = find_hyperparameters(model)
    if sorted(hyperparameters) != sorted(point):
        raise SettingError(
            f"task {task.name}: the model's hyperparameters {sorted(hyperparameters)} are not the "
            f"task's dims {sorted(point)}"
        )
    for name, value in point.items():
        h = hyperparameters[name]
        if not h.bounds[0] <= value <= h.bounds[1]:
            raise SettingError(f"task {task.name}: {name}={value} is outside its bounds {h.bounds}")
        h.value.fill_(float(value))
    return model


def build_datamodule(task: Task, data_dir: Path, verify: bool) -> Any:
    """The task's datamodule, set up (files read once, outside every clock)."""
    from experiments.data import MNISTDataModule, PTBDataModule

    cls = {"mnist": MNISTDataModule, "ptb": PTBDataModule}[task.data]
    dm = cls(str(data_dir), download=False, verify=verify, **task.data_args)
    dm.setup("fit")
    dm.setup("test")
    return dm


def make_callback(online_args: Mapping[str, Any]) -> Any:
    """``OnlineHyperparamCallback(**online_args)``; a ``{"class_path", "init_args"}`` mapping
    among the values is built first (e.g. ``method`` or ``hyper_optimizer`` objects)."""
    from lightning_hyperopt import OnlineHyperparamCallback

    try:
        return OnlineHyperparamCallback(**{k: _build(v) for k, v in online_args.items()})
    except (TypeError, ValueError, ImportError, AttributeError) as err:
        raise SettingError(f"--online-args {dict(online_args)!r}: {err}") from err


def _build(value: Any) -> Any:
    if isinstance(value, Mapping) and "class_path" in value:
        module, _, name = str(value["class_path"]).rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: _build(v) for k, v in dict(value.get("init_args") or {}).items()})
    return value


def describe_callback(cb: Any) -> dict[str, Any]:
    """The settings an online run used (the record's proof of what the defaults were): its
    fit's plan where it ran, else what its arguments resolve to."""
    plan = cb.plan
    hyper_optimizer = (
        plan.hyper_optimizer
        if plan is not None
        else resolve_hyper_optimizer(cb.hyper_optimizer, cb.method)
    )
    return {
        "method": repr(cb.method),
        "hyper_optimizer": repr(hyper_optimizer),
        "warmup_steps": cb.warmup_steps,
        "hyper_every": cb.hyper_every,
        "adopt_dropout": cb.adopt_dropout,
        "max_nonfinite_steps": cb.max_nonfinite_steps,
    }


@dataclass
class Context:
    """What every run of a task shares."""

    task: Task
    datamodule: Any
    clock_name: str
    online_args: Mapping[str, Any]
    log: RunLog
    show_progress: bool = False
    #: model arguments of the online runs only (``--online-model-args``)
    online_model_args: Mapping[str, Any] = field(default_factory=dict)
    #: datamodule attributes of the online runs only (``--online-data-args``)
    online_data_args: Mapping[str, Any] = field(default_factory=dict)


#: what an online run may change beyond the callback's arguments: the flag and the record key
ONLINE_EXTRAS = {"model": "online_model_args", "data": "online_data_args"}


def online_datamodule(datamodule: Any, attributes: Mapping[str, Any]) -> Any:
    """``datamodule``, or a copy of it (sharing the loaded tensors) with ``attributes`` set,
    e.g. ``{"hyperopt_batch_size": 50}``; an attribute it does not have is an error."""
    if not attributes:
        return datamodule
    unknown = sorted(k for k in attributes if not hasattr(datamodule, k))
    if unknown:
        raise SettingError(
            f"--online-data-args: {type(datamodule).__name__} has no attribute {unknown}"
        )
    copied = copy.copy(datamodule)
    for key, value in attributes.items():
        setattr(copied, key, value)
    return copied


def fit_run(
    ctx: Context,
    system: str,
    index: int,
    point: Point,
    seed: int,
    clock: Clock,
    budget: float | None = None,
    extra_callbacks: Sequence[Any] = (),
    pruned: tuple[type[BaseException], ...] = (),
    test_below: float = math.inf,
    **fields: Any,
) -> dict[str, Any]:
    """One fit of ``system`` at ``point`` (the fixed values, or the online start), then its test
    loss at the best-validation weights if its best validation loss is below ``test_below``
    (else ``None``; clock paused). Returns the run's record (not yet logged); ``state`` is
    "complete", "cut" (stopped at the budget), "pruned" (the fit raised one of ``pruned``, as
    Optuna's pruning callback does) or "diverged" (an online run the tuner stopped after
    non-finite losses: its record holds what it reached before)."""
    L = lightning_pytorch()
    Loaders = _loaders_class()
    Recorder = recorder_class("lightning.pytorch")
    task = ctx.task
    start = clock.read()
    online = system == "online"
    model = build_model(
        task, point, seed, ctx.datamodule, online, ctx.online_model_args if online else None
    )
    if system in TUNING_FREE:
        extra_callbacks = [*use_tuning_free(model, system, task.steps), *extra_callbacks]
    recorder = Recorder(clock, ctx.clock_name, budget, keep_best=True)
    callbacks: list = [recorder]
    tuner = None
    if system == "online":
        tuner = make_callback(ctx.online_args)
        callbacks.append(tuner)
    callbacks += list(extra_callbacks)
    settings = dict(
        accelerator="cpu",
        devices=1,
        max_steps=task.steps,
        val_check_interval=task.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    settings.update(task.trainer_args)
    trainer = L.Trainer(callbacks=callbacks, **settings)
    data = online_datamodule(ctx.datamodule, ctx.online_data_args) if online else ctx.datamodule
    was_pruned = diverged = False
    try:
        trainer.fit(model, datamodule=Loaders(data, seed))
    except pruned:  # raised in a validation hook, after the recorder's
        was_pruned = True
    except NonFiniteTrainingError:  # the tuner stopped a run whose loss stayed non-finite
        if not online:
            raise
        diverged = True
    end = clock.read()
    val = recorder.val
    if not val["step"]:
        raise RuntimeError(f"{task.name}/{system}: the run ended before its first validation")
    with clock.paused():
        state = (
            "pruned"
            if was_pruned
            else "diverged"
            if diverged
            else ("cut" if recorder.cut else "complete")
        )
        record = {
            "key": run_key(task.name, system, index, seed),
            "task": task.name,
            "system": system,
            "index": index,
            "seed": seed,
            "point": dict(point),
            "state": state,
            "steps": trainer.global_step,
            "val": val,
            "lambdas": recorder.lambdas,
            "lambda_final": hyperparameter_values(model),
            "best_val_loss": recorder.best,
            "best_step": val["step"][val["val_loss"].index(recorder.best)]
            if math.isfinite(recorder.best)
            else None,  # every validation loss non-finite (a diverged run)
            "protocol": run_protocol(task),
            "start_s": start,
            "end_s": end,
            **fields,
        }
        if tuner is not None:
            record["online_args"] = dict(ctx.online_args)
            for key in ONLINE_EXTRAS.values():
                if getattr(ctx, key):
                    record[key] = dict(getattr(ctx, key))
            record["callback"] = describe_callback(tuner)
        record["test_loss"] = None
        if recorder.best < test_below:
            record["test_loss"] = _test_loss(ctx, model, recorder.best_state)
    return record


def _test_loss(ctx: Context, model: Any, state: Mapping[str, torch.Tensor]) -> float:
    """The test loss of ``model`` with the weights ``state``."""
    L = lightning_pytorch()
    Loaders = _loaders_class()
    model.load_state_dict(state)
    tester = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    (res,) = tester.test(model, datamodule=Loaders(ctx.datamodule), verbose=False)
    return float(res["test_loss"])


def run_key(task: str, system: str, index: int, seed: int) -> str:
    """The key of a run in ``runs.jsonl`` (``--resume`` skips the keys already there)."""
    return f"{task}|{system}|{index}|seed{seed}"
