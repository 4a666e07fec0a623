"""The methods on the paper's quadratic problem (Table 1): how far from λ* each one ends.

    python -m benchmarks quadratic-methods      # about 3 minutes of CPU time (one thread)

Each run: θ₀ = 0, λ₀ = 0, plain SGD with η = 0.05 for 3000 steps, hyper step c·η, through the
framework-free ``TangentEngine`` (the same engine the Lightning callback drives; the settings of
``tests/experiments/test_quadratic.py`` and ``examples/configs/quadratic``). Problems: dimension 20,
H diagonal, λ* ∈ [0.2, 0.4], ‖dθ*/dλ‖ ∈ [3, 5], seeds 0…4. Printed per setting: mean and max
|λ_T − λ*| over the seeds, the relative excess validation loss L_V(θ_T)/L_V(θ*(λ*)) − 1, and the
first step after which |λ − λ*| stays below 0.01 (median over seeds; "never" if some seed never
gets there), and the overshoot max_t λ_t − λ* (mean over seeds; λ starts below λ*).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch

from experiments.quadratic import sample_quadratic, tune_with_engine
from lightning_hyperopt.core import Clip, Exact, FirstOrder, Unroll


def tune(q, method, steps, lr, warmup=0):
    """λ trajectory and final θ of one run."""
    return tune_with_engine(q, method, [(steps, lr)], warmup_steps=warmup)


def settle_step(trajectory, target, tol=0.01):
    """First step after which |λ − λ*| stays below ``tol`` (None: never)."""
    last_bad = max((t for t, v in enumerate(trajectory) if abs(v - target) >= tol), default=-1)
    return None if last_bad == len(trajectory) - 1 else last_bad + 1


SETTINGS = {
    "Exact(c=0.1)": (Exact(0.1), 0),
    "Clip(r=10, c=0.1)": (Clip(10.0, 0.1), 0),
    "Clip(r=5, c=0.1)": (Clip(5.0, 0.1), 0),
    "Clip(r=2, c=0.1)": (Clip(2.0, 0.1), 0),
    "Clip(r=1, c=0.1)": (Clip(1.0, 0.1), 0),
    "Unroll(K=1, c=0.1)": (Unroll(1, 0.1), 0),
    "Unroll(K=5, c=0.1)": (Unroll(5, 0.1), 0),
    "Unroll(K=10, c=0.1)": (Unroll(10, 0.1), 0),
    "FirstOrder(α=0.01)": (FirstOrder(0.01), 0),
    "Clip(r=10, c=0.01)": (Clip(10.0, 0.01), 0),
    "Clip(r=10, c=1.0)": (Clip(10.0, 1.0), 0),
    "Clip(r=10, c=10)": (Clip(10.0, 10.0), 0),
    "Clip(r=10, c=0.1), warm-up 500": (Clip(10.0, 0.1), 500),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks quadratic-methods", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=0.05)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    problems = [sample_quadratic(dim=20, seed=s) for s in range(args.seeds)]
    print(f"{args.seeds} problems, {args.steps} steps of η = {args.lr}, λ₀ = 0")
    print(
        "| setting | mean abs(λ − λ*) | max | L_V excess | settles (abs err < 0.01) | overshoot |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (method, warmup) in SETTINGS.items():
        errors, excess, settle, overshoot = [], [], [], []
        for q in problems:
            trajectory, theta = tune(q, method, args.steps, args.lr, warmup)
            star = float(q.lambda_star)
            errors.append(abs(trajectory[-1] - star))
            best = q.validation_loss(q.theta_star(q.lambda_star))
            excess.append(float(q.validation_loss(theta) / best - 1))
            settle.append(settle_step(trajectory, star))
            overshoot.append(max(trajectory) - star)
        settles = "never" if None in settle else f"step {statistics.median(settle):.0f}"
        print(
            f"| {name} | {statistics.mean(errors):.2g} | {max(errors):.2g} "
            f"| {100 * statistics.mean(excess):+.3g}% | {settles} "
            f"| {statistics.mean(overshoot):+.3f} |"
        )
