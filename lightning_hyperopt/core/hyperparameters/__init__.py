"""The kinds of hyperparameters a model declares (or the callback brings), one file each, on
the base of :mod:`~lightning_hyperopt.core.hyperparameters.base` (and, for the param-group
settings, :mod:`~lightning_hyperopt.core.hyperparameters.optimizer_setting`)."""

from lightning_hyperopt.core.hyperparameters.base import (
    PARAMETERIZATIONS,
    DriftSource,
    Hyperparameter,
    Parameterization,
    TermContext,
    find_hyperparameters,
    not_recorded,
)
from lightning_hyperopt.core.hyperparameters.keep_probability import (
    DIFFERENCES,
    Difference,
    KeepProbability,
)
from lightning_hyperopt.core.hyperparameters.l2_penalty import L2Penalty, PenaltyCall
from lightning_hyperopt.core.hyperparameters.learning_rate import LearningRate
from lightning_hyperopt.core.hyperparameters.momentum import Momentum
from lightning_hyperopt.core.hyperparameters.optimizer_setting import OptimizerSetting
from lightning_hyperopt.core.hyperparameters.weight_decay import WeightDecay

__all__ = [
    "DIFFERENCES",
    "PARAMETERIZATIONS",
    "Difference",
    "DriftSource",
    "Hyperparameter",
    "KeepProbability",
    "L2Penalty",
    "LearningRate",
    "Momentum",
    "OptimizerSetting",
    "Parameterization",
    "PenaltyCall",
    "TermContext",
    "WeightDecay",
    "find_hyperparameters",
    "not_recorded",
]
