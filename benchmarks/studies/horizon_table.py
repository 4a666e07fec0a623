"""The horizon study's table: per online method (one ``bench ttq`` output folder each, with the
same baseline records copied in), every start's best validation loss and final λ, the median,
and the baselines' best, for one task.

    python -m benchmarks horizon-table mnist_lr_wd runs/ttq18_clip50 runs/ttq18_first_order ...

Each folder's ``summary.json`` is read; the method is named by its online arguments.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path


def table(task: str, folders: Sequence[str]) -> str:
    """The table of ``task`` over the ``bench ttq`` output ``folders``, one method each."""
    rows: list[str] = []
    baselines, starts = None, []
    for folder in folders:
        summary = json.loads((Path(folder) / "summary.json").read_text())
        s = summary["tasks"][task]
        baselines = baselines or s["systems"]
        runs = s["online"]
        starts = [", ".join(f"{k}={v:.3g}" for k, v in r["start"].items()) for r in runs]
        best = [r["best_val_loss"] for r in runs]
        finals = [", ".join(f"{k}={v:.3g}" for k, v in r["final"].items()) for r in runs]
        rows.append(
            f"| {Path(folder).name} | "
            + " | ".join(f"{b:.4f} ({f})" for b, f in zip(best, finals, strict=True))
            + f" | **{statistics.median(best):.4f}** | "
            f"{statistics.median(r['total_s'] for r in runs):.1f} |"
        )
    head = "| method | " + " | ".join(f"start {x}" for x in starts) + " | median | s per run |"
    sep = "| --- |" + " ---: |" * (len(starts) + 2)
    base = "\n".join(
        f"- {name}: best validation loss {v['best_val_loss']:.4f} in {v['total_s']:.0f} s"
        for name, v in (baselines or {}).items()
        if name != "online"
    )
    return "\n".join([head, sep, *rows]) + "\n\nBaselines (same pass):\n\n" + base + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks horizon-table", description=__doc__.splitlines()[0]
    )
    parser.add_argument("task", help="a ttq task, e.g. mnist_lr_wd")
    parser.add_argument("folders", nargs="+", help="bench ttq output folders, one per method")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print(table(args.task, args.folders))
