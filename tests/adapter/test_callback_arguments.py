"""adapter/arguments.py: the callback's arguments, checked once at construction."""

from __future__ import annotations

import pytest

from lightning_hyperopt import AdaptiveStep, Clip, FirstOrder, LearningRate
from lightning_hyperopt.adapter.arguments import check_arguments

DEFAULTS = dict(
    method="auto",
    tune=None,
    warmup_steps=0,
    prog_bar=True,
    adopt_dropout=None,
    max_nonfinite_steps=10,
    hyper_optimizer=None,
    hyper_every=1,
)


def arguments(**changes):
    return check_arguments(**{**DEFAULTS, **changes})


def test_auto_stays_undecided_and_names_become_methods():
    assert arguments().method is None
    assert isinstance(arguments(method="first_order").method, FirstOrder)
    given = Clip(3.0)
    assert arguments(method=given).method is given


def test_hyper_every_auto_stays_undecided():
    assert arguments(hyper_every="auto").hyper_every == "auto"
    assert arguments(hyper_every=4.0).hyper_every == 4


def test_a_hyper_optimizer_is_checked_not_built():
    assert arguments(hyper_optimizer="paper").hyper_optimizer == "paper"
    rule = AdaptiveStep(lr=0.02)
    assert arguments(hyper_optimizer=rule).hyper_optimizer is rule


def test_the_options_are_kept_as_checked():
    a = arguments(
        tune={"lr": LearningRate()},
        adopt_dropout={"difference": "one_sided"},
        warmup_steps=3.0,
        hyper_every=2,
        prog_bar=False,
        verbose=False,
        log_diagnostics=True,
    )
    assert list(a.tuned.tune) == ["lr"]
    assert a.adopt == {"mode": "shared", "difference": "one_sided"}
    assert (a.warmup_steps, a.hyper_every, a.prog_bar) == (3, 2, False)
    assert (a.verbose, a.log_diagnostics) == (False, True)
    assert isinstance(a.warmup_steps, int)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"method": "sgd"}, r"method='sgd' is not supported.*or 'auto' \(the default\)"),
        ({"hyper_optimizer": "adam"}, r"hyper_optimizer='adam' is not supported"),
        ({"warmup_steps": -1}, r"warmup_steps=-1 must be an integer >= 0"),
        ({"hyper_every": 0}, r"hyper_every=0 is not supported; .*an integer >= 1 or 'auto'"),
        ({"hyper_every": "2"}, r"hyper_every='2' is not supported; .*an integer >= 1 or 'auto'"),
        ({"hyper_every": "Auto"}, r"hyper_every='Auto' is not supported"),
        ({"max_nonfinite_steps": 0}, r"max_nonfinite_steps=0 must be an integer >= 1"),
        ({"adopt_dropout": "all"}, r"adopt_dropout='all' is not supported"),
        ({"tune": {"a/b": LearningRate()}}, r"tune= has the key 'a/b'"),
        ({"prog_bar": 0}, r"prog_bar=0 must be True or False"),
        ({"verbose": "no"}, r"verbose='no' must be True or False"),
    ],
)
def test_bad_arguments_are_named(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        arguments(**changes)
