"""``CallbackArguments``: the arguments of :class:`OnlineHyperparamCallback`, checked once, at
construction, so that a bad value fails before any training work (a YAML config as soon as it
is parsed). What depends on the fit (``"auto"``'s method, the hyper optimizer's instance) is
resolved at fit start, by :func:`~lightning_hyperopt.adapter.fit_plan.plan_fit`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lightning_hyperopt.adapter.tuned import TunedHyperparameters
from lightning_hyperopt.core.arguments import check_flag, check_integer
from lightning_hyperopt.core.dropout import adopt_options
from lightning_hyperopt.core.hyper_optimizers import HyperOptimizer, check_hyper_optimizer
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.methods import HyperMethod, resolve_method

MethodName = Literal["auto", "clip", "exact", "unroll", "discount", "first_order"]


@dataclass(frozen=True)
class CallbackArguments:
    """The callback's arguments as checked.

    Attributes:
        method: the method, or ``None`` for ``"auto"`` (chosen at fit start).
        hyper_optimizer: an instance, a name or ``None`` (resolved at fit start).
        tuned: the ``tune=`` hyperparameters, and the rules of what a fit tunes and saves.
        adopt: ``adopt_dropout``'s keyword arguments, or ``None`` (no adoption).
        warmup_steps, hyper_every, max_nonfinite_steps, prog_bar, verbose, log_diagnostics,
            validation_batch_size: as given.
    """

    method: HyperMethod | None
    hyper_optimizer: HyperOptimizer | str | None
    tuned: TunedHyperparameters
    adopt: dict[str, Any] | None
    warmup_steps: int
    hyper_every: int | Literal["auto"]
    max_nonfinite_steps: int
    prog_bar: bool
    verbose: bool = True
    log_diagnostics: bool = False
    validation_batch_size: int | None = None


def check_arguments(
    method: HyperMethod | MethodName,
    tune: dict[str, Hyperparameter] | None,
    warmup_steps: int,
    prog_bar: bool,
    adopt_dropout: Any,
    max_nonfinite_steps: int,
    hyper_optimizer: HyperOptimizer | str | None,
    hyper_every: int | Literal["auto"],
    verbose: bool = True,
    log_diagnostics: bool = False,
    validation_batch_size: int | None = None,
) -> CallbackArguments:
    """The callback's arguments checked, each with an error naming it and what it accepts."""
    resolved = None
    if method != "auto":
        try:
            resolved = resolve_method(method)
        except ValueError as err:  # the callback accepts one name more than the core
            raise ValueError(f"{err}, or 'auto' (the default)") from None
    return CallbackArguments(
        method=resolved,
        hyper_optimizer=check_hyper_optimizer(hyper_optimizer),
        tuned=TunedHyperparameters(tune),
        adopt=adopt_options(adopt_dropout),
        warmup_steps=check_integer("warmup_steps", warmup_steps, 0),
        hyper_every=_check_hyper_every(hyper_every),
        max_nonfinite_steps=check_integer("max_nonfinite_steps", max_nonfinite_steps, 1),
        prog_bar=check_flag("prog_bar", prog_bar),
        verbose=check_flag("verbose", verbose),
        log_diagnostics=check_flag("log_diagnostics", log_diagnostics),
        validation_batch_size=(
            None
            if validation_batch_size is None
            else check_integer("validation_batch_size", validation_batch_size, 1)
        ),
    )


def _check_hyper_every(value: Any) -> int | Literal["auto"]:
    if value == "auto" and isinstance(value, str):
        return "auto"
    try:
        return check_integer("hyper_every", value, 1)
    except ValueError:
        raise ValueError(
            f"hyper_every={value!r} is not supported; accepted values: an integer >= 1 or 'auto'"
        ) from None
