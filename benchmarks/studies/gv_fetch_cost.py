"""What drawing g_V's batch costs when the user's validation loader is a plain ``DataLoader``
over a ``TensorDataset`` (per-sample fetch and collate), and what gathering it by index saves:
the mean step time (this process's CPU time, one torch thread) of each configuration over the
same round's plain step, medians over interleaved rounds.

    python -m benchmarks gv-fetch-cost --data-dir ../shared/data/mnist

The model is the MNIST MLP 784-100-100-100-10 (SGD, batch 100) on 5,000 training images, fed
by plain ``DataLoader``\\ s (not the project's datamodule, whose loaders already gather).
Configurations: plain; the floor (the plain step plus one batch of the validation loader and
one forward/backward: ``bench.floor``), with the batch fetched per sample and gathered;
``FirstOrder`` with the batch fetched per sample (the gathered path switched off) and gathered
by index (the default now).
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import floor
from benchmarks.clocks import Clock
from benchmarks.floor import floor_class
from benchmarks.recorder import recorder_class
from benchmarks.records import bare_trainer
from experiments.data import MNISTDataModule
from experiments.models import for_namespace
from lightning_hyperopt.adapter import validation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks gv-fetch-cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    dm = MNISTDataModule(str(args.data_dir), train_size=5000, batch_size=100, download=False)
    dm.setup("fit")
    train, val = (TensorDataset(*d.tensors) for d in (dm.train_set, dm.val_set))
    gathered = validation.gathered_iterator
    rows = (
        "plain",
        "floor, per-sample fetch",
        "floor, gathered",
        "FirstOrder, per-sample fetch",
        "FirstOrder, gathered",
    )
    times: dict[str, list[float]] = {name: [] for name in rows}
    rng = random.Random(0)
    from lightning_hyperopt import OnlineHyperparamCallback

    for _ in range(args.rounds):
        for name in rng.sample(rows, len(rows)):
            off = name.endswith("per-sample fetch")
            validation.gathered_iterator = floor.gathered_iterator = (
                (lambda loader: None) if off else gathered
            )
            recorder = recorder_class("lightning.pytorch")(Clock(), "cpu", stamp_steps=True)
            callbacks = [recorder]
            if name.startswith("floor"):
                callbacks.append(floor_class("lightning.pytorch")())
            elif name != "plain":
                callbacks.append(OnlineHyperparamCallback("first_order"))
            torch.manual_seed(0)
            model = for_namespace("mlp")(l2=1e-3, lr=0.1, final_lr=0.01, seed=0)
            trainer = bare_trainer(callbacks, args.warmup + args.steps, "lightning.pytorch")
            trainer.fit(
                model,
                DataLoader(train, batch_size=100, shuffle=True),
                DataLoader(val, batch_size=100, shuffle=True),
            )
            times[name].append(statistics.mean(recorder.step_times(args.warmup, "cpu")))
    validation.gathered_iterator = floor.gathered_iterator = gathered
    plain = statistics.median(times["plain"])
    lines = [
        f"mean step, CPU ms (median of {args.rounds} interleaved rounds) and × plain:",
        *(
            f"  {name}: {1e3 * statistics.median(t):.3f} ms, "
            f"{statistics.median(t) / plain:.2f}× plain"
            for name, t in times.items()
        ),
    ]
    print("\n".join(lines))
