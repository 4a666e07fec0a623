"""Pure tensor functions of the tangent dynamical system (no Lightning, no state).

A tangent ``y = dθ/dλ`` is a list of tensors shaped like the parameters θ it differentiates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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
    # one pass per tensor, no temporary x·x: rows of (n, -1) views
    rows = [
        torch.linalg.vector_norm(t.movedim(batch_dim, 0).reshape(t.shape[batch_dim], -1), dim=1)
        for t in tensors
    ]
    return rows[0] if len(rows) == 1 else torch.linalg.vector_norm(torch.stack(rows), dim=0)


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


def second_order_drift(
    grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    tangents: Sequence[Tensor] | None,
    hyper_grads: Mapping[int, Tensor] | None = None,
    rows: int | None = None,
    retain_graph: bool = False,
) -> list[Tensor]:
    """G_j = H y_j + ∂g/∂λ_j = ∇_θ [⟨g, y_j⟩ + ∂L/∂λ_j] for every row j, in one double back-prop.

    ``grads`` are g = ∇_θ L built with ``create_graph=True`` (``None`` where a parameter is not
    in the loss). ``tangents``: one tensor of shape (m, *p.shape) per parameter, row j holding
    y_j, or ``None`` to drop the H y term (then ``rows`` gives m). ``hyper_grads`` maps a row j
    to ∂L/∂λ_j for the hyperparameters that are in the loss's graph (0-dim, also built with
    ``create_graph=True``); the other rows get H y_j alone. With several rows the products are
    batched (``is_grads_batched``): one pass over the backward graph serves every λ_j.
    Returns one tensor of shape (m, *p.shape) per parameter (zeros where no path exists).
    """
    hyper_grads = hyper_grads or {}
    m = tangents[0].shape[0] if tangents is not None else rows
    if m is None:
        raise ValueError("second_order_drift needs tangents or rows")
    batched = m > 1  # a single row takes plain products: no vmap overhead
    outputs: list[Tensor] = []
    cotangents: list[Tensor] = []
    if tangents is not None:
        for g, y in zip(grads, tangents, strict=True):
            if g is not None and g.requires_grad:
                outputs.append(g)
                cotangents.append(y if batched else y[0])
    for j, d in hyper_grads.items():
        if d.requires_grad:
            outputs.append(d)
            onehot = torch.zeros(m, dtype=d.dtype, device=d.device)
            onehot[j] = 1.0
            cotangents.append(onehot if batched else onehot[0])
    if not outputs:
        return [p.new_zeros((m, *p.shape)) for p in params]
    found = torch.autograd.grad(
        outputs,
        list(params),
        grad_outputs=cotangents,
        retain_graph=retain_graph,
        allow_unused=True,
        is_grads_batched=batched,
    )
    return [
        p.new_zeros((m, *p.shape)) if d is None else (d if batched else d.unsqueeze(0))
        for p, d in zip(params, found)
    ]


def tangent_drift(
    loss: Tensor,
    params: Sequence[Tensor],
    hyper_values: Sequence[Tensor | None],
    tangents: Sequence[Sequence[Tensor] | None],
) -> list[Tangent]:
    """G_j = H y_j + ∂g_T/∂λ_j = ∇_θ [⟨g_T, y_j⟩ + ∂L_T/∂λ_j] for each λ_j.

    ``loss`` is L_T(θ, λ) built with a graph through ``params`` and through each 0-dim
    ``hyper_values[j]`` (which must require grad). A ``None`` hyperparameter is not in the
    loss (an optimizer-side hyperparameter): its G_j is H y_j alone. A ``None`` tangent drops
    the H y_j term (G_j = ∂g_T/∂λ_j, the first-order method). Linear in ``loss``, so drifts
    of several micro-batch losses add up. ``p.grad`` is left untouched. The products of all
    λ_j share one batched double back-prop (:func:`second_order_drift`).
    """
    in_loss = [v for v in hyper_values if v is not None]
    firsts = torch.autograd.grad(loss, [*params, *in_loss], create_graph=True, allow_unused=True)
    grads, dloss_dhyper = firsts[: len(params)], iter(firsts[len(params) :])
    hyper_grads: dict[int, Tensor] = {}
    for j, value in enumerate(hyper_values):
        if value is None:
            continue
        d = next(dloss_dhyper)
        if d is None:
            raise ValueError(
                f"the training loss does not depend on hyperparameter #{j}: use its value "
                "(e.g. `self.my_hparam.value`) in the training loss"
            )
        hyper_grads[j] = d
    m = len(hyper_values)
    rows = [j for j, t in enumerate(tangents) if t is not None]
    stacked = None
    if rows:
        stacked = [
            torch.stack([p.new_zeros(p.shape) if t is None else t[i] for t in tangents])
            for i, p in enumerate(params)
        ]
    found = second_order_drift(grads, params, stacked, hyper_grads, rows=m)
    return [[d[j] for d in found] for j in range(m)]


def sgd_tangent(
    grad_tangent: Tensor,
    momentum_tangent: Tensor | None = None,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    first_step: bool | Tensor = False,
    momentum_dot: Tensor | None = None,
    buffers: tuple[Tensor | None, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Forward-mode derivative of the direction d of one ``torch.optim.SGD`` step (θ ← θ − η d).

    SGD: b ← μ b + (1 − τ) g (b ← g on its first step), d = g + μ b (Nesterov) or b.
    Differentiating with ġ = dg/dλ and z = db/dλ:

        z ← μ z + (1 − τ) ġ   (z ← ġ on the first step),   ḋ = ġ + μ z  or  z.

    With the momentum itself tuned (``momentum_dot`` μ̇ = ∂μ/∂λ, one entry per row, and
    ``buffers`` (b, b'), the buffer before and after the step, from :func:`sgd_direction`):

        z ← μ z + μ̇ b + (1 − τ) ġ   (z ← ġ on the first step),   ḋ = ġ + μ z + μ̇ b'  or  z.

    Without momentum ḋ = ġ. ``first_step`` may be a boolean tensor that broadcasts against
    ``grad_tangent`` (parameters whose momentum buffer starts at different steps); a ``None``
    ``momentum_tangent`` is z = 0. Returns (ḋ, z); z is ``None`` when μ = 0.
    """
    if momentum == 0.0:
        return grad_tangent, None
    damped = (1.0 - dampening) * grad_tangent
    z = damped if momentum_tangent is None else momentum * momentum_tangent + damped
    tuned = momentum_dot is not None and buffers is not None
    if tuned and buffers[0] is not None:  # type: ignore[index]
        z = z + momentum_dot.unsqueeze(1) * buffers[0]  # type: ignore[union-attr, index]
    z = (
        torch.where(first_step, grad_tangent, z)
        if isinstance(first_step, Tensor)
        else (grad_tangent if first_step else z)
    )
    if not nesterov:
        return z, z
    direction = grad_tangent + momentum * z
    if tuned:
        direction = direction + momentum_dot.unsqueeze(1) * buffers[1]  # type: ignore[union-attr, index]
    return direction, z


def sgd_direction(
    grad: Tensor,
    buffer: Tensor | None,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    first_step: bool | Tensor = False,
) -> tuple[Tensor, Tensor | None]:
    """The direction d of one ``torch.optim.SGD`` step (θ ← θ − η d) and the new buffer b':
    b' = μ b + (1 − τ) g (b' = g on the buffer's first step), d = g + μ b' (Nesterov) or b';
    without momentum d = g and no buffer. ``grad`` is the gradient torch uses (weight decay
    added); ``buffer`` b before the step (``None``: no buffer yet)."""
    if momentum == 0.0:
        return grad, None
    carried = (
        (1.0 - dampening) * grad if buffer is None else momentum * buffer + (1.0 - dampening) * grad
    )
    new = (
        torch.where(first_step, grad, carried)
        if isinstance(first_step, Tensor)
        else (grad if first_step else carried)
    )
    return (grad + momentum * new if nesterov else new), new


def adam_tangent(
    grad_tangent: Tensor,
    grad: Tensor,
    moments: tuple[Tensor, Tensor, Tensor | None],
    moment_tangents: tuple[Tensor, Tensor, Tensor | None],
    step: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
    beta1_dot: Tensor | None = None,
    beta2_dot: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor | None]]:
    """Forward-mode derivative of the direction d of one ``torch.optim.Adam`` step.

    With g the gradient the optimizer uses, (m, v, v_max) its moments before the step and
    t = ``step`` + 1, torch computes m' = β₁m + (1 − β₁)g, v' = β₂v + (1 − β₂)g²,
    v̂ = max(v_max, v') with amsgrad (v' otherwise) and θ ← θ − η d with

        d = m' / (c₁ (√v̂ / √c₂ + ε)),   c₁ = 1 − β₁ᵗ,  c₂ = 1 − β₂ᵗ.

    Differentiating with ġ = dg/dλ: ṁ' = β₁ṁ + (1 − β₁)ġ, v̇' = β₂v̇ + 2(1 − β₂) g ġ,
    v̂̇ = v̇' where v' > v_max (else v̇_max), and

        ḋ = ṁ' / (c₁ D) − m' · v̂̇ / (2 c₁ √c₂ √v̂ D²),   D = √v̂ / √c₂ + ε.

    Where v̂ = 0 every gradient so far was 0, so m' = 0 and the second term vanishes: it is
    taken as 0 there (no 0/0), which leaves the exact derivative ṁ'/(c₁ ε). ``moments[2]`` and
    ``moment_tangents[2]`` are ``None`` without amsgrad. ``step`` (the count before this step)
    may be a tensor broadcasting against ``grad`` (parameters started at different steps).

    With β₁ or β₂ tuned (``beta1_dot`` β̇₁, ``beta2_dot`` β̇₂ = ∂β/∂λ, one entry per row), the
    moments gain their direct terms and the bias corrections their derivatives (torch uses the
    current β at every step: c₁ = 1 − β₁ᵗ, so ċ₁ = −t β₁ᵗ⁻¹ β̇₁, likewise ċ₂):

        ṁ' += β̇₁ (m − g),   v̇' += β̇₂ (v − g²),
        ḋ  += −d ċ₁ / c₁ + d √v̂ ċ₂ / (2 c₂^{3/2} D).

    Returns ḋ and the new (ṁ, v̇, v̇_max).
    """
    m_new, dm_new, v_hat, dv_hat, (dv_new, dv_max_new) = _moments_and_tangents(
        grad_tangent, grad, moments, moment_tangents, beta1, beta2, beta1_dot, beta2_dot
    )
    t = step + 1
    c1 = 1.0 - beta1**t
    c2_sqrt = (1.0 - beta2**t) ** 0.5
    root = torch.sqrt(v_hat)
    denom = root / c2_sqrt + eps
    positive = root > 0
    droot = torch.where(positive, dv_hat / (2.0 * torch.where(positive, root, 1.0)), 0.0)
    direction = (dm_new - m_new * (droot / c2_sqrt) / denom) / (c1 * denom)
    if beta1_dot is not None or beta2_dot is not None:
        value = m_new / (c1 * denom)
        corrections = _bias_correction_terms(value, root, denom, t, beta1, beta2)
        if beta1_dot is not None:
            direction = direction - beta1_dot.unsqueeze(1) * corrections[0]
        if beta2_dot is not None:
            direction = direction + beta2_dot.unsqueeze(1) * corrections[1]
    return direction, (dm_new, dv_new, dv_max_new)


def _moments_and_tangents(
    grad_tangent: Tensor,
    grad: Tensor,
    moments: tuple[Tensor, Tensor, Tensor | None],
    moment_tangents: tuple[Tensor, Tensor, Tensor | None],
    beta1: float,
    beta2: float,
    beta1_dot: Tensor | None,
    beta2_dot: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor | None]]:
    """(m', ṁ', v̂, v̂̇, (v̇', v̇_max')) of :func:`adam_tangent`: Adam's moments after the step and
    their tangents, with β's own terms where β is tuned and amsgrad's running maximum."""
    m, v, v_max = moments
    dm, dv, dv_max = moment_tangents
    m_new = torch.lerp(m, grad, 1.0 - beta1)
    v_new = v * beta2 + (1.0 - beta2) * grad * grad
    dm_new = dm * beta1 + (1.0 - beta1) * grad_tangent
    dv_new = dv * beta2 + (2.0 * (1.0 - beta2)) * grad * grad_tangent
    if beta1_dot is not None:
        dm_new = dm_new + beta1_dot.unsqueeze(1) * (m - grad)
    if beta2_dot is not None:
        dv_new = dv_new + beta2_dot.unsqueeze(1) * (v - grad * grad)
    if v_max is not None and dv_max is not None:
        grows = v_new > v_max
        v_hat = torch.where(grows, v_new, v_max)
        dv_hat = torch.where(grows, dv_new, dv_max)
        return m_new, dm_new, v_hat, dv_hat, (dv_new, dv_hat)
    return m_new, dm_new, v_new, dv_new, (dv_new, None)


def _bias_correction_terms(
    value: Tensor, root: Tensor, denom: Tensor, t: Tensor | float, beta1: float, beta2: float
) -> tuple[Tensor, Tensor]:
    """(d ċ₁/c₁, d √v̂ ċ₂ / (2 c₂^{3/2} D)) per unit β̇₁, β̇₂: the derivatives of Adam's bias
    corrections c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ, with d = ``value``, √v̂ = ``root``, D = ``denom``."""
    c1, c2 = 1.0 - beta1**t, 1.0 - beta2**t
    c2_sqrt = (1.0 - beta2**t) ** 0.5
    dc1, dc2 = -t * beta1 ** (t - 1), -t * beta2 ** (t - 1)
    return value * dc1 / c1, value * root * dc2 / (2.0 * c2 * c2_sqrt * denom)


def adam_direction(
    grad: Tensor,
    moments: tuple[Tensor, Tensor, Tensor | None],
    step: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
) -> Tensor:
    """The direction d of one ``torch.optim.Adam`` step (θ ← θ − η d), from the moments before
    it (see :func:`adam_tangent`): d = m' / (c₁ (√v̂ / √c₂ + ε))."""
    m, v, v_max = moments
    m_new = torch.lerp(m, grad, 1.0 - beta1)
    v_new = v * beta2 + (1.0 - beta2) * grad * grad
    v_hat = v_new if v_max is None else torch.maximum(v_max, v_new)
    t = step + 1
    c1 = 1.0 - beta1**t
    c2_sqrt = (1.0 - beta2**t) ** 0.5
    return m_new / (c1 * (torch.sqrt(v_hat) / c2_sqrt + eps))


def clip_norm_tangent(grad_tangent: Tensor, grad: Tensor, max_norm: float) -> Tensor:
    """Derivative of ``torch.nn.utils.clip_grad_norm_``: g_c = g · min(1, c / (‖g‖ + 10⁻⁶)).

    Where the gradient is clipped (c / (‖g‖ + 10⁻⁶) < 1), with n = ‖g‖ over every parameter:

        ġ_c = (c / (n + 10⁻⁶)) ġ − c ⟨g, ġ⟩ / (n (n + 10⁻⁶)²) · g,

    and ġ_c = ġ elsewhere. ``grad`` is the flat gradient (N,), ``grad_tangent`` one row per
    hyperparameter (m, N). Branch-free: no host sync, and g = 0 gives ġ_c = ġ.
    """
    norm = torch.linalg.vector_norm(grad)
    coef = max_norm / (norm + 1e-6)
    clipped = coef < 1.0
    shrink = torch.where(clipped, coef, 1.0)
    along = grad_tangent @ grad  # ⟨g, ġ_j⟩ per row
    bend = torch.where(clipped, coef / (torch.where(clipped, norm, 1.0) * (norm + 1e-6)), 0.0)
    return shrink * grad_tangent - (bend * along).unsqueeze(-1) * grad


def clip_value_tangent(grad_tangent: Tensor, grad: Tensor, clip_value: float) -> Tensor:
    """Derivative of ``torch.nn.utils.clip_grad_value_``: g_c = clamp(g, −c, c), so
    ġ_c = ġ where |g| ≤ c and 0 where the entry is clamped."""
    return torch.where(grad.abs() <= clip_value, grad_tangent, 0.0)


#: a value this close to a log or logit space's edge stands for the edge (log 0, logit 0 or 1)
_EDGE = 1e-12


Mask = Tensor | bool


def _where(mask: Mask, a: Callable[[], Tensor], b: Callable[[], Tensor]) -> Tensor:
    """``a()`` where ``mask``, ``b()`` elsewhere; a Python bool computes one branch only."""
    if isinstance(mask, bool):
        return a() if mask else b()
    return torch.where(mask, a(), b())


def to_space(values: Tensor, log: Mask, logit: Mask) -> Tensor:
    """u = φ(λ) entry by entry: log λ where ``log``, log(λ/(1 − λ)) where ``logit``, λ
    elsewhere (masks broadcasting against ``values``, or booleans). Edges map to ±27.6."""

    def logit_of() -> Tensor:
        inside = values.clamp(_EDGE, 1.0 - _EDGE)
        return torch.log(inside) - torch.log1p(-inside)

    return _where(
        log,
        lambda: torch.log(values.clamp_min(_EDGE)),
        lambda: _where(logit, logit_of, lambda: values),
    )


def from_space(u: Tensor, log: Mask, logit: Mask) -> Tensor:
    """λ = φ⁻¹(u), the inverse of :func:`to_space`."""
    return _where(
        log, lambda: torch.exp(u), lambda: _where(logit, lambda: torch.sigmoid(u), lambda: u)
    )


def space_slope(values: Tensor, log: Mask, logit: Mask) -> Tensor:
    """dλ/du at λ: λ (log), λ(1 − λ) (logit), 1 (identity)."""
    return _where(
        log,
        lambda: values,
        lambda: _where(logit, lambda: values * (1.0 - values), lambda: torch.ones_like(values)),
    )
