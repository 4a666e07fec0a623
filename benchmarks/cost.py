"""Cost of online tuning, measured in one process: time per training step and peak memory with
the callback (each method) against plain training, for the MLP and the LSTM.

Configurations: the experiment's base config alone ("plain": a fixed λ, no callback), the
same with the floor callback ("floor": plus one batch of the validation loader and one
forward/backward on it after every step, what any online method must compute; see
:mod:`~benchmarks.floor`), and with each method's overlay, through LightningCLI,
on the real data of Tables 2 and 3. For the MLP
also with one L2 coefficient per weight matrix (``per_layer_l2``: 4 λ for 784-100-100-100-10):
the same model with its penalties fixed ("plain per-layer") and tuned by several methods.

Time: every configuration is a fresh fit of ``warmup + steps`` optimizer steps (Lightning's
validation loop off; the tuner still draws its validation batches, and its own warm-up is set
to 0 so that λ is updated at every measured step). A callback stamps the wall clock
(``time.perf_counter()``) and this process's CPU time (``time.process_time()``) at each
``on_train_batch_start``; a fit's step time is the median difference after the ``warmup``
first steps (for a ``hyper_every=k`` row, the median over windows of k steps of their mean:
each window holds one λ update): everything a step costs (data, training step, tuner,
logging). Configurations are
interleaved in a fresh seeded random order in each of ``rounds`` rounds; the table gives the
median over rounds of the step time, of its ratio to the plain fit and to the floor fit of the
same round, and for a per-layer row of its ratio to the same method's one-λ fit of the same
round. Wall time is
what a run takes; CPU time (``clock="cpu"``) is the work done, which other jobs on shared
cores inflate far less, provided torch runs one thread (with several, waiting threads spin and
bill CPU time) and the work is on the CPU.

Memory: one more fit per configuration under ``torch.profiler`` with ``profile_memory=True``;
its allocation events (every CPU/GPU tensor allocation and free, with sizes) give the peak of
tensor memory allocated during the fit above what was allocated before it (the dataset and the
model's parameters are allocated before). The table gives that peak, the peak plus the
parameters ("training state"), and the ratio of the latter to plain training (and to the same
method with one λ).

Kernels (``kernels=True``): the replay's work alone, outside the Trainer, on one training
batch: forward+backward and H·v by double back-prop, with torch's default kernels (as the
training step runs) and with the native ones the callback's H·v steps run on (oneDNN's and cuDNN's
RNN kernels off), each relative to a plain forward+backward with the default kernels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device

from .clocks import CLOCKS, check_clock
from .floor import floor_class
from .recorder import recorder_class
from .records import RunLog, environment, markdown_table, progress, write_json
from .training import EXPERIMENTS, Experiment, Row, compose_config, instantiate

#: configurations compared: plain training (no callback) and one row per method, without
#: warm-up, so that every measured step pays for the λ update (the validation gradient) too
_NO_WARMUP = {"warmup_steps": 0}
#: the plain step plus what any online method must compute: one batch of the validation
#: loader and one forward/backward on it (:mod:`~benchmarks.floor`)
FLOOR = "floor"
COST_ROWS: tuple[Row, ...] = (
    Row("plain"),
    Row(FLOOR),
    Row("Unroll1-gTgV", "first_order.yaml", callback_args=_NO_WARMUP),
    #: the default method with one g_V in four steps (hyper_every=4)
    Row("Unroll1-gTgV k=4", "first_order.yaml", callback_args={**_NO_WARMUP, "hyper_every": 4}),
    Row("Unroll1", "unroll.yaml", {"steps": 1}, _NO_WARMUP),
    Row("Unroll5", "unroll.yaml", {"steps": 5}, _NO_WARMUP),
    Row("Clip10", "clip.yaml", {"radius": 10.0}, _NO_WARMUP),
    Row("Exact", "exact.yaml", callback_args=_NO_WARMUP),
)
PER_LAYER = " per-layer"
#: the MLP with one L2 coefficient per weight matrix, for the methods of the one-λ rows named
PER_LAYER_ROWS: tuple[Row, ...] = tuple(
    dataclasses.replace(r, label=r.label + PER_LAYER, model_args={"per_layer_l2": True})
    for r in COST_ROWS
    if r.label in ("plain", FLOOR, "Unroll1-gTgV", "Unroll5", "Clip10")
)
#: the default method with g_V's batches of 50 (``validation_batch_size``; the MLP's loader
#: has 100): MLP only, the LSTM's windows are not rebatched
SMALL_GV_ROW = Row(
    "Unroll1-gTgV B=50",
    "first_order.yaml",
    callback_args={**_NO_WARMUP, "validation_batch_size": 50},
)
#: the rows of each model
MODEL_ROWS: dict[str, tuple[Row, ...]] = {
    "mlp": (*COST_ROWS, SMALL_GV_ROW, *PER_LAYER_ROWS),
    "lstm": COST_ROWS,
}


def row_cadence(row: Row) -> int:
    """The steps per λ update of a row's fits: its ``hyper_every`` (the cost configs name
    their method, so ``"auto"`` would be 1 there too)."""
    every = row.callback_args.get("hyper_every", 1)
    return every if isinstance(every, int) else 1


def window_median(times: Sequence[float], k: int) -> float:
    """The median over consecutive windows of k steps of their mean step time (k = 1: the
    median step). Any k consecutive steps of a ``hyper_every=k`` fit hold exactly one λ update,
    so a window's mean is the cost per step of its cadence; a median over single steps would
    be that of the steps without one. Fewer than k steps (a smoke run): their mean."""
    windows = [times[i : i + k] for i in range(0, len(times) - k + 1, k)] or [times]
    return statistics.median(statistics.fmean(w) for w in windows)


def one_lambda_label(label: str) -> str | None:
    """The label of the one-λ row a per-layer row is compared with (None for a one-λ row)."""
    return label.removesuffix(PER_LAYER) if label.endswith(PER_LAYER) else None


def floor_label(label: str) -> str:
    """The label of the floor row a row is compared with: the floor of the same model (with
    one L2 coefficient per weight matrix for a per-layer row)."""
    return FLOOR + PER_LAYER if label.endswith(PER_LAYER) else FLOOR


def is_floor(label: str) -> bool:
    """Whether ``label`` is a floor row (plain training plus the floor callback)."""
    return floor_label(label) == label


@contextlib.contextmanager
def peak_tensor_memory(cuda: bool = False) -> Iterator[dict[str, int]]:
    """Within the context, track tensor allocations; on exit ``result["peak"]`` holds the peak
    of bytes allocated and not yet freed since entry: CPU tensors from the profiler's
    allocation events, or (``cuda=True``) CUDA tensors from the caching allocator's peak."""
    result: dict[str, int] = {}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result["peak"] = torch.cuda.max_memory_allocated() - base
        return
    import gc

    from torch.profiler import ProfilerActivity, profile

    # earlier fits' garbage (reference cycles) freed inside the window would count as negative
    # allocations and lower the peak: collect it first
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    result["peak"] = peak


def kernel_ratios(
    module: pl.LightningModule, batch: Any, repeats: int = 3
) -> dict[str, float | None]:
    """The replay's kernels on ``batch``, outside the Trainer: median seconds of a plain
    forward+backward of ``module.training_loss`` with torch's default kernels, as the training
    step runs (``"plain s"``), and each of forward+backward and H·v (double back-prop, a
    random v) with the default kernels and with the native ones the callback's H·v steps run on
    (oneDNN's and cuDNN's RNN kernels off), relative to it. None where the kernels raise
    (cuDNN's RNN has no double backward)."""
    from lightning_hyperopt.core.kernels import native_rnn_kernels

    params = [p for p in module.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params]
    cuda = params[0].device.type == "cuda"

    def forward_backward() -> None:
        torch.autograd.grad(module.training_loss(batch), params)

    def hvp() -> None:
        grads = torch.autograd.grad(module.training_loss(batch), params, create_graph=True)
        torch.autograd.grad(sum((a * b).sum() for a, b in zip(grads, v)), params)

    def median_time(fn: Callable[[], None]) -> float | None:
        try:
            fn()  # warm-up
        except RuntimeError:  # "... does not support double backward" and the like
            return None
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    seconds: dict[str, float | None] = {}
    with torch.enable_grad():
        for kernels, context in (
            ("default", contextlib.nullcontext),
            ("native", native_rnn_kernels),
        ):
            with context():
                seconds[f"fwd+bwd, {kernels}"] = median_time(forward_backward)
                seconds[f"H·v, {kernels}"] = median_time(hvp)
    base = seconds["fwd+bwd, default"]
    if base is None:
        raise RuntimeError("kernels: a plain forward+backward of training_loss failed")
    return {"plain s": base} | {
        name: None if t is None else t / base for name, t in seconds.items()
    }


def _fit(
    exp: Experiment,
    row: Row,
    steps: int,
    *,
    data_dir: Path,
    out: Path,
    extra: Sequence[str],
    gpu: bool,
    overlays: Sequence[Path],
) -> tuple[pl.Trainer, pl.LightningModule, Any]:
    """A LightningCLI of ``row`` for ``steps`` steps, its training data loaded, not run yet."""
    init = exp.starts[len(exp.starts) // 2]
    config = compose_config(
        exp, row, init, steps, steps, data_dir, gpu=gpu, extra=extra, overlays=overlays
    )
    cli = instantiate(config, out / "configs" / f"cost_{exp.name}_{row.label}.yaml")
    if is_floor(row.label):
        cli.trainer.callbacks.append(floor_class()())
    cli.datamodule.setup("fit")  # data loaded before the measured fit
    return cli.trainer, cli.model, cli.datamodule


def _median_ratio(
    rounds: Sequence[dict[str, float]], label: str, reference: str | None
) -> float | None:
    """Median over rounds of ``label``'s time over ``reference``'s in the same round."""
    if reference is None:
        return None
    return statistics.median(r[label] / r[reference] for r in rounds)


def run_cost(
    out: Path,
    models: Sequence[str] = ("mlp",),
    mnist_dir: Path = Path("../shared/data/mnist"),
    ptb_dir: Path = Path("../shared/data/ptb"),
    rounds: int = 5,
    steps: int = 60,
    warmup: int = 10,
    smoke: bool = False,
    seed: int = 0,
    show_progress: bool = True,
    extra: Sequence[str] = (),
    gpu: bool = False,
    overlays: Sequence[Path] = (),
    clock: str = "wall",
    kernels: bool = False,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the cost benchmark; writes ``cost.md``, ``summary.json`` and ``runs.jsonl``.

    ``overlays`` (e.g. the PTB ``medium.yaml``) apply to the LSTM only; ``clock`` ("wall" or
    "cpu") is the one the table's times and ratios use; ``kernels`` adds the H·v kernel
    ratios of each model; ``only`` keeps the rows with these labels (and "plain" and their
    floors)."""
    sources = {"mlp": ("table2", mnist_dir), "lstm": ("table3", ptb_dir)}
    unknown = [m for m in models if m not in sources]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; accepted values: {sorted(sources)}")
    check_clock(clock)
    if clock == "cpu" and gpu:
        raise ValueError("clock='cpu' times this process's CPU work: use clock='wall' on a GPU")
    for model in models:
        if sources[model][0] not in EXPERIMENTS:
            raise ValueError(f"models: {model!r} needs the {sources[model][0]} experiment")
        labels = {r.label for r in MODEL_ROWS[model]}
        if set(only) - labels:
            raise ValueError(
                f"rows {sorted(set(only) - labels)} are not rows of {model!r}; accepted "
                f"values: {sorted(labels)}"
            )
    if smoke:
        rounds, steps, warmup = 2, 4, 2
    # under a multi-process strategy (--extra trainer.strategy=ddp) Lightning launches this
    # command once per process: each process beside rank 0 writes a folder of its own
    rank = int(os.environ.get("NODE_RANK", "0")) * 1000 + int(os.environ.get("LOCAL_RANK", "0"))
    if rank:
        out = out / f"rank{rank}"
    log = RunLog(out)
    rng = random.Random(seed)
    quiet = ["trainer.limit_val_batches=0", *extra]
    summary: dict[str, Any] = {"environment": environment(), "clock": clock, "models": {}}
    for model in models:
        name, data_dir = sources[model]
        kept = {"plain", *only}
        kept |= {floor_label(label) for label in kept}
        rows = tuple(r for r in MODEL_ROWS[model] if not only or r.label in kept)

        fit = functools.partial(
            _fit,
            EXPERIMENTS[name],
            data_dir=data_dir,
            out=out,
            extra=quiet,
            gpu=gpu,
            overlays=overlays if model == "lstm" else (),
        )

        # per clock, one {label: median step seconds} per round
        timed: dict[str, list[dict[str, float]]] = {c: [] for c in CLOCKS}
        plan = [(i, rng.sample(rows, len(rows))) for i in range(rounds)]
        for i, order in progress(plan, rounds, f"cost {model}", show_progress):
            per_round: dict[str, dict[str, float]] = {c: {} for c in CLOCKS}
            for row in order:
                trainer, module, dm = fit(row, warmup + steps)
                timer = recorder_class()(stamp_steps=True)
                trainer.callbacks.append(timer)
                trainer.fit(module, datamodule=dm)
                record = {"key": f"{model}|time|{i}|{row.label}", "model": model, "round": i}
                record["row"] = row.label
                for c in CLOCKS:
                    per_round[c][row.label] = window_median(
                        timer.step_times(warmup, c), row_cadence(row)
                    )
                    record[f"{c}_step_s"] = timer.step_times(warmup, c)
                log.add(record)
            for c in CLOCKS:
                timed[c].append(per_round[c])
        measured = _memory(rows, fit, warmup, gpu, log, model)
        kernel_table: dict[str, float] | None = None
        if kernels:  # on a fresh plain model, outside the Trainer
            _, module, dm = fit(rows[0], warmup)
            device = torch.device("cuda" if gpu else "cpu")
            batch = move_data_to_device(next(iter(dm.train_dataloader())), device)
            kernel_table = kernel_ratios(module.to(device), batch)
            log.add({"key": f"{model}|kernels", "model": model, **kernel_table})
        summary["models"][model] = {
            "rows": _row_summaries(rows, timed, measured),
            "param_mb": measured["param_bytes"] / 2**20,
            "device": "cuda" if gpu else "cpu",
            "rounds": rounds,
            "steps": steps,
            "warmup": warmup,
            "kernels": kernel_table,
        }
    write_json(out / "summary.json", summary)
    (out / "cost.md").write_text(cost_markdown(summary))
    return summary


def _memory(
    rows: Sequence[Row],
    fit: Callable[[Row, int], tuple[pl.Trainer, pl.LightningModule, Any]],
    steps: int,
    gpu: bool,
    log: RunLog,
    model: str,
) -> dict[str, Any]:
    """Peak tensor bytes of a ``steps``-step fit of each row, its model's hyperparameter count,
    and the parameters' bytes."""
    from lightning_hyperopt.core.hyperparameters import find_hyperparameters

    measured: dict[str, Any] = {"peak": {}, "hyperparameters": {}, "param_bytes": 0}
    for row in rows:
        trainer, module, dm = fit(row, steps)
        measured["hyperparameters"][row.label] = len(find_hyperparameters(module))
        params = sum(p.numel() * p.element_size() for p in module.parameters())
        measured["param_bytes"] = params
        with peak_tensor_memory(cuda=gpu) as mem:
            trainer.fit(module, datamodule=dm)
        measured["peak"][row.label] = mem["peak"]
        log.add(
            {
                "key": f"{model}|memory|{row.label}",
                "model": model,
                "row": row.label,
                "peak_bytes": mem["peak"],
                "param_bytes": params,
            }
        )
    return measured


def _row_summaries(
    rows: Sequence[Row], timed: dict[str, list[dict[str, float]]], measured: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each row's times, ratios and memory, for summary.json (``cpu_`` keys: CPU time)."""
    state = {r.label: measured["param_bytes"] + measured["peak"][r.label] for r in rows}
    table = {}
    for r in rows:
        one = one_lambda_label(r.label)
        floor = floor_label(r.label) if floor_label(r.label) in state else None
        entry: dict[str, Any] = {"hyperparameters": measured["hyperparameters"][r.label]}
        for c in CLOCKS:
            prefix = "" if c == "wall" else "cpu_"
            entry[f"{prefix}step_ms"] = 1e3 * statistics.median(t[r.label] for t in timed[c])
            entry[f"{prefix}ratio"] = _median_ratio(timed[c], r.label, "plain")
            entry[f"{prefix}ratio_to_one"] = _median_ratio(timed[c], r.label, one)
            entry[f"{prefix}ratio_to_floor"] = _median_ratio(timed[c], r.label, floor)
        table[r.label] = entry | {
            "one_lambda": one,
            "floor": floor,
            "peak_mb": measured["peak"][r.label] / 2**20,
            "state_mb": state[r.label] / 2**20,
            "memory_ratio": state[r.label] / state["plain"],
            "memory_ratio_to_one": None if one is None else state[r.label] / state[one],
        }
    return table


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def cost_markdown(summary: dict[str, Any]) -> str:
    """One table per model: step time and memory, absolute and relative to plain training and
    (per-layer rows) to the same method with one λ; then the kernel ratios, if measured."""
    clock = summary.get("clock", "wall")
    prefix = "" if clock == "wall" else "cpu_"
    what = "wall clock" if clock == "wall" else "this process's CPU time"
    parts = []
    for model, s in summary["models"].items():
        parts.append(
            f"### {model} ({s['device']})\n\nMedian over {s['rounds']} interleaved rounds of "
            f"the median step time ({what}) over {s['steps']} steps (after {s['warmup']}; "
            "a k=4 row: of the mean over windows of 4 steps); "
            f"parameters {s['param_mb']:.2f} MB; torch {summary['environment']['torch']}, "
            f"{summary['environment']['torch_threads']} thread(s)."
        )
        if any(r.get("floor") for r in s["rows"].values()):
            parts.append(
                ' "floor": the plain step plus one batch of the validation loader and one '
                'forward/backward on it, what any online method must compute; "× floor": a '
                "step against it, in the same round (the method's overhead beyond it)."
            )
        if any(r["one_lambda"] for r in s["rows"].values()):
            parts.append(
                ' Per-layer rows: one L2 coefficient per weight matrix; "× 1 λ": against the '
                "same method with one coefficient, in the same round."
            )
        parts.append("\n\n")
        parts.append(
            markdown_table(
                [
                    "Configuration",
                    "λs",
                    "ms / step",
                    "× plain",
                    "× floor",
                    "× 1 λ",
                    "peak tensor MB during fit",
                    "params + peak MB",
                    "memory × plain",
                    "memory × 1 λ",
                ],
                [
                    [
                        label,
                        r["hyperparameters"],
                        f"{r[f'{prefix}step_ms']:.2f}",
                        _fmt(r[f"{prefix}ratio"]),
                        _fmt(r.get(f"{prefix}ratio_to_floor")),
                        _fmt(r[f"{prefix}ratio_to_one"]),
                        f"{r['peak_mb']:.2f}",
                        f"{r['state_mb']:.2f}",
                        _fmt(r["memory_ratio"]),
                        _fmt(r["memory_ratio_to_one"]),
                    ]
                    for label, r in s["rows"].items()
                ],
            )
        )
        kernels = s.get("kernels")
        if kernels:
            ratios = {k: v for k, v in kernels.items() if k != "plain s"}
            parts.append(
                "\nThe replay's work alone, on one training batch, against a plain "
                f"forward+backward ({1e3 * kernels['plain s']:.2f} ms); default: torch's "
                "kernels (oneDNN/cuDNN RNN kernels on, as in the training step), native: those "
                "off, as in the callback's replay:\n\n"
            )
            parts.append(
                markdown_table(
                    ["Kernels", "× plain"],
                    [[k, "raises" if v is None else f"{v:.2f}"] for k, v in ratios.items()],
                )
            )
        parts.append("\n")
    return "".join(parts)
