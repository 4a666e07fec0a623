"""The systems of ``bench ttq`` (grid, random search, Optuna, online) and the benchmark's driver,
:func:`run_ttq`: settings checked before any run, runs logged as they finish, outputs written."""

from __future__ import annotations

import importlib
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..clocks import CLOCKS, Clock, check_clock
from ..records import RunLog, environment, progress, write_json
from .report import plot_ttq, table_markdown
from .runs import (
    Context,
    build_datamodule,
    build_model,
    fit_run,
    lightning_pytorch,
    make_callback,
    online_datamodule,
    run_key,
)
from .summary import overall, records_of, summarize, total_time
from .tasks import SYSTEMS, TASKS, Point, SettingError, Task, protocol, run_protocol
from .tuning_free import TUNING_FREE, check_installed

TPE_STARTUP_TRIALS = 3
PRUNER_STARTUP_TRIALS = 2


def _offset(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Where a resumed system's clock stood after its recorded runs."""
    return {c: max((r["end_s"][c] for r in records), default=0.0) for c in CLOCKS}


def _fixed_points(ctx: Context, system: str, points: Sequence[Point], seed: int) -> None:
    """The grid or random search: one fit per point, on one clock."""
    done = records_of(ctx.log, ctx.task.name, system)
    clock = Clock(_offset(done))
    for i, point in enumerate(progress(points, len(points), system, ctx.show_progress)):
        if ctx.log.done(run_key(ctx.task.name, system, i, seed)) is not None:
            continue
        record = fit_run(
            ctx, system, i, point, seed, clock, test_below=_best(ctx.log, ctx.task.name, system)
        )
        with clock.paused():
            ctx.log.add(record)


def _best(log: RunLog, task: str, system: str) -> float:
    """The best validation loss of ``system``'s recorded runs on ``task``, +∞ if none: a run
    gets its test loss only if it beats it (so every winner, and every best-so-far a summary
    can quote, has one)."""
    return min((r["best_val_loss"] for r in records_of(log, task, system)), default=math.inf)


def random_points(task: Task, n: int, seed: int) -> list[dict[str, float]]:
    """``n`` points drawn from the task's search space, reproducibly from ``seed``."""
    rng = random.Random(seed)
    return [{d.name: d.sample(rng) for d in task.dims} for _ in range(n)]


def _run_optuna(ctx: Context, seed: int, budget: float, max_trials: int) -> None:
    """Optuna TPE (seeded) + median pruning, until the clock has used ``budget`` seconds."""
    try:
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback
    except ImportError as err:
        raise SettingError(
            "the optuna system needs optuna: pip install -r benchmarks/requirements.txt"
        ) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = ctx.task
    steps_per_epoch = len(ctx.datamodule.train_dataloader())
    # the pruning callback reports at the epoch index: never prune before the 2nd validation
    warmup_epochs = (2 * task.val_every - 1) // steps_per_epoch
    study = optuna.create_study(
        direction="minimize",
        # TPE after 3 random trials (Optuna's default of 10 would leave it random search within
        # a budget of about as many full trials)
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=warmup_epochs
        ),
    )
    distributions = {
        d.name: optuna.distributions.FloatDistribution(d.low, d.high, log=d.log) for d in task.dims
    }
    done = records_of(ctx.log, task.name, "optuna")
    for r in sorted(done, key=lambda r: r["index"]):  # a resumed study continues from these
        study.add_trial(
            optuna.trial.create_trial(
                params=r["point"],
                distributions=distributions,
                value=None if r["state"] == "pruned" else r["best_val_loss"],
                state=optuna.trial.TrialState.PRUNED
                if r["state"] == "pruned"
                else optuna.trial.TrialState.COMPLETE,
                intermediate_values=dict(zip(r["epochs"], r["val"]["val_loss"], strict=False)),
            )
        )
    clock = Clock(_offset(done))
    index = len(done)
    while clock.read()[ctx.clock_name] < budget and index < max_trials:
        trial = study.ask(distributions)
        record = fit_run(
            ctx,
            "optuna",
            index,
            dict(trial.params),
            seed,
            clock,
            budget,
            extra_callbacks=[PyTorchLightningPruningCallback(trial, monitor="val_loss")],
            pruned=(optuna.TrialPruned,),
            test_below=_best(ctx.log, ctx.task.name, "optuna"),
            trial=trial.number,
        )
        with clock.paused():
            record["epochs"] = [(s - 1) // steps_per_epoch for s in record["val"]["step"]]
            if record["state"] == "pruned":
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, record["best_val_loss"])
            ctx.log.add(record)
        index += 1


def _run_online(ctx: Context, seeds: Sequence[int]) -> None:
    """One online run per start and seed, each on its own clock (it is a whole system)."""
    plan = [(i, s) for i in range(len(ctx.task.starts)) for s in seeds]
    for i, seed in progress(plan, len(plan), "online", ctx.show_progress):
        if ctx.log.done(run_key(ctx.task.name, "online", i, seed)) is not None:
            continue
        record = fit_run(ctx, "online", i, ctx.task.starts[i], seed, Clock())
        ctx.log.add(record)


# ------------------------------------------------------------------------------ the benchmark
def run_ttq(
    out: Path,
    tasks: Sequence[str] | None = None,
    systems: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    online_args: Mapping[str, Any] | None = None,
    online_model_args: Mapping[str, Any] | None = None,
    online_data_args: Mapping[str, Any] | None = None,
    mnist_dir: Path = Path("../shared/data/mnist"),
    ptb_dir: Path = Path("../shared/data/ptb"),
    smoke: bool = False,
    steps: int | None = None,
    val_every: int | None = None,
    resume: bool = False,
    clock: str = "wall",
    verify: bool = True,
    max_trials: int = 500,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the chosen systems on the chosen tasks (in that order: grid, random, optuna, online;
    the grid's best loss and total time are the others' targets and Optuna's budget), then write
    ``summary.json``, ``table.md`` and ``curves.png`` into ``out`` (``runs.jsonl`` grows as runs
    finish). Every argument is checked before the first run. Baselines use ``seeds[0]``."""
    names = list(TASKS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise SettingError(f"tasks: unknown {unknown}; accepted values: {list(TASKS)}")
    chosen = list(SYSTEMS) if systems is None else list(systems)
    bad = [s for s in chosen if s not in SYSTEMS]
    if bad or not chosen:
        raise SettingError(f"systems: unknown {bad}; accepted values: {list(SYSTEMS)}")
    if "optuna" in chosen and "grid" not in chosen:
        raise SettingError("systems: optuna's budget is the grid's total time: add grid")
    try:
        check_clock(clock)
    except ValueError as err:
        raise SettingError(str(err)) from None
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise SettingError(f"seeds={seeds}: distinct integers >= 0, at least one")
    if max_trials < 1:
        raise SettingError(f"max_trials={max_trials} must be >= 1")
    online_args = dict(online_args or {})
    extras = {
        "online_model_args": dict(online_model_args or {}),
        "online_data_args": dict(online_data_args or {}),
    }
    make_callback(online_args)  # bad online arguments fail here, before any run
    plan = [TASKS[n].scaled(smoke, steps, val_every) for n in names]
    lightning_pytorch()
    if "optuna" in chosen:
        try:
            importlib.import_module("optuna_integration")
        except ImportError as err:
            raise SettingError(
                "the optuna system needs optuna: pip install -r benchmarks/requirements.txt"
            ) from err
    for system in TUNING_FREE:
        if system in chosen and any(system in t.tuning_free for t in plan):
            check_installed(system)
    dirs = {"mnist": Path(mnist_dir), "ptb": Path(ptb_dir)}
    datamodules = {}
    for task in plan:  # data problems (missing files, sizes) before any run
        try:
            datamodules[task.name] = build_datamodule(task, dirs[task.data], verify)
        except (OSError, ValueError) as err:
            raise SettingError(f"task {task.name}, --{task.data}-dir: {err}") from err
        if "optuna" in chosen:
            per_epoch = len(datamodules[task.name].train_dataloader())
            if task.val_every < per_epoch:
                raise SettingError(
                    f"task {task.name}: val_every={task.val_every} is shorter than an epoch "
                    f"({per_epoch} steps): Optuna's pruning callback reports at the epoch index, "
                    "so two validations in one epoch would be one report; use a val_every >= "
                    f"{per_epoch}"
                )
        if "online" in chosen:  # bad model or datamodule arguments: before any run
            try:
                build_model(
                    task,
                    task.starts[0],
                    seeds[0],
                    datamodules[task.name],
                    True,
                    extras["online_model_args"],
                )
            except (TypeError, ValueError) as err:
                raise SettingError(f"task {task.name}, --online-model-args: {err}") from err
            online_datamodule(datamodules[task.name], extras["online_data_args"])
    log = RunLog(out, resume=resume)
    _check_resumed(log, plan, {"online_args": online_args, **extras})
    start = time.perf_counter()
    for task in plan:
        ctx = Context(
            task, datamodules[task.name], clock, online_args, log, show_progress, **extras
        )
        if "grid" in chosen:
            _fixed_points(ctx, "grid", task.grid, seeds[0])
        if "random" in chosen:
            _fixed_points(ctx, "random", random_points(task, len(task.grid), seeds[0]), seeds[0])
        if "optuna" in chosen:
            budget = total_time(records_of(log, task.name, "grid"), clock)
            _run_optuna(ctx, seeds[0], budget, max_trials)
        for system in TUNING_FREE:
            if system in chosen and system in task.tuning_free:
                _fixed_points(ctx, system, task.regularizer_points(), seeds[0])
        if "online" in chosen:
            _run_online(ctx, seeds)
    summary = {
        "tasks": {
            task.name: summarize(task, [r for r in log.records if r["task"] == task.name], clock)
            for task in plan
        },
        "environment": environment(),
        "protocol": {
            "seeds": seeds,
            "online_args": online_args,
            **extras,
            "clock": clock,
            "smoke": smoke,
            "systems": chosen,
            "tasks": {t.name: protocol(t) for t in plan},
        },
        "wall_s": time.perf_counter() - start,
    }
    summary["overall"] = overall(summary["tasks"])
    write_json(out / "summary.json", summary)
    (out / "table.md").write_text(table_markdown(summary))
    plot_ttq(summary, out / "curves.png")
    return summary


def _check_resumed(log: RunLog, plan: Sequence[Task], online: Mapping[str, Mapping]) -> None:
    """Refuse to mix the recorded runs of another protocol (steps, validation interval, points;
    for online runs their callback, model and datamodule arguments, ``online``) with new
    ones."""
    for task in plan:
        for r in log.records:
            if r["task"] != task.name:
                continue
            theirs = r.get("protocol", {})
            ours = run_protocol(task)
            recorded = {k: r.get(k, {}) for k in online}
            if theirs != ours or (r["system"] == "online" and recorded != dict(online)):
                mine = {k: dict(v) for k, v in online.items()}
                raise SettingError(
                    f"--resume: {log.path} holds run {r['key']} of another protocol "
                    f"({theirs}, {recorded}) than this one ({ours}, {mine}); use another --out"
                )


def load_online_args(text: str | None, flag: str = "--online-args") -> dict[str, Any]:
    """``--online-args`` (or ``--online-model-args``): a JSON object, or the path of a
    YAML/JSON file holding one."""
    what = {
        "--online-args": "OnlineHyperparamCallback",
        "--online-model-args": "model constructor",
    }.get(flag, "datamodule")
    if text is None:
        return {}
    path = Path(text)
    try:
        value = yaml.safe_load(path.read_text()) if path.is_file() else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SettingError(
            f"{flag} {text!r}: expected a JSON object (e.g. '{{\"warmup_steps\": 100}}') "
            f"or a YAML/JSON file: {err}"
        ) from err
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingError(
            f"{flag} {text!r}: expected a mapping of {what} arguments, got {type(value).__name__}"
        )
    return value
