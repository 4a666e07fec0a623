"""What the keep probability's finite differences cost on the small PTB LSTM (Table 3's
config, 2×200 units, one keep probability): the mean step time (this process's CPU time, one
torch thread) of each configuration over the same round's plain step, medians over
interleaved rounds.

    python -m benchmarks dropout-cost --data-dir ../shared/data/ptb --hyper-every 4

Configurations: plain; ``FirstOrder`` with ``hyper_every=k`` and the central pair replayed at
every step (as before the finite differences were skipped between λ updates: forced by
``HyperUpdate.will_update``); the same as it runs now (replays only before a λ update), with
the replays on the native RNN kernels (as before they took the step's kernels: oneDNN here,
cuDNN on a GPU) and as now; and with ``keep_difference="one_sided"`` (one replay). The mean,
not the median, of a fit's step times: with k > 1 the steps differ in cost.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.recorder import recorder_class
from benchmarks.training import PTB, Row, compose_config, instantiate
from lightning_hyperopt.adapter.replay import LossReplay
from lightning_hyperopt.core.hyper_update import HyperUpdate
from lightning_hyperopt.core.kernels import native_rnn_kernels


def _on_native_kernels(losses):  # type: ignore[no-untyped-def]
    """``LossReplay.losses`` with every replay's forward on the native RNN kernels (as the
    replays ran before they took the kernels of the step they replay)."""

    def native(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        replays = losses(self, trainer, pl_module)
        while True:
            with native_rnn_kernels():
                loss = next(replays, None)
            if loss is None:
                return
            yield loss

    return native


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks dropout-cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/ptb"))
    parser.add_argument("--hyper-every", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/dropout_cost"))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    k = args.hyper_every
    callback = {"warmup_steps": 0, "hyper_every": k}
    first_order = Row("first_order", "first_order.yaml", callback_args=callback)
    one_sided = Row(
        "one_sided", "first_order.yaml", callback_args=callback,
        model_args={"keep_difference": "one_sided"},
    )  # fmt: skip
    # (row, replays at every step, replays on the native RNN kernels)
    rows = {
        "plain": (Row("plain"), False, False),
        f"FirstOrder k={k}, central pair at every step, native replays": (first_order, True, True),
        f"FirstOrder k={k}, central pair before λ updates, native replays": (
            first_order, False, True,
        ),
        f"FirstOrder k={k}, central pair before λ updates": (first_order, False, False),
        f"FirstOrder k={k}, one-sided, before λ updates": (one_sided, False, False),
    }  # fmt: skip
    foretell = HyperUpdate.will_update
    replays = LossReplay.losses
    times: dict[str, list[float]] = {name: [] for name in rows}
    rng = random.Random(0)
    for _ in range(args.rounds):
        for name in rng.sample(list(rows), len(rows)):
            row, every_step, native = rows[name]
            HyperUpdate.will_update = (lambda self, step: True) if every_step else foretell
            LossReplay.losses = _on_native_kernels(replays) if native else replays
            steps = args.warmup + args.steps
            config = compose_config(
                PTB, row, 0.5, steps, steps, args.data_dir, extra=["trainer.limit_val_batches=0"]
            )
            cli = instantiate(config, args.out / f"{row.label}.yaml")
            cli.datamodule.setup("fit")
            timer = recorder_class()(stamp_steps=True)
            cli.trainer.callbacks.append(timer)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            times[name].append(statistics.mean(timer.step_times(args.warmup, "cpu")))
    HyperUpdate.will_update = foretell
    LossReplay.losses = replays
    lines = ["| configuration | ms / step | × plain |", "| --- | ---: | ---: |"]
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, times["plain"]))
        lines.append(f"| {name} | {1e3 * statistics.median(t):.0f} | {ratio:.2f} |")
    print("\n".join(lines))
