"""lightning_hyperopt: online tuning of regularization hyperparameters in one Lightning run.

The method of "Online hyper-parameter optimization" (ICLR 2018 submission): carry the tangent
y = dθ/dλ along training and move λ against ⟨g_V, y⟩. The core (``lightning_hyperopt.core``)
imports torch only; the Lightning adapter is imported on first use.
"""

from typing import Any

from lightning_hyperopt.core import (
    AdaptiveStep,
    Clip,
    Discount,
    Exact,
    FirstOrder,
    HyperMethod,
    HyperOptimizer,
    Hyperparameter,
    KeepProbability,
    L2Penalty,
    LearningRate,
    Momentum,
    NonFiniteTrainingError,
    OptimizerSetting,
    PaperStep,
    TangentEngine,
    Unroll,
    WeightDecay,
    find_hyperparameters,
)
from lightning_hyperopt.core.dropout import TunableDropout, adopt_dropout

__version__ = "0.1.0"

#: Lightning-side names and the module that defines each
_LAZY = {
    "OnlineHyperparamCallback": "lightning_hyperopt.adapter.callback",
}

__all__ = [
    "AdaptiveStep",
    "Clip",
    "Discount",
    "Exact",
    "FirstOrder",
    "HyperMethod",
    "HyperOptimizer",
    "Hyperparameter",
    "KeepProbability",
    "L2Penalty",
    "LearningRate",
    "Momentum",
    "NonFiniteTrainingError",
    "OnlineHyperparamCallback",
    "OptimizerSetting",
    "PaperStep",
    "TangentEngine",
    "TunableDropout",
    "Unroll",
    "WeightDecay",
    "adopt_dropout",
    "find_hyperparameters",
]


def __getattr__(name: str) -> Any:
    # the callback pulls in Lightning; the core stays importable without it
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_hyperopt' has no attribute {name!r}")
