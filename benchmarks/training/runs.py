"""The runs of a table: one LightningCLI fit per (row, start, seed), recorded, then tested; the
experiment's driver, :func:`run_experiment`."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ..recorder import recorder_class
from ..records import RunLog, environment, progress, write_json
from .experiments import Experiment, Row, compose_config, instantiate
from .report import plot_experiment, summarize, table_markdown


def run_key(row: Row, init: float, seed: int) -> str:
    """The key of a run in ``runs.jsonl`` (``--resume`` skips the keys already there)."""
    return f"{row.label}|{init:.6g}|seed{seed}"


def run_one(
    exp: Experiment,
    row: Row,
    init: float,
    steps: int,
    val_every: int,
    data_dir: Path,
    out: Path,
    seed: int = 0,
    gpu: bool = False,
    extra: Sequence[str] = (),
    record_every: int | None = None,
    show_progress: bool = False,
    test: bool = True,
    overlays: Sequence[Path] = (),
    hyper_scale: float = 1.0,
    warmup: int | None = None,
) -> dict[str, Any]:
    """Fit one run of ``exp`` (row, initial λ) and return its JSON record."""
    key = run_key(row, init, seed)
    config = compose_config(
        exp,
        row,
        init,
        steps,
        val_every,
        data_dir,
        seed,
        gpu,
        extra,
        overlays,
        hyper_scale,
        warmup,
    )
    cli = instantiate(config, out / "configs" / (key.replace("|", "_").replace(" ", "_") + ".yaml"))
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=key, leave=False, position=1, mininterval=1.0)
    recorder = recorder_class()(every=record_every or exp.record_every, bar=bar)
    cli.trainer.callbacks.append(recorder)
    start = time.perf_counter()
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        if bar is not None:
            bar.close()
    fit_s = time.perf_counter() - start
    val = recorder.val
    if not val["step"] or val["step"][-1] != cli.trainer.global_step:
        (res,) = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        if val["step"][-1:] != [cli.trainer.global_step]:  # the recorder's hook did not see it
            t = recorder.clock.read()
            recorder.add_validation(cli.trainer.global_step, float(res["val_loss"]), t)
    test_loss = math.nan
    if test:
        (res,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        test_loss = float(res.get("test_loss", math.nan))
    losses = val["val_loss"]
    best = min(range(len(losses)), key=losses.__getitem__)
    lambdas = {k: v[-1] for k, v in recorder.curves.items() if k.startswith("lambda/")}
    return {
        "key": key,
        "experiment": exp.name,
        "row": row.label,
        "init": init,
        "seed": seed,
        "steps": steps,
        "method": None if row.overlay is None else _method_repr(cli.trainer),
        "config": config,
        "curves": recorder.curves,
        "val": val,
        "best_val_loss": losses[best],
        "best_step": val["step"][best],
        "final_val_loss": losses[-1],
        "test_loss": test_loss,
        "lambda_final": lambdas,
        "dead": losses[best] > exp.dead_fraction * exp.chance_loss,
        "fit_s": fit_s,
    }


def _method_repr(trainer: pl.Trainer) -> str:
    from lightning_hyperopt import OnlineHyperparamCallback

    (cb,) = [c for c in trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    return f"{cb.method!r}, warmup_steps={cb.warmup_steps}"


# ------------------------------------------------------------------------------ the table
def run_experiment(
    exp: Experiment,
    out: Path,
    data_dir: Path,
    steps: int | None = None,
    starts: int | None = None,
    val_every: int | None = None,
    methods: Sequence[str] | None = None,
    smoke: bool = False,
    gpu: bool = False,
    resume: bool = False,
    extra: Sequence[str] = (),
    overlays: Sequence[Path] = (),
    hyper_scale: float | None = None,
    warmup: int | None = None,
    init_values: Sequence[float] | None = None,
    grid_values: Sequence[float] | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run a table end to end (grid and online rows, start-major so every method sees the same
    machine load), then write ``table.md``, ``summary.json`` and the plots into ``out``.

    ``resume`` keeps the runs already in ``out/runs.jsonl`` (e.g. the halves of a table run by
    two processes, concatenated) and runs only the missing ones. ``init_values`` replaces both
    the online starts and the fixed-λ grid by explicit values; ``grid_values`` replaces the
    grid alone. ``hyper_scale`` and ``warmup`` default to the experiment's.
    """
    labels = [r.label for r in exp.rows]
    chosen = labels if methods is None else list(methods)
    unknown = [m for m in chosen if m not in labels]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; accepted values: {labels}")
    rows = [r for r in exp.rows if r.label in chosen]
    if smoke:
        steps = steps or exp.smoke["steps"]
        val_every = val_every or exp.smoke["val_every"]
        starts = starts or exp.smoke["starts"]
    steps = steps or exp.default_steps
    val_every = min(val_every or exp.default_val_every, steps)
    if init_values is not None:
        init_values = [float(v) for v in init_values]
        grid = list(init_values)
    else:
        init_values = exp.starts_for(starts)
        grid = init_values if exp.grid_is_starts else list(exp.grid)
    if grid_values is not None:
        grid = [float(v) for v in grid_values]
    if hyper_scale is None:
        hyper_scale = exp.default_hyper_scale
    if warmup is None:
        warmup = exp.default_warmup
    plan = []
    for i in range(max(len(grid), len(init_values))):
        for row in rows:
            values = grid if row.overlay is None else init_values
            if i < len(values):
                plan.append((row, values[i]))
    log = RunLog(out, resume=resume)
    record_every = exp.smoke.get("record_every") if smoke else None
    start = time.perf_counter()
    for row, init in progress(plan, len(plan), exp.name, show_progress):
        if log.done(run_key(row, init, seed)) is not None:
            continue
        record = run_one(
            exp,
            row,
            init,
            steps,
            val_every,
            data_dir,
            out,
            seed=seed,
            gpu=gpu,
            extra=extra,
            record_every=record_every,
            show_progress=show_progress,
            overlays=overlays,
            hyper_scale=hyper_scale,
            warmup=warmup,
        )
        log.add(record)
    keys = {run_key(row, init, seed) for row, init in plan}
    records = [r for r in log.records if r["key"] in keys]
    summary = summarize(exp, records)
    summary.update(
        environment=environment(),
        protocol={
            "steps": steps,
            "val_every": val_every,
            "starts": init_values,
            "grid": grid,
            "seed": seed,
            "extra": list(extra),
            "overlays": [str(o) for o in overlays],
            "hyper_scale": hyper_scale,
            "warmup": warmup,
            "gpu": gpu,
        },
        wall_s=time.perf_counter() - start,
        runs_wall_s=sum(r["fit_s"] for r in records),
    )
    write_json(out / "summary.json", summary)
    (out / "table.md").write_text(table_markdown(exp, summary))
    plot_experiment(exp, records, out)
    return summary
