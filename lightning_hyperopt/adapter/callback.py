"""``OnlineHyperparamCallback``: the Lightning adapter around :class:`TangentEngine`.

Each hook delegates to the collaborators of :mod:`lightning_hyperopt.adapter`: the fit checks
(:mod:`~lightning_hyperopt.adapter.fit_plan`), the validation stream, the step replay, the graph
bridge and the run guard; the mathematics is the engine's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_hyperopt._lightning import callback_bases
from lightning_hyperopt.adapter.fit_plan import (
    FitPlan,
    LightningModule,
    Trainer,
    check_hyperparameters,
    check_replays,
    check_sparse_gradients,
    check_trainer,
    plan_fit,
)
from lightning_hyperopt.adapter.graph import GraphBridge, grad_scaler_state
from lightning_hyperopt.adapter.held import HeldHyperparameters
from lightning_hyperopt.adapter.replay import StepReplay
from lightning_hyperopt.adapter.run_guard import RunGuard
from lightning_hyperopt.adapter.scaled_step import ScaledStep
from lightning_hyperopt.adapter.validation import ValidationStream
from lightning_hyperopt.core.arguments import count
from lightning_hyperopt.core.dropout import AdoptMode, adopt_dropout, adopt_options
from lightning_hyperopt.core.engine import TangentEngine
from lightning_hyperopt.core.hyper_optimizers import (
    HyperOptimizer,
    HyperOptimizerName,
    resolve_hyper_optimizer,
)
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.methods import HyperMethod, default_method, resolve_method

MethodName = Literal["auto", "clip", "exact", "unroll", "discount", "first_order"]


def _mean_over(strategy: Any):  # type: ignore[no-untyped-def]
    """The mean of a tensor over the processes of a data-parallel ``strategy``."""

    def mean(tensor: Tensor) -> Tensor:
        return strategy.reduce(tensor, reduce_op="mean")

    return mean


@contextlib.contextmanager
def _resuming() -> Iterator[None]:
    """A checkpoint's state that does not fit this fit: one clear error."""
    try:
        yield
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"OnlineHyperparamCallback cannot resume from this checkpoint: {err}"
        ) from err


class OnlineHyperparamCallback(*callback_bases()):  # type: ignore[misc]
    """Tunes a LightningModule's hyperparameters online, during ``fit``: those the callback
    brings (``tune=``, ``adopt_dropout=``) and those the module declares.

    Carries y_j = dθ/dλ_j for every declared :class:`Hyperparameter` λ_j along the optimizer's
    trajectory, y ← P(dθ_{t+1}/dλ) with ġ = H y + ∂g_T/∂λ through gradient clipping and the
    optimizer's update (SGD, Adam, AdamW), and after each optimizer step moves
    λ_j ← λ_j − α ⟨g_V, y_j⟩ with g_V from a batch of its own validation iterator. The default
    method, ``FirstOrder``, carries no y: it takes y = 0 before each step, so the hypergradient
    is ⟨g_V, dθ_{t+1}/dλ⟩ through that step's ∂g_T/∂λ alone, with no H y.

    For the methods with a tangent, H y comes from the training step's own graph: the loss
    ``training_step`` returns is back-propagated once with ``create_graph=True`` (the callback
    stands in for ``LightningModule.backward``), then once more for H y of every λ at once. So
    H y uses the step's own batch, dropout masks and batch-norm statistics, and nothing is run
    twice.

    An unmodified LightningModule is enough for the optimizer's settings and its dropout:
    ``tune={"weight_decay": WeightDecay(), "lr": LearningRate()}`` and
    ``adopt_dropout="shared"``. Their values are saved in this callback's state, not in the
    module's ``state_dict``, so the module's class loads the checkpoint as it is (strictly,
    without the callback), and a resumed fit with the callback restores them.

    The LightningModule provides:

    - a ``training_step`` that returns the regularized training loss L_T(θ, λ), as usual;
    - the unregularized L_V(θ), computed in eval mode (dropout is off, and batch-norm layers
      normalize with their running statistics and do not update them: the g_V pass leaves
      every buffer as it was): ``validation_loss(batch) -> Tensor`` if it defines one, else
      the loss ``validation_step(batch, batch_idx)`` returns (a scalar tensor, or a dict's
      ``"loss"``). ``self.log`` calls made during the callback's passes are dropped (and
      torchmetrics states restored): the logged validation metrics are Lightning's own;
    - hyperparameters the loss depends on as :class:`Hyperparameter` submodules
      (``L2Penalty`` for per-layer L2, a generic ``Hyperparameter`` for a custom scalar);
      optimizer-side ones (``WeightDecay``, ``LearningRate``, ``Momentum``) may be declared
      there too, or passed as ``tune=``;
    - for finite-difference hyperparameters (a dropout ``KeepProbability``), the callback
      replays L_T at λ ± ε with coupled masks (twice per micro-batch): ``training_loss(batch)
      -> Tensor`` if the module defines one (the same L_T as ``training_step``'s), else
      ``training_step(batch, batch_idx)`` itself, with its logging dropped. Either should have
      no other side effects (no counters);
    - optionally ``hyperopt_dataloader()`` (on the datamodule or the module): the loader g_V is
      drawn from, endlessly; by default the validation dataloader. It is independent of
      Lightning's validation loop.

    A module that overrides ``backward`` itself (or training under DDP) keeps its own
    backward: the callback then takes H y from the same graph just before it
    (``on_before_backward``), which costs one more backward pass. The finite-difference
    replays restore the RNG state taken in this callback's ``on_train_batch_start``, so they
    draw the training step's own uniforms as long as nothing between that hook and
    ``training_step`` draws random numbers.

    Kernels: a step that needs H y (every step of ``Clip`` and ``Exact``; never ``FirstOrder``)
    runs ``F.scaled_dot_product_attention`` on the math kernel (the flash and memory-efficient
    kernels have no double backward), ``torch.compile``'d code eagerly, and RNNs on the native
    kernels (cuDNN's RNN has no double backward); the other steps keep the fast kernels. The
    math kernel materializes the attention weights, B·heads·T² values per attention layer kept
    until the double back-prop is done: on a GPU with long sequences, the memory to plan for
    (docs/how-to/cost.md). g_V passes of models that contain an ``nn.RNNBase`` run on the
    native kernels too (cuDNN's RNN has no backward in eval mode); dropout replays run on the
    kernels of the step they replay (they need first derivatives only). Reentrant
    checkpointing, sparse gradients with a tangent method and operations without a double
    backward are refused with their fix before the first optimizer step
    (docs/how-to/supported-models.md).

    Non-finite values never reach λ: a step whose training loss is not finite
    moves neither y nor λ and is counted (``hyperopt/<name>/nonfinite``); the first one is
    reported by a warning, and ``max_nonfinite_steps`` of them in a row stop the run with an
    error before a checkpoint of the broken weights is saved. Counts are read from the device
    only when metrics are logged (every ``log_every_n_steps``) or a checkpoint is saved.

    Args:
        method: ``Clip(radius, hyper_lr_scale)``, ``Exact(hyper_lr_scale)``,
            ``Unroll(steps, hyper_lr_scale)``, ``FirstOrder(hyper_lr)``, or one of their names
            (``"clip"``, ``"exact"``, ``"unroll"``, ``"discount"``, ``"first_order"``) for the
            defaults. Default ``"auto"``, chosen at fit start by
            :func:`~lightning_hyperopt.core.methods.default_method`: ``Clip(50)`` when a
            ``LearningRate`` or ``Momentum`` is tuned (greedy steps lower a learning rate
            from any start: the short-horizon bias), else ``FirstOrder()``, which with the
            adaptive hyper step reached a 6-point grid's best validation loss soonest on the
            regularization tasks of the time-to-quality benchmark (docs/results.md).
        tune: hyperparameters the callback brings, by name (logged as ``hyperopt/<name>``),
            tuned as if the module declared them: those that act through the optimizer
            (``WeightDecay``, ``LearningRate``, ``Momentum``). A name the module declares too
            is an error at setup. From LightingCLI YAML: a mapping of ``class_path`` entries.
        warmup_steps: optimizer steps before λ starts moving (the tangent moves from step 0).
        prog_bar: show each λ on the progress bar (refreshed when metrics are logged).
        adopt_dropout: at setup, replace the model's ``nn.Dropout`` modules by
            :class:`TunableDropout` layers (see :func:`adopt_dropout`) with one shared keep
            probability (``"shared"``) or one per module (``"per_module"``), starting at 1 − p;
            or a mapping of :func:`adopt_dropout`'s options (``mode``, ``init``, ``bounds``,
            ``eps``, ``difference``), e.g. ``{"mode": "shared", "difference": "one_sided"}``;
            ``None`` leaves the model as it is. The keep probabilities are saved in the
            callback's state: the module's ``state_dict`` keeps the unmodified model's keys.
        max_nonfinite_steps: consecutive training steps with a non-finite loss
            after which the run stops with an error.
        hyper_optimizer: the hyper step: ``AdaptiveStep(lr, max_step, initial_lr,
            decay_updates)`` (scale-free: one setting serves every task; a regularizer's steps
            start at 30% of λ per update and decay to 1% over 200 updates), ``PaperStep()`` (the
            paper's λ ← λ − c·η·h, with c the method's ``hyper_lr_scale``), or their names
            ``"adaptive"``, ``"paper"``. ``None`` (default): the paper's rule when the method
            was given ``hyper_lr_scale`` (or FirstOrder's ``hyper_lr``), the adaptive one
            otherwise.
        hyper_every: k ≥ 1: draw g_V and move λ at every k-th update point only (y still moves
            every step; the paper rule's step is multiplied by k). A change of estimator that
            saves k − 1 validation passes in k; 1 is the paper's algorithm.
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
        hyper_every: int = 1,
    ) -> None:
        super().__init__()
        self.adopt_dropout = adopt_dropout
        self._adopt = adopt_options(adopt_dropout)
        self.held = HeldHyperparameters(tune)
        #: the method; None until fit start for ``"auto"`` (see :func:`default_method`)
        self._auto = method == "auto"
        self.method: HyperMethod | None = None
        if not self._auto:
            try:
                self.method = resolve_method(method)
            except ValueError as err:  # the callback accepts one name more than the core
                raise ValueError(f"{err}, or 'auto' (the default)") from None
        # the engine's λ step owns it (and its state); resolved here to fail at construction
        self.hyper_optimizer = resolve_hyper_optimizer(hyper_optimizer, self.method)
        self.hyper_every = count("hyper_every", hyper_every, 1)
        self.warmup_steps = count("warmup_steps", warmup_steps, 0)
        self.prog_bar = prog_bar
        self.engine: TangentEngine | None = None
        self.plan: FitPlan | None = None
        self.validation = ValidationStream()
        self.replay = StepReplay()
        self.bridge = GraphBridge()
        self.guard = RunGuard(count("max_nonfinite_steps", max_nonfinite_steps, 1))
        self.scaled_step = ScaledStep()
        self._distributed = False
        self._module: LightningModule | None = None
        self._restored: dict[str, Any] | None = None
        self._stepped = False
        self._logged = False

    @property
    def max_nonfinite_steps(self) -> int:
        return self.guard.max_nonfinite_steps

    # ---------------------------------------------------------------------------- fit start
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._distributed = check_trainer(trainer, pl_module)
        if self._adopt is not None:
            # before the optimizer exists and before a checkpoint's state_dict is loaded; the
            # keep probabilities stay out of the module's state_dict (this callback saves them)
            adopt_dropout(pl_module, **self._adopt, persistent=False)
        check_replays(pl_module, self.held.tuned(pl_module))

    @property
    def tune(self) -> dict[str, Hyperparameter]:
        """The hyperparameters the callback brings (``tune=``), by name."""
        return self.held.tune

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        hyperparameters = self.held.tuned(pl_module)
        optimizer = check_hyperparameters(trainer, pl_module, hyperparameters)
        self.held.start(pl_module, hyperparameters)
        # a checkpoint's state, or this callback's own when `fit` is called again on the same
        # model (the tuning continues; a fresh optimizer restarts only the optimizer tangents)
        state = self._restored
        if state is None and self.engine is not None and self._module is pl_module:
            state = self.state_dict()
        if self.engine is not None:
            self.engine.detach()
        if state is None:
            for h in hyperparameters.values():
                h.take_initial_value(optimizer)
        else:  # λ the module's state_dict does not carry, before the engine reads λ
            with _resuming():
                self.held.load_state_dict(state.get("values"))
        plan = self.plan = plan_fit(trainer, pl_module, hyperparameters, self._distributed)
        if self._auto:
            self.method = default_method(hyperparameters)
        check_sparse_gradients(pl_module, self.method)
        optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.engine = TangentEngine(
            self.method,
            hyperparameters,
            optimizer,
            self.warmup_steps,
            gradient_clipping=plan.gradient_clipping,
            hyper_optimizer=self.hyper_optimizer,
            hyper_every=self.hyper_every,
            reduce=_mean_over(trainer.strategy) if plan.distributed else None,
            extra_grad_targets=[
                p for p in pl_module.parameters() if p.requires_grad and id(p) not in optimized
            ],
        )
        self._module = pl_module
        if state is not None:
            with _resuming():
                self.engine.load_state_dict(state["engine"])
            self._restored = None
        self.validation.start(trainer, pl_module, plan, state)
        self.replay.start(plan, pl_module)
        self.guard.start()
        self._logged = False
        self.bridge.start(pl_module, self.engine, plan)
        self.scaled_step.start(optimizer, self.engine)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.validation.probe(trainer, pl_module)

    # ------------------------------------------------------------------------------ the step
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        engine = self._engine
        engine.track(True)  # the training step's loss needs a graph to autograd λs
        self.bridge.enter_step(engine)
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

        with torch.enable_grad(), self.replay.replaying(pl_module):
            # no gradient (training_step returned None): θ does not move, so neither do y, λ
            self._stepped = engine.advance(
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
        if not self._stepped:  # a micro-batch of an accumulation window
            return
        self._stepped = False
        engine = self._engine
        with torch.enable_grad():
            engine.update(lambda: self.validation.loss(trainer, pl_module))
        # the fit's first step too: λ shows on the progress bar from the start
        if trainer._logger_connector.should_update_logs or not self._logged:
            self._logged = True
            self.guard.check(engine)
            if self._distributed:
                self.guard.check_processes_agree(trainer, engine)
            self._log(pl_module, engine)

    def _log(self, pl_module: LightningModule, engine: TangentEngine) -> None:
        for name, value in engine.metrics().items():
            prog_bar = self.prog_bar and name in engine.names
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
        self._end_fit(pl_module)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._end_fit(pl_module)

    def _end_fit(self, pl_module: LightningModule) -> None:
        self.bridge.end(pl_module)
        self.scaled_step.end()
        if self.engine is not None:
            self.engine.detach()

    # --------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        if self.engine is None:
            return {} if self._restored is None else dict(self._restored)
        return {
            "engine": self.engine.state_dict(),
            **self.validation.state_dict(),
            "values": self.held.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None
