"""core/terms.py: the drift terms by each hyperparameter's drift source."""

from __future__ import annotations

import pytest
import torch

from lightning_hyperopt import (
    Hyperparameter,
    KeepProbability,
    L2Penalty,
    TunableDropout,
    WeightDecay,
)
from lightning_hyperopt.core.layout import FlatLayout
from lightning_hyperopt.core.terms import DriftTerms

f64 = torch.float64


def test_rows_are_split_by_drift_source():
    w = torch.nn.Parameter(torch.ones(2, dtype=f64))
    hypers = [Hyperparameter(0.1), L2Penalty(0.1), KeepProbability(), WeightDecay(init=0.1)]
    terms = DriftTerms(["a", "l2", "keep", "wd"], hypers, FlatLayout([w]))
    assert [j for j, _, _ in terms.graph_rows] == [0]
    assert terms.closed_form_rows == [1] and terms.finite_difference_rows == [2]


def test_the_closed_form_l2_term_is_a_theta_and_is_divided_by_the_loss_scale():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=f64))
    l2 = L2Penalty(0.1)
    l2.attach()
    terms = DriftTerms(["l2"], [l2], FlatLayout([w]))
    (3.0 * l2([w])).backward()  # a = ∂L/∂(penalty) = 3
    drift = terms.complete(None, 1, step=0, loss_scale=None, replay=None)
    assert drift[0].tolist() == [3.0, -6.0]
    (3.0 * l2([w])).backward()
    scaled = terms.complete(None, 1, step=1, loss_scale=2.0, replay=None)
    assert scaled[0].tolist() == [1.5, -3.0]


def test_an_l2_penalty_missing_from_the_loss_is_named():
    w = torch.nn.Parameter(torch.ones(2, dtype=f64))
    l2 = L2Penalty(0.1)
    l2.attach()
    terms = DriftTerms(["l2"], [l2], FlatLayout([w]))
    with pytest.raises(
        ValueError, match="L2Penalty 'l2' was not part of the training loss of step 4"
    ):
        terms.complete(None, 1, step=4, loss_scale=None, replay=None)


def test_the_central_difference_replays_both_sides_with_coupled_masks():
    """The term is (g(λ₊) − g(λ₋)) / (λ₊ − λ₋) of two replays seeded alike (the step's seed),
    λ± = λ ± ε: the same as the two perturbed passes written out with that seed."""
    w = torch.nn.Parameter(torch.tensor([0.5], dtype=f64))
    keep = KeepProbability(0.6, eps=0.1)
    layer = TunableDropout(keep)
    x = torch.ones(1000, dtype=f64)
    terms = DriftTerms(["keep"], [keep], FlatLayout([w]))

    def replay():
        yield (w * layer(x)).mean()

    drift = terms.complete(None, 1, step=3, loss_scale=None, replay=replay)
    sides = []
    for sign in (1, -1):
        with keep.perturbed(sign, seed=(3 * 1_000_003 + 0) % (2**62)) as value:
            (g,) = torch.autograd.grad((w * layer(x)).mean(), [w])
            sides.append((g, value))
    (g_plus, plus), (g_minus, minus) = sides
    torch.testing.assert_close(drift[0], (g_plus - g_minus) / (plus - minus))
    assert plus == pytest.approx(0.7) and minus == pytest.approx(0.5)


def test_finite_differences_need_a_replay_unless_skipped():
    w = torch.nn.Parameter(torch.ones(1, dtype=f64))
    terms = DriftTerms(["keep"], [KeepProbability()], FlatLayout([w]))
    with pytest.raises(ValueError, match=r"finite-difference hyperparameters \['keep'\] need"):
        terms.complete(None, 1, step=0, loss_scale=None, replay=None)
    skipped = terms.complete(
        None, 1, step=0, loss_scale=None, replay=None, finite_differences=False
    )
    assert not skipped.any()
