"""Cost of online tuning per optimizer step, through the Trainer: time and peak memory.

    python benchmarks/step_cost.py            # about 3 minutes on 2 shared CPU cores

Model: the paper's MNIST MLP 784-100-100-100-10 (99,710 parameters, float32) on synthetic data,
batch 128, plain SGD (η = 0.1), L_T = cross-entropy + L2 penalty. Configurations: no callback
("plain", the same loss with a fixed λ), then ``OnlineHyperparamCallback`` with each method and
with 1 hyperparameter (one ``L2Penalty`` over every parameter) or 3 (one per layer group: input
layer, the two hidden layers, output layer).

Time: each fit runs ``--steps`` optimizer steps; a callback stamps the process's CPU time
(``time.process_time()``) and the wall clock (``time.perf_counter()``) at every
``on_train_batch_start``, and the step time of a fit is the median difference after the first
``--skip`` steps (everything a step costs: data, training step, tuner, logging). CPU time is
the main figure: with one torch thread it is the work done, whatever other processes do on
shared cores, while wall time also counts the waits for a core. The configurations are
interleaved in a fresh random order in each of ``--repeats`` rounds; the table gives the
median over rounds of the step time and of its ratio to the plain fit of the same round.

Memory: peak resident set size (Linux ``VmHWM``), one fresh subprocess per configuration: the
model, data and Trainer are built, the peak is reset (``/proc/self/clear_refs``), a fit of
``--memory-steps`` steps runs, and the increase of the peak over the resident size just before
the fit is reported. ``tracemalloc`` would not see tensors (torch allocates them outside
Python's allocator). The tuner's own state is also given exactly: one tangent y (|θ| floats) per
hyperparameter, plus one momentum tangent each when SGD has momentum.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import time

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_hyperopt import Clip, Exact, FirstOrder, L2Penalty, OnlineHyperparamCallback, Unroll
from lightning_hyperopt.bench.records import bare_trainer

METHODS = {
    "Clip(r=20)": lambda: Clip(20.0, 1e-3),
    "Exact": lambda: Exact(1e-3),
    "Unroll(K=1)": lambda: Unroll(1, 1e-3),
    "Unroll(K=5)": lambda: Unroll(5, 1e-3),
    "FirstOrder": lambda: FirstOrder(1e-4),
}
CONFIGS = ["plain"] + [f"{m} ×{n}" for n in (1, 3) for m in METHODS]


class MLP(pl.LightningModule):
    """784-100-100-100-10 with 1 or 3 L2 coefficients."""

    def __init__(self, n_hyper: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(784, 100), nn.ReLU(),
            nn.Linear(100, 100), nn.ReLU(),
            nn.Linear(100, 100), nn.ReLU(),
            nn.Linear(100, 10),
        )  # fmt: skip
        layers = [m for m in self.net if isinstance(m, nn.Linear)]
        if n_hyper == 1:
            self.groups = {"l2": layers}
        else:
            self.groups = {"l2_in": layers[:1], "l2_hidden": layers[1:3], "l2_out": layers[3:]}
        self.penalties = nn.ModuleDict({k: L2Penalty(1e-4) for k in self.groups})

    def validation_loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def training_loss(self, batch):
        loss = self.validation_loss(batch)
        for name, layers in self.groups.items():
            loss = loss + self.penalties[name](p for m in layers for p in m.parameters())
        return loss

    def training_step(self, batch, batch_idx):
        return self.training_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.cpu.append(time.process_time())
        self.wall.append(time.perf_counter())


def loaders(batch_size: int = 128):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size * 28, 784, generator=g)
    y = x[:, :10].argmax(1)  # learnable labels
    train = TensorDataset(x[: batch_size * 20], y[: batch_size * 20])
    val = TensorDataset(x[batch_size * 20 :], y[batch_size * 20 :])
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True),
        DataLoader(val, batch_size=batch_size, shuffle=True),
    )


def build(config: str, steps: int):
    torch.manual_seed(0)
    if config == "plain":
        model, callbacks = MLP(1), []
    else:
        method, n = config.split(" ×")
        model = MLP(int(n))
        callbacks = [OnlineHyperparamCallback(METHODS[method](), prog_bar=False)]
    timer = StepTimer()
    trainer = bare_trainer([timer, *callbacks], steps)
    return model, trainer, timer


def step_time(config: str, steps: int, skip: int) -> tuple[float, float]:
    """Median CPU and wall time of a step, in seconds."""
    model, trainer, timer = build(config, steps)
    trainer.fit(model, *loaders())

    def median_step(stamps: list[float]) -> float:
        return statistics.median(b - a for a, b in zip(stamps[skip:], stamps[skip + 1 :]))

    return median_step(timer.cpu), median_step(timer.wall)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        text = f.read()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))  # kB


def memory_child(config: str, steps: int) -> None:
    model, trainer, _ = build(config, steps)
    train, val = loaders()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    trainer.fit(model, train, val)
    print(json.dumps({"peak_increase_mb": (_status("VmHWM") - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--skip", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_steps)
        return

    n_params = sum(p.numel() for p in MLP(1).net.parameters())
    print(f"torch {torch.__version__}, {args.threads} thread(s); MLP with {n_params:,} parameters")
    rng = random.Random(0)
    cpu: dict[str, list[float]] = {c: [] for c in CONFIGS}
    wall: dict[str, list[float]] = {c: [] for c in CONFIGS}
    cpu_ratio: dict[str, list[float]] = {c: [] for c in CONFIGS}
    wall_ratio: dict[str, list[float]] = {c: [] for c in CONFIGS}
    step_time(CONFIGS[0], args.skip + 5, 0)  # warm-up of torch and Lightning
    for _ in range(args.repeats):
        order = CONFIGS[:]
        rng.shuffle(order)
        round_times = {c: step_time(c, args.steps, args.skip) for c in order}
        plain_cpu, plain_wall = round_times["plain"]
        for c, (t_cpu, t_wall) in round_times.items():
            cpu[c].append(t_cpu)
            wall[c].append(t_wall)
            cpu_ratio[c].append(t_cpu / plain_cpu)
            wall_ratio[c].append(t_wall / plain_wall)

    memory = {}
    for c in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", c, f"--threads={args.threads}",
             f"--memory-steps={args.memory_steps}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        memory[c] = json.loads(out.stdout.strip().splitlines()[-1])["peak_increase_mb"]

    tangent_mb = n_params * 4 / 2**20
    print(
        f"\n{args.repeats} interleaved rounds of {args.steps} steps (median of steps after "
        f"{args.skip}); peak RSS increase over a {args.memory_steps}-step fit\n"
    )
    print(
        "| configuration | CPU ms / step | × plain | wall ms / step | × plain "
        "| peak RSS increase (MB) | tuner state (MB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    med = statistics.median
    for c in CONFIGS:
        n = 0 if c == "plain" else int(c.split(" ×")[1])
        # y per hyperparameter (FirstOrder: ∂g_T/∂λ kept until the λ update, not checkpointed)
        print(
            f"| {c} | {1e3 * med(cpu[c]):.2f} | {med(cpu_ratio[c]):.2f} "
            f"| {1e3 * med(wall[c]):.2f} | {med(wall_ratio[c]):.2f} "
            f"| {memory[c]:.1f} | {n * tangent_mb:.2f} |"
        )


if __name__ == "__main__":
    main()
