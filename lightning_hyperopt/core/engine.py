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
whatever the number of parameters. The engine composes its parts, each of which owns its state:
the micro-batch window (:class:`~lightning_hyperopt.core.window.DriftWindow`), the drift terms of
each kind of hyperparameter (:mod:`lightning_hyperopt.core.terms`), the optimizer's tangent rule
(:mod:`lightning_hyperopt.core.optim`), the non-finite guard
(:mod:`lightning_hyperopt.core.nonfinite`) and the λ step
(:class:`~lightning_hyperopt.core.hyper_step.HyperStep`). Nothing here reads a device value back
to the host: a non-finite loss, gradient, tangent or hypergradient is masked out on the device and
counted (:meth:`TangentEngine.nonfinite_report` reads the counts when the caller asks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.core.arguments import check_scalar_loss
from lightning_hyperopt.core.autograd_limits import named_limits
from lightning_hyperopt.core.checkpoint import engine_metrics, engine_state, load_engine_state
from lightning_hyperopt.core.hyper_optimizers import HyperOptimizer
from lightning_hyperopt.core.hyper_step import HyperStep
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter, not_recorded
from lightning_hyperopt.core.methods import HyperMethod
from lightning_hyperopt.core.nonfinite import FiniteGuard
from lightning_hyperopt.core.optim import GradientClipping, tangent_rule
from lightning_hyperopt.core.optim.layout import FlatLayout
from lightning_hyperopt.core.settings import OptimizerSettings
from lightning_hyperopt.core.terms import DriftTerms, Replay
from lightning_hyperopt.core.window import DriftWindow

__all__ = ["GradientClipping", "TangentEngine"]


class TangentEngine:
    """Carries one tangent y_j = dθ/dλ_j per hyperparameter along training.

    Args:
        method: the tuning method (reset / projection / hyper step rule).
        hyperparameters: name → hyperparameter; those that set optimizer settings
            (``WeightDecay``) are written back into the optimizer.
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
        self.method = method
        self.names = list(hyperparameters)
        self.hypers = list(hyperparameters.values())
        self.optimizer = optimizer
        self.reduce = reduce
        self.layout, group_of = FlatLayout.of_optimizer(optimizer)
        params = self.params = self.layout.params
        self.rule = tangent_rule(optimizer, self.layout, group_of, gradient_clipping)
        self.terms = DriftTerms(self.names, self.hypers, self.layout)
        self.settings = OptimizerSettings(
            self.names, self.hypers, optimizer, self.layout, self.rule.rule
        )
        m, n = len(self.hypers), self.layout.numel
        dtype, device = self.layout.dtype, self.layout.device
        known = {id(p) for p in params}
        self.window = DriftWindow(
            self.layout,
            params + [t for t in extra_grad_targets if id(t) not in known],
            m,
            self.terms.graph_rows,
            dense_only=method.uses_tangent,
        )
        self.hyper_step = HyperStep.of(
            method, self.names, self.hypers, hyper_optimizer, warmup_steps, hyper_every
        )
        self.step = 0
        self.updates = 0
        self.lr = float(optimizer.param_groups[0]["lr"])
        self.tangent = torch.zeros(m, n, dtype=dtype, device=device)  # row j: y_j
        #: first order: the tangent of the update direction, ḋ_j (h_j = −⟨g_V, ḋ_j⟩)
        self.direction: Tensor | None = None
        self.norms: Tensor | None = None
        self.clipped: Tensor | None = None
        self.hypergradients: Tensor | None = None
        #: never read a device value on the host; by default on off the CPU
        self.sync_free = device.type != "cpu" if sync_free is None else bool(sync_free)
        self.guard = FiniteGuard(m, device, self.sync_free)
        self._step_ok = torch.ones((), dtype=torch.bool, device=device)  # the last step's
        self._hvp = False
        self.write_to_optimizer()
        self.attach()

    # ------------------------------------------------------------------------- lifecycle
    def attach(self) -> None:
        """Start tuning: hyperparameters in the loss's graph require grad, penalties record
        their calls."""
        for h in self.hypers:
            h.attach()

    def detach(self) -> None:
        """Undo :meth:`attach` (at the end of training)."""
        for h in self.hypers:
            h.detach()

    def track(self, enabled: bool) -> None:
        """Whether the values of hyperparameters differentiated by autograd require grad: a
        training loss built while they do has the graph to them that :meth:`backward` needs.
        (A caller may switch it off between training steps, so that reading λ elsewhere does
        not meet a tensor that requires grad.)"""
        for h in self.hypers:
            h.track(enabled)

    @property
    def hyper_optimizer(self) -> HyperOptimizer:
        """The hyper step's optimizer (owned by :attr:`hyper_step`)."""
        return self.hyper_step.optimizer

    @property
    def update_points(self) -> int:
        return self.hyper_step.update_points

    @property
    def tangents(self) -> list[list[Tensor]]:
        """y_j as one tensor per parameter (views of :attr:`tangent`), for each λ_j."""
        views = self.layout.views(self.tangent)
        return [[v[j] for v in views] for j in range(len(self.hypers))]

    def write_to_optimizer(self) -> None:
        """Write every λ that sets an optimizer setting into the optimizer's param groups
        (a learning-rate scale applies during the step only: :meth:`scaled_learning_rates`)."""
        self.settings.write()

    def scaled_learning_rates(self) -> contextlib.AbstractContextManager:
        """The context to run ``optimizer.step()`` in: groups whose learning rate a λ scales
        step at λ·lr_t (see :meth:`OptimizerSettings.scaled_learning_rates`)."""
        return self.settings.scaled_learning_rates()

    # ------------------------------------------------------------------------ per micro-batch
    def _open_window(self) -> None:
        """At the first backward of a step: UnrollK's reset, and whether H y is needed."""
        if self.window.open:
            return
        self.window.begin()
        reset = self.method.resets_at(self.step)
        if reset and self.method.uses_tangent:  # first order never reads y
            self.tangent.zero_()
            self.rule.reset()
        elif self.method.discount != 1.0:  # y ← μ y before this step's recurrence
            self.tangent.mul_(self.method.discount)
            self.rule.scale(self.method.discount)
        # right after a reset y = 0, so H y = 0: the Hessian-vector product is skipped
        self._hvp = self.method.uses_tangent and not reset

    def discard(self) -> None:
        """Forget the micro-batches back-propagated since the last :meth:`advance`: their
        gradient was dropped without an optimizer step (``zero_grad`` of a partial window)."""
        self.window.discard()
        for h in self.hypers:
            # the zero_grad of a new window comes after its first forward: keep that call
            h.discard()

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
        check_scalar_loss("the training loss must be", loss)
        self._open_window()
        views = self.layout.views(self.tangent) if self._hvp else None
        self.window.backward(loss, views, fill_grads, run_backward)

    # ------------------------------------------------------------------- before optimizer.step
    @property
    def step_pending(self) -> bool:
        """Whether some micro-batch was back-propagated since the last :meth:`advance`."""
        return self.window.pending

    def advance(
        self,
        replay: Replay | None = None,
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
        window = self.window
        pending = window.pending
        window.close()
        if not pending:
            return False
        # first order carries no tangent: the step's direction is read only by the λ update
        # right after it, so a step followed by none needs no finite differences (replays)
        used = self.method.uses_tangent or self.hyper_step.will_update(self.step + 1)
        drift = self.terms.complete(
            window.drift, len(self.hypers), self.step, loss_scale, replay, used
        )
        if self.reduce is not None:
            drift = self.reduce(drift)
        # the loss's finiteness stands for the step's (a pass over every gradient would cost
        # as much as a tangent step); a non-finite gradient shows in y's norm or in the next loss
        finite = window.loss_ok
        assert finite is not None
        if self.reduce is not None:  # every process takes the same decision
            finite = self.reduce(finite.to(drift.dtype)) == 1.0
        step_ok, bad_step = self.guard.step_flags(finite, step_skipped)
        window.check_layouts(p.grad for p in self.params)  # before the first step
        rule = self.rule
        dots = self.settings.dots
        grad = self.layout.flatten(p.grad for p in self.params) if rule.reads_grad(dots) else None
        theta = self.layout.flatten(self.params) if rule.needs_theta(dots) else None
        # η_t of group 0 (times its λ where one scales it): the paper rule's α_t = c·η_t
        self.lr = self.settings.lr(0)
        carried = self.tangent if self.method.uses_tangent else None  # first order: y = 0
        new, delta, state = rule.step(carried, drift, grad, theta, dots, self.settings.lr_scales)
        if new is not None:
            (new,), norms, clipped = self.method.project([new], batch_dim=0)
            kept = self.guard.tangent_step(
                step_ok,
                bad_step,
                norms,
                {"": new, **state},
                {"": self.tangent, **rule.state},
            )
            self.tangent = kept.pop("")  # type: ignore[assignment]
            rule.state = kept
            self.norms, self.clipped = norms, clipped
        else:  # a non-finite direction shows in the hypergradient, which update() checks
            self.direction = self.guard.direction_step(step_ok, bad_step, delta)
        self._step_ok = step_ok
        self.step += 1
        return True

    # -------------------------------------------------------------------- after optimizer.step
    def should_update(self) -> bool:
        """Whether λ moves after the step just taken (see :meth:`HyperStep.should_update`)."""
        return self.hyper_step.should_update(self.step)

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
            loss = check_scalar_loss("validation_loss must return", validation_loss())
        with named_limits("validation_loss, differentiated for g_V"):
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
            new, rows = self.hyper_step.step(values, hypergradient, self.lr, step_ok)
            new, self.tangent = self.guard.lambda_step(values, new, rows, step_ok, self.tangent)
            torch._foreach_copy_([hp.value for hp in self.hypers], list(new.unbind()))
        self.updates += 1
        self.write_to_optimizer()
        return True

    # ------------------------------------------------------------------------------ reporting
    def metrics(self) -> dict[str, Tensor]:
        """Per hyperparameter: λ, its last hypergradient, ‖y‖, whether y was clipped, the
        number of non-finite steps, tangents or hypergradients skipped so far, and its kind's
        own metrics (see :func:`~lightning_hyperopt.core.checkpoint.engine_metrics`)."""
        return engine_metrics(self)

    @property
    def nonfinite(self) -> list[int]:
        """Per hyperparameter, the skipped non-finite steps, tangents and hypergradients."""
        return self.guard.counts.per_row()

    def nonfinite_report(self) -> tuple[int, int]:
        """(non-finite training steps in a row now, the longest such run since the last
        report): one read from the device."""
        return self.guard.counts.report()

    # --------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers (accepted by torch's weights-only loading)."""
        return engine_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_engine_state(self, state)
