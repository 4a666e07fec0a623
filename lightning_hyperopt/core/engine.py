"""The joint dynamical system of θ, y = dθ/dλ and λ around a torch optimizer (SGD, Adam, AdamW).

Framework-free: the Lightning callback and the benchmarks drive the same engine. Per step t:

    backward(loss)    once per micro-batch, in place of ``loss.backward()``: fills ``p.grad`` and
                      takes from the loss's own graph H y_j + ∂g/∂λ_j (one batched double
                      back-prop for every λ_j); or, with ``fill_grads=False``, only the terms,
                      keeping the graph for the caller's own backward
    advance(...)      before ``optimizer.step()``: ġ_j = those terms (+ closed-form ∂g/∂λ of
                      ``L2Penalty``, finite differences of dropout), through gradient clipping
                      and the optimizer's update: y_{t+1} = P(dθ_{t+1}/dλ)
    optimizer.step()  θ_{t+1} (the caller's; inside :meth:`TangentEngine.scaled_learning_rates`
                      when a learning rate is tuned)
    update(val_loss)  after it: λ ← λ − α_t ⟨g_V(θ_{t+1}), y_{t+1}⟩ when the method says so
                      (a method's ``average=β``: ⟨g_V(θ̄), ȳ⟩ at the averaged iterate)

The tangents of all m hyperparameters are the rows of one matrix (m, N) over the parameters laid
end to end, so projections, inner products and optimizer tangents are a few vector operations
whatever the number of parameters. The engine composes its parts, each of which owns its state:
the micro-batch window (:class:`~lightning_hyperopt.core.window.DriftWindow`), the drift terms of
each kind of hyperparameter (:mod:`lightning_hyperopt.core.terms`), the optimizer's tangent rule
(:mod:`lightning_hyperopt.core.optim`), the param-group settings λ sets
(:mod:`lightning_hyperopt.core.settings`), the non-finite guard
(:mod:`lightning_hyperopt.core.nonfinite`), the λ update
(:class:`~lightning_hyperopt.core.hyper_update.HyperUpdate`), the averaged iterate
(:class:`~lightning_hyperopt.core.averaging.IterateAverage`) and its own carried state
(:class:`~lightning_hyperopt.core.engine_state.EngineState`). Nothing here reads a device value
back to the host: a non-finite loss, gradient, tangent or hypergradient is masked out on the
device and counted (:meth:`TangentEngine.nonfinite_report` reads the counts when asked).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.core.arguments import check_integer, check_scalar_loss
from lightning_hyperopt.core.autograd_limits import named_limits
from lightning_hyperopt.core.averaging import IterateAverage
from lightning_hyperopt.core.engine_state import EngineState
from lightning_hyperopt.core.hyper_optimizers import HyperOptimizer, resolve_hyper_optimizer
from lightning_hyperopt.core.hyper_update import HyperUpdate
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter, not_recorded
from lightning_hyperopt.core.layout import FlatLayout
from lightning_hyperopt.core.methods import HyperMethod
from lightning_hyperopt.core.metrics import engine_metrics
from lightning_hyperopt.core.nonfinite import FiniteGuard
from lightning_hyperopt.core.optim import GradientClipping, tangent_rule
from lightning_hyperopt.core.settings import OptimizerSettings
from lightning_hyperopt.core.terms import DriftTerms, Replay
from lightning_hyperopt.core.window import DriftWindow

__all__ = ["GradientClipping", "TangentEngine"]


class TangentEngine:
    """Carries one tangent y_j = dθ/dλ_j per hyperparameter along training.

    Its carried state (y, the step and update counters, the last hypergradients) is
    :attr:`state`, an :class:`~lightning_hyperopt.core.engine_state.EngineState`.

    Args:
        method: the tuning method (reset / projection / hyper step rule).
        hyperparameters: name → hyperparameter; those that set optimizer settings
            (``WeightDecay``) are written back into the optimizer.
        optimizer: the ``torch.optim.SGD``, ``Adam`` or ``AdamW`` that trains θ.
        warmup_steps: λ is not updated after steps t < warmup_steps (y still moves).
        gradient_clipping: the clipping applied to ``p.grad`` before each
            ``optimizer.step()`` (its derivative enters the tangent), or ``None``.
        reduce: a mean over processes (data-parallel training) of the drift terms and the
            hypergradient, so that every process carries the same y and λ.
        extra_grad_targets: tensors besides the optimized parameters whose ``.grad``
            :meth:`backward` fills, as ``loss.backward()`` would.
        sync_free: never read a device value on the host; ``None``: on off the CPU. Both give
            the same results (on the CPU, reading a flag lets the finite case skip masking).
        hyper_optimizer: ``PaperStep``, ``AdaptiveStep``, their names ``"paper"``,
            ``"adaptive"``, or ``None``: the paper's rule when ``method`` was given its step,
            the adaptive one otherwise.
        hyper_every: k ≥ 1: g_V and the λ update on every k-th update point only (y still moves
            every step; each update stands for the k it replaces: the paper rule's step times
            k, the adaptive rule's window of k).
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
        warmup_steps = check_integer("warmup_steps", warmup_steps, 0)
        hyper_every = check_integer("hyper_every", hyper_every, 1)
        self.method, self.optimizer, self.reduce = method, optimizer, reduce
        self.names, self.hypers = list(hyperparameters), list(hyperparameters.values())
        self.layout, group_of = FlatLayout.of_optimizer(optimizer)
        self.params = self.layout.params
        self.rule = tangent_rule(optimizer, self.layout, group_of, gradient_clipping)
        self.terms = DriftTerms(self.names, self.hypers, self.layout)
        self.settings = OptimizerSettings(
            self.names, self.hypers, optimizer, self.layout, self.rule.rule
        )
        known = {id(p) for p in self.params}
        self.window = DriftWindow(
            self.layout,
            self.params + [t for t in extra_grad_targets if id(t) not in known],
            len(self.hypers),
            self.terms.graph_rows,
            dense_only=method.uses_tangent,
        )
        self.hyper_update = HyperUpdate.for_hyperparameters(
            method,
            self.names,
            self.hypers,
            resolve_hyper_optimizer(hyper_optimizer, method),
            warmup_steps,
            hyper_every,
            optimizer,
        )
        layout = self.layout
        lr = float(optimizer.param_groups[0]["lr"])
        self.state = EngineState(len(self.hypers), layout.numel, layout.dtype, layout.device, lr)
        self.sync_free = layout.device.type != "cpu" if sync_free is None else bool(sync_free)
        self.guard = FiniteGuard(len(self.hypers), layout.device, self.sync_free)
        self.average = (
            None
            if method.average is None
            else IterateAverage(
                method.average, len(self.hypers), layout.numel, layout.dtype, layout.device
            )
        )
        self._hvp = False
        self.write_to_optimizer()
        self.attach()

    # ------------------------------------------------------------------------- lifecycle
    def attach(self) -> None:
        """Start tuning: λs in the loss's graph require grad, penalties record their calls."""
        for h in self.hypers:
            h.attach()

    def detach(self) -> None:
        """Undo :meth:`attach` (at the end of training)."""
        for h in self.hypers:
            h.detach()

    def track(self, enabled: bool) -> None:
        """Whether the autograd λs require grad: a training loss built while they do has the
        graph :meth:`backward` needs (off between steps, λ reads as a plain tensor)."""
        for h in self.hypers:
            h.track(enabled)

    # --------------------------------------------------------------------------- reading
    @property
    def tangent(self) -> Tensor:
        """y, one row per hyperparameter over the flat parameters: (m, N)."""
        return self.state.tangent

    @property
    def tangents(self) -> list[list[Tensor]]:
        """y_j as one tensor per parameter (views of :attr:`tangent`), for each λ_j."""
        views = self.layout.views(self.state.tangent)
        return [[v[j] for v in views] for j in range(len(self.hypers))]

    def values(self) -> Tensor:
        """λ of every hyperparameter, in order, as one tensor."""
        return torch.stack([h.value.detach() for h in self.hypers])

    # ------------------------------------------------------------ optimizer settings
    @property
    def scales_learning_rates(self) -> bool:
        """Whether a λ scales a learning rate: ``optimizer.step()`` then runs inside
        :meth:`scaled_learning_rates`."""
        return bool(self.settings.scaled_groups)

    def write_to_optimizer(self) -> None:
        """Write each optimizer-side λ into the param groups (a learning-rate scale: only during
        the step, :meth:`scaled_learning_rates`)."""
        self.settings.write()

    def scaled_learning_rates(self) -> contextlib.AbstractContextManager:
        """The context to run ``optimizer.step()`` in: groups whose learning rate a λ scales
        step at λ·lr_t (see :meth:`OptimizerSettings.scaled_learning_rates`)."""
        return self.settings.scaled_learning_rates()

    # ------------------------------------------------------------------------ per micro-batch
    @property
    def needs_graph(self) -> bool:
        """Whether the coming backward must keep the loss's graph for second derivatives."""
        return self.method.uses_tangent and not self.method.resets_at(self.state.steps)

    @property
    def step_pending(self) -> bool:
        """Whether some micro-batch was back-propagated since the last :meth:`advance`."""
        return self.window.pending

    def backward(
        self,
        loss: Tensor,
        fill_grads: bool = True,
        run_backward: Callable[[], None] | None = None,
    ) -> None:
        """G_j += H y_j + ∂g/∂λ_j from one micro-batch's training loss, in place of
        ``loss.backward()`` (see :meth:`DriftWindow.backward`: ``fill_grads``, ``run_backward``).
        The loss is the one whose gradient the optimizer will use (scaled by the caller, e.g.
        divided by the number of accumulated micro-batches)."""
        check_scalar_loss("the training loss must be", loss)
        self._open_window()
        views = self.layout.views(self.state.tangent) if self._hvp else None
        self.window.backward(loss, views, fill_grads, run_backward)

    def _open_window(self) -> None:
        """At the first backward of a step: the carried state's start of the step (UnrollK's
        reset, a discount), and whether H y is needed."""
        if not self.window.open:
            self.window.begin()
            self._hvp = self.state.begin_step(self.method, self.rule)

    def discard(self) -> None:
        """Forget the micro-batches back-propagated since the last :meth:`advance`: their
        gradient was dropped without an optimizer step (``zero_grad`` of a partial window)."""
        self.window.discard()
        for h in self.hypers:
            # the zero_grad of a new window comes after its first forward: keep that call
            h.discard()

    # ------------------------------------------------------------------- before optimizer.step
    def advance(
        self,
        replay: Replay | None = None,
        loss_scale: Tensor | float | None = None,
        step_skipped: Tensor | None = None,
    ) -> bool:
        """y_{t+1} = P(dθ_{t+1}/dλ) for the optimizer step about to run; False (nothing moves)
        when no micro-batch was back-propagated.

        ``replay`` yields the step's training losses again, drawing the step's own randomness
        (for finite-difference hyperparameters only); ``loss_scale`` is the factor the
        back-propagated losses carried (an AMP grad scaler's) that ``p.grad`` no longer has;
        ``step_skipped`` a device flag, true when the optimizer will not step."""
        window, state, rule = self.window, self.state, self.rule
        pending = window.pending
        window.close()
        if not pending:
            return False
        # first order carries no tangent: the step's direction is read only by the λ update
        # right after it (or by the average of directions), so a step followed by none needs
        # no finite differences (replays)
        used = (
            self.method.uses_tangent
            or self.average is not None
            or self.hyper_update.will_update(state.steps + 1)
        )
        # the loss's finiteness stands for the step's (a pass over every gradient would cost
        # as much as a tangent step); a non-finite gradient shows in y's norm or in the next loss
        finite = window.loss_ok
        assert finite is not None
        if self.reduce is not None:  # every process takes the same decision
            finite = self.reduce(finite.to(self.layout.dtype)) == 1.0
        step_ok, bad_step = self.guard.step_flags(finite, step_skipped)
        window.check_layouts(p.grad for p in self.params)  # before the first step
        state.lr = self.settings.lr(0)  # η_t of group 0 (times its λ): α_t = c·η_t
        if not used:  # first order, no λ update after this step: no one reads its direction
            self.guard.counts.add_step(bad_step, None)
            state.direction = None
            state.step_ok = step_ok
            state.steps += 1
            return True
        drift = self.terms.complete(
            window.drift, len(self.hypers), state.steps, loss_scale, replay, used
        )
        if self.reduce is not None:
            drift = self.reduce(drift)
        dots = self.settings.dots
        grad = self.layout.flatten(p.grad for p in self.params) if rule.reads_grad(dots) else None
        theta = self.layout.flatten(self.params) if rule.needs_theta(dots) else None
        carried = state.tangent if self.method.uses_tangent else None  # first order: y = 0
        new, delta, moments = rule.step(
            carried,
            drift,
            grad,
            theta,
            dots,
            self.settings.lr_scales,
            grad_tangent_zero=not self.terms.in_gradient,
        )
        if new is not None:
            (new,), norms, clipped = self.method.project([new], batch_dim=0)
            kept = self.guard.tangent_step(
                step_ok, bad_step, norms, {"": new, **moments}, {"": state.tangent, **rule.state}
            )
            state.tangent = kept.pop("")  # type: ignore[assignment]
            rule.state = kept
            state.norms, state.clipped = norms, clipped
        else:  # a non-finite direction shows in the hypergradient, which update() checks
            state.direction = self.guard.direction_step(step_ok, bad_step, delta)
        state.step_ok = step_ok
        state.steps += 1
        return True

    # -------------------------------------------------------------------- after optimizer.step
    def should_update(self) -> bool:
        """Whether λ is updated after the step just taken (see
        :meth:`HyperUpdate.should_update`)."""
        return self.hyper_update.should_update(self.state.steps)

    def update(self, validation_loss: Callable[[], Tensor]) -> bool:
        """Where :meth:`should_update`: λ_j moves against h_j = ⟨g_V(θ_{t+1}), y_j⟩ (first
        order: −⟨g_V, δ_j⟩) by the hyper step's rule, inside its bounds; returns whether it did.

        ``validation_loss()`` is L_V(θ) with a graph to the parameters. A non-finite h_j (or new
        λ_j) leaves λ_j as it was, resets y_j and is counted; after a skipped step no λ moves.

        With a method's ``average=β`` every call first averages θ_{t+1} and y_{t+1} in, and g_V
        is taken at θ̄ (θ is swapped back, bit for bit): h_j = ⟨g_V(θ̄), ȳ_j⟩."""
        state, average = self.state, self.average
        theta = None
        if average is not None:
            rows = state.tangent if self.method.uses_tangent else state.direction
            theta = self.layout.flatten(self.params)  # a copy: also what θ is restored from
            average.observe(theta, state.tangent if rows is None else rows)
        if not self.should_update():
            return False
        at_average = (
            contextlib.nullcontext()
            if theta is None  # no average
            else average.swapped_in(
                self.params, self.layout.split(average.theta), self.layout.split(theta)
            )
        )
        with at_average:
            with not_recorded():
                loss = check_scalar_loss("validation_loss must return", validation_loss())
            with named_limits("validation_loss, differentiated for g_V"):
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        g_val = self.layout.flatten(grads).to(state.tangent.dtype)
        hypergradient = state.hypergradient(
            g_val, self.method.uses_tangent, None if average is None else average.tangent
        )
        if self.reduce is not None:
            hypergradient = self.reduce(hypergradient)
        state.hypergradients = hypergradient.detach()
        with torch.no_grad():
            values = torch.stack([h.value for h in self.hypers])
            new, rows = self.hyper_update.move(values, hypergradient, state.lr, state.step_ok)
            # a y_j that starts again from 0: so does its average ȳ_j
            tangents = [state.tangent] + ([] if average is None else [average.tangent])
            new, tangents = self.guard.lambda_step(values, new, rows, state.step_ok, tangents)
            state.tangent = tangents[0]
            if average is not None:
                average.tangent = tangents[1]
            torch._foreach_copy_([hp.value for hp in self.hypers], list(new.unbind()))
        state.updates += 1
        self.write_to_optimizer()
        return True

    # ------------------------------------------------------------------------------ reporting
    def metrics(self, diagnostics: bool = True) -> dict[str, Tensor]:
        """Per hyperparameter: λ and its kind's own; with ``diagnostics`` its last hypergradient,
        ‖y‖, clipped and the non-finite skips (:func:`~lightning_hyperopt.core.metrics.
        engine_metrics`)."""
        counts = self.guard.counts.as_tensor()
        return engine_metrics(
            self.names, self.hypers, self.state, self.method, counts, self.settings, diagnostics
        )

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
        """Plain tensors, lists and numbers (accepted by torch's weights-only loading): the
        engine's state and its parts' (see :mod:`~lightning_hyperopt.core.engine_state`)."""
        return {
            "names": list(self.names),
            **self.state.state_dict(),
            "nonfinite": self.nonfinite,
            "optimizer_tangents": self.rule.state_dict(),
            **self.hyper_update.state_dict(),
            **({} if self.average is None else {"average": self.average.state_dict()}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values; a clear error when they belong to another model
        (other hyperparameters, other parameters, another optimizer)."""
        if list(state["names"]) != self.names:
            raise ValueError(
                f"the checkpoint tunes hyperparameters {list(state['names'])} but the model "
                f"declares {self.names}"
            )
        self.state.check_tangent(state)
        self.rule.load_state_dict(state["optimizer_tangents"], self.state.tangent)
        self.state.load_state_dict(state)
        self.guard.counts.load([int(n) for n in state["nonfinite"]])
        if self.average is not None and "average" in state:
            self.average.load_state_dict(state["average"])
        self.hyper_update.load_state_dict(
            {
                "update_points": state.get("update_points", self.state.updates),
                "hyper_optimizer": state.get("hyper_optimizer", {}),
            },
            self.state.steps,
        )
