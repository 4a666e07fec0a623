"""``HeldHyperparameters``: the hyperparameters the callback brings, and those it saves.

    tuned = declared ∪ tune                        (the module's and the callback's; names disjoint)
    held  = tune ∪ {λ ∈ declared : λ not in the module's state_dict}

``tune`` holds optimizer-side hyperparameters (``WeightDecay``, ``LearningRate``,
``Momentum``): they act through the optimizer's param groups, so the module needs no change.
The keep probabilities that ``adopt_dropout`` creates are left out of the module's
``state_dict`` (non-persistent). The values of ``held`` are saved in the callback's own state:
the module's checkpoint carries the keys of the unmodified class, which loads it strictly, and a
resumed fit with the callback takes λ from the callback's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import Hyperparameter, find_hyperparameters

_EXAMPLE = "{'weight_decay': WeightDecay(), 'lr': LearningRate()}"


def check_tune(tune: Any) -> dict[str, Hyperparameter]:
    """``tune`` as a dict name → hyperparameter, or a clear error naming the entry."""
    if tune is None:
        return {}
    if not isinstance(tune, Mapping):
        raise TypeError(
            f"tune= must be a dict of name -> Hyperparameter (e.g. {_EXAMPLE}), "
            f"got {type(tune).__name__}"
        )
    seen: dict[int, str] = {}
    for name, h in tune.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(
                f"tune= has the key {name!r}: each name must be a non-empty string without '/' "
                "(it is logged as hyperopt/<name>)"
            )
        if not isinstance(h, Hyperparameter):
            raise TypeError(
                f"tune[{name!r}] must be a Hyperparameter such as WeightDecay(), "
                f"LearningRate() or Momentum(), got {type(h).__name__}"
            )
        if h.drift_source == "finite_difference":
            raise ValueError(
                f"tune[{name!r}] is a {type(h).__name__}: dropout reaches the model through "
                "adopt_dropout='shared' or 'per_module', not through tune="
            )
        if h.drift_source != "optimizer":
            raise ValueError(
                f"tune[{name!r}] is a {type(h).__name__}, which enters the training loss: the "
                "callback cannot change the module's loss, so declare it on the module. tune= "
                "takes hyperparameters that act through the optimizer: WeightDecay, "
                "LearningRate, Momentum"
            )
        if id(h) in seen:
            raise ValueError(f"tune[{seen[id(h)]!r}] and tune[{name!r}] are the same object")
        seen[id(h)] = name
    return dict(tune)


def _persistent(h: Hyperparameter) -> bool:
    """Whether λ is saved in its module's ``state_dict``."""
    return "value" in h.state_dict(keep_vars=True)


class HeldHyperparameters:
    """The callback's ``tune`` and the values it saves (see the module's docstring)."""

    def __init__(self, tune: Mapping[str, Hyperparameter] | None) -> None:
        self.tune = check_tune(tune)
        self.held: dict[str, Hyperparameter] = {}

    def tuned(self, module: Any) -> dict[str, Hyperparameter]:
        """The module's hyperparameters, then ``tune``'s; a name or an object in both is an
        error."""
        declared = find_hyperparameters(module)
        clash = sorted(set(declared) & set(self.tune))
        if clash:
            raise ValueError(
                f"OnlineHyperparamCallback(tune=...) names {clash}, which "
                f"{type(module).__name__} declares itself: rename the tune= entries (or drop "
                "them: the module's own are tuned already)"
            )
        mine = {id(h): name for name, h in self.tune.items()}
        shared = sorted(mine[id(h)] for h in declared.values() if id(h) in mine)
        if shared:
            raise ValueError(
                f"tune= entries {shared} are submodules of {type(module).__name__}: a "
                "hyperparameter the module declares is tuned already; leave it out of tune="
            )
        return {**declared, **self.tune}

    def start(self, module: Any, hyperparameters: Mapping[str, Hyperparameter]) -> None:
        """At fit start: ``tune`` on the module's device; which values the callback saves."""
        for h in self.tune.values():
            h.to(module.device)
        self.held = {
            name: h
            for name, h in hyperparameters.items()
            if name in self.tune or not _persistent(h)
        }

    def state_dict(self) -> dict[str, Tensor]:
        return {name: h.value.detach().clone() for name, h in self.held.items()}

    def load_state_dict(self, values: Mapping[str, Tensor] | None) -> None:
        """λ of each held hyperparameter from the callback's checkpoint."""
        values = values or {}
        missing = sorted(set(self.held) - set(values))
        if missing:
            raise ValueError(
                f"the checkpoint holds no value for {missing} (tuned by the callback, not saved "
                "in the module): it was written by another configuration of the callback"
            )
        with torch.no_grad():
            for name, h in self.held.items():
                h.value.copy_(torch.as_tensor(values[name]))
