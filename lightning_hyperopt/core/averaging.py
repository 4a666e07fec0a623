"""``IterateAverage``: the averaged iterate θ̄ and its tangent ȳ = dθ̄/dλ, where a method with
``average=β`` takes its hypergradient.

    θ̄_t = Σ_{s≤t} w_s θ_s,   ȳ_t = Σ_{s≤t} w_s y_s,   w_s ∝ β^{t−s},  Σ w_s = 1

kept by one running update per step, c_t = (1 − β)/(1 − β^t) (so c_1 = 1: no bias towards a
starting point):

    θ̄ ← θ̄ + c_t (θ_t − θ̄),   ȳ ← ȳ + c_t (y_t − ȳ)

The weights do not depend on λ, so ȳ is exactly the derivative of θ̄ when y is θ's (an
:class:`~lightning_hyperopt.core.methods.Exact` tangent), and h = ⟨g_V(θ̄), ȳ⟩ is exactly
d L_V(θ̄_t)/dλ. θ̄ is a cheap look at where an annealed run would take θ: the greedy signal's
bias towards a smaller learning rate (less noise *now*) is measured at a point that has
averaged that noise out. First order averages its one-step direction δ the same way.

Plain tensors only: the flat parameters (N,) and the rows (m, N) of the engine's layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


class IterateAverage:
    """θ̄ (N,) and ȳ (m, N), the β-weighted averages of the iterates and tangents seen so far.

    Args:
        decay: β in [0, 1): a horizon of about 1/(1 − β) steps (β = 0: the current point).
        rows: m, the hyperparameters (the tangent's rows).
        numel: N, the parameters' entries.
        dtype: the parameters' dtype.
        device: the parameters' device.
    """

    def __init__(
        self, decay: float, rows: int, numel: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.decay = float(decay)
        self.theta = torch.zeros(numel, dtype=dtype, device=device)
        self.tangent = torch.zeros(rows, numel, dtype=dtype, device=device)
        self.count = 0  # the iterates averaged so far

    def weight(self) -> float:
        """c_t = (1 − β)/(1 − β^t) for the t-th iterate (t = count + 1): 1 for the first."""
        t = self.count + 1
        return (1.0 - self.decay) / (1.0 - self.decay**t)

    def observe(self, theta: Tensor, tangent: Tensor) -> None:
        """Average in θ_t (N,) and its tangent y_t (m, N)."""
        c = self.weight()
        self.theta.lerp_(theta.to(self.theta.dtype), c)
        self.tangent.lerp_(tangent.to(self.tangent.dtype), c)
        self.count += 1

    @staticmethod
    @contextlib.contextmanager
    def swapped_in(
        params: Sequence[Tensor], views: Sequence[Tensor], saved: Sequence[Tensor]
    ) -> Iterator[None]:
        """θ ← θ̄ inside the block (``views``: θ̄ cut into the parameters' shapes), and θ as it
        was, bit for bit, after it (``saved``: a copy of θ in the same shapes)."""
        with torch.no_grad():
            torch._foreach_copy_(list(params), list(views))
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(params), list(saved))

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "count": self.count,
            "theta": self.theta.detach().clone(),
            "tangent": self.tangent.detach().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values; a clear error when the shapes differ."""
        for name in ("theta", "tangent"):
            value, like = state[name], getattr(self, name)
            if not isinstance(value, Tensor) or value.shape != like.shape:
                raise ValueError(
                    f"the checkpoint's averaged iterate ({name}) does not match the model's "
                    f"parameters (expected shape {tuple(like.shape)})"
                )
            setattr(self, name, value.to(like.device, like.dtype))
        self.count = int(state["count"])
