"""The benchmarks' clocks: wall seconds (``time.perf_counter``) and this process's CPU seconds
(``time.process_time``), read together.

``bench cost`` stamps both at every step; ``bench ttq`` and the paper tables run a :class:`Clock`
per system, paused while test losses are computed and records written. Wall time is what a run
takes; CPU time is the work done, which other jobs on shared cores inflate far less (with one
torch thread: several spinning threads bill CPU time while they wait).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

#: the clocks every benchmark reads; its tables use one of them, its JSON records have both
CLOCKS = ("wall", "cpu")


def now() -> dict[str, float]:
    """Seconds on each clock since an arbitrary origin: ``{"wall": …, "cpu": …}``."""
    return {"wall": time.perf_counter(), "cpu": time.process_time()}


def check_clock(clock: str) -> str:
    """``clock`` if it names one of :data:`CLOCKS`, else a ValueError naming the accepted ones."""
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r} is not supported; accepted values: {CLOCKS}")
    return clock


class Clock:
    """A system's clock: seconds on each of :data:`CLOCKS` since its start, minus the time spent
    in :meth:`paused` blocks. ``offset`` continues a resumed one."""

    def __init__(self, offset: Mapping[str, float] | None = None) -> None:
        self._start = now()
        self._paused = {c: -float((offset or {}).get(c, 0.0)) for c in CLOCKS}

    def read(self) -> dict[str, float]:
        """Seconds on each clock."""
        t = now()
        return {c: t[c] - self._start[c] - self._paused[c] for c in CLOCKS}

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The block's time does not count."""
        before = now()
        try:
            yield
        finally:
            after = now()
            for c in CLOCKS:
                self._paused[c] += after[c] - before[c]
