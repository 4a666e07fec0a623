"""The outputs of ``bench ttq``: ``table.md`` and ``curves.png`` from a summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..records import fmt, markdown_table


# ------------------------------------------------------------------------------ outputs
def _ratio(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _point(task_dims: Sequence[Mapping[str, Any]], point: Mapping[str, float]) -> str:
    log = {d["name"]: d["log"] for d in task_dims}
    return ", ".join(
        f"{k}={v:.3g}" if log.get(k, True) else f"{k}={v:.2f}" for k, v in point.items()
    )


def table_markdown(summary: Mapping[str, Any]) -> str:
    """One section per task: systems, online runs, targets; then the targets across tasks."""
    clock = summary["protocol"]["clock"]
    text = [
        f"# Time to quality ({clock} clock)\n\nOnline arguments: "
        f"`{json.dumps(summary['protocol']['online_args'])}` (`{{}}`: the library's defaults); "
        f"seeds {summary['protocol']['seeds']}.\n"
    ]
    for name, s in summary["tasks"].items():
        proto = summary["protocol"]["tasks"][name]
        dims = proto["dims"]
        text.append(
            f"\n## {name}\n\n{s['description']}. {proto['steps']} steps per run, validation "
            f"every {proto['val_every']} steps; losses: {proto['loss_label']}; data: "
            f"{_args(proto['data_args'])}.\n\n"
        )
        gb = s["grid_best"]
        rows = []
        for sys_name, v in s["systems"].items():
            label = sys_name
            if sys_name == "online":
                label = f"online, one run (median of {v['runs']})"
            elif sys_name == "optuna":
                label = f"optuna ({v['runs']} trials, {v['pruned']} pruned)"
            ttg = v["time_to_grid_best_s"]
            ratio = None if ttg is None or gb is None else ttg / s["systems"]["grid"]["total_s"]
            rows.append(
                [
                    label,
                    fmt(v["best_val_loss"], 4),
                    fmt(v["test_loss"], 4),
                    _seconds(v["total_s"]),
                    _seconds(ttg),
                    _ratio(ratio) if "grid" in s["systems"] else "—",
                    _point(dims, v["winner"]) if "winner" in v else "—",
                ]
            )
        text.append(
            markdown_table(
                [
                    "system",
                    "best val loss",
                    "test loss (winner)",
                    "total s",
                    "s to grid's best",
                    "÷ grid total",
                    "winner",
                ],
                rows,
            )
        )
        if gb is not None:
            interior = ", ".join(
                f"{k}: {'n/a (2 values)' if v is None else ('interior' if v else 'AT THE EDGE')}"
                for k, v in s["grid_interior"].items()
            )
            text.append(
                f"\nGrid's best: {_point(dims, gb['point'])} (val {gb['val_loss']:.4f}; "
                f"{interior}).\n\n"
            )
            text.append(
                markdown_table(
                    ["grid point", "best val loss", "best step"],
                    [
                        [_point(dims, g["point"]), fmt(g["best_val_loss"], 4), g["best_step"]]
                        for g in s["grid"]
                    ],
                )
            )
        if s["online"]:
            text.append(
                "\n### Online runs, per start\n\n"
                "Gap: best validation loss against the grid's best; ÷ grid: time to the grid's "
                "best over the grid's total time; final: each λ against the grid's best point "
                "(× for penalties, ± for keep probabilities; ✗ outside 2× / ±0.05).\n\n"
            )
            grid_total = s["systems"].get("grid", {}).get("total_s")
            rows = []
            for r in s["online"]:
                check = r.get("final_check", {})
                finals = []
                for d in dims:
                    c = check.get(d["name"], {})
                    v = r["final"][d["name"]]
                    rel = f"×{c['ratio']:.3g}" if "ratio" in c else f"{c['diff']:+.2f}" if c else ""
                    mark = "" if c.get("ok", True) else " ✗"
                    finals.append(f"{d['name']}={v:.3g}" + (f" ({rel}{mark})" if rel else ""))
                rows.append(
                    [
                        _point(dims, r["start"]),
                        r["seed"],
                        fmt(r["best_val_loss"], 4),
                        "—"
                        if gb is None
                        else f"{100 * (r['best_val_loss'] / gb['val_loss'] - 1):+.1f}%",
                        fmt(r["test_loss"], 4),
                        _seconds(r["total_s"]),
                        _seconds(r["time_to_grid_best_s"]),
                        "—"
                        if not grid_total
                        else _ratio(
                            None
                            if r["time_to_grid_best_s"] is None
                            else r["time_to_grid_best_s"] / grid_total
                        ),
                        _seconds(r["time_to_optuna_best_s"]),
                        "; ".join(finals),
                    ]
                )
            text.append(
                markdown_table(
                    [
                        "start",
                        "seed",
                        "best val",
                        "gap",
                        "test",
                        "total s",
                        "s to grid's best",
                        "÷ grid",
                        "s to optuna's best",
                        "final (vs grid's best)",
                    ],
                    rows,
                )
            )
        text.append("\n### Targets\n\n" + _targets_markdown(s["targets"]))
    o = summary["overall"]
    if len(summary["tasks"]) > 1:
        text.append(
            "\n## Across tasks\n\n"
            + "".join(
                f"- online reaches the {k}'s best within the target: {v['passed']} of "
                f"{v['tasks']} tasks ({_passed(v['by_task'])}); the issue asks for 3 of 4\n"
                for k, v in o.items()
            )
        )
    return "".join(text)


def _args(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items())


def _passed(by_task: Mapping[str, bool]) -> str:
    return ", ".join(n for n, ok in by_task.items() if ok) or "none"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "FAIL")


def _gap(g: Mapping[str, Any]) -> str:
    """The median online run's best validation loss against the target loss."""
    online, target = g["online_best"], g["target_loss"]
    return f"median best {online:.4f} vs {target:.4f} ({100 * (online / target - 1):+.1f}%)"


def _targets_markdown(t: Mapping[str, Any]) -> str:
    rows = []
    for key, label in (("grid", "the grid's"), ("optuna", "Optuna's")):
        if key in t:
            g = t[key]
            rows.append(
                [
                    f"online reaches {label} best (median s ÷ {label} total)",
                    _ratio(g["ratio"]),
                    f"≤ {g['threshold']}",
                    f"{g['reached']}/{g['runs']} runs reach it; {_gap(g)}",
                    _verdict(g["pass"]),
                ]
            )
    if "test_at_equal_time" in t:
        g = t["test_at_equal_time"]
        rows.append(
            [
                "online test loss vs Optuna's best trial at equal wall time (medians)",
                f"{fmt(g['online_test'], 4)} vs {fmt(g['optuna_test'], 4)}",
                "online lower" + (" (required here)" if g["required"] else ""),
                f"online lower in {g['wins']}/{g['runs']} runs",
                _verdict(g["pass"]),
            ]
        )
    if "within_2pct" in t:
        g = t["within_2pct"]
        rows.append(
            [
                "every online run within 2% of the grid's best validation loss",
                f"{g['runs_ok']}/{g['runs']} runs",
                "all runs",
                "gaps " + ", ".join(f"{100 * x:+.1f}%" for x in g["gaps"]),
                _verdict(g["pass"]),
            ]
        )
    if "grid_2pct_time" in t:
        g = t["grid_2pct_time"]
        rows.append(
            [
                "online reaches 1.02 × the grid's best (median s ÷ grid total)",
                _ratio(g["ratio"]),
                f"≤ {g['threshold']}",
                f"{g['reached']}/{g['runs']} runs reach it",
                _verdict(g["pass"]),
            ]
        )
    for key in [k for k in t if k.startswith("vs_")]:
        g = t[key]
        rows.append(
            [
                f"online best by {key[3:]}'s best run's time ({_seconds(g['time_s'])} s) vs "
                "its best",
                f"{fmt(g['online_best'], 4)} vs {fmt(g['rival_best'], 4)}",
                "online lower",
                "median over online runs",
                _verdict(g["pass"]),
            ]
        )
    if "final_values" in t:
        g = t["final_values"]
        rows.append(
            [
                "final values within 2× (penalties) / ±0.05 (keep) of the grid's best",
                f"{g['runs_ok']}/{g['runs']} runs",
                "all runs",
                "",
                _verdict(g["pass"]),
            ]
        )
    if not rows:
        return "Not measurable with the systems run.\n"
    return markdown_table(["target", "measured", "threshold", "", "verdict"], rows)


def plot_ttq(summary: Mapping[str, Any], path: Path) -> Path:
    """``path`` (PNG): best-so-far validation loss against the clock, one panel per task, one
    line per system (online: one per start, median over seeds)."""
    from ..plots import plot_curves

    curves: dict[str, dict[str, Any]] = {}
    for task, s in summary["tasks"].items():
        for label, series in s["curves"].items():
            curves.setdefault(label, {})[task] = series
    clock = summary["protocol"]["clock"]
    return plot_curves(
        curves,
        panels=[(t, f"{t}: best validation loss so far", "linear") for t in summary["tasks"]],
        title=f"Time to quality: best validation loss against {clock} time",
        path=path,
        xlabel=f"{clock} seconds since the system's start",
    )
