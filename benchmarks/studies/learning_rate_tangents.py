"""The finite-difference table of LearningRate and Momentum tangents (issue: the learning rate
and momentum as online hyperparameters).

    python -m benchmarks learning-rate-tangents

For each optimizer, clipping mode and hyperparameter kind: y after 25 steps of a Lightning fit
(Exact, λ held fixed) against the central difference of two whole plain-torch trainings at
λ ± δ (float64), as max|y − fd| / max|fd|. The cases and helpers are the test file's
(tests/adapter/test_callback_learning_rate.py), which asserts rtol 1e-6 on them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import torch
from test_callback_learning_rate import (
    CLIP_AT,
    OPTIMIZERS,
    LearningRate,
    Momentum,
    Tunable,
    WeightDecay,
    check_tangent,
)


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m benchmarks learning-rate-tangents", description=__doc__.splitlines()[0]
    )


def main(argv: Sequence[str] | None = None) -> None:
    build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    kinds = {
        "LearningRate": ("lr_scale", lambda: {"lr_scale": LearningRate(init=1.3)}, 0.0),
        "LearningRate + WeightDecay (lr row)": (
            "lr_scale",
            lambda: {"lr_scale": LearningRate(init=1.2), "wd": WeightDecay(init=0.02)},
            0.0,
        ),
        "LearningRate + WeightDecay (wd row)": (
            "wd",
            lambda: {"lr_scale": LearningRate(init=1.2), "wd": WeightDecay(init=0.02)},
            0.0,
        ),
        "Momentum": ("mu", lambda: {"mu": Momentum(init=0.85)}, 0.01),
    }
    print("| optimizer | hyperparameter | no clipping | norm clipping | value clipping |")
    print("| --- | --- | ---: | ---: | ---: |")
    for optimizer in OPTIMIZERS:
        delta = 1e-8 if "adam" in optimizer else 1e-6
        for kind, (which, tune, l2) in kinds.items():
            cells = []
            for clip in ("none", "norm", "value"):
                setting = None if clip == "none" else (clip, CLIP_AT[optimizer][clip])

                def build(tune=tune, l2=l2, optimizer=optimizer):
                    return Tunable(optimizer, "step", tune(), l2=l2)

                try:
                    cells.append(f"{check_tangent(build, which, clip=setting, delta=delta):.2e}")
                except AssertionError as err:
                    cells.append(f"FAILED ({str(err).splitlines()[0][:40]})")
            print(f"| {optimizer} | {kind} | " + " | ".join(cells) + " |")
