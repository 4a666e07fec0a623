"""``OnlineHyperparamCallback``: the Lightning adapter around :class:`TangentEngine`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_hyperopt._lightning import callback_bases, namespace_of
from lightning_hyperopt.core.dropout import ADOPT_MODES, AdoptMode, adopt_dropout
from lightning_hyperopt.core.engine import GradientClipping, TangentEngine, check_optimizer
from lightning_hyperopt.core.hyper_optimizers import (
    HyperOptimizer,
    HyperOptimizerName,
    resolve_hyper_optimizer,
)
from lightning_hyperopt.core.hyperparameters import Hyperparameter, WeightDecay
from lightning_hyperopt.core.methods import HyperMethod, resolve_method

MethodName = Literal["clip", "exact", "unroll", "first_order"]

#: Lightning objects, typed loosely: the callback serves both Lightning namespaces
Trainer = Any
LightningModule = Any


def find_hyperparameters(module: torch.nn.Module) -> dict[str, Hyperparameter]:
    """Every :class:`Hyperparameter` in ``module``'s tree, keyed by its dotted module path."""
    return {name: m for name, m in module.named_modules() if isinstance(m, Hyperparameter)}


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module, plain: bool = False) -> Iterator[None]:
    """Eval behaviour (dropout off, batch-norm running statistics), restoring each flag.

    ``plain``: no module in the tree overrides ``train()``, so the flags are set directly
    (``nn.Module.__setattr__``'s bookkeeping costs more than the flag)."""
    modes = [(m, m.training) for m in module.modules()]
    if plain:
        for m, _ in modes:
            object.__setattr__(m, "training", False)
    else:
        module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            if m.training is not training:
                object.__setattr__(m, "training", training)


@contextlib.contextmanager
def _native_rnn_kernels() -> Iterator[None]:
    """cuDNN's and oneDNN's RNN kernels off: cuDNN's has no double backward, and on CPU the
    native LSTM's double back-prop is faster than oneDNN's."""
    saved = _kernels_off()
    try:
        yield
    finally:
        torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled = saved


def _kernels_off() -> tuple[bool, bool]:
    saved = torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled
    torch.backends.cudnn.enabled = torch.backends.mkldnn.enabled = False
    return saved


def _private_iterator(loader: Any) -> Iterator[Any]:
    """An iterator of our own: a DataLoader with persistent workers hands every ``iter()`` the
    same iterator, which Lightning's validation loop would reset under us."""
    if isinstance(loader, DataLoader) and loader.persistent_workers and loader.num_workers > 0:
        return loader._get_iterator()
    return iter(loader)


@contextlib.contextmanager
def _restoring_buffers(module: torch.nn.Module) -> Iterator[None]:
    """Undo the replay's side effects on buffers (batch-norm running statistics and counters):
    the training step already updated them once."""
    saved = [
        (b, b.clone())
        for m in module.modules()
        if not isinstance(m, Hyperparameter)
        for b in m.buffers(recurse=False)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


def move_data_to_device(batch: Any, device: torch.device) -> Any:
    """The tensors of ``batch`` on ``device`` (what Lightning's default transfer hook does)."""
    return apply_to_collection(batch, Tensor, lambda t: t.to(device, non_blocking=True))


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


class OnlineHyperparamCallback(*callback_bases()):  # type: ignore[misc]
    """Tunes the hyperparameters a LightningModule declares, online, during ``fit``.

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

    The LightningModule provides:

    - a ``training_step`` that returns the regularized training loss L_T(θ, λ), as usual;
    - ``validation_loss(batch) -> Tensor``: the unregularized L_V(θ), computed in eval mode:
      dropout is off, and batch-norm layers normalize with their running statistics and do
      not update them (the g_V pass leaves every buffer as it was);
    - hyperparameters as :class:`Hyperparameter` submodules (``L2Penalty``, ``WeightDecay``,
      ``KeepProbability``…);
    - only for finite-difference hyperparameters (a dropout ``KeepProbability``):
      ``training_loss(batch) -> Tensor``, the same L_T as ``training_step``'s, which the
      callback replays at λ ± ε with coupled masks (twice per micro-batch). It should have no
      side effects (no ``self.log``, no counters);
    - optionally ``hyperopt_dataloader()`` (on the datamodule or the module): the loader g_V is
      drawn from, endlessly; by default the validation dataloader. It is independent of
      Lightning's validation loop.

    A module that overrides ``backward`` itself (or training under DDP) keeps its own
    backward: the callback then takes H y from the same graph just before it
    (``on_before_backward``), which costs one more backward pass. Replays and g_V passes of
    models that contain an ``nn.RNNBase`` run on the native kernels (cuDNN's RNN has no double
    backward). The finite-difference replays restore the RNG state taken in this callback's
    ``on_train_batch_start``, so they draw the training step's own uniforms as long as nothing
    between that hook and ``training_step`` draws random numbers.

    Non-finite values never reach λ: a step whose training loss is not finite
    moves neither y nor λ and is counted (``hyperopt/<name>/nonfinite``); the first one is
    reported by a warning, and ``max_nonfinite_steps`` of them in a row stop the run with an
    error before a checkpoint of the broken weights is saved. Counts are read from the device
    only when metrics are logged (every ``log_every_n_steps``) or a checkpoint is saved.

    Args:
        method: ``Clip(radius, hyper_lr_scale)``, ``Exact(hyper_lr_scale)``,
            ``Unroll(steps, hyper_lr_scale)``, ``FirstOrder(hyper_lr)``, or one of their names
            (``"clip"``, ``"exact"``, ``"unroll"``, ``"first_order"``) for the defaults.
            Default ``"first_order"``: with the adaptive hyper step it reached a 6-point
            grid's best validation loss soonest on the time-to-quality tasks (docs/results.md);
            ``Clip(radius)`` is the paper's method, unbiased where the horizon matters.
        warmup_steps: optimizer steps before λ starts moving (the tangent moves from step 0).
        prog_bar: show each λ on the progress bar (refreshed when metrics are logged).
        adopt_dropout: at setup, replace the model's ``nn.Dropout`` modules by
            :class:`TunableDropout` layers (see :func:`adopt_dropout`) with one shared keep
            probability (``"shared"``) or one per module (``"per_module"``), starting at 1 − p;
            ``None`` leaves the model as it is.
        max_nonfinite_steps: consecutive training steps with a non-finite loss
            after which the run stops with an error.
        hyper_optimizer: the hyper step: ``AdaptiveStep(lr, max_step)`` (scale-free: one
            setting serves every task), ``PaperStep()`` (the paper's λ ← λ − c·η·h, with c the
            method's ``hyper_lr_scale``), or their names ``"adaptive"``, ``"paper"``. ``None``
            (default): the paper's rule when the method was given ``hyper_lr_scale`` (or
            FirstOrder's ``hyper_lr``), the adaptive one otherwise.
        hyper_every: k ≥ 1: draw g_V and move λ at every k-th update point only (y still moves
            every step; the paper rule's step is multiplied by k). A change of estimator that
            saves k − 1 validation passes in k; 1 is the paper's algorithm.
    """

    def __init__(
        self,
        method: HyperMethod | MethodName = "first_order",
        warmup_steps: int = 0,
        prog_bar: bool = True,
        adopt_dropout: AdoptMode | None = None,
        max_nonfinite_steps: int = 10,
        hyper_optimizer: HyperOptimizer | HyperOptimizerName | None = None,
        hyper_every: int = 1,
    ) -> None:
        super().__init__()
        if adopt_dropout is not None and adopt_dropout not in ADOPT_MODES:
            raise ValueError(
                f"adopt_dropout={adopt_dropout!r} is not supported; accepted values: "
                f"{ADOPT_MODES} or None"
            )
        self.adopt_dropout = adopt_dropout
        self.method = resolve_method(method)
        self.hyper_optimizer = resolve_hyper_optimizer(hyper_optimizer, self.method)
        self.hyper_every = _count("hyper_every", hyper_every, 1)
        self.warmup_steps = _count("warmup_steps", warmup_steps, 0)
        self.max_nonfinite_steps = _count("max_nonfinite_steps", max_nonfinite_steps, 1)
        self.prog_bar = prog_bar
        self.engine: TangentEngine | None = None
        self._module: LightningModule | None = None
        self._restored: dict[str, Any] | None = None
        self._stash: list[tuple[Any, Tensor, Tensor | None]] = []
        self._pending: tuple[Any, Tensor, Tensor | None] | None = None
        self._replays = False  # finite-difference hyperparameters: stash batches and RNG
        self._distributed = False  # DDP: the drift and the hypergradient are averaged
        self._rank, self._world = 0, 1
        self._native_rnn = False
        self._saved_kernels: tuple[bool, bool] | None = None  # while a step runs natively
        self._patched = False  # LightningModule.backward is ours for this fit
        self._probe_training = False
        self._stepped = False
        self._warned_nonfinite = False
        self._logged = False
        self._val_loader: Any = None
        self._transfer_hooks = True  # call Lightning's batch-transfer hooks for g_V's batches
        self._plain_train = False  # no module overrides train(): eval flags set directly
        self._val_iter: Iterator[Any] | None = None
        self._val_pass = 0
        self._val_index = 0
        self._val_seed = 0

    # ------------------------------------------------------------------------------- checks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        ns = namespace_of(trainer)
        self._distributed = check_strategy(trainer.strategy)
        if not pl_module.automatic_optimization:
            raise ValueError(
                "OnlineHyperparamCallback needs automatic optimization; manual optimization "
                "(automatic_optimization = False) is not supported"
            )
        if not callable(getattr(pl_module, "validation_loss", None)):
            raise TypeError(
                f"{type(pl_module).__name__} must define `validation_loss(batch) -> Tensor` for "
                "OnlineHyperparamCallback: the unregularized L_V whose gradient g_V moves λ"
            )
        if self.adopt_dropout is not None:
            # before the optimizer exists and before a checkpoint's state_dict is loaded
            adopt_dropout(pl_module, self.adopt_dropout)
        finite_difference = [
            name
            for name, h in find_hyperparameters(pl_module).items()
            if h.drift_source == "finite_difference"
        ]
        if finite_difference and not callable(getattr(pl_module, "training_loss", None)):
            raise TypeError(
                f"{type(pl_module).__name__} must define `training_loss(batch) -> Tensor` (the "
                f"loss training_step returns): hyperparameters {finite_difference} are "
                "differentiated by finite differences of replayed training losses"
            )
        overridden = type(pl_module).configure_gradient_clipping
        if (
            trainer.gradient_clip_val
            and overridden is not ns.LightningModule.configure_gradient_clipping
        ):
            raise ValueError(
                f"{type(pl_module).__name__} overrides configure_gradient_clipping: the tangent "
                "follows Lightning's own clipping (gradient_clip_val, gradient_clip_algorithm) "
                "only; remove the override or the clipping"
            )

    def _gradient_clipping(self, trainer: Trainer) -> GradientClipping | None:
        if not trainer.gradient_clip_val:
            return None
        algorithm = trainer.gradient_clip_algorithm or "norm"
        name = str(getattr(algorithm, "value", algorithm))  # Lightning's enum or a string
        return GradientClipping(float(trainer.gradient_clip_val), name)  # type: ignore[arg-type]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        hyperparameters = find_hyperparameters(pl_module)
        if not hyperparameters:
            raise ValueError(
                f"{type(pl_module).__name__} declares no hyperparameter: add a Hyperparameter, "
                "L2Penalty, WeightDecay or KeepProbability submodule (from lightning_hyperopt)"
            )
        if len(trainer.optimizers) != 1:
            raise ValueError(
                "OnlineHyperparamCallback supports exactly one optimizer, "
                f"got {len(trainer.optimizers)}"
            )
        optimizer = trainer.optimizers[0]
        check_optimizer(optimizer, hyperparameters.values())
        # a checkpoint's state, or this callback's own when `fit` is called again on the same
        # model (the tuning continues; a fresh optimizer restarts only the optimizer tangents)
        state = self._restored
        if state is None and self.engine is not None and self._module is pl_module:
            state = self.state_dict()
        if self.engine is not None:
            self.engine.detach()
        if state is None:
            self.hyper_optimizer.load_state_dict({})  # a fresh start: no moments yet
            for h in hyperparameters.values():
                if isinstance(h, WeightDecay) and h.init_from_optimizer:
                    wd = float(optimizer.param_groups[h.group]["weight_decay"])
                    h.value.fill_(min(max(wd, h.bounds[0]), h.bounds[1]))
        optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
        strategy = trainer.strategy
        self._rank, self._world = (
            (trainer.global_rank, trainer.world_size) if self._distributed else (0, 1)
        )
        self.engine = TangentEngine(
            self.method,
            hyperparameters,
            optimizer,
            self.warmup_steps,
            gradient_clipping=self._gradient_clipping(trainer),
            hyper_optimizer=self.hyper_optimizer,
            hyper_every=self.hyper_every,
            reduce=_mean_over(strategy) if self._distributed else None,
            extra_grad_targets=[
                p for p in pl_module.parameters() if p.requires_grad and id(p) not in optimized
            ],
        )
        self._native_rnn = any(isinstance(m, torch.nn.RNNBase) for m in pl_module.modules())
        self._replays = bool(self.engine.finite_difference_rows)
        self._module = pl_module
        self._val_loader = self._find_val_loader(trainer, pl_module)
        # one seed for every process: their shares of the validation stream partition it
        self._val_seed = int(strategy.broadcast(int(torch.initial_seed()) % (2**62)))
        self._val_pass, self._val_index = 0, 0
        if state is not None:
            try:
                self.engine.load_state_dict(state["engine"])
            except (KeyError, ValueError) as err:
                raise ValueError(
                    f"OnlineHyperparamCallback cannot resume from this checkpoint: {err}"
                ) from err
            self._val_seed = int(state["val_seed"])
            self._val_pass = int(state["val_pass"])
            self._val_index = int(state["val_index"])
            self._restored = None
        self._val_iter = None
        self._transfer_hooks = _overrides_transfer_hooks(trainer, pl_module)
        self._plain_train = all(type(m).train is torch.nn.Module.train for m in pl_module.modules())
        self._stash.clear()
        self._warned_nonfinite = False
        self._logged = False
        self._probe_training = self._replays
        self._patch_backward(pl_module)

    @staticmethod
    def _find_val_loader(trainer: Trainer, pl_module: LightningModule) -> Any:
        for owner in (trainer.datamodule, pl_module):
            hook = getattr(owner, "hyperopt_dataloader", None)
            if callable(hook):
                return hook()
        source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
        loader = source.dataloader() if source is not None and source.is_defined() else None
        if isinstance(loader, list | tuple):
            if len(loader) != 1:
                raise ValueError(
                    f"{len(loader)} validation dataloaders: define `hyperopt_dataloader()` on "
                    "the datamodule or module to say which one g_V is drawn from"
                )
            loader = loader[0]
        if loader is None:
            raise ValueError(
                "OnlineHyperparamCallback needs validation data for g_V: define "
                "`hyperopt_dataloader()` or `val_dataloader()` on the datamodule or module, or "
                "pass `val_dataloaders` to `trainer.fit`"
            )
        return loader

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._probe_validation(trainer, pl_module)

    def _probe_validation(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """One validation batch through ``validation_loss`` before any training step: a batch
        the hook cannot take, or a loss that is not a finite scalar, fails now, not at the
        first λ update (after the warm-up)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._val_seed)
            try:
                batch = next(iter(self._val_loader))  # a throw-away pass, seeded like pass 0
            except StopIteration:
                raise ValueError(
                    "the validation dataloader for OnlineHyperparamCallback is empty"
                ) from None
            try:
                with torch.enable_grad():
                    loss = self._validation_loss(trainer, pl_module, batch)
            except Exception as err:
                raise ValueError(
                    f"validation_loss failed on a batch of the validation dataloader before "
                    f"training started: {type(err).__name__}: {err}"
                ) from err
        _check_loss("validation_loss", loss)
        if not loss.requires_grad:
            raise ValueError(
                "validation_loss returned a tensor without a graph to the parameters: compute "
                "it from the model's outputs (g_V is its gradient)"
            )

    # -------------------------------------------------------------------------- the backward
    def _patch_backward(self, pl_module: LightningModule) -> None:
        """Stand in for ``LightningModule.backward`` during this fit (unless the module
        overrides it): one back-prop of the step's loss gives ``p.grad`` and the graph H y
        needs."""
        ns = namespace_of(pl_module)
        # under DDP the module's own backward must run: it triggers the gradient all-reduce
        own = type(pl_module).backward is ns.LightningModule.backward
        self._patched = own and not self._distributed
        if not self._patched:
            return
        engine = self.engine
        assert engine is not None
        original = pl_module.backward

        def backward(loss: Tensor, *args: Any, **kwargs: Any) -> None:
            _check_training_loss(loss)
            engine.backward(loss, run_backward=lambda: original(loss, *args, **kwargs))

        pl_module.backward = backward

    def _unpatch_backward(self, pl_module: LightningModule) -> None:
        if self._patched and "backward" in vars(pl_module):
            del pl_module.backward
        self._patched = False

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: Tensor
    ) -> None:
        if self._patched or self.engine is None:
            return
        _check_training_loss(loss)
        self.engine.backward(loss, fill_grads=False)  # the module's own backward follows

    # -------------------------------------------------------------------------- the step
    def on_before_zero_grad(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # the gradient of an unfinished window (an epoch cut short by `on_train_batch_start`
        # returning -1) is dropped here, so are its drift terms and stashed batches
        assert self.engine is not None
        if self.engine.step_pending:
            self.engine.discard()
            self._stash.clear()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert self.engine is not None
        self.engine.track(True)  # the training step's loss needs a graph to autograd λs
        if self._native_rnn and self.engine.needs_graph and self._saved_kernels is None:
            # H y comes from this step's own graph: cuDNN's RNN has no double backward
            self._saved_kernels = _kernels_off()
        if not self._replays:
            return
        if self._probe_training:
            self._probe_training = False
            self._probe_training_loss(trainer, pl_module, batch)
        # the RNG state lets the replays draw the training step's own uniforms
        cuda = torch.cuda.get_rng_state() if pl_module.device.type == "cuda" else None
        self._pending = (batch, torch.get_rng_state(), cuda)

    def _probe_training_loss(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any
    ) -> None:
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with (
            torch.random.fork_rng(devices=devices),
            _restoring_buffers(pl_module),
            torch.no_grad(),
            trainer.precision_plugin.forward_context(),
        ):
            loss = pl_module.training_loss(batch)
        _check_loss("training_loss", loss)

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # only micro-batches whose loss reached the gradient are replayed (a training_step
        # returning None has no backward)
        if self._pending is not None:
            self._stash.append(self._pending)
            self._pending = None

    def _replayed_losses(self, trainer: Trainer, pl_module: LightningModule) -> Iterator[Tensor]:
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        scale = trainer.accumulate_grad_batches
        for batch, cpu_state, cuda_state in self._stash:
            kernels = _native_rnn_kernels() if self._native_rnn else contextlib.nullcontext()
            with torch.random.fork_rng(devices=devices), kernels:
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, pl_module.device)
                with trainer.precision_plugin.forward_context():
                    loss = pl_module.training_loss(batch)
            yield loss / scale

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        engine = self.engine
        assert engine is not None
        scale, skipped = _grad_scaler_state(trainer, optimizer)
        replay: Callable[[], Iterator[Tensor]] | None = None
        if self._replays:

            def replay() -> Iterator[Tensor]:
                return self._replayed_losses(trainer, pl_module)

        with torch.enable_grad(), _restoring_buffers(pl_module) if self._replays else _null():
            # no gradient (training_step returned None): θ does not move, so neither do y, λ
            self._stepped = engine.advance(replay, loss_scale=scale, step_skipped=skipped)
        self._stash.clear()
        engine.track(False)
        self._restore_kernels()

    def _restore_kernels(self) -> None:
        if self._saved_kernels is not None:
            torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled = self._saved_kernels
            self._saved_kernels = None

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
        engine = self.engine
        assert engine is not None
        with torch.enable_grad():
            engine.update(lambda: self._validation_loss(trainer, pl_module))
        # the fit's first step too: λ shows on the progress bar from the start
        if trainer._logger_connector.should_update_logs or not self._logged:
            self._logged = True
            self._check_nonfinite()
            if self._distributed:
                self._check_processes_agree(trainer)
            for name, value in engine.metrics().items():
                prog_bar = self.prog_bar and name in engine.names
                pl_module.log(
                    f"hyperopt/{name}", value, on_step=True, on_epoch=False, prog_bar=prog_bar
                )

    def _check_nonfinite(self) -> int:
        """Warn at the first non-finite step; stop after ``max_nonfinite_steps`` in a row.
        Returns the number of non-finite steps in a row now."""
        engine = self.engine
        assert engine is not None
        now, longest = engine.nonfinite_report()
        if longest >= self.max_nonfinite_steps:
            raise RuntimeError(
                f"OnlineHyperparamCallback: {longest} training steps in a row had a non-finite "
                f"loss (max_nonfinite_steps={self.max_nonfinite_steps}); stopped at "
                f"step {engine.step}. The model's weights are likely not finite any more: "
                "resume from an earlier checkpoint with a smaller learning rate, or find where "
                "the loss overflows"
            )
        if not self._warned_nonfinite and (now or longest or any(engine.nonfinite)):
            self._warned_nonfinite = True
            rank_zero_warn(
                f"OnlineHyperparamCallback: non-finite values at step {engine.step} (training "
                f"loss, gradient, tangent or hypergradient); those steps moved neither y nor λ. "
                "Counts per hyperparameter are logged as hyperopt/<name>/nonfinite"
            )
        return now

    def _check_processes_agree(self, trainer: Trainer) -> None:
        """Under DDP every process must hold the same λ (max − min over processes: one
        all-reduce, at the logging cadence)."""
        engine = self.engine
        assert engine is not None
        values = torch.stack([h.value.detach() for h in engine.hypers])
        both = trainer.strategy.reduce(torch.cat([values, -values]), reduce_op="max")
        spread = both[: len(values)] + both[len(values) :]  # max − min, per hyperparameter
        if bool((spread > 0).any()):
            raise RuntimeError(
                "OnlineHyperparamCallback: the hyperparameters differ between processes "
                f"(largest spread {float(spread.max()):.3g} at step {engine.step}): every "
                "process must run the same number of optimizer steps on the same model"
            )

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.engine is not None:
            now = self._check_nonfinite()
            if now:
                raise RuntimeError(
                    f"OnlineHyperparamCallback: the last {now} training step(s) had a "
                    "non-finite loss; not saving a checkpoint of these weights"
                )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_fit(pl_module)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._end_fit(pl_module)

    def _end_fit(self, pl_module: LightningModule) -> None:
        self._restore_kernels()
        self._unpatch_backward(pl_module)
        if self.engine is not None:
            self.engine.detach()

    # ------------------------------------------------------------------- validation batches
    def _next_val_batch(self) -> Any:
        """The next batch of this process's share of the endless validation stream,
        reproducible across resumes (``_val_pass`` and ``_val_index``, the batches of the pass
        drawn so far, are checkpointed).

        Under DDP the stream is dealt out in blocks of W batches (W processes): process r keeps
        the r-th batch of each block and every process draws the whole block, so all of them
        stay at the same position; a pass's last, incomplete block is dropped by all."""
        for _ in range(2):
            try:
                if self._val_iter is None:
                    # a seed per pass: shuffling is reproducible after resume and the global RNG
                    # (dropout masks of the training steps) is left untouched. Samplers draw
                    # their order lazily, at the first batch, so that batch is drawn here too.
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self._val_seed + self._val_pass)
                        self._val_iter = _private_iterator(self._val_loader)
                        for _ in range(self._val_index):
                            next(self._val_iter)
                        block = [next(self._val_iter)]
                else:
                    block = [next(self._val_iter)]
                block += [next(self._val_iter) for _ in range(self._world - 1)]
            except StopIteration:
                self._val_iter, self._val_pass, self._val_index = None, self._val_pass + 1, 0
                continue
            self._val_index += self._world
            return block[self._rank]
        raise ValueError(
            "the validation dataloader for OnlineHyperparamCallback is empty"
            + (f" or has fewer batches than the {self._world} processes" if self._world > 1 else "")
        )

    def _validation_loss(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any = None
    ) -> Tensor:
        batch = trainer.precision_plugin.convert_input(
            self._next_val_batch() if batch is None else batch
        )
        if self._transfer_hooks:
            # the batch-transfer hooks see a validation batch (`trainer.validating`), so
            # training-only augmentation there leaves g_V's batches alone
            stage = trainer.state.stage
            trainer.state.stage = namespace_of(trainer).trainer.states.RunningStage.VALIDATING
            try:
                batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
                batch = trainer.strategy.batch_to_device(batch)
            finally:
                trainer.state.stage = stage
        elif pl_module.device.type != "cpu":  # what the default hooks would do, minus their cost
            batch = move_data_to_device(batch, pl_module.device)
        # cuDNN's RNN has no backward in eval mode: g_V of an RNN runs on the native kernels
        kernels = _native_rnn_kernels() if self._native_rnn else contextlib.nullcontext()
        with (
            _eval_mode(pl_module, self._plain_train),
            kernels,
            trainer.precision_plugin.forward_context(),
        ):
            return pl_module.validation_loss(batch)

    # ---------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        if self.engine is None:
            return {} if self._restored is None else dict(self._restored)
        return {
            "engine": self.engine.state_dict(),
            "val_seed": self._val_seed,
            "val_pass": self._val_pass,
            "val_index": self._val_index,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None


@contextlib.contextmanager
def _null() -> Iterator[None]:
    yield


_TRANSFER_HOOKS = (
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
)


def _overrides_transfer_hooks(trainer: Trainer, pl_module: LightningModule) -> bool:
    """Whether the module or datamodule customizes a batch-transfer hook (or the strategy is not
    a plain single device): only then do g_V's batches go through Lightning's hook calls."""
    ns = namespace_of(trainer)
    if type(trainer.strategy) is not ns.strategies.SingleDeviceStrategy:
        return True
    for owner, base in (
        (pl_module, ns.LightningModule),
        (trainer.datamodule, ns.LightningDataModule),
    ):
        if owner is None:
            continue
        for name in _TRANSFER_HOOKS:
            if getattr(type(owner), name, None) is not getattr(base, name, None):
                return True
    return False


def check_strategy(strategy: Any) -> bool:
    """Whether ``strategy`` is data-parallel (DDP); raises unless it is DDP or one device."""
    ns = namespace_of(strategy)
    kind = type(strategy)
    if kind not in (ns.strategies.SingleDeviceStrategy, ns.strategies.DDPStrategy):
        raise ValueError(
            "OnlineHyperparamCallback supports one device and DDP (strategy='ddp', "
            f"'ddp_spawn', 'ddp_find_unused_parameters_true'); got {kind.__name__}. "
            "Strategies that shard the parameters (FSDP, DeepSpeed, model parallelism) "
            "would need the tangents sharded the same way: not supported"
        )
    return kind is ns.strategies.DDPStrategy


def _mean_over(strategy: Any) -> Callable[[Tensor], Tensor]:
    """The mean of a tensor over the processes of a data-parallel ``strategy`` (one
    all-reduce)."""

    def mean(tensor: Tensor) -> Tensor:
        return strategy.reduce(tensor, reduce_op="mean")

    return mean


def _count(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    return int(value)


def _check_loss(hook: str, loss: Any) -> None:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(
            f"{hook} must return a scalar tensor (one number: the mean loss of the batch), got "
            f"{_shape(loss)}"
        )
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ValueError(f"{hook} returned {value} before training started")


def _check_training_loss(loss: Tensor) -> None:
    if loss.numel() != 1:
        raise ValueError(
            "the loss training_step returns must be a scalar (one number: the mean loss of the "
            f"batch), got a tensor of shape {tuple(loss.shape)}"
        )


def _grad_scaler_state(
    trainer: Trainer, optimizer: torch.optim.Optimizer
) -> tuple[Tensor | None, Tensor | None]:
    """(the loss scale the back-propagated losses carried, whether the scaler will skip this
    step) under a mixed-precision grad scaler (16-mixed on CUDA), else (None, None). Both stay
    on the device. At this hook Lightning has already unscaled ``p.grad``."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None, None
    found = scaler._per_optimizer_states[id(optimizer)].get("found_inf_per_device", {})
    skipped = torch.stack([f.reshape(()) for f in found.values()]).sum() > 0 if found else None
    return scaler._scale, skipped
