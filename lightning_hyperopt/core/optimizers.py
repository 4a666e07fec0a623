"""The tangent of one optimizer step: y' = dθ_{t+1}/dλ for ``torch.optim.SGD``, ``Adam``, ``AdamW``.

Each rule reads the optimizer's param groups and per-parameter state *before* its step and
returns the forward-mode derivative of torch's own update, on flat vectors: the parameters are
laid end to end (:class:`FlatLayout`), a tangent is a matrix (m, N) with one row per
hyperparameter. With ġ = dg/dλ the tangent of the gradient the optimizer receives (after
clipping) and e_j = ∂wd/∂λ_j (1 on the param group whose ``weight_decay`` λ_j is):

    SGD     g' = ±g + wd θ (coupled),              θ' = θ − η d(g', b)
    Adam    g' = ±g + wd θ (coupled),              θ' = θ − η d(g', m, v)
    AdamW   g' = ±g,                               θ' = θ (1 − η wd) − η d(g', m, v)

so ġ' = ±ġ + wd y + e_j θ (coupled) and y' = y (1 − η wd) − η ḋ − η e_j θ (decoupled); ḋ is
:func:`~lightning_hyperopt.core.functional.sgd_tangent` or
:func:`~lightning_hyperopt.core.functional.adam_tangent`. ± is − with ``maximize=True``.
Parameters the optimizer skips at a step (no gradient) keep their tangents; state that torch
creates on a parameter's first step (momentum buffer, moments) is treated per parameter.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.core.functional import adam_tangent, sgd_tangent

#: the optimizers whose update the tangent differentiates exactly
SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
SUPPORTED_NAMES = "torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW"


class FlatLayout:
    """Parameters laid end to end in one vector of N entries (parameter i at ``spans[i]``).

    The parameters must share one dtype and one device (the tangents live beside them).
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        if not params:
            raise ValueError("no parameter to differentiate: the optimizer has none")
        dtypes = {p.dtype for p in params}
        devices = {p.device for p in params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                "online hyperparameter tuning needs the optimized parameters on one device with "
                f"one dtype; got dtypes {sorted(map(str, dtypes))} on {sorted(map(str, devices))}"
            )
        self.params = list(params)
        self.dtype, self.device = params[0].dtype, params[0].device
        self.sizes = [p.numel() for p in params]
        starts = [0]
        for n in self.sizes:
            starts.append(starts[-1] + n)
        self.spans = [slice(a, b) for a, b in itertools.pairwise(starts)]
        self.numel = starts[-1]

    def flatten(self, tensors: Iterable[Tensor | None]) -> Tensor:
        """One vector (N,) from one tensor per parameter (``None`` reads as zeros)."""
        parts = [
            torch.zeros(n, dtype=self.dtype, device=self.device)
            if t is None
            else t.detach().reshape(-1)
            for t, n in zip(tensors, self.sizes, strict=True)
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of a (m, N) matrix, one (m, *p.shape) per parameter (writes go through)."""
        return [flat[:, s].view(flat.shape[0], *p.shape) for s, p in zip(self.spans, self.params)]

    def expand(self, per_param: Sequence[Any], span: slice) -> Tensor:
        """One value per parameter of ``span`` (indices into ``params``) as a vector over its
        entries: a bool or float per parameter, repeated over the parameter's entries."""
        sizes = torch.tensor(self.sizes[span], device=self.device)
        values = torch.as_tensor(list(per_param), device=self.device)
        return torch.repeat_interleave(values, sizes)


def check_optimizer(optimizer: torch.optim.Optimizer, hyperparameters: Iterable[Any] = ()) -> None:
    """Raise a clear error unless the tangent recurrence is exact for ``optimizer``."""
    from lightning_hyperopt.core.hyperparameters import WeightDecay

    if type(optimizer) not in SUPPORTED:
        raise TypeError(
            f"online hyperparameter tuning supports {SUPPORTED_NAMES} (the tangent is the "
            f"exact derivative of their update), got {type(optimizer).__name__}"
        )
    groups = [h.group for h in hyperparameters if isinstance(h, WeightDecay)]
    for group in groups:
        if group >= len(optimizer.param_groups):
            raise ValueError(
                f"WeightDecay(group={group}) but the optimizer has "
                f"{len(optimizer.param_groups)} param group(s)"
            )
        if groups.count(group) > 1:
            raise ValueError(f"two WeightDecay hyperparameters tune param group {group}")
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if p.requires_grad and p.is_sparse:
                raise ValueError(f"param group {i} holds a sparse parameter: not supported")


def _scalar(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


class OptimizerTangent:
    """The tangent rule of one optimizer; ``state`` holds its own tangents, (m, N) each.

    Args:
        optimizer: one of :data:`SUPPORTED`.
        layout: the optimized parameters (those requiring grad) in group order.
        group_of: the param-group index of each parameter.
        rows: m, the number of hyperparameters.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        layout: FlatLayout,
        group_of: Sequence[int],
        rows: int,
    ) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self.layout = layout
        self.rows = rows
        self.adam = isinstance(optimizer, torch.optim.Adam)  # AdamW subclasses Adam
        # contiguous runs of parameters per group (the layout follows the group order)
        # (group, its parameters, its entries, its own layout)
        self.groups: list[tuple[int, slice, slice, FlatLayout]] = []
        start = 0
        for k in range(len(optimizer.param_groups)):
            n = sum(1 for g in group_of if g == k)
            if n:
                spans = layout.spans[start : start + n]
                entries = slice(spans[0].start, spans[-1].stop)
                own = (
                    layout
                    if n == len(layout.params)
                    else FlatLayout(layout.params[start : start + n])
                )
                self.groups.append((k, slice(start, start + n), entries, own))
            start += n
        self.state: dict[str, Tensor | None] = dict.fromkeys(self.state_names())

    def state_names(self) -> tuple[str, ...]:
        """The optimizer-state tangents carried along y."""
        if not self.adam:
            return ("momentum_buffer",)
        if any(g.get("amsgrad", False) for g in self.optimizer.param_groups):
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def reset(self) -> None:
        """Zero tangents of the optimizer state (the window start of UnrollK)."""
        self.state = dict.fromkeys(self.state_names())

    def needs_theta(self, decay_rows: dict[int, Tensor]) -> bool:
        """Whether :meth:`step` reads θ: for a ``WeightDecay`` λ (∂(wd θ)/∂λ = θ), and for
        Adam's coupled weight decay, which enters the moments."""
        if decay_rows:
            return True
        return self.adam and any(
            _scalar(g["weight_decay"]) != 0.0 and not g.get("decoupled_weight_decay", False)
            for g in self.optimizer.param_groups
        )

    def step(
        self,
        tangent: Tensor | None,
        grad_tangent: Tensor,
        grad: Tensor | None,
        theta: Tensor | None,
        decay_rows: dict[int, Tensor],
    ) -> tuple[Tensor | None, Tensor, dict[str, Tensor | None]]:
        """y', δ and the new state tangents for the step about to run.

        ``tangent`` is y (m, N), or ``None`` for y = 0 with zero state tangents (first
        order: y' is then not computed); ``grad_tangent`` ġ (m, N) and ``grad`` g (N,) are the
        gradient the optimizer will see (after clipping) and its tangent (g is read by Adam
        only); ``theta`` is θ (N,) (read when :meth:`needs_theta`); ``decay_rows[k]`` is
        e (m,), 1 on the rows whose λ is group k's ``weight_decay``. y' = y (1 − η wd_decoupled)
        − η δ: δ = ḋ (+ e θ when decoupled) is the step's own contribution per unit learning
        rate (first order's direction). Returns new tensors; the inputs are not modified.
        """
        outs: list[Tensor] = []
        deltas: list[Tensor] = []
        new_state: dict[str, list[Tensor | None]] = {name: [] for name in self.state}
        opt_state = self.optimizer.state
        params = self.layout.params
        for k, pspan, span, own in self.groups:
            group = self.optimizer.param_groups[k]
            members = params[pspan]
            lr = _scalar(group["lr"])
            wd = _scalar(group["weight_decay"])
            y = None if tangent is None else tangent[:, span]
            gdot = grad_tangent[:, span]
            g = None if grad is None else grad[span]
            th = None if theta is None else theta[span]
            e = decay_rows.get(k)
            decoupled = self.adam and bool(group.get("decoupled_weight_decay", False))
            if group.get("maximize", False):  # torch negates the loss gradient only
                gdot = -gdot
                g = None if g is None else -g
            if not decoupled and wd != 0.0:
                if y is not None:
                    gdot = gdot + wd * y
                if g is not None and th is not None:
                    g = g + wd * th
            if not decoupled and e is not None and th is not None:
                gdot = gdot + e.unsqueeze(1) * th
            carried = {
                name: None if t is None or y is None else t[:, span]
                for name, t in self.state.items()
            }
            states = [opt_state.get(p, {}) for p in members]
            if self.adam:
                assert g is not None, "Adam's tangent reads the gradient"
                delta, moments = self._adam(group, own, states, gdot, g, carried, pspan)
            else:
                delta, moments = self._sgd(group, states, gdot, carried, pspan)
            if decoupled and e is not None and th is not None:
                delta = delta + e.unsqueeze(1) * th
            y_new = None
            if y is not None:
                y_new = torch.add(y, delta, alpha=-lr)
                if decoupled and wd != 0.0:
                    y_new = y_new - (lr * wd) * y
            stepped = [p.grad is not None for p in members]
            if not all(stepped):  # torch skips parameters without a gradient
                mask = self.layout.expand(stepped, pspan)
                if y_new is not None and y is not None:
                    y_new = torch.where(mask, y_new, y)
                delta = torch.where(mask, delta, 0.0)
                moments = {
                    name: _keep(mask, new, carried[name], gdot) for name, new in moments.items()
                }
            if y_new is not None:
                outs.append(y_new)
            deltas.append(delta)
            for name, t in moments.items():
                new_state[name].append(t)
        state = {name: _join_state(ts, deltas) for name, ts in new_state.items()}
        return (_join(outs) if outs else None), _join(deltas), state

    def _sgd(
        self,
        group: dict[str, Any],
        states: Sequence[dict[str, Any]],
        gdot: Tensor,
        carried: dict[str, Tensor | None],
        pspan: slice,
    ) -> tuple[Tensor, dict[str, Tensor | None]]:
        momentum = _scalar(group["momentum"])
        first_flags = [s.get("momentum_buffer") is None for s in states]
        first: bool | Tensor = first_flags[0]
        if len(set(first_flags)) > 1:  # a branch whose first gradient came late
            first = self.layout.expand(first_flags, pspan)
        direction, z = sgd_tangent(
            gdot,
            carried["momentum_buffer"],
            momentum=momentum,
            dampening=_scalar(group["dampening"]),
            nesterov=bool(group["nesterov"]),
            first_step=first,
        )
        return direction, {"momentum_buffer": z}

    def _adam(
        self,
        group: dict[str, Any],
        own: FlatLayout,
        states: Sequence[dict[str, Any]],
        gdot: Tensor,
        g: Tensor,
        carried: dict[str, Tensor | None],
        pspan: slice,
    ) -> tuple[Tensor, dict[str, Tensor | None]]:
        beta1, beta2 = (_scalar(b) for b in group["betas"])
        amsgrad = bool(group.get("amsgrad", False))
        names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        layout = self.layout
        moments = tuple(
            own.flatten(s.get(name) for s in states) if (name != names[2] or amsgrad) else None
            for name in names
        )
        zeros = gdot.new_zeros(gdot.shape)
        tangents = tuple(
            (carried.get(name) if carried.get(name) is not None else zeros)
            if (name != names[2] or amsgrad)
            else None
            for name in names
        )
        steps = [s.get("step", 0.0) for s in states]
        step: float | Tensor
        if all(not isinstance(s, Tensor) or s.device.type == "cpu" for s in steps):
            values = [_scalar(s) for s in steps]
            step = values[0] if len(set(values)) == 1 else layout.expand(values, pspan).double()
        else:  # capturable / fused state on the device: no host sync
            step = torch.repeat_interleave(
                torch.stack([torch.as_tensor(s, device=g.device).double() for s in steps]),
                torch.tensor(layout.sizes[pspan], device=g.device),
            )
        direction, new = adam_tangent(
            gdot,
            g,
            moments,  # type: ignore[arg-type]
            tangents,  # type: ignore[arg-type]
            step,
            beta1,
            beta2,
            _scalar(group["eps"]),
        )
        if direction.dtype != gdot.dtype:  # per-entry float64 bias corrections
            direction = direction.to(gdot.dtype)
        return direction, dict(zip(self.state_names(), new[: len(self.state_names())]))


def _join(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _join_state(parts: list[Tensor | None], like: list[Tensor]) -> Tensor | None:
    """One (m, N) state tangent from the groups' parts; ``None`` (zero) when every part is."""
    if all(t is None for t in parts):
        return None
    return _join([t if t is not None else y.new_zeros(y.shape) for t, y in zip(parts, like)])


def _keep(mask: Tensor, new: Tensor | None, old: Tensor | None, like: Tensor) -> Tensor | None:
    """``new`` where ``mask`` (parameters the optimizer steps), ``old`` (zeros: None) elsewhere."""
    if new is None:
        return None
    return torch.where(mask, new, old if old is not None else like.new_zeros(like.shape))
