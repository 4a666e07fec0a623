"""Tables 2 and 3 of the paper: online methods against a fixed-λ grid, through the Trainer.

Every run is one ``fit`` of a LightningCLI config: the experiment's ``base.yaml`` (alone: the
fixed-λ baseline) plus one method overlay (``clip.yaml``, ``unroll.yaml``,
``first_order.yaml``) whose method arguments a table row may change (radius, K). The merged
config of each run is written next to its record, so any run can be repeated with
``lightning-hyperopt fit --config OUT/configs/KEY.yaml``.

Per run it records λ, the training loss (mean over each interval), the learning rate, the share
of clipped tangent steps and ‖y‖ against steps; the validation loss at every validation (with
the wall time since the fit began); the final test loss. Tables report, per method and over
the starts that trained, the validation loss at its best point (early stopping), at the end,
and their relative gap (the paper's "stability"), and time-to-quality: when an online run's
validation loss first reaches the best one of the fixed-λ grid, against the grid's total time.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml

from .records import RunLog, environment, fmt, logspace, markdown_table, progress, write_json

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
CALLBACK = "lightning_hyperopt.OnlineHyperparamCallback"


@dataclass(frozen=True)
class Row:
    """One row of a table: a method overlay with some of its arguments changed, and the
    model's (``model_args``, e.g. ``{"per_layer_l2": True}``).

    ``overlay=None`` is the fixed-λ baseline (the base config alone), run once per grid value.
    """

    label: str
    overlay: str | None = None
    method_args: Mapping[str, Any] = field(default_factory=dict)
    callback_args: Mapping[str, Any] = field(default_factory=dict)
    model_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A table of the paper as runs of one LightningCLI experiment (see the module doc).

    ``starts`` are the initial λ of the online rows and ``grid`` the fixed-λ values (the same
    values as the starts when ``grid_is_starts``); ``start_range`` (low, high) spaces
    ``--starts N`` values, in log scale when ``log_lambda``. ``default_hyper_scale`` and
    ``default_warmup`` adapt the configs' hyper step and warm-up (set for their full horizon)
    to the table's default number of steps.
    ``loss_scale`` and ``loss_label`` turn the validation loss into the table's unit
    (×10³ cross-entropy, or perplexity with ``perplexity=True``). A run whose best validation
    loss stays above ``dead_fraction``·``chance_loss`` never learned: it is counted apart.
    """

    name: str
    description: str
    config_dir: str
    hyper_arg: str
    starts: tuple[float, ...]
    grid: tuple[float, ...]
    rows: tuple[Row, ...]
    default_steps: int
    default_val_every: int
    default_data_dir: str
    chance_loss: float
    loss_label: str
    loss_scale: float = 1.0
    perplexity: bool = False
    start_range: tuple[float, float] | None = None
    log_lambda: bool = True
    smoke: Mapping[str, Any] = field(default_factory=dict)
    paper: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    dead_fraction: float = 0.9
    record_every: int = 50
    grid_is_starts: bool = False
    default_hyper_scale: float = 1.0
    default_warmup: int | None = None

    def starts_for(self, n: int | None) -> list[float]:
        """The ``n`` initial values (``starts`` when ``n`` is None or their number)."""
        if n is None or n == len(self.starts):
            return list(self.starts)
        if n < 1:
            raise ValueError(f"starts must be >= 1, got {n}")
        low, high = self.start_range or (min(self.starts), max(self.starts))
        if self.log_lambda:
            return logspace(low, high, n)
        return [low + (high - low) * i / max(1, n - 1) for i in range(n)]

    def score(self, loss: float) -> float:
        """A validation loss in the table's unit."""
        return math.exp(loss) if self.perplexity else loss * self.loss_scale


def _clip(radius: float) -> Row:
    return Row(f"Clip{radius:g}", "clip.yaml", {"radius": radius})


def _unroll(k: int) -> Row:
    return Row(f"Unroll{k}", "unroll.yaml", {"steps": k})


#: the rows of the paper's Tables 2 and 3
PAPER_ROWS = (
    Row("Fixed λ"),
    Row("Unroll1-gTgV", "first_order.yaml"),
    _unroll(1),
    _unroll(5),
    _unroll(10),
    _clip(5.0),
    _clip(10.0),
    _clip(20.0),
)


MNIST = Experiment(
    name="table2",
    description="MNIST MLP with L2 (Table 2), through LightningCLI",
    config_dir="mnist",
    hyper_arg="l2",
    starts=tuple(logspace(1e-6, 1e-1, 6)),
    grid=tuple(logspace(1e-6, 1e-1, 6)),
    start_range=(1e-6, 1e-1),
    grid_is_starts=True,
    rows=PAPER_ROWS,
    # 48 fits of 3,000 steps: about an hour of CPU time (docs/results.md)
    default_steps=3000,
    default_val_every=250,
    default_data_dir="../shared/data/mnist",
    chance_loss=math.log(10),
    loss_label="validation cross-entropy ×10³",
    loss_scale=1e3,
    smoke={"steps": 12, "val_every": 6, "starts": 1, "record_every": 3},
    paper={
        "Fixed λ": (71.6, 73.3),
        "Unroll1-gTgV": (71.9, 73.2),
        "Unroll1": (73.0, 73.6),
        "Unroll5": (73.7, 74.3),
        "Unroll10": (73.6, 74.8),
        "Clip5": (71.9, 73.0),
        "Clip10": (71.4, 72.7),
        "Clip20": (70.8, 71.8),
    },
)

PTB = Experiment(
    name="table3",
    description="PTB LSTM with the dropout keep probability (Table 3), through LightningCLI",
    config_dir="ptb",
    hyper_arg="keep_prob",
    # the paper's fixed keep probabilities, then higher ones: a run far shorter than the
    # paper's 250K steps underfits, and its best keep probability is higher. The paper does not
    # give its online starts; one start in the middle of the range keeps a CPU run in hours.
    grid=(0.35, 0.40, 0.45, 0.6, 0.8, 1.0),
    starts=(0.5,),
    start_range=(0.35, 0.9),
    log_lambda=False,
    rows=PAPER_ROWS,
    # 1,000 steps (0.75 epoch) instead of the configs' 50K: the hyper step ×10 and a warm-up
    # of 100 steps instead of 1,000, so that λ can travel within the run
    default_steps=1000,
    default_val_every=200,
    default_hyper_scale=10.0,
    default_warmup=100,
    default_data_dir="../shared/data/ptb",
    chance_loss=math.log(10_000),
    loss_label="validation perplexity",
    perplexity=True,
    smoke={"steps": 4, "val_every": 2, "starts": 1, "record_every": 1},
    paper={
        "Fixed λ": (84.3, 86.3),
        "Unroll1-gTgV": (85.6, 95.8),
        "Unroll1": (86.1, 92.6),
        "Unroll5": (84.3, 89.1),
        "Unroll10": (84.2, 87.4),
        "Clip5": (83.2, 83.8),
        "Clip10": (83.1, 83.7),
        "Clip20": (84.2, 84.7),
    },
)

EXPERIMENTS: dict[str, Experiment] = {"table2": MNIST, "table3": PTB}


# ------------------------------------------------------------------------------ configs
def _set(config: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = config
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {k!r} is not a mapping in the config")
    node[keys[-1]] = value


def _merge(base: dict, over: Mapping) -> dict:
    """``base`` updated by ``over``, recursively for mappings; lists are replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.init_args.lr=0.05"`` → ("model.init_args.lr", 0.05) (the value read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. model.init_args.lr=0.05")
    return key.strip(), yaml.safe_load(value)


def compose_config(
    exp: Experiment,
    row: Row,
    init: float,
    steps: int,
    val_every: int,
    data_dir: Path,
    seed: int = 0,
    gpu: bool = False,
    extra: Sequence[str] = (),
    overlays: Sequence[Path] = (),
    hyper_scale: float = 1.0,
    warmup: int | None = None,
) -> dict:
    """The LightningCLI config of one run: base + the row's overlay + ``overlays`` (e.g. the
    PTB ``medium.yaml``), then the row's model arguments, the run's settings and the
    ``extra`` KEY=VALUE overrides.
    ``hyper_scale`` multiplies the method's hyper step (``hyper_lr_scale`` or ``hyper_lr``):
    shorter runs than the config's horizon need larger steps for λ to travel as far.
    ``warmup`` replaces the callback's ``warmup_steps``."""
    if not (hyper_scale > 0 and math.isfinite(hyper_scale)):
        raise ValueError(f"hyper_scale={hyper_scale!r} must be a finite number > 0")
    folder = CONFIGS / exp.config_dir
    if not (folder / "base.yaml").is_file():
        raise FileNotFoundError(
            f"{folder / 'base.yaml'} not found: the benchmarks read the example configs of a "
            "source checkout (pip install -e .)"
        )
    config = yaml.safe_load((folder / "base.yaml").read_text())
    if row.overlay is not None:
        config = _merge(config, yaml.safe_load((folder / row.overlay).read_text()))
        callbacks = [c for c in config["trainer"]["callbacks"] if c.get("class_path") == CALLBACK]
        if len(callbacks) != 1:
            raise ValueError(f"{row.overlay}: expected one {CALLBACK}")
        args = callbacks[0].setdefault("init_args", {})
        args.update(row.callback_args)
        if warmup is not None:
            args["warmup_steps"] = int(warmup)
        method_args = args["method"].setdefault("init_args", {})
        method_args.update(row.method_args)
        for name in ("hyper_lr_scale", "hyper_lr"):
            if name in method_args:
                method_args[name] = float(method_args[name]) * hyper_scale
    for overlay in overlays:
        config = _merge(config, yaml.safe_load(Path(overlay).read_text()))
    for name, value in row.model_args.items():
        _set(config, f"model.init_args.{name}", value)
    settings = {
        "seed_everything": seed,
        "trainer.max_steps": steps,
        "trainer.val_check_interval": val_every,
        "trainer.check_val_every_n_epoch": None,
        "trainer.logger": False,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
        "trainer.enable_checkpointing": False,
        "trainer.num_sanity_val_steps": 0,
        "trainer.accelerator": "gpu" if gpu else "cpu",
        "trainer.devices": 1,
        f"model.init_args.{exp.hyper_arg}": float(init),
        "data.init_args.data_dir": str(Path(data_dir).resolve()),
    }
    for key, value in settings.items():
        _set(config, key, value)
    for text in extra:
        _set(config, *parse_override(text))
    return config


def instantiate(config: Mapping[str, Any], path: Path) -> Any:
    """Write ``config`` to ``path`` and build (not run) the LightningCLI it describes."""
    from pytorch_lightning.cli import LightningCLI

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "args given and sys.argv too": args is what we mean
        return LightningCLI(
            model_class=None,
            datamodule_class=None,
            save_config_callback=None,
            args=["--config", str(path)],
            run=False,
        )


def run_key(row: Row, init: float, seed: int) -> str:
    """The key of a run in ``runs.jsonl`` (``--resume`` skips the keys already there)."""
    return f"{row.label}|{init:.6g}|seed{seed}"


# ------------------------------------------------------------------------------ recording
class Recorder(pl.Callback):
    """Records what a benchmark run reports (see the module doc), with an optional progress
    bar over the run's steps."""

    def __init__(self, every: int = 50, bar: Any = None) -> None:
        self.every = every
        self.bar = bar
        self.curves: dict[str, list[float]] = {"step": [], "train_loss": [], "lr": []}
        self.val: dict[str, list[float]] = {"step": [], "val_loss": [], "wall_s": [], "train_s": []}
        self._losses: list[float] = []
        self._clipped: list[float] = []
        self._norms: list[float] = []
        self._start = 0.0
        self._val_start = 0.0
        self.val_total = 0.0
        self.engine: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_hyperopt import OnlineHyperparamCallback

        tuners = [c for c in trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
        self.engine = tuners[0].engine if tuners else None
        self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self._losses.append(float(loss))
        engine = self.engine
        if engine is not None and engine.clipped is not None:
            self._clipped.append(float(engine.clipped[0].float()))
        if engine is not None and engine.norms is not None:
            self._norms.append(float(engine.norms[0]))
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self._record(trainer, pl_module, step)

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        from lightning_hyperopt.core.hyperparameters import find_hyperparameters

        c = self.curves
        c["step"].append(step)
        c["train_loss"].append(statistics.fmean(self._losses) if self._losses else math.nan)
        c["lr"].append(float(trainer.optimizers[0].param_groups[0]["lr"]))
        for name, h in find_hyperparameters(pl_module).items():
            c.setdefault(f"lambda/{name}", []).append(float(h.value))
        if self._clipped:
            c.setdefault("clipped", []).append(statistics.fmean(self._clipped))
        if self._norms:
            c.setdefault("tangent_norm", []).append(statistics.median(self._norms))
        self._losses, self._clipped, self._norms = [], [], []
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self.val_total += now - self._val_start
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        self.val["step"].append(trainer.global_step)
        self.val["val_loss"].append(float(trainer.callback_metrics["val_loss"]))
        self.val["wall_s"].append(now - self._start)
        self.val["train_s"].append(now - self._start - self.val_total)


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
    recorder = Recorder(record_every or exp.record_every, bar)
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
        val["step"].append(cli.trainer.global_step)
        val["val_loss"].append(float(res["val_loss"]))
        val["wall_s"].append(fit_s)
        val["train_s"].append(fit_s - recorder.val_total)
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


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def summarize(exp: Experiment, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-row aggregates, the fixed-λ grid and time-to-quality, from the run records."""
    by_row: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_row.setdefault(r["row"], []).append(r)
    grid = sorted(by_row.get("Fixed λ", []), key=lambda r: r["init"])
    # runs that never learned are left out of the means, unless none learned (smoke scale)
    live_grid = [r for r in grid if not r["dead"]] or grid
    grid_best = min(live_grid, key=lambda r: r["best_val_loss"]) if live_grid else None
    grid_total_s = sum(r["fit_s"] for r in grid)
    rows: dict[str, dict[str, Any]] = {}
    for label, runs in by_row.items():
        if label == "Fixed λ":
            runs = [grid_best] if grid_best is not None else []
        live = [r for r in runs if not r["dead"]]
        pool = live or runs
        best = _mean([exp.score(r["best_val_loss"]) for r in pool])
        final = _mean([exp.score(r["final_val_loss"]) for r in pool])
        lambdas = [v for r in pool for v in r["lambda_final"].values()]
        rows[label] = {
            "best": best,
            "final": final,
            "stability": final / best - 1 if best == best and best else math.nan,
            "test": _mean([exp.score(r["test_loss"]) for r in pool]),
            "lambda_final_median": statistics.median(lambdas) if lambdas else math.nan,
            "live": sum(not r["dead"] for r in by_row[label]),
            "runs": len(by_row[label]),
            "dead_inits": [r["init"] for r in by_row[label] if r["dead"]],
            "fit_s": _mean([r["fit_s"] for r in by_row[label]]),
        }
        if label == "Fixed λ" and grid_best is not None:
            rows[label]["init"] = grid_best["init"]
    ttq = {}
    if grid_best is not None:
        target = grid_best["best_val_loss"]
        for label in [r.label for r in exp.rows if r.label in by_row]:
            runs = by_row[label]
            if label == "Fixed λ":
                continue
            times = []
            for r in runs:
                hit = [t for t, v in zip(r["val"]["wall_s"], r["val"]["val_loss"]) if v <= target]
                times.append(hit[0] if hit else None)
            reached = [t for t in times if t is not None]
            ttq[label] = {
                "reached": len(reached),
                "runs": len(times),
                "median_s": statistics.median(reached) if reached else None,
                "fastest_s": min(reached) if reached else None,
                "median_ratio": statistics.median(reached) / grid_total_s if reached else None,
                "closest": min(r["best_val_loss"] for r in runs),
                "run_s": _mean([r["fit_s"] for r in runs]),
            }
    per_start = {
        label: {f"{r['init']:.3g}": exp.score(r["best_val_loss"]) for r in by_row[label]}
        for label in [r.label for r in exp.rows if r.label in by_row]
    }
    return {
        "rows": rows,
        "per_start": per_start,
        "grid": [
            {
                "init": r["init"],
                "best": exp.score(r["best_val_loss"]),
                "final": exp.score(r["final_val_loss"]),
                "test": exp.score(r["test_loss"]),
                "best_step": r["best_step"],
                "dead": r["dead"],
                "fit_s": r["fit_s"],
            }
            for r in grid
        ],
        "grid_best_loss": None if grid_best is None else grid_best["best_val_loss"],
        "grid_total_s": grid_total_s,
        "time_to_quality": ttq,
    }


def table_markdown(exp: Experiment, summary: Mapping[str, Any]) -> str:
    """The table in the paper's format, then the grid and time-to-quality tables."""
    unit = exp.loss_label
    header = [
        "Method",
        f"{unit}, early stopping",
        "no early stopping",
        "stability",
        "final λ (median)",
        "test, final",
        "runs that trained",
        "paper",
    ]
    body = []
    for label in [r.label for r in exp.rows]:
        s = summary["rows"].get(label)
        if s is None:
            continue
        paper = exp.paper.get(label)
        name = label
        if label == "Fixed λ" and "init" in s:
            name = f"Fixed λ (grid best: {s['init']:.3g})"
        body.append(
            [
                name,
                fmt(s["best"], 1),
                fmt(s["final"], 1),
                "—" if s["stability"] != s["stability"] else f"{100 * s['stability']:+.1f}%",
                f"{s['lambda_final_median']:.3g}",
                fmt(s["test"], 1),
                f"{s['live']}/{s['runs']}",
                "—" if paper is None else f"{paper[0]} / {paper[1]}",
            ]
        )
    p = summary["protocol"]
    text = [
        markdown_table(header, body),
        f"\n{p['steps']} steps per run, validation every {p['val_every']} steps; online starts "
        f"λ₀ ∈ {{{', '.join(f'{v:.3g}' for v in p['starts'])}}}; seed {p['seed']}. Means over "
        "the starts that trained (a run whose best validation loss stays above "
        f"{exp.dead_fraction}·{exp.chance_loss:.3f} never learned; all runs when none did). "
        "Fits took "
        f"{summary['runs_wall_s']:.0f} s in all.\n",
        "\n### Fixed-λ grid\n\n",
        markdown_table(
            ["λ", "early stopping", "no early stopping", "test, final", "best step", "fit s"],
            [
                [
                    f"{g['init']:.3g}" + (" (did not train)" if g["dead"] else ""),
                    fmt(g["best"], 1),
                    fmt(g["final"], 1),
                    fmt(g["test"], 1),
                    g["best_step"],
                    f"{g['fit_s']:.0f}",
                ]
                for g in summary["grid"]
            ],
        ),
    ]
    per_start = summary.get("per_start", {})
    inits = sorted({k for v in per_start.values() for k in v}, key=float)
    if per_start:
        text += [
            "\n### Every run, early stopping\n\n",
            markdown_table(
                ["Method", *[f"λ₀ = {i}" for i in inits]],
                [[label, *[fmt(v.get(i), 1) for i in inits]] for label, v in per_start.items()],
            ),
        ]
    ttq = summary["time_to_quality"]
    if ttq:
        text += [
            f"\n### Time to quality\n\nTarget: the grid's best validation loss "
            f"({exp.score(summary['grid_best_loss']):.1f}); the grid's total wall time "
            f"{summary['grid_total_s']:.0f} s ({len(summary['grid'])} fits).\n\n",
            markdown_table(
                [
                    "Method",
                    "best run's best",
                    "runs reaching it",
                    "median time to reach (s)",
                    "÷ grid total",
                    "mean fit time (s)",
                ],
                [
                    [
                        label,
                        fmt(exp.score(t["closest"]), 1),
                        f"{t['reached']}/{t['runs']}",
                        fmt(t["median_s"], 0),
                        fmt(t["median_ratio"], 2),
                        fmt(t["run_s"], 0),
                    ]
                    for label, t in ttq.items()
                ],
            ),
        ]
    return "".join(text)


def plot_experiment(exp: Experiment, records: Sequence[Mapping[str, Any]], out: Path) -> None:
    """``curves_<λ₀>.png`` per initial value (λ, training and validation loss against steps,
    one line per method) and ``lambda_all.png`` (every start of every method). On log axes
    λ = 0 (the lower bound) is not drawn."""
    from .plots import plot_curves, plot_lambda_grid

    by_init: dict[float, dict[str, dict[str, Any]]] = {}
    by_method: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    for r in records:
        steps = r["curves"]["step"]
        lam = next((v for k, v in r["curves"].items() if k.startswith("lambda/")), None)
        by_init.setdefault(r["init"], {})[r["row"]] = {
            "lambda": (steps, lam or []),
            "train_loss": (steps, r["curves"]["train_loss"]),
            "val_loss": (r["val"]["step"], r["val"]["val_loss"]),
        }
        if lam is not None:
            label = f"{r['init']:.0e}" if exp.log_lambda else f"{r['init']:.2f}"
            by_method.setdefault(r["row"], []).append((label, steps, lam))
    order = {r.label: i for i, r in enumerate(exp.rows)}
    by_method = dict(sorted(by_method.items(), key=lambda kv: order.get(kv[0], len(order))))
    scale = "log" if exp.log_lambda else "linear"
    for init, curves in by_init.items():
        curves = dict(sorted(curves.items(), key=lambda kv: order.get(kv[0], len(order))))
        plot_curves(
            curves,
            panels=[
                ("lambda", "λ", scale),
                ("train_loss", "training loss", "log"),
                ("val_loss", "validation loss", "log"),
            ],
            title=f"{exp.description}: λ₀ = {init:.3g}",
            path=out / f"curves_{init:.3g}.png",  # 3 digits: 0.45 and 0.5 stay apart
        )
    plot_lambda_grid(
        by_method,
        f"{exp.description}: λ against steps, every start",
        out / "lambda_all.png",
        log=exp.log_lambda,
    )
