"""Pure tensor functions of the tangent dynamical system (no Lightning, no state).

A tangent ``y = dθ/dλ`` is a list of tensors shaped like the parameters θ it differentiates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Tangent = list[Tensor]


def _sum_except(x: Tensor, batch_dim: int) -> Tensor:
    """Σ over every dimension of ``x`` but ``batch_dim``: shape (x.shape[batch_dim],)."""
    return x.movedim(batch_dim, 0).reshape(x.shape[batch_dim], -1).sum(1)


def _along(v: Tensor, like: Tensor, batch_dim: int) -> Tensor:
    """The 1-dim ``v`` shaped to broadcast against ``like`` along ``batch_dim``."""
    shape = [1] * like.dim()
    shape[batch_dim] = -1
    return v.reshape(shape)


def inner(a: Sequence[Tensor], b: Sequence[Tensor], batch_dim: int | None = None) -> Tensor:
    """⟨a, b⟩ = Σᵢ sum(aᵢ · bᵢ), summed over a list of tensors (0-dim result).

    With ``batch_dim``, each index along that dimension of every tensor is a separate problem:
    the result holds one inner product per index (1-dim).
    """
    pairs = zip(a, b, strict=True)
    if batch_dim is None:
        return torch.stack([(x * y).sum() for x, y in pairs]).sum()
    return torch.stack([_sum_except(x * y, batch_dim) for x, y in pairs]).sum(0)


def global_norm(tensors: Sequence[Tensor], batch_dim: int | None = None) -> Tensor:
    """‖x‖ = sqrt(Σᵢ ‖xᵢ‖²) over a list of tensors (0-dim result).

    With ``batch_dim``: one norm per index along that dimension (1-dim), as in :func:`inner`.
    """
    if batch_dim is None:
        norms = torch.stack([torch.linalg.vector_norm(t) for t in tensors])
        return torch.linalg.vector_norm(norms)
    return torch.sqrt(inner(tensors, tensors, batch_dim))


def project_l2_ball(
    tangent: Sequence[Tensor], radius: float, batch_dim: int | None = None
) -> tuple[Tangent, Tensor, Tensor]:
    """P_B(r)(y) = y · r / max(‖y‖, r): projection on the L2 ball of radius r.

    Branch-free: y = 0 maps to 0 and a point on the ball maps to itself. ``radius`` must be
    finite and positive (the exact method skips projection instead of using r = ∞).
    Returns the projected tangent, ‖y‖ before projection, and whether it was clipped.
    With ``batch_dim``, each index along that dimension is projected on its own ball (row-wise,
    for independent problems stacked in one tensor); the norms and flags are then 1-dim.
    """
    norm = global_norm(tangent, batch_dim)
    scale = radius / torch.clamp(norm, min=radius)
    if batch_dim is None:
        return [t * scale for t in tangent], norm, norm > radius
    return [t * _along(scale, t, batch_dim) for t in tangent], norm, norm > radius


def tangent_drift(
    loss: Tensor,
    params: Sequence[Tensor],
    hyper_values: Sequence[Tensor | None],
    tangents: Sequence[Sequence[Tensor] | None],
) -> list[Tangent]:
    """G_j = H y_j + ∂g_T/∂λ_j = ∇_θ [⟨g_T, y_j⟩ + ∂L_T/∂λ_j], one double back-prop per λ_j.

    ``loss`` is L_T(θ, λ) built with a graph through ``params`` and through each 0-dim
    ``hyper_values[j]`` (which must require grad). A ``None`` hyperparameter is not in the
    loss (an optimizer-side hyperparameter): its G_j is H y_j alone. A ``None`` tangent drops
    the H y_j term (G_j = ∂g_T/∂λ_j, the first-order method). Linear in ``loss``, so drifts
    of several micro-batch losses add up. ``p.grad`` is left untouched.
    """
    in_loss = [v for v in hyper_values if v is not None]
    firsts = torch.autograd.grad(loss, [*params, *in_loss], create_graph=True, allow_unused=True)
    g_train = [torch.zeros_like(p) if g is None else g for p, g in zip(params, firsts)]
    dloss_dhyper = iter(firsts[len(params) :])
    objectives: list[Tensor | None] = []
    for j, (value, tangent) in enumerate(zip(hyper_values, tangents, strict=True)):
        objective = None if tangent is None else inner(g_train, tangent)
        if value is not None:
            d = next(dloss_dhyper)
            if d is None:
                raise ValueError(
                    f"the training loss does not depend on hyperparameter #{j}: use its value "
                    "(e.g. `self.l2(params)` or `self.my_hparam.value`) inside `training_loss`"
                )
            objective = d if objective is None else objective + d
        objectives.append(objective)
    live = [k for k, o in enumerate(objectives) if o is not None and o.requires_grad]
    drifts = [[torch.zeros_like(p) for p in params] for _ in objectives]
    for n, k in enumerate(live):
        grads = torch.autograd.grad(
            objectives[k], params, retain_graph=n < len(live) - 1, allow_unused=True
        )
        drifts[k] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return drifts


def sgd_tangent_step(
    tangent: Sequence[Tensor],
    momentum_tangent: Sequence[Tensor] | None,
    drift: Sequence[Tensor],
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    first_step: bool = False,
) -> tuple[Tangent, Tangent | None]:
    """Forward-mode derivative of one ``torch.optim.SGD`` step with respect to λ.

    SGD: b ← μ b + (1 − τ) g (b ← g on its first step), d = g + μ b (Nesterov) or b,
    θ ← θ − η d. Differentiating with G = dg/dλ = H y + ∂g/∂λ and z = db/dλ:

        z ← μ z + (1 − τ) G   (z ← G on the first step),   D = G + μ z  or  z,
        y ← y − η D.

    Without momentum this is y ← y − η G. A ``None`` ``momentum_tangent`` is z = 0.
    Returns (y, z); z is ``None`` when μ = 0.
    """
    if momentum == 0.0:
        return [y - lr * g for y, g in zip(tangent, drift, strict=True)], None
    if first_step:
        z = [g.clone() for g in drift]
    elif momentum_tangent is None:  # z = 0 (e.g. just reset)
        z = [(1.0 - dampening) * g for g in drift]
    else:
        z = [momentum * zi + (1.0 - dampening) * g for zi, g in zip(momentum_tangent, drift)]
    direction = [g + momentum * zi for g, zi in zip(drift, z)] if nesterov else z
    return [y - lr * d for y, d in zip(tangent, direction, strict=True)], z


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """True when every entry of every tensor is finite (one device sync)."""
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def hyperparameter_step(
    value: Tensor,
    hypergradient: Tensor,
    step_size: float,
    parameterization: str,
    bounds: tuple[float, float],
) -> Tensor:
    """One step on λ, kept inside its bounds:

        identity:  λ ← clip(λ − α·h, low, high)
        log:       λ ← clip(exp(log λ − α·λ·h), low, high)   (h·λ = dL_V/d log λ)

    h = dL_V/dλ is the hypergradient and α the hyper step.
    """
    h = hypergradient.to(value.dtype)
    if parameterization == "log":
        new = torch.exp(torch.log(value) - step_size * value * h)
    else:
        new = value - step_size * h
    return new.clamp(min=bounds[0], max=bounds[1])
