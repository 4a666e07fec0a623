"""``TunedHyperparameters``: what a fit tunes, the hyperparameters the callback brings, and the
ones whose values it saves.

    tuned = declared ∪ tune                        (the module's and the callback's; names disjoint)
    saved = tune ∪ {λ ∈ declared : λ not in the module's state_dict}

``tune`` holds optimizer-side hyperparameters (``WeightDecay``, ``LearningRate``,
``Momentum``): they act through the optimizer's param groups, so the module needs no change.
The keep probabilities that ``adopt_dropout`` creates are left out of the module's
``state_dict`` (non-persistent). The values of ``saved`` live in the callback's own state: the
module's checkpoint carries the keys of the unmodified class, which loads it strictly, and a
resumed fit with the callback takes λ from the callback's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


class TunedHyperparameters:
    """The callback's ``tune`` (checked at construction) and what a fit tunes and saves (see
    the module's docstring)."""

    def __init__(self, tune: Mapping[str, Hyperparameter] | None) -> None:
        self.tune = check_tune(tune)

    def of(self, module: Any) -> dict[str, Hyperparameter]:
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

    def saved(self, hyperparameters: Mapping[str, Hyperparameter]) -> tuple[str, ...]:
        """The names whose values the callback saves: ``tune``'s and the module's
        non-persistent ones (adopted dropout)."""
        return tuple(
            name for name, h in hyperparameters.items() if name in self.tune or not _persistent(h)
        )


def saved_values(
    hyperparameters: Mapping[str, Hyperparameter], values: Mapping[str, Any] | None, saved: Any
) -> dict[str, float]:
    """λ of each ``saved`` name from a checkpoint's ``values``; a clear error naming what is
    missing (a checkpoint of another configuration of the callback)."""
    values = values or {}
    missing = sorted(set(saved) - set(values))
    if missing:
        raise ValueError(
            f"the checkpoint holds no value for {missing} (tuned by the callback, not saved "
            "in the module): it was written by another configuration of the callback"
        )
    return {name: float(values[name]) for name in saved if name in hyperparameters}
