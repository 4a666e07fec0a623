"""PNG plots like the paper's Appendix B: quantities against steps, one line per method."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


Series = tuple[Sequence[float], Sequence[float]]  # (steps, values)


def _save(fig: Any, title: str, path: Path) -> Path:
    """Title, lay out and write ``fig`` to ``path`` (PNG), then free it."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def plot_curves(
    curves: Mapping[str, Mapping[str, Series]],
    panels: Sequence[tuple[str, str, str]],
    title: str,
    path: Path,
    vlines: Sequence[float] = (),
    xlabel: str = "steps",
) -> Path:
    """One panel per (key, y label, y scale) of ``panels``; one line per entry of ``curves``
    (label → {key: (x values, values)}, x in ``xlabel``'s unit). Non-finite values, and
    non-positive ones on log panels, are dropped; keys a curve lacks are skipped. Writes
    ``path`` (PNG) and returns it."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, label, scale) in zip(axes[0], panels):
        for name, curve in curves.items():
            if key not in curve:
                continue
            xs, ys = curve[key]
            pts = [
                (float(s), float(v))
                for s, v in zip(xs, ys)
                if v is not None and math.isfinite(float(v)) and (scale != "log" or float(v) > 0)
            ]
            if pts:
                ax.plot(*zip(*pts), label=name, linewidth=1.2)
        for v in vlines:
            ax.axvline(v, color="grey", linestyle="--", linewidth=0.8)
        ax.set_yscale(scale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, title, path)


def plot_lambda_grid(
    runs: Mapping[str, Sequence[tuple[str, Sequence[float], Sequence[float]]]],
    title: str,
    path: Path,
    ylabel: str = "λ",
    log: bool = True,
) -> Path:
    """Small multiples: one panel per method, one λ trajectory per start
    (method → [(start label, steps, λ values)])."""
    plt = _pyplot()
    n = len(runs)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (method, lines) in zip(axes.flat, runs.items()):
        for label, steps, values in lines:
            pts = [(s, v) for s, v in zip(steps, values) if not log or v > 0]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=label, linewidth=1.0)
        if log:
            ax.set_yscale("log")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("steps", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=6, title="λ₀", title_fontsize=6)
    return _save(fig, title, path)
