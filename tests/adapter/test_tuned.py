"""adapter/tuned.py: what a fit tunes, and which values the callback saves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_hyperopt import (
    KeepProbability,
    L2Penalty,
    LearningRate,
    WeightDecay,
    adopt_dropout,
)
from lightning_hyperopt.adapter.tuned import TunedHyperparameters, check_tune, saved_values


def test_check_tune_takes_optimizer_settings_only():
    assert check_tune(None) == {}
    with pytest.raises(TypeError, match="tune= must be a dict"):
        check_tune([WeightDecay()])
    with pytest.raises(TypeError, match=r"tune\['wd'\] must be a Hyperparameter"):
        check_tune({"wd": 0.1})
    with pytest.raises(ValueError, match=r"tune\['keep'\] is a KeepProbability.*adopt_dropout"):
        check_tune({"keep": KeepProbability()})
    with pytest.raises(ValueError, match=r"tune\['l2'\] is a L2Penalty, which enters"):
        check_tune({"l2": L2Penalty(0.1)})
    same = WeightDecay()
    with pytest.raises(ValueError, match=r"tune\['a'\] and tune\['b'\] are the same object"):
        check_tune({"a": same, "b": same})


def test_a_fit_tunes_the_declared_then_the_brought_and_saves_the_non_persistent():
    module = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3))
    module.l2 = L2Penalty(0.1)
    adopt_dropout(module, persistent=False)
    tuned = TunedHyperparameters({"lr": LearningRate()})
    hyperparameters = tuned.of(module)
    assert list(hyperparameters) == ["1.keep", "l2", "lr"]
    assert tuned.saved(hyperparameters) == ("1.keep", "lr")  # l2 is in the module's state


def test_a_name_or_an_object_in_both_is_refused():
    module = nn.Module()
    module.wd = WeightDecay()
    with pytest.raises(ValueError, match=r"names \['wd'\], which Module declares itself"):
        TunedHyperparameters({"wd": WeightDecay()}).of(module)
    with pytest.raises(ValueError, match=r"tune= entries \['other'\] are submodules of Module"):
        TunedHyperparameters({"other": module.wd}).of(module)


def test_saved_values_come_from_the_checkpoint_as_floats():
    hyperparameters = {"lr": LearningRate()}
    values = {"lr": torch.tensor(0.375, dtype=torch.float64)}
    assert saved_values(hyperparameters, values, ("lr",)) == {"lr": 0.375}
    with pytest.raises(ValueError, match=r"no value for \['lr'\]"):
        saved_values(hyperparameters, None, ("lr",))
