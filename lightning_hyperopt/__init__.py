"""lightning_hyperopt: online tuning of regularization hyperparameters in one Lightning run.

The method of "Online hyper-parameter optimization" (ICLR 2018 submission): carry the tangent
y = dθ/dλ along training and move λ against ⟨g_V, y⟩. The core (``lightning_hyperopt.core``)
imports torch only; the Lightning adapter is imported on first use.
"""

from typing import Any

from lightning_hyperopt.core import (
    Clip,
    Exact,
    FirstOrder,
    HyperMethod,
    Hyperparameter,
    L2Penalty,
    TangentEngine,
    Unroll,
    WeightDecay,
)

__version__ = "0.1.0"

_LIGHTNING = {"OnlineHyperparamCallback", "find_hyperparameters"}

__all__ = [
    "Clip",
    "Exact",
    "FirstOrder",
    "HyperMethod",
    "Hyperparameter",
    "L2Penalty",
    "OnlineHyperparamCallback",
    "TangentEngine",
    "Unroll",
    "WeightDecay",
    "find_hyperparameters",
]


def __getattr__(name: str) -> Any:
    # the callback pulls in Lightning; the core stays importable without it
    if name in _LIGHTNING:
        from lightning_hyperopt import callback

        return getattr(callback, name)
    raise AttributeError(f"module 'lightning_hyperopt' has no attribute {name!r}")
