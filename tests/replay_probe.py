"""Compare the H·y of the callback's replay with the H·y of the training step's own graph."""

from __future__ import annotations

import torch
from torch import Tensor

import lightning_hyperopt.core.engine as engine_module
from lightning_hyperopt.core.functional import inner


class ReplayRecorder:
    """Records every G_j = H y_j (+ ∂g/∂λ_j) the engine computes from a replayed loss."""

    def __init__(self, monkeypatch) -> None:
        self.drifts: list[list[Tensor]] = []
        original = engine_module.tangent_drift

        def recording(loss, params, values, tangents):
            out = original(loss, params, values, tangents)
            self.drifts.append([torch.cat([d.reshape(-1) for d in drift]) for drift in out])
            return out

        monkeypatch.setattr(engine_module, "tangent_drift", recording)


def hessian_vector_products(loss: Tensor, params: list[Tensor], tangents) -> list[Tensor]:
    """H y_j = ∇_θ⟨∇_θ L, y_j⟩ for each tangent, keeping ``loss``'s graph for its backward."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return [
        torch.cat(
            [h.reshape(-1) for h in torch.autograd.grad(inner(grads, y), params, retain_graph=True)]
        )
        for y in tangents
    ]
