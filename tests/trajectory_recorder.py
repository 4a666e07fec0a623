"""A pytest plugin that records the λ trajectory of every fit and every engine the suite runs.

    export PYTHONPATH=tests
    LIGHTNING_HYPEROPT_TRAJECTORIES=before.json python -m pytest -p trajectory_recorder
    ... change the code ...
    LIGHTNING_HYPEROPT_TRAJECTORIES=after.json python -m pytest -p trajectory_recorder
    python -m benchmarks compare-trajectories before.json after.json

Per test, two records:

- per fit of the callback: every λ after every training batch (``float.hex``: exact) and a
  digest of the model's parameters at the end of the fit;
- per ``TangentEngine`` (driven by the callback or by a loop of its own, as the engine's and
  the quadratic problem's tests do): every λ after each of its λ updates.

So a refactoring can be checked bit for bit on every fit and every engine of the suite. Fits in
subprocesses (DDP, the CLI's main job) are not seen. The comparison matches tests by their id,
then by their name alone (a test file moved to another folder keeps its name).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

_OUT = os.environ.get("LIGHTNING_HYPEROPT_TRAJECTORIES")
_RECORDS: dict[str, dict[str, list[Any]]] = {}
_CURRENT = {"test": "<collection>"}


def _digest(module: Any) -> str:
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _record() -> dict[str, list[Any]]:
    return _RECORDS.setdefault(_CURRENT["test"], {"fits": [], "engines": []})


def _hooks() -> None:
    from lightning_hyperopt import OnlineHyperparamCallback, find_hyperparameters
    from lightning_hyperopt.core.engine import TangentEngine

    batch_end = OnlineHyperparamCallback.on_train_batch_end
    fit_start = OnlineHyperparamCallback.on_fit_start
    fit_end = OnlineHyperparamCallback.on_fit_end
    engine_init = TangentEngine.__init__
    engine_update = TangentEngine.update

    def on_fit_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        fit_start(self, trainer, pl_module)
        fits = _record()["fits"]
        fits.append({"lambda": [], "params": None})
        self._trajectory = fits[-1]

    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs):  # type: ignore[no-untyped-def]
        batch_end(self, trainer, pl_module, *args, **kwargs)
        record = getattr(self, "_trajectory", None)
        if record is not None:
            values = find_hyperparameters(pl_module).values()
            record["lambda"].append([float(h.value).hex() for h in values])

    def on_fit_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        fit_end(self, trainer, pl_module)
        record = getattr(self, "_trajectory", None)
        if record is not None:
            record["params"] = _digest(pl_module)

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        engine_init(self, *args, **kwargs)
        engines = _record()["engines"]
        engines.append([])
        self._updates_record = engines[-1]

    def update(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        moved = engine_update(self, *args, **kwargs)
        record = getattr(self, "_updates_record", None)
        if moved and record is not None:
            record.append([float(h.value).hex() for h in self.hypers])
        return moved

    OnlineHyperparamCallback.on_fit_start = on_fit_start
    OnlineHyperparamCallback.on_train_batch_end = on_train_batch_end
    OnlineHyperparamCallback.on_fit_end = on_fit_end
    TangentEngine.__init__ = init
    TangentEngine.update = update


def pytest_configure(config: pytest.Config) -> None:
    if _OUT:
        _hooks()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):  # type: ignore[no-untyped-def]
    # a fixture's fits count for the first test that sets it up
    _CURRENT["test"] = item.nodeid
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    _CURRENT["test"] = item.nodeid
    yield
    _CURRENT["test"] = "<between tests>"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OUT:
        with open(_OUT, "w") as f:
            json.dump(_RECORDS, f, indent=0, sort_keys=True)
