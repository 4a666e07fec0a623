"""A table's numbers and outputs: per method the best and final validation loss, their gap,
time to the grid's best; ``table.md`` and the plots."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..records import fmt, markdown_table
from .experiments import Experiment


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def summarize(exp: Experiment, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-row aggregates, the fixed-λ grid and time-to-quality, from the run records."""
    by_row: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_row.setdefault(r["row"], []).append(r)
    grid = sorted(by_row.get("Fixed λ", []), key=lambda r: r["init"])
    # runs that never learned are left out of the means, unless none learned (smoke scale)
    live_grid = [r for r in grid if not r["dead"]] or grid
    grid_best = min(live_grid, key=lambda r: r["best_val_loss"]) if live_grid else None
    grid_total_s = sum(r["fit_s"] for r in grid)
    rows: dict[str, dict[str, Any]] = {}
    for label, runs in by_row.items():
        if label == "Fixed λ":
            runs = [grid_best] if grid_best is not None else []
        live = [r for r in runs if not r["dead"]]
        pool = live or runs
        best = _mean([exp.score(r["best_val_loss"]) for r in pool])
        final = _mean([exp.score(r["final_val_loss"]) for r in pool])
        lambdas = [v for r in pool for v in r["lambda_final"].values()]
        rows[label] = {
            "best": best,
            "final": final,
            "stability": final / best - 1 if best == best and best else math.nan,
            "test": _mean([exp.score(r["test_loss"]) for r in pool]),
            "lambda_final_median": statistics.median(lambdas) if lambdas else math.nan,
            "live": sum(not r["dead"] for r in by_row[label]),
            "runs": len(by_row[label]),
            "dead_inits": [r["init"] for r in by_row[label] if r["dead"]],
            "fit_s": _mean([r["fit_s"] for r in by_row[label]]),
        }
        if label == "Fixed λ" and grid_best is not None:
            rows[label]["init"] = grid_best["init"]
    ttq = {}
    if grid_best is not None:
        target = grid_best["best_val_loss"]
        for label in [r.label for r in exp.rows if r.label in by_row]:
            runs = by_row[label]
            if label == "Fixed λ":
                continue
            times = []
            for r in runs:
                hit = [t for t, v in zip(r["val"]["wall_s"], r["val"]["val_loss"]) if v <= target]
                times.append(hit[0] if hit else None)
            reached = [t for t in times if t is not None]
            ttq[label] = {
                "reached": len(reached),
                "runs": len(times),
                "median_s": statistics.median(reached) if reached else None,
                "fastest_s": min(reached) if reached else None,
                "median_ratio": statistics.median(reached) / grid_total_s if reached else None,
                "closest": min(r["best_val_loss"] for r in runs),
                "run_s": _mean([r["fit_s"] for r in runs]),
            }
    per_start = {
        label: {f"{r['init']:.3g}": exp.score(r["best_val_loss"]) for r in by_row[label]}
        for label in [r.label for r in exp.rows if r.label in by_row]
    }
    return {
        "rows": rows,
        "per_start": per_start,
        "grid": [
            {
                "init": r["init"],
                "best": exp.score(r["best_val_loss"]),
                "final": exp.score(r["final_val_loss"]),
                "test": exp.score(r["test_loss"]),
                "best_step": r["best_step"],
                "dead": r["dead"],
                "fit_s": r["fit_s"],
            }
            for r in grid
        ],
        "grid_best_loss": None if grid_best is None else grid_best["best_val_loss"],
        "grid_total_s": grid_total_s,
        "time_to_quality": ttq,
    }


def table_markdown(exp: Experiment, summary: Mapping[str, Any]) -> str:
    """The table in the paper's format, then the grid and time-to-quality tables."""
    unit = exp.loss_label
    header = [
        "Method",
        f"{unit}, early stopping",
        "no early stopping",
        "stability",
        "final λ (median)",
        "test, final",
        "runs that trained",
        "paper",
    ]
    body = []
    for label in [r.label for r in exp.rows]:
        s = summary["rows"].get(label)
        if s is None:
            continue
        paper = exp.paper.get(label)
        name = label
        if label == "Fixed λ" and "init" in s:
            name = f"Fixed λ (grid best: {s['init']:.3g})"
        body.append(
            [
                name,
                fmt(s["best"], 1),
                fmt(s["final"], 1),
                "—" if s["stability"] != s["stability"] else f"{100 * s['stability']:+.1f}%",
                f"{s['lambda_final_median']:.3g}",
                fmt(s["test"], 1),
                f"{s['live']}/{s['runs']}",
                "—" if paper is None else f"{paper[0]} / {paper[1]}",
            ]
        )
    p = summary["protocol"]
    text = [
        markdown_table(header, body),
        f"\n{p['steps']} steps per run, validation every {p['val_every']} steps; online starts "
        f"λ₀ ∈ {{{', '.join(f'{v:.3g}' for v in p['starts'])}}}; seed {p['seed']}. Means over "
        "the starts that trained (a run whose best validation loss stays above "
        f"{exp.dead_fraction}·{exp.chance_loss:.3f} never learned; all runs when none did). "
        "Fits took "
        f"{summary['runs_wall_s']:.0f} s in all.\n",
        "\n### Fixed-λ grid\n\n",
        markdown_table(
            ["λ", "early stopping", "no early stopping", "test, final", "best step", "fit s"],
            [
                [
                    f"{g['init']:.3g}" + (" (did not train)" if g["dead"] else ""),
                    fmt(g["best"], 1),
                    fmt(g["final"], 1),
                    fmt(g["test"], 1),
                    g["best_step"],
                    f"{g['fit_s']:.0f}",
                ]
                for g in summary["grid"]
            ],
        ),
    ]
    per_start = summary.get("per_start", {})
    inits = sorted({k for v in per_start.values() for k in v}, key=float)
    if per_start:
        text += [
            "\n### Every run, early stopping\n\n",
            markdown_table(
                ["Method", *[f"λ₀ = {i}" for i in inits]],
                [[label, *[fmt(v.get(i), 1) for i in inits]] for label, v in per_start.items()],
            ),
        ]
    ttq = summary["time_to_quality"]
    if ttq:
        text += [
            f"\n### Time to quality\n\nTarget: the grid's best validation loss "
            f"({exp.score(summary['grid_best_loss']):.1f}); the grid's total wall time "
            f"{summary['grid_total_s']:.0f} s ({len(summary['grid'])} fits).\n\n",
            markdown_table(
                [
                    "Method",
                    "best run's best",
                    "runs reaching it",
                    "median time to reach (s)",
                    "÷ grid total",
                    "mean fit time (s)",
                ],
                [
                    [
                        label,
                        fmt(exp.score(t["closest"]), 1),
                        f"{t['reached']}/{t['runs']}",
                        fmt(t["median_s"], 0),
                        fmt(t["median_ratio"], 2),
                        fmt(t["run_s"], 0),
                    ]
                    for label, t in ttq.items()
                ],
            ),
        ]
    return "".join(text)


def plot_experiment(exp: Experiment, records: Sequence[Mapping[str, Any]], out: Path) -> None:
    """``curves_<λ₀>.png`` per initial value (λ, training and validation loss against steps,
    one line per method) and ``lambda_all.png`` (every start of every method). On log axes
    λ = 0 (the lower bound) is not drawn."""
    from ..plots import plot_curves, plot_lambda_grid

    by_init: dict[float, dict[str, dict[str, Any]]] = {}
    by_method: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    for r in records:
        steps = r["curves"]["step"]
        lam = next((v for k, v in r["curves"].items() if k.startswith("lambda/")), None)
        by_init.setdefault(r["init"], {})[r["row"]] = {
            "lambda": (steps, lam or []),
            "train_loss": (steps, r["curves"]["train_loss"]),
            "val_loss": (r["val"]["step"], r["val"]["val_loss"]),
        }
        if lam is not None:
            label = f"{r['init']:.0e}" if exp.log_lambda else f"{r['init']:.2f}"
            by_method.setdefault(r["row"], []).append((label, steps, lam))
    order = {r.label: i for i, r in enumerate(exp.rows)}
    by_method = dict(sorted(by_method.items(), key=lambda kv: order.get(kv[0], len(order))))
    scale = "log" if exp.log_lambda else "linear"
    for init, curves in by_init.items():
        curves = dict(sorted(curves.items(), key=lambda kv: order.get(kv[0], len(order))))
        plot_curves(
            curves,
            panels=[
                ("lambda", "λ", scale),
                ("train_loss", "training loss", "log"),
                ("val_loss", "validation loss", "log"),
            ],
            title=f"{exp.description}: λ₀ = {init:.3g}",
            path=out / f"curves_{init:.3g}.png",  # 3 digits: 0.45 and 0.5 stay apart
        )
    plot_lambda_grid(
        by_method,
        f"{exp.description}: λ against steps, every start",
        out / "lambda_all.png",
        log=exp.log_lambda,
    )
