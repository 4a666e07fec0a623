"""The joint dynamical system of θ, y = dθ/dλ and λ around a torch optimizer (SGD, Adam, AdamW).

Framework-free: the Lightning callback and the benchmarks drive the same engine. Per step t:

    backward(loss)    once per micro-batch, in place of ``loss.backward()``: fills ``p.grad`` and
                      takes from the loss's own graph H y_j + ∂g/∂λ_j (one batched double
                      back-prop for every λ_j); or, with ``fill_grads=False``, only the terms,
                      keeping the graph for the caller's own backward
    advance(...)      before ``optimizer.step()``: ġ_j = those terms (+ closed-form ∂g/∂λ of
                      ``L2Penalty``, finite differences of dropout), through gradient clipping
                      and the optimizer's update: y_{t+1} = P(dθ_{t+1}/dλ)
    optimizer.step()  θ_{t+1} (the caller's)
    update(val_loss)  after it: λ ← λ − α_t ⟨g_V(θ_{t+1}), y_{t+1}⟩ when the method says so

The tangents of all m hyperparameters are the rows of one matrix (m, N) over the parameters laid
end to end, so projections, inner products and optimizer tangents are a few vector operations
whatever the number of parameters. Nothing here reads a device value back to the host: a
non-finite loss, gradient, tangent or hypergradient is masked out on the device and counted
(:meth:`TangentEngine.nonfinite_report` reads the counts when the caller asks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_hyperopt.core.functional import (
    Tangent,
    clip_norm_tangent,
    clip_value_tangent,
    from_space,
    second_order_drift,
    space_slope,
    to_space,
)
from lightning_hyperopt.core.hyper_optimizers import (
    HyperOptimizer,
    resolve_hyper_optimizer,
    space_masks,
)
from lightning_hyperopt.core.hyperparameters import (
    Hyperparameter,
    L2Penalty,
    WeightDecay,
    not_recorded,
)
from lightning_hyperopt.core.methods import HyperMethod
from lightning_hyperopt.core.optimizers import FlatLayout, OptimizerTangent, check_optimizer

__all__ = ["GradientClipping", "TangentEngine", "check_optimizer"]

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


class NonFiniteCounts:
    """Non-finite bookkeeping: per hyperparameter, the skipped steps, tangents and
    hypergradients; the current run of non-finite training steps and its longest length since
    the last :meth:`report`. Device tensors (no host read per step), or Python integers where
    reading a flag is free (``on_host``, the CPU)."""

    def __init__(self, rows: int, device: torch.device, on_host: bool) -> None:
        self.on_host = on_host
        self.rows = rows
        self._per_row: Tensor | list[int]
        self._run: Tensor | int
        self._longest: Tensor | int
        if on_host:
            self._per_row, self._run, self._longest = [0] * rows, 0, 0
        else:
            self._per_row = torch.zeros(rows, dtype=torch.int64, device=device)
            self._run = torch.zeros((), dtype=torch.int64, device=device)
            self._longest = torch.zeros((), dtype=torch.int64, device=device)
        self.device = device

    def add_step(self, bad_step: Tensor, bad_rows: Tensor | None) -> None:
        """One training step: ``bad_step`` (its loss was not finite) counts on
        every row, ``bad_rows`` (a non-finite tangent) on its own."""
        if self.on_host:
            bad = bool(bad_step)
            rows = [False] * self.rows if bad_rows is None or bad else bad_rows.tolist()
            self._per_row = [n + (bad or r) for n, r in zip(self._per_row, rows)]  # type: ignore[arg-type]
            self._run = self._run + 1 if bad else 0  # type: ignore[operator]
            self._longest = max(self._longest, self._run)  # type: ignore[call-overload]
            return
        extra = bad_step if bad_rows is None else bad_step | bad_rows
        self._per_row += extra.long()  # type: ignore[operator]
        self._run = (self._run + 1) * bad_step.long()
        self._longest = torch.maximum(self._longest, self._run)  # type: ignore[arg-type]

    def add_rows(self, bad_rows: Tensor) -> None:
        """Non-finite hypergradients, one flag per row."""
        if self.on_host:
            self._per_row = [n + r for n, r in zip(self._per_row, bad_rows.tolist())]  # type: ignore[arg-type]
        else:
            self._per_row += bad_rows.long()  # type: ignore[operator]

    def per_row(self) -> list[int]:
        rows = self._per_row
        return list(rows) if isinstance(rows, list) else [int(n) for n in rows.tolist()]

    def as_tensor(self) -> Tensor:
        rows = self._per_row
        return rows if isinstance(rows, Tensor) else torch.tensor(rows, device=self.device)

    def report(self) -> tuple[int, int]:
        """(the current run, the longest run since the last report): one read."""
        if self.on_host:
            now, longest = int(self._run), int(self._longest)  # type: ignore[arg-type]
            self._longest = now
            return now, longest
        now, longest = torch.stack([self._run, self._longest]).tolist()  # type: ignore[list-item]
        self._longest.copy_(self._run)  # type: ignore[union-attr]
        return int(now), int(longest)

    def load(self, per_row: list[int]) -> None:
        if self.on_host:
            self._per_row = list(per_row)
        else:
            self._per_row = torch.tensor(per_row, dtype=torch.int64, device=self.device)


class TangentEngine:
    """Carries one tangent y_j = dθ/dλ_j per hyperparameter along training.

    Args:
        method: the tuning method (reset / projection / hyper step rule).
        hyperparameters: name → hyperparameter; ``WeightDecay`` ones are written back into the
            optimizer.
        optimizer: the ``torch.optim.SGD``, ``Adam`` or ``AdamW`` that trains θ.
        warmup_steps: λ is not updated after steps t < warmup_steps (y still moves).
        gradient_clipping: the clipping the caller applies to ``p.grad`` before each
            ``optimizer.step()`` (its derivative enters the tangent), or ``None``.
        reduce: a mean over processes (data-parallel training) applied to the drift terms and
            to the hypergradient, so that every process carries the same y and λ.
        extra_grad_targets: tensors besides the optimized parameters whose ``.grad``
            :meth:`backward` fills, as ``loss.backward()`` would (e.g. parameters of the model
            that the optimizer does not hold).
        hyper_optimizer: the hyper step (:class:`~lightning_hyperopt.PaperStep`,
            :class:`~lightning_hyperopt.AdaptiveStep`, or their names ``"paper"``,
            ``"adaptive"``); ``None``: the paper's rule when ``method`` was given its step, the
            adaptive one otherwise.
        hyper_every: k ≥ 1: g_V and the λ step on every k-th update point only (the steps
            after the warm-up at which the method updates: every step, or every K-th for
            UnrollK); y still moves every step, and the paper rule's step is multiplied by k.
            A change of estimator that saves k − 1 validation passes in k.
        sync_free: never read a device value on the host. ``None``: on for accelerators; off on
            the CPU, where reading a flag costs nothing and lets the common case (everything
            finite) skip the masking work. Both give the same results.
    """

    def __init__(
        self,
        method: HyperMethod,
        hyperparameters: Mapping[str, Hyperparameter],
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        gradient_clipping: GradientClipping | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
        extra_grad_targets: Sequence[Tensor] = (),
        sync_free: bool | None = None,
        hyper_optimizer: HyperOptimizer | str | None = None,
        hyper_every: int = 1,
    ) -> None:
        if not hyperparameters:
            raise ValueError("no hyperparameter to tune")
        check_optimizer(optimizer, hyperparameters.values())
        self.method = method
        self.names = list(hyperparameters)
        self.hypers = list(hyperparameters.values())
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.gradient_clipping = gradient_clipping
        self.reduce = reduce
        params, group_of = [], []
        for k, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if p.requires_grad:
                    params.append(p)
                    group_of.append(k)
        self.params: list[Tensor] = params
        known = {id(p) for p in params}
        self.grad_targets = params + [t for t in extra_grad_targets if id(t) not in known]
        self.layout = FlatLayout(params)
        m = len(self.hypers)
        self.rule = OptimizerTangent(optimizer, self.layout, group_of, m)
        self.autograd_rows = [j for j, h in enumerate(self.hypers) if h.drift_source == "autograd"]
        self.closed_form_rows = [
            j for j, h in enumerate(self.hypers) if h.drift_source == "closed_form"
        ]
        self.finite_difference_rows = [
            j for j, h in enumerate(self.hypers) if h.drift_source == "finite_difference"
        ]
        for j in self.closed_form_rows:
            if not isinstance(self.hypers[j], L2Penalty):
                raise TypeError(
                    f"{self.names[j]}: drift_source='closed_form' is implemented for L2Penalty only"
                )
        self.decay_rows: dict[int, Tensor] = {}
        for j, h in enumerate(self.hypers):
            if isinstance(h, WeightDecay):
                e = torch.zeros(m, dtype=self.layout.dtype, device=self.layout.device)
                e[j] = 1.0
                self.decay_rows[h.group] = e
        self.hyper_optimizer = resolve_hyper_optimizer(hyper_optimizer, method)
        if isinstance(hyper_every, bool) or int(hyper_every) != hyper_every or hyper_every < 1:
            raise ValueError(f"hyper_every={hyper_every!r} must be an integer >= 1")
        self.hyper_every = int(hyper_every)
        natural = self.hyper_optimizer.space == "natural"
        spaces = [h.natural_space if natural else h.parameterization for h in self.hypers]
        device = self.layout.device
        self._spaces = space_masks(spaces, device)
        for name, h, space in zip(self.names, self.hypers, spaces):
            value = float(h.value)
            if space == "log" and not value > 0:
                raise ValueError(
                    f"{type(self.hyper_optimizer).__name__} moves {name!r} in log space, where "
                    f"λ = {value:g} cannot move: start it at a positive value (e.g. 1e-4)"
                )
        bounds = torch.tensor(
            [h.bounds for h in self.hypers], dtype=self.hypers[0].value.dtype, device=device
        )
        self._low, self._high = bounds[:, 0], bounds[:, 1]
        self.step = 0
        self.updates = 0
        self.update_points = 0  # steps after the warm-up at which the method updates λ
        self._counted_point = -1
        self.lr = float(optimizer.param_groups[0]["lr"])
        n, dtype, device = self.layout.numel, self.layout.dtype, self.layout.device
        self.tangent = torch.zeros(m, n, dtype=dtype, device=device)  # row j: y_j
        #: first order: the tangent of the update direction, ḋ_j (h_j = −⟨g_V, ḋ_j⟩)
        self.direction: Tensor | None = None
        self.norms: Tensor | None = None
        self.clipped: Tensor | None = None
        self.hypergradients: Tensor | None = None
        #: never read a device value on the host (see :meth:`_select`); by default on off the CPU
        self.sync_free = device.type != "cpu" if sync_free is None else bool(sync_free)
        self._counts = NonFiniteCounts(m, device, on_host=not self.sync_free)
        self._index = {id(p): i for i, p in enumerate(params)}
        self._window_open = False
        self._micro_batches = 0
        self._drift: Tensor | None = None
        self._zeros: Tensor | None = None  # a drift buffer for steps without graph terms
        self._loss_ok: Tensor | None = None
        self._step_ok = torch.ones((), dtype=torch.bool, device=device)  # the last step's
        self._hvp = False
        self.sync_weight_decay()
        self.attach()

    # ------------------------------------------------------------------------- lifecycle
    def attach(self) -> None:
        """Hyperparameters in the loss's graph require grad; penalties record their calls."""
        self.track(True)
        for j in self.closed_form_rows:
            self.hypers[j].record_calls(True)  # type: ignore[operator]

    def detach(self) -> None:
        """Undo :meth:`attach` (at the end of training)."""
        self.track(False)
        for j in self.closed_form_rows:
            self.hypers[j].record_calls(False)  # type: ignore[operator]

    def track(self, enabled: bool) -> None:
        """Whether the values of hyperparameters differentiated by autograd require grad: a
        training loss built while they do has the graph to them that :meth:`backward` needs.
        (A caller may switch it off between training steps, so that reading λ elsewhere does
        not meet a tensor that requires grad.)"""
        for j in self.autograd_rows:
            self.hypers[j].value.requires_grad_(enabled)

    @property
    def tangents(self) -> list[Tangent]:
        """y_j as one tensor per parameter (views of :attr:`tangent`), for each λ_j."""
        views = self.layout.views(self.tangent)
        return [[v[j] for v in views] for j in range(len(self.hypers))]

    def sync_weight_decay(self) -> None:
        """Write each ``WeightDecay`` value into its optimizer param group."""
        for h in self.hypers:
            if isinstance(h, WeightDecay):
                self.optimizer.param_groups[h.group]["weight_decay"] = float(h.value)

    # ------------------------------------------------------------------------ per micro-batch
    def _open_window(self) -> None:
        """At the first backward of a step: UnrollK's reset, and whether H y is needed."""
        if self._window_open:
            return
        self._window_open = True
        reset = self.method.resets_at(self.step)
        if reset and self.method.uses_tangent:  # first order never reads y
            self.tangent.zero_()
            self.rule.reset()
        # right after a reset y = 0, so H y = 0: the Hessian-vector product is skipped
        self._hvp = self.method.uses_tangent and not reset
        self._micro_batches = 0
        self._drift = None
        self._loss_ok = None

    def discard(self) -> None:
        """Forget the micro-batches back-propagated since the last :meth:`advance`: their
        gradient was dropped without an optimizer step (``zero_grad`` of a partial window)."""
        self._window_open = False
        self._micro_batches = 0
        self._drift = None
        self._loss_ok = None
        for j in self.closed_form_rows:
            # the zero_grad of a new window comes after its first forward: keep that call
            self.hypers[j].drop_back_propagated()  # type: ignore[attr-defined]

    @property
    def needs_graph(self) -> bool:
        """Whether the coming backward must keep the loss's graph for second derivatives."""
        return self.method.uses_tangent and not self.method.resets_at(self.step)

    def backward(
        self,
        loss: Tensor,
        fill_grads: bool = True,
        run_backward: Callable[[], None] | None = None,
    ) -> None:
        """Back-propagate one micro-batch's training loss and take its drift terms.

        G_j += H y_j + ∂g/∂λ_j (λ_j in the loss's graph) from this loss's own graph. With
        ``fill_grads`` the gradient goes into ``p.grad`` as ``loss.backward()`` would put it
        (accumulating): computed here when the graph is needed anyway, else by
        ``run_backward`` (default ``loss.backward()``). With ``fill_grads=False`` the graph is
        kept and nothing is written: the caller back-propagates ``loss`` itself afterwards.
        The loss must be the one whose gradient the optimizer will use (scaled by the caller,
        e.g. divided by the number of accumulated micro-batches).
        """
        if loss.numel() != 1:
            raise ValueError(
                f"the training loss must be a scalar, got a tensor of shape {tuple(loss.shape)}"
            )
        self._open_window()
        finite = torch.isfinite(loss.detach())
        self._loss_ok = finite if self._loss_ok is None else self._loss_ok & finite
        keep = not fill_grads
        values = [self.hypers[j].value for j in self.autograd_rows]
        params = self.params
        if self._hvp:
            targets = self.grad_targets
            firsts = torch.autograd.grad(
                loss, [*targets, *values], create_graph=True, allow_unused=True
            )
            grads = firsts[: len(targets)]
            if fill_grads:
                for t, g in zip(targets, grads):
                    if g is not None:
                        g = g.detach()
                        if t.grad is None:
                            t.grad = g
                        else:
                            t.grad.add_(g)
            hyper = self._hyper_grads(firsts[len(targets) :])
            found = second_order_drift(
                grads[: len(params)],
                params,
                self.layout.views(self.tangent),
                hyper,
                retain_graph=keep,
            )
            self._add_drift(found)
        else:
            if values:
                firsts = torch.autograd.grad(
                    loss, values, create_graph=True, retain_graph=True, allow_unused=True
                )
                found = second_order_drift(
                    [None] * len(params),
                    params,
                    None,
                    self._hyper_grads(firsts),
                    rows=len(self.hypers),
                    retain_graph=True,
                )
                self._add_drift(found)
            if fill_grads:
                if run_backward is None:
                    loss.backward(inputs=self.grad_targets)
                else:
                    run_backward()
        self._micro_batches += 1

    def _hyper_grads(self, found: Sequence[Tensor | None]) -> dict[int, Tensor]:
        out = {}
        for j, d in zip(self.autograd_rows, found):
            if d is None:
                raise ValueError(
                    f"the training loss does not depend on hyperparameter {self.names[j]!r}: "
                    "use its value (e.g. `self.my_hparam.value`) in the loss the training step "
                    "returns"
                )
            out[j] = d
        return out

    def _add_drift(self, per_param: Sequence[Tensor]) -> None:
        flat = torch.cat([d.reshape(d.shape[0], -1) for d in per_param], dim=1)
        self._drift = flat if self._drift is None else self._drift.add_(flat)

    # ------------------------------------------------------------------- before optimizer.step
    @property
    def step_pending(self) -> bool:
        """Whether some micro-batch was back-propagated since the last :meth:`advance`."""
        return self._window_open and self._micro_batches > 0

    def advance(
        self,
        replay: Callable[[], Iterable[Tensor]] | None = None,
        loss_scale: Tensor | float | None = None,
        step_skipped: Tensor | None = None,
    ) -> bool:
        """y_{t+1} = P(dθ_{t+1}/dλ) for the optimizer step about to run.

        ``replay`` yields the training-loss terms of the step again (one per micro-batch,
        scaled like the originals), each call drawing the step's own randomness: it is needed
        only by finite-difference hyperparameters (dropout). ``loss_scale``: the factor the
        back-propagated losses carried (an AMP grad scaler's) that ``p.grad`` no longer has.
        ``step_skipped``: a device flag, true when the optimizer will not step (the grad
        scaler found an inf). Returns False, moving nothing, when no micro-batch was
        back-propagated (no gradient, so no step).
        """
        if not self.step_pending:
            self._window_open = False
            return False
        self._window_open = False
        drift = self._drift
        if drift is None:  # no term from the graph (first order with closed-form λ): reuse
            if self._zeros is None:
                self._zeros = torch.zeros_like(self.tangent)
            drift = self._zeros.zero_()
        self._add_closed_form(drift)
        if loss_scale is not None:
            drift = drift / loss_scale
        if self.finite_difference_rows:
            if replay is None:
                raise ValueError(
                    "finite-difference hyperparameters "
                    f"{[self.names[j] for j in self.finite_difference_rows]} need `replay`"
                )
            self._add_finite_differences(drift, replay)
        if self.reduce is not None:
            drift = self.reduce(drift)
        grads = [p.grad for p in self.params]
        # the loss's finiteness stands for the step's (a pass over every gradient would cost
        # as much as a tangent step); a non-finite gradient shows in y's norm or in the next loss
        finite = self._loss_ok
        if self.reduce is not None:  # every process takes the same decision
            finite = self.reduce(finite.to(drift.dtype)) == 1.0
        if step_skipped is None:
            step_ok, bad_step = finite, ~finite
        else:  # the grad scaler's skip is expected: not counted, but θ does not move
            step_ok, bad_step = finite & ~step_skipped, ~finite & ~step_skipped
        clip = self.gradient_clipping
        grad = self.layout.flatten(grads) if clip is not None or self.rule.adam else None
        grad_tangent = drift
        if clip is not None and grad is not None:
            if clip.algorithm == "norm":
                grad_tangent = clip_norm_tangent(drift, grad, clip.value)
                grad_norm = torch.linalg.vector_norm(grad)
                grad = grad * torch.clamp(clip.value / (grad_norm + 1e-6), max=1.0)
            else:
                grad_tangent = clip_value_tangent(drift, grad, clip.value)
                grad = grad.clamp(-clip.value, clip.value)
        theta = self.layout.flatten(self.params) if self.rule.needs_theta(self.decay_rows) else None
        self.lr = float(self.optimizer.param_groups[0]["lr"])
        carried = self.tangent if self.method.uses_tangent else None  # first order: y = 0
        new, delta, state = self.rule.step(carried, grad_tangent, grad, theta, self.decay_rows)
        if new is not None:
            (new,), norms, clipped = self.method.project([new], batch_dim=0)
            rows_ok = torch.isfinite(norms)
            keep = step_ok & rows_ok
            self.tangent = self._select(keep, step_ok, new, self.tangent)
            self.rule.state = {
                name: self._select(keep, step_ok, t, self.rule.state[name])
                for name, t in state.items()
            }
            self.norms, self.clipped = norms, clipped
            self._counts.add_step(bad_step, step_ok & ~rows_ok)
        else:  # a non-finite direction shows in the hypergradient, which update() checks
            self.direction = self._select(step_ok.expand(len(self.hypers)), step_ok, delta, None)
            self._counts.add_step(bad_step, None)
        self._step_ok = step_ok
        self.step += 1
        return True

    def _select(self, keep: Tensor, step_ok: Tensor, new: Tensor | None, old: Tensor | None):
        """Row j of ``new`` where ``keep[j]``; where not: 0 if the step is fine (a non-finite
        tangent starts again from 0), else ``old`` (a skipped step moves nothing).

        Branch-free on the device when ``sync_free``; on the CPU, where reading a flag costs
        nothing, the common case (every row kept) returns ``new`` without a pass over it."""
        if new is None:
            return None
        if not self.sync_free and bool(keep.all()):
            return new
        fallback = new.new_zeros(()) if old is None else torch.where(step_ok, 0.0, old)
        return torch.where(keep.unsqueeze(1), new, fallback)

    def _add_closed_form(self, drift: Tensor) -> None:
        """∂g/∂λ_j = Σ_calls a · θ_call for the penalties, from the calls they recorded."""
        spans = self.layout.spans
        for j in self.closed_form_rows:
            penalty = self.hypers[j]
            used = False
            for call in penalty.take_calls():  # type: ignore[attr-defined]
                if call.coefficient is None:  # built but not back-propagated
                    continue
                used = True
                coefficient = call.coefficient.to(drift.dtype)
                row = drift[j]
                for p in call.params:
                    i = self._index.get(id(p))
                    if i is not None:  # a penalized tensor the optimizer does not train
                        row[spans[i]].addcmul_(p.detach().reshape(-1), coefficient)
            if not used:
                raise ValueError(
                    f"L2Penalty {self.names[j]!r} was not part of the training loss of step "
                    f"{self.step}: call it (e.g. `self.{self.names[j]}(params)`) in the loss "
                    "that training_step returns"
                )

    def _add_finite_differences(
        self, drift: Tensor, replay: Callable[[], Iterable[Tensor]]
    ) -> None:
        """∂g_T/∂λ ≈ (g_T(λ₊) − g_T(λ₋)) / (λ₊ − λ₋) for finite-difference hyperparameters,
        from two more replays sharing one seed (coupled random draws)."""
        for j in self.finite_difference_rows:
            h = self.hypers[j]
            seed = (self.step * 1_000_003 + j) % (2**62)  # reproducible across resumes
            grads, used = [], []
            for sign in (+1, -1):
                acc: list[Tensor | None] = [None] * len(self.params)
                with h.perturbed(sign, seed) as value, not_recorded():
                    for loss in replay():
                        got = torch.autograd.grad(loss, self.params, allow_unused=True)
                        for i, g in enumerate(got):
                            if g is not None:
                                acc[i] = g if acc[i] is None else acc[i] + g
                grads.append(self.layout.flatten(acc))
                used.append(value)
            drift[j].add_((grads[0] - grads[1]) / (used[0] - used[1]))

    # -------------------------------------------------------------------- after optimizer.step
    def should_update(self) -> bool:
        """Whether λ moves after the step just taken (t = step − 1): after the warm-up, when
        the method updates (an update point), and on every ``hyper_every``-th update point."""
        t = self.step - 1
        if t < 0 or t < self.warmup_steps or not self.method.updates_at(t):
            return False
        if self._counted_point != t:  # count each update point once
            self._counted_point = t
            self.update_points += 1
        return self.update_points % self.hyper_every == 0

    def update(self, validation_loss: Callable[[], Tensor]) -> bool:
        """λ_j moves against h_j = ⟨g_V(θ_{t+1}), y_j⟩ (first order: −⟨g_V, ḋ_j⟩) by the
        hyper optimizer's rule, inside its bounds.

        ``validation_loss`` returns L_V(θ) with a graph through the parameters. Returns whether
        λ was updated. A non-finite h_j (or new λ_j) leaves λ_j as it was, resets y_j and is
        counted; after a skipped (non-finite) training step no λ moves.
        """
        if not self.should_update():
            return False
        with not_recorded():
            loss = validation_loss()
        if loss.numel() != 1:
            raise ValueError(
                f"validation_loss must return a scalar, got a tensor of shape {tuple(loss.shape)}"
            )
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        g_val = self.layout.flatten(grads).to(self.tangent.dtype)
        if self.method.uses_tangent:
            hypergradient = torch.mv(self.tangent, g_val)
        else:
            direction = self.direction if self.direction is not None else self.tangent
            hypergradient = torch.mv(direction, g_val).neg_()
        if self.reduce is not None:
            hypergradient = self.reduce(hypergradient)
        self.hypergradients = hypergradient.detach()
        step_ok = self._step_ok
        with torch.no_grad():
            values = torch.stack([h.value for h in self.hypers])
            log, logit = self._spaces
            grad = hypergradient.to(values.dtype) * space_slope(values, log, logit)
            rows = torch.isfinite(grad) & step_ok
            alpha = self.method.hyper_step(self.lr) * self.hyper_every
            u = self.hyper_optimizer.step(to_space(values, log, logit), grad, alpha, rows)
            new = torch.minimum(torch.maximum(from_space(u, log, logit), self._low), self._high)
            good = torch.isfinite(new) & rows  # not: a non-finite h, or an overflowing step
            if self.sync_free or not bool(good.all()):
                new = torch.where(good, new, values)
                # a non-finite hypergradient after a good step: y_j starts again from 0
                bad = ~good & step_ok
                self.tangent = self._select(~bad, step_ok, self.tangent, self.tangent)
                self._counts.add_rows(bad)
            torch._foreach_copy_([hp.value for hp in self.hypers], list(new.unbind()))
        self.updates += 1
        self.sync_weight_decay()
        return True

    # ------------------------------------------------------------------------------ reporting
    def metrics(self) -> dict[str, Tensor]:
        """Per hyperparameter: λ, its last hypergradient, ‖y‖, whether y was clipped, and the
        number of non-finite steps, tangents or hypergradients skipped so far (device tensors:
        reading them is the caller's choice)."""
        out: dict[str, Tensor] = {}
        counts = self._counts.as_tensor().float()
        norms = self.norms if self.norms is not None else self.tangent.norm(dim=1)
        for j, name in enumerate(self.names):
            out[name] = self.hypers[j].value.detach()
            if self.hypergradients is not None:
                out[f"{name}/hypergradient"] = self.hypergradients[j]
            if self.method.uses_tangent:
                out[f"{name}/tangent_norm"] = norms[j]
            if self.clipped is not None:
                out[f"{name}/clipped"] = self.clipped[j].float()
            out[f"{name}/nonfinite"] = counts[j]
        return out

    @property
    def nonfinite(self) -> list[int]:
        """Per hyperparameter, the skipped non-finite steps, tangents and hypergradients."""
        return self._counts.per_row()

    def nonfinite_report(self) -> tuple[int, int]:
        """(non-finite training steps in a row now, the longest such run since the last
        report): one read from the device."""
        return self._counts.report()

    # --------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers (accepted by torch's weights-only loading)."""
        return {
            "names": list(self.names),
            "step": self.step,
            "updates": self.updates,
            "update_points": self.update_points,
            "lr": self.lr,
            "nonfinite": self.nonfinite,
            "tangent": self.tangent.detach().clone(),
            "optimizer_tangents": {
                k: None if t is None else t.detach().clone() for k, t in self.rule.state.items()
            },
            "direction": None if self.direction is None else self.direction.detach().clone(),
            "hyper_optimizer": self.hyper_optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(
                f"the checkpoint tunes hyperparameters {list(state['names'])} but the model "
                f"declares {self.names}"
            )
        tangent = state.get("tangent")
        if not isinstance(tangent, Tensor) or tuple(tangent.shape) != tuple(self.tangent.shape):
            raise ValueError(
                "the checkpoint's tangents do not match the model's parameters "
                f"(expected a tensor of shape {tuple(self.tangent.shape)})"
            )
        if set(state["optimizer_tangents"]) != set(self.rule.state):
            raise ValueError(
                f"the checkpoint carries optimizer tangents {sorted(state['optimizer_tangents'])}"
                f" but this optimizer needs {sorted(self.rule.state)}"
            )
        like = self.tangent
        self.step = int(state["step"])
        self.updates = int(state["updates"])
        self.update_points = int(state.get("update_points", self.updates))
        self._counted_point = self.step - 1
        self.lr = float(state["lr"])
        self._counts.load([int(n) for n in state["nonfinite"]])
        self.tangent = tangent.to(like.device, like.dtype)
        self.rule.state = {
            k: None if t is None else t.to(like.device, like.dtype)
            for k, t in state["optimizer_tangents"].items()
        }
        direction = state.get("direction")
        self.direction = None if direction is None else direction.to(like.device, like.dtype)
        self.hyper_optimizer.load_state_dict(state.get("hyper_optimizer", {}))
