"""The joint dynamical system of θ, y = dθ/dλ and λ around a ``torch.optim.SGD`` optimizer.

Framework-free: the Lightning callback and the benchmarks drive the same engine. Per step t:

    advance(...)      before ``optimizer.step()``: y_{t+1} from (θ_t, y_t) with the SGD tangent
    optimizer.step()  θ_{t+1} = θ_t − η_t d_t (the caller's)
    update(...)       after it: λ ← λ − α_t ⟨g_V(θ_{t+1}), y_{t+1}⟩ when the method says so
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.core.functional import (
    Tangent,
    all_finite,
    global_norm,
    hyperparameter_step,
    inner,
    sgd_tangent_step,
    tangent_drift,
)
from lightning_hyperopt.core.hyperparameters import Hyperparameter, WeightDecay
from lightning_hyperopt.core.methods import HyperMethod


def check_optimizer(optimizer: torch.optim.Optimizer, hyperparameters: Iterable[Any] = ()) -> None:
    """Raise a clear error unless the tangent recurrence is exact for ``optimizer``."""
    if type(optimizer) is not torch.optim.SGD:
        raise TypeError(
            f"online hyperparameter tuning supports torch.optim.SGD (with or without momentum "
            f"or Nesterov) only, got {type(optimizer).__name__}"
        )
    for i, group in enumerate(optimizer.param_groups):
        if group.get("maximize", False):
            raise ValueError(f"SGD param group {i} has maximize=True, which is not supported")
    groups = [h.group for h in hyperparameters if isinstance(h, WeightDecay)]
    for group in groups:
        if group >= len(optimizer.param_groups):
            raise ValueError(
                f"WeightDecay(group={group}) but the optimizer has "
                f"{len(optimizer.param_groups)} param group(s)"
            )
        if groups.count(group) > 1:
            raise ValueError(f"two WeightDecay hyperparameters tune param group {group}")


class TangentEngine:
    """Carries one tangent y_j = dθ/dλ_j per hyperparameter along SGD training.

    Args:
        method: the tuning method (reset / projection / hyper step rule).
        hyperparameters: name → hyperparameter; ``WeightDecay`` ones are written back into the
            optimizer.
        optimizer: the ``torch.optim.SGD`` that trains θ.
        warmup_steps: λ is not updated after steps t < warmup_steps (y still moves).
    """

    def __init__(
        self,
        method: HyperMethod,
        hyperparameters: Mapping[str, Hyperparameter],
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
    ) -> None:
        if not hyperparameters:
            raise ValueError("no hyperparameter to tune")
        check_optimizer(optimizer, hyperparameters.values())
        self.method = method
        self.names = list(hyperparameters)
        self.hypers = list(hyperparameters.values())
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.params: list[Tensor] = []
        self.group_of: list[int] = []
        for k, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if p.requires_grad:
                    self.params.append(p)
                    self.group_of.append(k)
        m = len(self.hypers)
        self.step = 0
        self.lr = float(optimizer.param_groups[0]["lr"])
        self.tangents: list[Tangent] = [self._zeros() for _ in range(m)]
        self.momentum_tangents: list[Tangent | None] = [None] * m
        self.drifts: list[Tangent | None] = [None] * m  # first order: ∂g_T/∂λ of the last step
        self.norms: list[Tensor | None] = [None] * m
        self.clipped: list[Tensor | None] = [None] * m
        self.hypergradients: list[Tensor | None] = [None] * m
        self.nonfinite = [0] * m
        self.updates = 0
        self.sync_weight_decay()

    def _zeros(self) -> Tangent:
        return [torch.zeros_like(p) for p in self.params]

    def _reset(self, j: int) -> None:
        self.tangents[j] = self._zeros()
        self.momentum_tangents[j] = None

    def sync_weight_decay(self) -> None:
        """Write each ``WeightDecay`` value into its optimizer param group."""
        for h in self.hypers:
            if isinstance(h, WeightDecay):
                self.optimizer.param_groups[h.group]["weight_decay"] = float(h.value)

    # ------------------------------------------------------------------ before optimizer.step
    def step_applies(self) -> bool:
        """Whether the coming SGD step moves θ: some gradient exists and all are finite."""
        grads = [p.grad for p in self.params if p.grad is not None]
        return bool(grads) and all_finite(grads)

    def advance(self, losses: Callable[[], Iterable[Tensor]]) -> None:
        """y_{t+1} = P(y_t − η D(G)), G_j = H y_j + ∂g/∂λ_j, for the SGD step about to run.

        ``losses`` is called with every in-loss λ requiring grad and yields the training-loss
        terms whose θ-gradient is the one in ``p.grad`` (e.g. one per accumulated micro-batch,
        each already divided by the number of micro-batches).
        """
        reset = self.method.resets_at(self.step)
        if reset:
            for j in range(len(self.hypers)):
                self._reset(j)
        use_y = self.method.uses_tangent
        # right after a reset y = 0, so H y = 0: the Hessian-vector product is skipped
        # (every step of Unroll1, one in K of UnrollK)
        hessian_term = use_y and not reset
        values = [h.value if h.drift_source == "autograd" else None for h in self.hypers]
        drifts = [self._zeros() for _ in self.hypers]
        for v in values:
            if v is not None:
                v.requires_grad_(True)
        # no H y term and only optimizer-side or finite-difference λ: nothing to back-prop
        needs_replay = hessian_term or any(v is not None for v in values)
        try:
            for loss in losses() if needs_replay else ():
                tangents = self.tangents if hessian_term else [None] * len(self.hypers)
                for acc, d in zip(drifts, tangent_drift(loss, self.params, values, tangents)):
                    for a, di in zip(acc, d):
                        a.add_(di)
        finally:
            for v in values:
                if v is not None:
                    v.requires_grad_(False)
        self._add_finite_difference_terms(drifts, losses)
        self._add_weight_decay_terms(drifts, use_y)
        groups = self.optimizer.param_groups
        self.lr = float(groups[0]["lr"])
        for j in range(len(self.hypers)):
            if not use_y:
                self.drifts[j] = drifts[j]
                continue
            y, z = self._sgd_tangent(self.tangents[j], self.momentum_tangents[j], drifts[j])
            y, self.norms[j], self.clipped[j] = self.method.project(y)
            if all_finite(y + (z or [])):
                self.tangents[j], self.momentum_tangents[j] = y, z
            else:
                self.nonfinite[j] += 1
                self._reset(j)
        self.step += 1

    def _add_finite_difference_terms(
        self, drifts: list[Tangent], losses: Callable[[], Iterable[Tensor]]
    ) -> None:
        """∂g_T/∂λ ≈ (g_T(λ₊) − g_T(λ₋)) / (λ₊ − λ₋) for finite-difference hyperparameters,
        from two more replays sharing one seed (coupled random draws)."""
        for j, h in enumerate(self.hypers):
            if h.drift_source != "finite_difference":
                continue
            seed = (self.step * 1_000_003 + j) % (2**62)  # reproducible across resumes
            grads, used = [], []
            for sign in (+1, -1):
                acc = self._zeros()
                with h.perturbed(sign, seed) as value:
                    for loss in losses():
                        got = torch.autograd.grad(loss, self.params, allow_unused=True)
                        for a, g in zip(acc, got):
                            if g is not None:
                                a.add_(g.detach())
                grads.append(acc)
                used.append(float(value))
            width = used[0] - used[1]
            for d, plus, minus in zip(drifts[j], *grads):
                d.add_((plus - minus) / width)

    def _add_weight_decay_terms(self, drifts: list[Tangent], use_y: bool) -> None:
        """SGD's wd·θ: H gains wd·I on each group; ∂g/∂λ = θ on the group of a WeightDecay λ."""
        groups = self.optimizer.param_groups
        for j, h in enumerate(self.hypers):
            for i, (p, k) in enumerate(zip(self.params, self.group_of)):
                wd = groups[k]["weight_decay"]
                if use_y and wd != 0:
                    drifts[j][i].add_(self.tangents[j][i], alpha=wd)
                if isinstance(h, WeightDecay) and h.group == k:
                    drifts[j][i].add_(p.detach())

    def _sgd_tangent(
        self, tangent: Tangent, momentum_tangent: Tangent | None, drift: Tangent
    ) -> tuple[Tangent, Tangent | None]:
        """Apply each param group's SGD tangent step; params SGD skips (no grad) keep their y."""
        new_y = list(tangent)
        new_z = None if momentum_tangent is None else list(momentum_tangent)
        for k, group in enumerate(self.optimizer.param_groups):
            idx = [
                i for i, g in enumerate(self.group_of) if g == k and self.params[i].grad is not None
            ]
            if not idx:
                continue
            p0 = self.params[idx[0]]
            first = self.optimizer.state.get(p0, {}).get("momentum_buffer") is None
            y, z = sgd_tangent_step(
                [tangent[i] for i in idx],
                None if momentum_tangent is None or first else [momentum_tangent[i] for i in idx],
                [drift[i] for i in idx],
                lr=float(group["lr"]),
                momentum=float(group["momentum"]),
                dampening=float(group["dampening"]),
                nesterov=bool(group["nesterov"]),
                first_step=first,
            )
            for n, i in enumerate(idx):
                new_y[i] = y[n]
            if z is not None:
                if new_z is None:
                    new_z = self._zeros()
                for n, i in enumerate(idx):
                    new_z[i] = z[n]
        return new_y, new_z

    # ------------------------------------------------------------------- after optimizer.step
    def should_update(self) -> bool:
        """Whether λ moves after the step just taken (t = step − 1)."""
        t = self.step - 1
        return t >= 0 and t >= self.warmup_steps and self.method.updates_at(t)

    def update(self, validation_loss: Callable[[], Tensor]) -> bool:
        """λ_j ← λ_j − α_t h_j with h_j = ⟨g_V(θ_{t+1}), y_j⟩ (first order: −⟨g_V, ∂g_T/∂λ_j⟩).

        ``validation_loss`` returns L_V(θ) with a graph through the parameters. Returns whether
        λ was updated. A non-finite h_j skips λ_j, resets y_j and is counted.
        """
        if not self.should_update():
            return False
        loss = validation_loss()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        g_val = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        alpha = self.method.hyper_step(self.lr)
        for j, h in enumerate(self.hypers):
            if self.method.uses_tangent:
                hypergradient = inner(g_val, self.tangents[j])
            else:
                hypergradient = -inner(g_val, self.drifts[j])
            self.hypergradients[j] = hypergradient.detach()
            with torch.no_grad():
                new = hyperparameter_step(
                    h.value, hypergradient, alpha, h.parameterization, h.bounds
                )
            if not torch.isfinite(new):  # a non-finite h, or an overflowing log step
                self.nonfinite[j] += 1
                self._reset(j)
                continue
            h.value.copy_(new)
        self.updates += 1
        self.sync_weight_decay()
        return True

    # ------------------------------------------------------------------------------- reporting
    def metrics(self) -> dict[str, Tensor | float]:
        """Per hyperparameter: λ, its last hypergradient, ‖y‖, whether y was clipped, and the
        number of non-finite tangents or hypergradients skipped so far."""
        out: dict[str, Tensor | float] = {}
        for j, (name, h) in enumerate(zip(self.names, self.hypers)):
            out[f"{name}"] = h.value.detach()
            if self.hypergradients[j] is not None:
                out[f"{name}/hypergradient"] = self.hypergradients[j]
            if self.method.uses_tangent:
                norm = self.norms[j]
                out[f"{name}/tangent_norm"] = (
                    global_norm(self.tangents[j]) if norm is None else norm
                )
            if self.clipped[j] is not None:
                out[f"{name}/clipped"] = self.clipped[j].float()
            out[f"{name}/nonfinite"] = float(self.nonfinite[j])
        return out

    # --------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers (accepted by torch's weights-only loading)."""
        return {
            "names": list(self.names),
            "step": self.step,
            "updates": self.updates,
            "lr": self.lr,
            "nonfinite": list(self.nonfinite),
            "tangents": [[t.detach().clone() for t in y] for y in self.tangents],
            "momentum_tangents": [
                None if z is None else [t.detach().clone() for t in z]
                for z in self.momentum_tangents
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(
                f"the checkpoint tunes hyperparameters {list(state['names'])} but the model "
                f"declares {self.names}"
            )
        shapes = [tuple(p.shape) for p in self.params]
        for y in state["tangents"]:
            if [tuple(t.shape) for t in y] != shapes:
                raise ValueError("the checkpoint's tangents do not match the model's parameters")
        self.step = int(state["step"])
        self.updates = int(state["updates"])
        self.lr = float(state["lr"])
        self.nonfinite = [int(n) for n in state["nonfinite"]]
        self.tangents = [
            [t.to(p.device, p.dtype) for t, p in zip(y, self.params)] for y in state["tangents"]
        ]
        self.momentum_tangents = [
            None if z is None else [t.to(p.device, p.dtype) for t, p in zip(z, self.params)]
            for z in state["momentum_tangents"]
        ]
