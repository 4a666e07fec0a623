"""Shared output helpers of the benchmarks: JSON records, Markdown tables, progress bars."""

from __future__ import annotations

import json
import logging
import math
import platform
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def environment() -> dict[str, Any]:
    """What the numbers were measured on: versions, threads, processor, date."""
    import pytorch_lightning as pl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def jsonable(value: Any) -> Any:
    """``value`` with tensors, tuples and paths turned into JSON types (NaN/inf kept as str)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def restored(value: Any) -> Any:
    """:func:`jsonable`'s inverse for the non-finite floats it kept as strings."""
    if isinstance(value, dict):
        return {k: restored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restored(v) for v in value]
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    return value


class RunLog:
    """``runs.jsonl`` in ``out``: one JSON record per line, appended as each run finishes.

    ``resume=True`` keeps the records already there (a rerun skips those runs by key);
    otherwise the file is started afresh.
    """

    def __init__(self, out: Path, resume: bool = False) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "runs.jsonl"
        self.records: list[dict[str, Any]] = []
        if resume and self.path.exists():
            lines = self.path.read_text().splitlines()
            self.records = [restored(json.loads(line)) for line in lines]
        else:
            self.path.write_text("")

    def done(self, key: str) -> dict[str, Any] | None:
        """The record of run ``key`` if it is already there."""
        return next((r for r in self.records if r.get("key") == key), None)

    def add(self, record: Mapping[str, Any]) -> None:
        record = jsonable(record)
        self.records.append(restored(record))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(jsonable(value), indent=1) + "\n")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned.
    A ``|`` inside a cell (as in |λ − λ*|) is escaped."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "| " + " | ".join([":---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += [line(row) for row in rows]
    return "\n".join(lines) + "\n"


def progress(iterable: Iterable[T], total: int | None, desc: str, enabled: bool) -> Iterator[T]:
    """A tqdm progress bar on stderr around ``iterable`` (a plain pass-through when disabled)."""
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    with tqdm(iterable, total=total, desc=desc, leave=False, mininterval=1.0) as bar:
        yield from bar


def logspace(low: float, high: float, n: int) -> list[float]:
    """``n`` values equally spaced in log scale from ``low`` to ``high`` (both included)."""
    if n < 1:
        raise ValueError(f"the number of values must be >= 1, got {n}")
    if n == 1:
        return [low]
    a, b = math.log10(low), math.log10(high)
    return [10 ** (a + (b - a) * i / (n - 1)) for i in range(n)]


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell; missing or non-finite values as an em dash."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def bare_trainer(
    callbacks: Sequence[Any],
    max_steps: int,
    namespace: str = "pytorch_lightning",
    **overrides: Any,
) -> Any:
    """A ``Trainer`` on CPU for ``max_steps`` with nothing but training: no logger,
    checkpoints, progress bar, model summary, sanity check or validation loop (the tuner
    draws its own validation batches). ``namespace``: the Lightning package the Trainer comes
    from (``pytorch_lightning`` or ``lightning.pytorch``). ``overrides`` replace or add Trainer
    arguments."""
    import importlib

    pl = importlib.import_module(namespace)

    settings: dict[str, Any] = dict(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    settings.update(overrides)
    return pl.Trainer(callbacks=list(callbacks), **settings)


def quiet_lightning() -> None:
    """Silence Lightning's banners, tips and warnings (the benchmarks print their own tables)."""
    import importlib.util

    if importlib.util.find_spec("lightning") is not None:
        import lightning.pytorch  # noqa: F401  (its import sets its logger's level: first)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("pytorch_lightning", "lightning", "lightning_fabric", "torch.utils.data"):
        warnings.filterwarnings("ignore", module=module)
