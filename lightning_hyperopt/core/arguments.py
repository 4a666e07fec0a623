"""Checks of arguments and losses, one implementation per rule: each returns the value it
accepts, or raises a ``ValueError`` (a ``TypeError`` for a flag) that names the setting and
what is accepted."""

from __future__ import annotations

import math
import numbers
from typing import Any

from torch import Tensor


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, if it is a finite number > 0."""
    value = _number(name, value, "a finite number > 0")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a finite number > 0")
    return value


def check_nonnegative(name: str, value: float) -> float:
    """``value`` as a float, if it is a finite number ≥ 0."""
    value = _number(name, value, "a finite number >= 0")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    return value


def check_integer(name: str, value: Any, low: int, symbol: str = "") -> int:
    """``value`` as an int, if it is a whole number ≥ ``low`` (an int, or a float without a
    fraction; not a bool); ``symbol`` names it in the message (``"K"``: "an integer K >= 1")."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < low:
        named = f"{symbol} " if symbol else ""
        raise ValueError(f"{name}={value!r} must be an integer {named}>= {low}")
    return int(value)


def check_flag(name: str, value: Any) -> bool:
    """``value``, if it is a bool (a ``TypeError`` otherwise: ``"yes"`` or ``1`` is not a flag)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be True or False")
    return value


def _number(name: str, value: Any, accepted: str) -> float:
    """``value`` as a float: a number (or a one-element tensor), not a bool or a string."""
    if not isinstance(value, bool | str):
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise ValueError(f"{name}={value!r} must be {accepted}")


def check_scalar_loss(what: str, loss: Any) -> Tensor:
    """``loss`` if it is a tensor holding one number (the mean loss of a batch); ``what``
    names the loss and its rule (``"validation_loss must return"``)."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = (
            f"a tensor of shape {tuple(loss.shape)}"
            if isinstance(loss, Tensor)
            else type(loss).__name__
        )
        raise ValueError(
            f"{what} a scalar tensor (one number: the mean loss of the batch), got {got}"
        )
    return loss


def check_probed_loss(hook: str, loss: Any) -> Tensor:
    """A hook's loss, probed on one batch before training: a scalar tensor holding a finite
    number."""
    check_scalar_loss(f"{hook} must return", loss)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ValueError(f"{hook} returned {value} before training started")
    return loss
