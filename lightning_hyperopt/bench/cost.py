"""Cost of online tuning, measured in one process: time per training step and peak memory with
the callback (each method) against plain training, for the MLP (and the LSTM when its configs
exist).

Time: every configuration is a fresh LightningCLI fit of ``warmup + steps`` optimizer steps
(Lightning's validation loop off; the tuner still draws its validation batches, and its own
warm-up is set to 0 so that λ is updated at every measured step). A callback
stamps ``time.perf_counter()`` at each ``on_train_batch_start``; a fit's step time is the
median difference after the ``warmup`` first steps: everything a step costs (data, training
step, tuner, logging). Configurations are interleaved in a fresh seeded random order in each of
``rounds`` rounds; the table gives the median over rounds of the step time and of its ratio to
the plain fit of the same round.

Memory: one more fit per configuration under ``torch.profiler`` with ``profile_memory=True``;
its allocation events (every CPU/GPU tensor allocation and free, with sizes) give the peak of
tensor memory allocated during the fit above what was allocated before it (the dataset and the
model's parameters are allocated before). The table gives that peak, the peak plus the
parameters ("training state"), and the ratio of the latter to plain training.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from .records import RunLog, environment, markdown_table, progress, write_json
from .training import EXPERIMENTS, Experiment, Row, compose_config, instantiate

#: configurations compared: plain training (no callback) and one row per method, without
#: warm-up, so that every measured step pays for the λ update (the validation gradient) too
_NO_WARMUP = {"warmup_steps": 0}
COST_ROWS: tuple[Row, ...] = (
    Row("plain"),
    Row("Unroll1-gTgV", "first_order.yaml", callback_args=_NO_WARMUP),
    Row("Unroll1", "unroll.yaml", {"steps": 1}, _NO_WARMUP),
    Row("Unroll5", "unroll.yaml", {"steps": 5}, _NO_WARMUP),
    Row("Clip10", "clip.yaml", {"radius": 10.0}, _NO_WARMUP),
)


class StepTimer(pl.Callback):
    """``time.perf_counter()`` at every ``on_train_batch_start``."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append(time.perf_counter())

    def step_times(self, skip: int) -> list[float]:
        s = self.stamps[skip:]
        return [b - a for a, b in itertools.pairwise(s)]


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
    from torch.profiler import ProfilerActivity, profile

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


def _fit(
    exp: Experiment,
    row: Row,
    data_dir: Path,
    out: Path,
    steps: int,
    extra: Sequence[str],
    gpu: bool,
    overlays: Sequence[Path],
) -> tuple[pl.Trainer, pl.LightningModule, Any]:
    init = exp.starts[len(exp.starts) // 2]
    config = compose_config(
        exp, row, init, steps, steps, data_dir, gpu=gpu, extra=extra, overlays=overlays
    )
    cli = instantiate(config, out / "configs" / f"cost_{exp.name}_{row.label}.yaml")
    cli.datamodule.setup("fit")  # data loaded before the measured fit
    return cli.trainer, cli.model, cli.datamodule


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
) -> dict[str, Any]:
    """Run the cost benchmark; writes ``cost.md``, ``summary.json`` and ``runs.jsonl``.

    ``overlays`` (e.g. the PTB ``medium.yaml``) apply to the LSTM only."""
    sources = {"mlp": ("table2", mnist_dir), "lstm": ("table3", ptb_dir)}
    unknown = [m for m in models if m not in sources]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; accepted values: {sorted(sources)}")
    if smoke:
        rounds, steps, warmup = 2, 4, 2
    log = RunLog(out)
    rng = random.Random(seed)
    quiet = ["trainer.limit_val_batches=0", *extra]
    summary: dict[str, Any] = {"environment": environment(), "models": {}}
    for model in models:
        name, data_dir = sources[model]
        if name not in EXPERIMENTS:
            raise ValueError(f"models: {model!r} needs the {name} experiment, not available")
        exp = EXPERIMENTS[name]
        model_overlays = overlays if model == "lstm" else ()
        times: dict[str, list[float]] = {r.label: [] for r in COST_ROWS}
        ratios: dict[str, list[float]] = {r.label: [] for r in COST_ROWS}
        plan = [(i, rng.sample(COST_ROWS, len(COST_ROWS))) for i in range(rounds)]
        for i, order in progress(plan, rounds, f"cost {model}", show_progress):
            per_round = {}
            for row in order:
                trainer, module, dm = _fit(
                    exp, row, data_dir, out, warmup + steps, quiet, gpu, model_overlays
                )
                timer = StepTimer()
                trainer.callbacks.append(timer)
                trainer.fit(module, datamodule=dm)
                per_round[row.label] = statistics.median(timer.step_times(warmup))
                log.add(
                    {
                        "key": f"{model}|time|{i}|{row.label}",
                        "model": model,
                        "round": i,
                        "row": row.label,
                        "step_s": timer.step_times(warmup),
                    }
                )
            for label, t in per_round.items():
                times[label].append(t)
                ratios[label].append(t / per_round["plain"])
        memory: dict[str, int] = {}
        params = 0
        for row in COST_ROWS:
            trainer, module, dm = _fit(exp, row, data_dir, out, warmup, quiet, gpu, model_overlays)
            params = sum(p.numel() * p.element_size() for p in module.parameters())
            with peak_tensor_memory(cuda=gpu) as mem:
                trainer.fit(module, datamodule=dm)
            memory[row.label] = mem["peak"]
            log.add(
                {
                    "key": f"{model}|memory|{row.label}",
                    "model": model,
                    "row": row.label,
                    "peak_bytes": mem["peak"],
                    "param_bytes": params,
                }
            )
        plain_state = params + memory["plain"]
        summary["models"][model] = {
            "rows": {
                r.label: {
                    "step_ms": 1e3 * statistics.median(times[r.label]),
                    "ratio": statistics.median(ratios[r.label]),
                    "peak_mb": memory[r.label] / 2**20,
                    "state_mb": (params + memory[r.label]) / 2**20,
                    "memory_ratio": (params + memory[r.label]) / plain_state,
                }
                for r in COST_ROWS
            },
            "param_mb": params / 2**20,
            "device": "cuda" if gpu else "cpu",
            "rounds": rounds,
            "steps": steps,
            "warmup": warmup,
        }
    write_json(out / "summary.json", summary)
    (out / "cost.md").write_text(cost_markdown(summary))
    return summary


def cost_markdown(summary: dict[str, Any]) -> str:
    """One table per model: step time and memory, absolute and relative to plain training."""
    parts = []
    for model, s in summary["models"].items():
        parts.append(
            f"### {model} ({s['device']})\n\nMedian over {s['rounds']} interleaved rounds of "
            f"the median step time over {s['steps']} steps (after {s['warmup']}); parameters "
            f"{s['param_mb']:.2f} MB; torch {summary['environment']['torch']}, "
            f"{summary['environment']['torch_threads']} thread(s).\n\n"
        )
        parts.append(
            markdown_table(
                [
                    "Configuration",
                    "ms / step",
                    "× plain",
                    "peak tensor MB during fit",
                    "params + peak MB",
                    "memory × plain",
                ],
                [
                    [
                        label,
                        f"{r['step_ms']:.2f}",
                        f"{r['ratio']:.2f}",
                        f"{r['peak_mb']:.2f}",
                        f"{r['state_mb']:.2f}",
                        f"{r['memory_ratio']:.2f}",
                    ]
                    for label, r in s["rows"].items()
                ],
            )
        )
        parts.append("\n")
    return "".join(parts)
