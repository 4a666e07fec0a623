"""The horizon study's table: per online method (one ``bench ttq`` output folder each, with the
same baseline records copied in), every start's best validation loss and final λ, the median,
and the baselines' best, for one task.

    python benchmarks/horizon_table.py mnist_lr_wd runs/ttq18_clip50 runs/ttq18_first_order ...

Each folder's ``summary.json`` is read; the method is named by its online arguments.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(task: str, folders: list[str]) -> str:
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


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2:]))
