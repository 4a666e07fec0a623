"""Checks of constructor arguments, one place for each rule (a clear error naming the setting)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor


def positive(name: str, value: float) -> float:
    """``value`` as a float, if it is a finite number > 0."""
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a finite number > 0")
    return value


def nonnegative(name: str, value: float) -> float:
    """``value`` as a float, if it is a finite number ≥ 0."""
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    return value


def count(name: str, value: int, low: int, symbol: str = "") -> int:
    """``value`` as an int, if it is an integer ≥ ``low`` (not a bool); ``symbol`` names it in
    the message (``"K"``: "an integer K >= 1")."""
    if isinstance(value, bool) or int(value) != value or value < low:
        named = f"{symbol} " if symbol else ""
        raise ValueError(f"{name}={value!r} must be an integer {named}>= {low}")
    return int(value)


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
