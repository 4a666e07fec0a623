"""``OnlineHyperparamCallback``: the Lightning adapter around :class:`TangentEngine`.

Each hook delegates in a few lines: fit start to :func:`~lightning_hyperopt.adapter.fit_plan.
plan_fit` and :func:`~lightning_hyperopt.adapter.fit_plan.build_engine`, the step to the engine
and its collaborators (the validation stream, the loss replay, the graph bridge, the scaled
optimizer step, the run guard); the mathematics is the engine's.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor

from lightning_hyperopt._lightning import (
    LightningModule,
    Trainer,
    callback_bases,
    configuration_errors,
    grad_scaler_state,
    should_log,
)
from lightning_hyperopt.adapter.arguments import MethodName, check_arguments
from lightning_hyperopt.adapter.fit_plan import FitPlan, build_engine, plan_fit, saved_state
from lightning_hyperopt.adapter.graph import GraphBridge
from lightning_hyperopt.adapter.replay import LossReplay
from lightning_hyperopt.adapter.report import FitReport, values_in_units
from lightning_hyperopt.adapter.run_guard import RunGuard
from lightning_hyperopt.adapter.scaled_step import ScaledOptimizerStep
from lightning_hyperopt.adapter.validation import ValidationStream
from lightning_hyperopt.core.dropout import AdoptMode, adopt_dropout
from lightning_hyperopt.core.engine import TangentEngine
from lightning_hyperopt.core.hyper_optimizers import HyperOptimizer, HyperOptimizerName
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.methods import HyperMethod


class OnlineHyperparamCallback(*callback_bases()):  # type: ignore[misc]
    """Tunes a LightningModule's hyperparameters online, during ``fit``:

        y ← P(dθ_{t+1}/dλ)  through the optimizer's update, ġ = H y + ∂g_T/∂λ
        λ ← λ − α ⟨g_V, y⟩  after each optimizer step (each k-th: ``hyper_every``), g_V from
                            a validation batch

    for every hyperparameter λ: those the callback brings (``tune=``, ``adopt_dropout=``) and
    those the module declares (:class:`Hyperparameter` submodules). H y comes from the
    training step's own graph; the default method for regularizers, ``FirstOrder``, carries no
    y (the hypergradient through one step's ∂g_T/∂λ, no H y).

    The module needs a ``training_step`` that returns the (regularized) training loss, and an
    unregularized validation loss: ``validation_loss(batch)``, else the loss
    ``validation_step`` returns. What the callback asks of the module, the kernels it switches,
    how it treats non-finite values and what it refuses are on the reference page
    (docs/reference/callback.md).

    Args:
        method: ``Clip(radius, hyper_lr_scale)``, ``Exact(hyper_lr_scale)``,
            ``Unroll(steps, hyper_lr_scale)``, ``Discount(mu)``, ``FirstOrder(hyper_lr)``, or
            one of their names (``"clip"``, ``"exact"``, ``"unroll"``, ``"discount"``,
            ``"first_order"``) for the defaults. Default ``"auto"``, chosen at fit start by
            :func:`~lightning_hyperopt.core.methods.default_method`: ``Clip(50)`` when a
            ``LearningRate`` or ``Momentum`` is tuned, else ``FirstOrder()``.
        tune: hyperparameters the callback brings, by name (logged as ``hyperopt/<name>``),
            tuned as if the module declared them: those that act through the optimizer
            (``WeightDecay``, ``LearningRate``, ``Momentum``). A name the module declares too
            is an error. From LightningCLI YAML: a mapping of ``class_path`` entries.
        warmup_steps: optimizer steps before λ starts moving (the tangent moves from step 0).
        prog_bar: show each λ on the progress bar (refreshed when metrics are logged).
        adopt_dropout: at setup, replace the model's ``nn.Dropout`` modules by
            :class:`TunableDropout` layers (see :func:`adopt_dropout`) with one shared keep
            probability (``"shared"``) or one per module (``"per_module"``), starting at 1 − p;
            or a mapping of :func:`adopt_dropout`'s options (``mode``, ``init``, ``bounds``,
            ``eps``, ``difference``); ``None`` leaves the model as it is. The keep
            probabilities are saved in the callback's state, not in the module's.
        max_nonfinite_steps: consecutive training steps with a non-finite loss after which
            the run stops with an error.
        hyper_optimizer: the hyper step: ``AdaptiveStep(...)`` (scale-free: one setting serves
            every task), ``PaperStep()`` (the paper's λ ← λ − c·η·h), or their names
            ``"adaptive"``, ``"paper"``. ``None`` (default): the paper's rule when the method
            was given ``hyper_lr_scale`` (or FirstOrder's ``hyper_lr``), the adaptive one
            otherwise.
        hyper_every: k ≥ 1: draw g_V and update λ at every k-th update point only (y still
            moves every step; each update stands for the k it replaces: the paper rule's step
            times k, the adaptive rule's window of k, so λ keeps its pace per step).
            ``"auto"`` (default): 4 where ``method="auto"`` chose ``FirstOrder`` (a fit of
            regularizers only), else 1 (:func:`~lightning_hyperopt.core.methods.
            default_hyper_every`).
        verbose: at the end of fit, a summary through ``rank_zero_info`` (the method and why,
            each λ's start and final value, the tuner's share of the time, the overlay written).
        log_diagnostics: log each λ's ``hypergradient``, ``tangent_norm``, ``clipped`` and
            ``nonfinite`` beside λ and its effective value.
        validation_batch_size: B: g_V's batches hold B samples, drawn in the order of the g_V
            loader's sampler (its other settings kept: see
            :func:`~lightning_hyperopt.adapter.rebatch.rebatched`); ``None`` (default): the
            loader's own batches. A smaller B makes each g_V cheaper and noisier.

    Configuration errors are Lightning's ``MisconfigurationException`` (and the ``ValueError``
    or ``TypeError`` they are); the tuned values are :meth:`tuned_values`, every logger's
    hyperparameters at fit end and, under LightningCLI, ``<log_dir>/tuned.yaml``.
    """

    def __init__(
        self,
        method: HyperMethod | MethodName = "auto",
        tune: dict[str, Hyperparameter] | None = None,
        warmup_steps: int = 0,
        prog_bar: bool = True,
        adopt_dropout: AdoptMode | dict[str, Any] | None = None,
        max_nonfinite_steps: int = 10,
        hyper_optimizer: HyperOptimizer | HyperOptimizerName | None = None,
        hyper_every: int | Literal["auto"] = "auto",
        verbose: bool = True,
        log_diagnostics: bool = False,
        validation_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        with configuration_errors():
            self.arguments = check_arguments(
                method,
                tune,
                warmup_steps,
                prog_bar,
                adopt_dropout,
                max_nonfinite_steps,
                hyper_optimizer,
                hyper_every,
                verbose,
                log_diagnostics,
                validation_batch_size,
            )
        self.adopt_dropout, self.hyper_optimizer = adopt_dropout, hyper_optimizer
        self.warmup_steps, self.hyper_every = warmup_steps, hyper_every
        self.prog_bar, self.max_nonfinite_steps = prog_bar, max_nonfinite_steps
        self.verbose, self.log_diagnostics = verbose, log_diagnostics
        self.validation_batch_size = validation_batch_size
        self.engine: TangentEngine | None = None
        self.plan: FitPlan | None = None
        self.validation = ValidationStream(self.arguments.validation_batch_size)
        self.replay = LossReplay()
        self.bridge = GraphBridge()
        self.guard = RunGuard(self.arguments.max_nonfinite_steps)
        self.scaled_step = ScaledOptimizerStep()
        self.report = FitReport(self.arguments.verbose)
        self._module: LightningModule | None = None
        self._restored: dict[str, Any] | None = None
        self._advanced = False
        self._logged = False

    @property
    def method(self) -> HyperMethod | None:
        """The method: this fit's (``"auto"`` resolved), or the argument before the first fit
        (``None`` for ``"auto"``)."""
        return self.plan.method if self.plan is not None else self.arguments.method

    @property
    def tune(self) -> dict[str, Hyperparameter]:
        """The hyperparameters the callback brings (``tune=``), by name."""
        return self.arguments.tuned.tune

    # ---------------------------------------------------------------------------- fit start
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.arguments.adopt is not None:
            # before the optimizer exists and before a checkpoint's state_dict is loaded
            with configuration_errors():
                adopt(pl_module, self.arguments.adopt)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a checkpoint's state, or this callback's own when `fit` is called again on the same
        # model (the tuning continues; a fresh optimizer restarts only the optimizer tangents)
        continued = self._restored
        if continued is None and self.engine is not None and self._module is pl_module:
            continued = self.state_dict()
        self._end_fit()
        with configuration_errors():
            plan = self.plan = plan_fit(trainer, pl_module, self.arguments, continued)
            engine = self.engine = build_engine(plan, trainer.strategy)
            self.validation.start(trainer, pl_module, plan)  # finds the loader g_V draws from
            self.replay.start(plan, pl_module)
        self._module, self._restored, self._logged = pl_module, None, False
        self.report.start(trainer, plan)
        self.guard.start()
        self.bridge.start(pl_module, engine, plan)
        self.scaled_step.start(plan.optimizer, engine)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with configuration_errors():
            self.validation.probe(trainer, pl_module)

    # ------------------------------------------------------------------------------ the step
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        engine = self._engine
        engine.track(True)  # the training step's loss needs a graph to autograd λs
        self.bridge.enter_step(engine)
        with configuration_errors():  # the first batch probes the replayed loss
            self.replay.capture(trainer, pl_module, batch, batch_idx)

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: Tensor
    ) -> None:
        if self.engine is not None:
            self.bridge.before_backward(self.engine, loss)

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.replay.commit()

    def on_before_zero_grad(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # the gradient of an unfinished window (an epoch cut short by `on_train_batch_start`
        # returning -1) is dropped here, so are its drift terms and stashed batches
        if self._engine.step_pending:
            self._engine.discard()
            self.replay.clear()

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        engine = self._engine
        scale, skipped = grad_scaler_state(trainer, optimizer)

        def replay():  # type: ignore[no-untyped-def]
            return self.replay.losses(trainer, pl_module)

        with torch.enable_grad(), self.replay.replaying(pl_module), self.report.timing():
            # no gradient (training_step returned None): θ does not move, so neither do y, λ
            self._advanced = engine.advance(
                replay if self.replay.enabled else None, loss_scale=scale, step_skipped=skipped
            )
        self.replay.clear()
        engine.track(False)
        self.bridge.exit_step()

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._advanced:  # a micro-batch of an accumulation window
            return
        self._advanced = False
        engine = self._engine
        with torch.enable_grad(), self.report.timing():
            engine.update(lambda: self.validation.loss(trainer, pl_module))
        # the fit's first step too: λ shows on the progress bar from the start
        if should_log(trainer) or not self._logged:
            self._logged = True
            self.guard.check(engine)
            if self.plan is not None and self.plan.distributed:
                self.guard.check_processes_agree(trainer, engine)
            self._log(pl_module, engine)

    def _log(self, pl_module: LightningModule, engine: TangentEngine) -> None:
        for name, value in engine.metrics(self.arguments.log_diagnostics).items():
            prog_bar = self.arguments.prog_bar and name in engine.names
            pl_module.log(
                f"hyperopt/{name}", value, on_step=True, on_epoch=False, prog_bar=prog_bar
            )

    @property
    def _engine(self) -> TangentEngine:
        assert self.engine is not None, "the engine is built at fit start"
        return self.engine

    # ------------------------------------------------------------------------------ fit end
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.engine is not None:
            self.guard.before_checkpoint(self.engine)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_fit()
        if self.engine is not None and self.plan is not None:
            self.guard.check(self.engine)  # non-finite steps since the last logging step
            self.report.end(trainer, self.plan, self.engine)

    def tuned_values(self) -> dict[str, float]:
        """Name → the tuned value, in the units the user sets: a weight decay, a momentum, a
        keep probability, a declared λ; for a learning rate its factor λ and ``<name>/base_lr``,
        λ times the configured base learning rate. After a fit, or from a checkpoint's state."""
        if self.plan is not None:
            final = self.report.values(self.plan)
            return values_in_units(self.plan.hyperparameters, final, self.report.base_lrs)
        report = (self._restored or {}).get("report")
        if not report:
            raise RuntimeError("OnlineHyperparamCallback.tuned_values(): no fit has run yet")
        return values_in_units({}, report["final"], report["base_lr"])

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._end_fit()

    def _end_fit(self) -> None:
        """Kernels, ``backward`` and ``optimizer.step`` as they were; λ no longer tracked."""
        self.bridge.end()
        self.scaled_step.end()
        if self.engine is not None:
            self.engine.detach()

    # --------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        if self.engine is None or self.plan is None:
            return {} if self._restored is None else dict(self._restored)
        return {
            "engine": self.engine.state_dict(),
            **self.validation.state_dict(),
            "values": saved_state(self.plan),
            "report": self.report.state_dict(self.plan),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None


def adopt(pl_module: LightningModule, options: dict[str, Any]) -> None:
    """Adopt the module's dropout (:func:`adopt_dropout`), its keep probabilities left out of
    the module's ``state_dict`` (the callback saves them); its warnings through
    ``rank_zero_warn``, each once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adopt_dropout(pl_module, **options, persistent=False)
    for message in dict.fromkeys(str(w.message) for w in caught):
        rank_zero_warn(message)
