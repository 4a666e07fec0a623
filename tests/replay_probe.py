"""Compare the H·y the engine takes with the H·y of the training step's own graph."""

from __future__ import annotations

import torch
from torch import Tensor

import lightning_hyperopt.core.functional as functional_module
from lightning_hyperopt.core.functional import inner


class DriftRecorder:
    """Records every batch of drifts G_j = H y_j (+ ∂g/∂λ_j) the engine takes from a graph,
    as one flat vector per hyperparameter."""

    def __init__(self, monkeypatch) -> None:
        self.drifts: list[list[Tensor]] = []
        original = functional_module.second_order_drift

        def recording(*args, **kwargs):
            out = original(*args, **kwargs)
            rows = torch.cat([d.reshape(d.shape[0], -1) for d in out], dim=1)
            self.drifts.append(list(rows.detach().clone()))
            return out

        monkeypatch.setattr(functional_module, "second_order_drift", recording)


def hessian_vector_products(loss: Tensor, params: list[Tensor], tangents) -> list[Tensor]:
    """H y_j = ∇_θ⟨∇_θ L, y_j⟩ for each tangent, keeping ``loss``'s graph for its backward."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return [
        torch.cat(
            [h.reshape(-1) for h in torch.autograd.grad(inner(grads, y), params, retain_graph=True)]
        )
        for y in tangents
    ]
