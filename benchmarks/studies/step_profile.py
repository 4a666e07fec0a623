"""Where a tuned step's time goes, outside Lightning: the engine's own bookkeeping (``advance``
before the optimizer step, ``update`` after it) against the training step's forward/backward,
on the MNIST MLP's shape (784-100-100-100-10, batches of 100, random data: the work, not the
result, is measured).

Per configuration: the median CPU seconds per step of each phase over ``steps`` steps (after
``warmup``), and under ``torch.profiler`` the number of torch operator calls each phase makes
per step (operators called by other operators included) — the count a fused step lowers
whatever the machine's noise; and the λ step alone (what ``update`` does after g_V), timed over
2,000 calls. One thread.

    python -m benchmarks step-profile [--steps 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lightning_hyperopt.core import FirstOrder, L2Penalty, LearningRate, TangentEngine, WeightDecay
from lightning_hyperopt.core.methods import HyperMethod

PHASES = ("forward+backward", "advance", "optimizer.step", "update")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
        nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10),
    )  # fmt: skip


def configurations() -> dict[str, dict[str, Any]]:
    """Name → (method, hyperparameters builder, optimizer, hyper_every)."""
    return {
        "FirstOrder, 1 L2, k=4 (the default)": dict(
            method=FirstOrder, hypers="l2", optimizer="sgd", every=4
        ),
        "FirstOrder, 1 L2, k=1": dict(method=FirstOrder, hypers="l2", optimizer="sgd", every=1),
        "FirstOrder, 4 L2, k=1": dict(method=FirstOrder, hypers="l2x4", optimizer="sgd", every=1),
        "FirstOrder, AdamW lr + wd, k=1": dict(
            method=FirstOrder, hypers="lr_wd", optimizer="adamw", every=1
        ),
    }


def _setup(config: dict[str, Any]) -> tuple[nn.Module, Any, TangentEngine, Callable]:
    net = _mlp()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    if config["optimizer"] == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    kind = config["hypers"]
    if kind == "l2":
        hypers: dict[str, Any] = {"l2": L2Penalty(1e-4)}
    elif kind == "l2x4":
        hypers = {f"l2.{i}": L2Penalty(1e-4) for i in range(4)}
    else:
        hypers = {"lr": LearningRate(), "wd": WeightDecay(init=1e-2)}
    penalties = {n: h for n, h in hypers.items() if isinstance(h, L2Penalty)}
    method: HyperMethod = config["method"]()
    engine = TangentEngine(method, hypers, opt, hyper_every=config["every"])

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = nn.functional.cross_entropy(net(x), y)
        if len(penalties) == 1:
            value = value + next(iter(penalties.values()))(list(net.parameters()))
        else:
            for lin, h in zip(linears, penalties.values()):
                value = value + h([lin.weight])
        return value

    return net, opt, engine, loss


def profile(config: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
    """Median CPU seconds per step of each phase, and operator calls per step of each."""
    net, opt, engine, loss = _setup(config)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(100, 784, generator=g), torch.randint(0, 10, (100,), generator=g))
        for _ in range(8)
    ]
    xv, yv = batches[-1]

    def one_step(t: int, around: Callable[[str], Any]) -> None:
        """Step t, each phase inside ``around(phase)``."""
        x, y = batches[t % 7]
        with around("forward+backward"):
            opt.zero_grad()
            engine.track(True)
            engine.backward(loss(x, y))
        with around("advance"):
            engine.advance()
            engine.track(False)
        with around("optimizer.step"), engine.scaled_learning_rates():
            opt.step()
        with around("update"):
            engine.update(lambda: nn.functional.cross_entropy(net(xv), yv))

    times: dict[str, list[float]] = {p: [] for p in PHASES}

    @contextlib.contextmanager
    def timed(phase: str) -> Iterator[None]:
        start = time.process_time()
        yield
        times[phase].append(time.process_time() - start)

    for t in range(warmup):
        one_step(t, lambda phase: contextlib.nullcontext())
    for t in range(steps):
        one_step(warmup + t, timed)
    k = config["every"]
    # operators per step: one window of k steps under the profiler, divided by k
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    counts: dict[str, int] = {}
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for t in range(k):
            one_step(t, record_function)
    events = prof.events()
    for phase in PHASES:
        spans = [(e.time_range.start, e.time_range.end) for e in events if e.name == phase]
        calls = sum(
            1
            for e in events
            if e.name.startswith("aten::")
            and any(a <= e.time_range.start and e.time_range.end <= b for a, b in spans)
        )
        counts[phase] = round(calls / k)
    return {
        "seconds": {p: statistics.median(v) for p, v in times.items()},
        "mean_seconds": {p: statistics.fmean(v) for p, v in times.items()},
        "ops": counts,
    }


def lambda_step_cost(config: dict[str, Any], repeats: int = 2000) -> tuple[float, int]:
    """The λ step alone, everything :meth:`TangentEngine.update` does after g_V (the hyper
    step in its spaces and bounds, the non-finite guard, the write-back), on a fixed
    hypergradient: (CPU seconds per call, torch operator calls per call)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    _, _, engine, _ = _setup(config)
    state = engine.state
    hypergradient = torch.full((len(engine.hypers),), 1e-3, dtype=torch.float64)

    def step() -> None:
        with torch.no_grad():
            values = torch.stack([h.value for h in engine.hypers])
            new, rows = engine.hyper_update.move(values, hypergradient, state.lr, state.step_ok)
            new, (state.tangent,) = engine.guard.lambda_step(
                values, new, rows, state.step_ok, [state.tangent]
            )
            torch._foreach_copy_([h.value for h in engine.hypers], list(new.unbind()))
        engine.write_to_optimizer()

    for _ in range(20):
        step()
    start = time.process_time()
    for _ in range(repeats):
        step()
    seconds = (time.process_time() - start) / repeats
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return seconds, sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks step-profile")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| configuration | " + " | ".join(f"{p}: ms (ops)" for p in PHASES) + " |")
    print("| --- |" + " ---: |" * len(PHASES))
    for name, config in configurations().items():
        r = profile(config, args.steps, args.warmup)
        cells = [f"{1e3 * r['mean_seconds'][p]:.3f} ({r['ops'][p]})" for p in PHASES]
        print(f"| {name} | " + " | ".join(cells) + " |")
    seconds, ops = lambda_step_cost(configurations()["FirstOrder, 4 L2, k=1"])
    print(f"\nthe λ step after g_V, 4 L2 rows: {1e6 * seconds:.0f} µs, {ops} operator calls")


if __name__ == "__main__":
    main()
