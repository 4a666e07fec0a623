"""``GradientClipping``: the clipping between the backward and the optimizer step, and its
tangent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_hyperopt.core.functional import clip_norm_tangent, clip_value_tangent

ClipAlgorithm = Literal["norm", "value"]


@dataclass(frozen=True)
class GradientClipping:
    """The clipping applied to the gradient between the backward and the optimizer step
    (Lightning's ``gradient_clip_val`` / ``gradient_clip_algorithm``): ``"norm"`` is
    ``torch.nn.utils.clip_grad_norm_`` over every optimized parameter, ``"value"``
    ``clip_grad_value_``."""

    value: float
    algorithm: ClipAlgorithm = "norm"

    def __post_init__(self) -> None:
        if self.algorithm not in ("norm", "value"):
            raise ValueError(
                f"gradient clipping algorithm={self.algorithm!r} is not supported; accepted "
                "values: 'norm', 'value'"
            )
        if not float(self.value) > 0:
            raise ValueError(f"gradient clipping value={self.value!r} must be > 0")

    def apply(self, grad_tangent: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """(ġ_c, g_c): the clipped gradient g_c (N,) and its tangent ġ_c (m, N), from g and ġ
        (:func:`~lightning_hyperopt.core.functional.clip_norm_tangent`,
        :func:`~lightning_hyperopt.core.functional.clip_value_tangent`)."""
        if self.algorithm == "norm":
            clipped_tangent = clip_norm_tangent(grad_tangent, grad, self.value)
            grad_norm = torch.linalg.vector_norm(grad)
            return clipped_tangent, grad * torch.clamp(self.value / (grad_norm + 1e-6), max=1.0)
        return clip_value_tangent(grad_tangent, grad, self.value), grad.clamp(
            -self.value, self.value
        )
