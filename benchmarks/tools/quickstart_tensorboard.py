"""The TensorBoard figure of the quickstart: docs/img/quickstart_tensorboard.png.

    python -m benchmarks quickstart-tensorboard          # about 15 s

Runs the README's main job (the paper's quadratic problem, ``examples/configs/quadratic/base.yaml``
+ ``clip.yaml``, with ``log_diagnostics``) through ``lightning_hyperopt.cli.build_cli`` with a
``TensorBoardLogger``, reads
the ``hyperopt/*`` scalars back from the event file with tensorboard's ``EventAccumulator`` and
plots them: exactly what the TensorBoard scalars tab shows for this run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_hyperopt.cli import build_cli

ROOT = Path(__file__).resolve().parents[2]
OUT_NAME = "quickstart_tensorboard.png"
CONFIGS = ROOT / "examples" / "configs" / "quadratic"
PANELS = {
    "hyperopt/lam": "λ (hyperopt/lam)",
    "hyperopt/lam/hypergradient": "|hypergradient| = |⟨g_V, y⟩|",
    "hyperopt/lam/tangent_norm": "‖y‖ = ‖dθ/dλ‖ before projection",
    "hyperopt/lam/clipped": "clipped (1 = y was projected)",
}


def run(log_dir: Path, steps: int) -> tuple[dict[str, list[tuple[int, float]]], float]:
    cli = build_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "base.yaml"),
            "--config",
            str(CONFIGS / "clip.yaml"),
            "--trainer.callbacks.log_diagnostics=true",  # the panels below λ
            f"--trainer.max_steps={steps}",
            "--trainer.log_every_n_steps=10",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=pytorch_lightning.loggers.TensorBoardLogger",
            f"--trainer.logger.save_dir={log_dir}",
            "--trainer.logger.name=quadratic",
            f"--trainer.default_root_dir={log_dir}",
        ]
    )
    events = EventAccumulator(cli.trainer.logger.log_dir)
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith("hyperopt/")]
    scalars = {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags}
    return scalars, float(cli.model.lambda_star)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks quickstart-tensorboard", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / OUT_NAME)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    plt.switch_backend("Agg")
    with tempfile.TemporaryDirectory() as tmp:
        scalars, lambda_star = run(Path(tmp), args.steps)
    print("logged scalars:", ", ".join(sorted(scalars)))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, (tag, title) in zip(axes.flat, PANELS.items()):
        steps, values = zip(*scalars[tag])
        if tag.endswith("hypergradient"):
            values = [abs(v) for v in values]
            ax.set_yscale("log")
        ax.plot(steps, values, lw=1.5)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if tag == "hyperopt/lam":
            label = f"analytic λ* = {lambda_star:.4f}"
            ax.axhline(lambda_star, color="k", ls="--", lw=1, label=label)
            ax.legend(loc="lower right")
        if tag.endswith("clipped"):
            ax.set_ylim(-0.05, 1.05)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    fig.suptitle(
        "lightning-hyperopt fit --config …/base.yaml --config …/clip.yaml   (TensorBoard scalars)",
        fontsize=10,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
