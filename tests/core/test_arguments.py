"""core/arguments.py: one check per rule, each naming the setting and what it accepts."""

from __future__ import annotations

import pytest
import torch

from lightning_hyperopt.core.arguments import (
    check_integer,
    check_nonnegative,
    check_positive,
    check_probed_loss,
    check_scalar_loss,
)


def test_accepted_values_come_back_converted():
    assert check_integer("k", 3.0, 1) == 3 and isinstance(check_integer("k", 3.0, 1), int)
    assert check_positive("lr", torch.tensor(0.5)) == 0.5
    assert check_nonnegative("c", 0) == 0.0


@pytest.mark.parametrize(
    "check, value, message",
    [
        (lambda v: check_integer("k", v, 1), 0, r"k=0 must be an integer >= 1"),
        (lambda v: check_integer("k", v, 1), 2.5, r"k=2.5 must be an integer >= 1"),
        (lambda v: check_integer("k", v, 1), True, r"k=True must be an integer >= 1"),
        (lambda v: check_integer("k", v, 1), None, r"k=None must be an integer >= 1"),
        (lambda v: check_integer("K", v, 1, "K"), 0, r"K=0 must be an integer K >= 1"),
        (lambda v: check_positive("lr", v), 0.0, r"lr=0.0 must be a finite number > 0"),
        (lambda v: check_positive("lr", v), float("inf"), r"lr=inf must be a finite number"),
        (lambda v: check_positive("lr", v), "0.1", r"lr='0.1' must be a finite number > 0"),
        (lambda v: check_nonnegative("c", v), -1, r"c=-1.0 must be a finite number >= 0"),
        (lambda v: check_nonnegative("c", v), None, r"c=None must be a finite number >= 0"),
    ],
)
def test_refused_values_are_named(check, value, message):
    with pytest.raises(ValueError, match=message):
        check(value)


def test_losses_must_be_one_finite_number():
    assert check_scalar_loss("x must be", torch.ones(1)).shape == (1,)
    with pytest.raises(ValueError, match=r"a scalar tensor .* got a tensor of shape \(2,\)"):
        check_scalar_loss("x must be", torch.ones(2))
    with pytest.raises(ValueError, match="got float"):
        check_scalar_loss("x must be", 1.0)
    with pytest.raises(ValueError, match="hook returned nan before training started"):
        check_probed_loss("hook", torch.tensor(float("nan")))
