"""Framework-free core: tangent recurrence, methods, hyperparameters (imports torch only)."""

from lightning_hyperopt.core.engine import TangentEngine
from lightning_hyperopt.core.hyper_optimizers import AdaptiveStep, HyperOptimizer, PaperStep
from lightning_hyperopt.core.hyperparameters import (
    Hyperparameter,
    KeepProbability,
    L2Penalty,
    LearningRate,
    Momentum,
    OptimizerSetting,
    WeightDecay,
    find_hyperparameters,
)
from lightning_hyperopt.core.methods import (
    METHODS,
    Clip,
    Discount,
    Exact,
    FirstOrder,
    HyperMethod,
    Unroll,
    resolve_method,
)
from lightning_hyperopt.core.nonfinite import NonFiniteTrainingError

__all__ = [
    "METHODS",
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
    "OptimizerSetting",
    "PaperStep",
    "TangentEngine",
    "Unroll",
    "WeightDecay",
    "find_hyperparameters",
    "resolve_method",
]
