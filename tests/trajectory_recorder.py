"""A pytest plugin that records the λ trajectory of every fit the test suite runs.

    export PYTHONPATH=tests
    LIGHTNING_HYPEROPT_TRAJECTORIES=before.json python -m pytest -p trajectory_recorder
    ... change the code ...
    LIGHTNING_HYPEROPT_TRAJECTORIES=after.json python -m pytest -p trajectory_recorder
    python benchmarks/compare_trajectories.py before.json after.json

Per test and fit: every λ after every training batch (``float.hex``: exact) and a digest of
the model's parameters at the end of the fit, so a refactoring can be checked bit for bit on
every fit of the suite. Fits in subprocesses (DDP, the CLI's main job) are not seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

_OUT = os.environ.get("LIGHTNING_HYPEROPT_TRAJECTORIES")
_RECORDS: dict[str, list[dict[str, Any]]] = {}
_CURRENT = {"test": "<collection>"}


def _digest(module: Any) -> str:
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def pytest_configure(config: pytest.Config) -> None:
    if not _OUT:
        return
    from lightning_hyperopt import OnlineHyperparamCallback, find_hyperparameters

    batch_end = OnlineHyperparamCallback.on_train_batch_end
    fit_start = OnlineHyperparamCallback.on_fit_start
    fit_end = OnlineHyperparamCallback.on_fit_end

    def on_fit_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        fit_start(self, trainer, pl_module)
        fits = _RECORDS.setdefault(_CURRENT["test"], [])
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

    OnlineHyperparamCallback.on_fit_start = on_fit_start
    OnlineHyperparamCallback.on_train_batch_end = on_train_batch_end
    OnlineHyperparamCallback.on_fit_end = on_fit_end


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    _CURRENT["test"] = item.nodeid
    yield
    _CURRENT["test"] = "<between tests>"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OUT:
        with open(_OUT, "w") as f:
            json.dump(_RECORDS, f, indent=0, sort_keys=True)
