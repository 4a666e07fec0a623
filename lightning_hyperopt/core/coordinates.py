"""``DecayCoordinates``: a weight decay tuned beside the learning rate that scales it, moved as
the decay the optimizer applies.

AdamW (and SGD) shrink θ by η_t·λ_lr·λ_wd per step: with both λ tuned, the rows log λ_lr and
log λ_wd are not independent coordinates (a lower learning rate silently weakens the decay,
and the hyper step answers by raising λ_wd). In the applied coordinates

    a = log λ_lr,   b = log(λ_lr·λ_wd) = log λ_lr + log λ_wd      (u' = C u)

each row means one thing: a is the step size at a fixed applied decay, b the decay itself. The
hypergradient follows by the chain rule, g' = C⁻ᵀ g:

    g'_a = g_lr − g_wd,   g'_b = g_wd          (g = dL_V/du, u = log λ)

and after the hyper step in (a, b), λ_wd = exp(b − a) (u = C⁻¹ u'). The reported and stored λ_wd
stays the value the user sets (``weight_decay`` of the param groups). C = I + P, P[j, i] = 1
for each pair (learning-rate row i, weight-decay row j); P² = 0, so C⁻¹ = I − P and
C⁻ᵀ = I − Pᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.learning_rate import LearningRate
from lightning_hyperopt.core.hyperparameters.weight_decay import WeightDecay


class DecayCoordinates:
    """The change of coordinates u' = C u over the rows, for (lr row, wd row) pairs (a row
    index never in two roles). Indexed adds, not a matrix product: a non-finite g_j reaches
    only its pair's rows, which the hyper step then skips."""

    def __init__(self, pairs: Sequence[tuple[int, int]], like: Tensor) -> None:
        self.pairs = [(int(i), int(j)) for i, j in pairs]
        self.rates = torch.tensor([i for i, _ in self.pairs], device=like.device)
        self.decays = torch.tensor([j for _, j in self.pairs], device=like.device)

    def to_applied(self, u: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """(u' = C u, g' = C⁻ᵀ g): u'_j = u_i + u_j and g'_i = g_i − g_j for each pair."""
        return (
            u.index_add(0, self.decays, u[self.rates]),
            grad.index_add(0, self.rates, grad[self.decays], alpha=-1.0),
        )

    def from_applied(self, u_applied: Tensor) -> Tensor:
        """u = C⁻¹ u': u_j = u'_j − u'_i for each pair."""
        return u_applied.index_add(0, self.decays, u_applied[self.rates], alpha=-1.0)


def applied_decay_pairs(
    hypers: Sequence[Any], spaces: Sequence[str], optimizer: torch.optim.Optimizer | None
) -> list[tuple[int, int]]:
    """(learning-rate row, weight-decay row) for each ``WeightDecay`` whose param groups a tuned
    ``LearningRate`` scales (the first such), both moved in log space, in an optimizer that
    shrinks θ by η·λ_wd per step (SGD, AdamW: not Adam's coupled decay, which its
    preconditioning rescales); the pairs :class:`DecayCoordinates` couples."""
    decays_by_lr = isinstance(optimizer, torch.optim.SGD) or bool(
        optimizer is not None and optimizer.defaults.get("decoupled_weight_decay", False)
    )
    if optimizer is None or not decays_by_lr:
        return []
    rates = [
        (i, set(h.groups(optimizer)))
        for i, h in enumerate(hypers)
        if isinstance(h, LearningRate) and spaces[i] == "log"
    ]
    pairs = []
    for j, h in enumerate(hypers):
        if isinstance(h, WeightDecay) and spaces[j] == "log":
            groups = set(h.groups(optimizer))
            pairs += [(i, j) for i, scaled in rates if groups <= scaled][:1]
    return pairs
