"""Hyperparameters a model declares (or the callback brings): one kind per file."""

from lightning_hyperopt.core.hyperparameters.base import (
    PARAMETERIZATIONS,
    DriftSource,
    Hyperparameter,
    Parameterization,
    find_hyperparameters,
    not_recorded,
)
from lightning_hyperopt.core.hyperparameters.l2_penalty import L2Penalty, PenaltyCall
from lightning_hyperopt.core.hyperparameters.learning_rate import LearningRate
from lightning_hyperopt.core.hyperparameters.momentum import Momentum
from lightning_hyperopt.core.hyperparameters.weight_decay import WeightDecay

__all__ = [
    "PARAMETERIZATIONS",
    "DriftSource",
    "Hyperparameter",
    "L2Penalty",
    "LearningRate",
    "Momentum",
    "Parameterization",
    "PenaltyCall",
    "WeightDecay",
    "find_hyperparameters",
    "not_recorded",
]
