"""``OnlineHyperparamCallback``: the Lightning adapter around :class:`TangentEngine`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import SingleDeviceStrategy
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_hyperopt.core.dropout import ADOPT_MODES, AdoptMode, adopt_dropout
from lightning_hyperopt.core.engine import TangentEngine, check_optimizer
from lightning_hyperopt.core.hyperparameters import Hyperparameter, WeightDecay
from lightning_hyperopt.core.methods import HyperMethod, resolve_method

MethodName = Literal["clip", "exact", "unroll", "first_order"]


def find_hyperparameters(module: torch.nn.Module) -> dict[str, Hyperparameter]:
    """Every :class:`Hyperparameter` in ``module``'s tree, keyed by its dotted module path."""
    return {name: m for name, m in module.named_modules() if isinstance(m, Hyperparameter)}


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval behaviour (dropout off, batch-norm running statistics), restoring each flag."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _native_rnn_kernels() -> Iterator[None]:
    """cuDNN's and oneDNN's RNN kernels off: cuDNN's has no double backward, and on CPU the
    native LSTM's replay (HVP and plain gradient) is faster than oneDNN's."""
    saved = torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled
    torch.backends.cudnn.enabled = torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled = saved


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


class OnlineHyperparamCallback(pl.Callback):
    """Tunes the hyperparameters a LightningModule declares, online, during ``fit``.

    Carries y_j = dθ/dλ_j for every declared :class:`Hyperparameter` λ_j along the SGD
    trajectory, y ← P(y − η (H y + ∂g_T/∂λ)) with H y by double back-prop in
    ``on_before_optimizer_step``, and after each optimizer step moves
    λ_j ← λ_j − α ⟨g_V, y_j⟩ with g_V from a batch of its own validation iterator.

    The LightningModule provides:

    - ``training_loss(batch) -> Tensor``: the regularized L_T(θ, λ) of one batch (its
      ``training_step`` should return it, so that both agree). The callback replays it on each
      micro-batch, as often as the method and the hyperparameters need (once for H y, twice
      per finite-difference λ, not at all for some), so it should have no side effects (no
      ``self.log``, no counters): log from ``training_step``;
    - ``validation_loss(batch) -> Tensor``: the unregularized L_V(θ), computed in eval mode:
      dropout is off, and batch-norm layers normalize with their running statistics and do
      not update them (the g_V pass leaves every buffer as it was);
    - hyperparameters as :class:`Hyperparameter` submodules (``L2Penalty``, ``WeightDecay``…);
    - optionally ``hyperopt_dataloader()`` (on the datamodule or the module): the loader g_V is
      drawn from, endlessly; by default the validation dataloader. It is independent of
      Lightning's validation loop.

    Replays of models that contain an ``nn.RNNBase`` (LSTM, GRU, RNN) run with cuDNN and
    oneDNN off, on the native kernels, which have a double backward.

    The replay restores the RNG state taken in this callback's ``on_train_batch_start``, so it
    draws the training step's own dropout masks as long as nothing between that hook and
    ``training_step`` (the module's ``on_train_batch_start``, later callbacks) draws random
    numbers. η is the learning rate of param group 0 at that step; steps that SGD does not take
    (no gradient, or a non-finite one that the AMP grad scaler skips) move neither y nor λ.

    Args:
        method: ``Clip(radius, hyper_lr_scale)``, ``Exact(hyper_lr_scale)``,
            ``Unroll(steps, hyper_lr_scale)``, ``FirstOrder(hyper_lr)``, or one of their names
            (``"clip"``, ``"exact"``, ``"unroll"``, ``"first_order"``) for the defaults.
        warmup_steps: optimizer steps before λ starts moving (the tangent moves from step 0).
        prog_bar: show each λ on the progress bar.
        adopt_dropout: at setup, replace the model's ``nn.Dropout`` modules by
            :class:`TunableDropout` layers (see :func:`adopt_dropout`) with one shared keep
            probability (``"shared"``) or one per module (``"per_module"``), starting at 1 − p;
            ``None`` leaves the model as it is.
    """

    def __init__(
        self,
        method: HyperMethod | MethodName = "clip",
        warmup_steps: int = 0,
        prog_bar: bool = True,
        adopt_dropout: AdoptMode | None = None,
    ) -> None:
        super().__init__()
        if adopt_dropout is not None and adopt_dropout not in ADOPT_MODES:
            raise ValueError(
                f"adopt_dropout={adopt_dropout!r} is not supported; accepted values: "
                f"{ADOPT_MODES} or None"
            )
        self.adopt_dropout = adopt_dropout
        self._native_rnn = False
        self.method = resolve_method(method)
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")
        self.warmup_steps = int(warmup_steps)
        self.prog_bar = prog_bar
        self.engine: TangentEngine | None = None
        self._module: pl.LightningModule | None = None
        self._restored: dict[str, Any] | None = None
        self._stash: list[tuple[Any, Tensor, Tensor | None]] = []
        self._pending: tuple[Any, Tensor, Tensor | None] | None = None
        self._stepped = False
        self._val_loader: Any = None
        self._val_iter: Iterator[Any] | None = None
        self._val_pass = 0
        self._val_index = 0
        self._val_seed = 0

    # ------------------------------------------------------------------------------- checks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(trainer.strategy, SingleDeviceStrategy):
            raise ValueError(
                f"OnlineHyperparamCallback supports single-device training only "
                f"(strategy='auto' on one device); got {type(trainer.strategy).__name__}"
            )
        if not pl_module.automatic_optimization:
            raise ValueError(
                "OnlineHyperparamCallback needs automatic optimization; manual optimization "
                "(automatic_optimization = False) is not supported"
            )
        for hook in ("training_loss", "validation_loss"):
            if not callable(getattr(pl_module, hook, None)):
                raise TypeError(
                    f"{type(pl_module).__name__} must define `{hook}(batch) -> Tensor` for "
                    "OnlineHyperparamCallback (training_loss: regularized L_T; validation_loss: "
                    "unregularized L_V)"
                )
        if self.adopt_dropout is not None:
            # before the optimizer exists and before a checkpoint's state_dict is loaded
            adopt_dropout(pl_module, self.adopt_dropout)
        if trainer.gradient_clip_val:
            rank_zero_warn(
                "OnlineHyperparamCallback: gradient clipping is applied to θ's step but the "
                "tangent y = dθ/dλ ignores it (the tangent of the unclipped step is carried)"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hyperparameters = find_hyperparameters(pl_module)
        if not hyperparameters:
            raise ValueError(
                f"{type(pl_module).__name__} declares no hyperparameter: add a Hyperparameter, "
                "L2Penalty or WeightDecay submodule (from lightning_hyperopt) to tune"
            )
        if len(trainer.optimizers) != 1:
            raise ValueError(
                "OnlineHyperparamCallback supports exactly one optimizer (torch.optim.SGD), "
                f"got {len(trainer.optimizers)}"
            )
        optimizer = trainer.optimizers[0]
        check_optimizer(optimizer, hyperparameters.values())
        # a checkpoint's state, or this callback's own when `fit` is called again on the same
        # model (the tuning continues; a fresh optimizer restarts only the momentum tangent)
        state = self._restored
        if state is None and self.engine is not None and self._module is pl_module:
            state = self.state_dict()
        if state is None:
            for h in hyperparameters.values():
                if isinstance(h, WeightDecay) and h.init_from_optimizer:
                    wd = float(optimizer.param_groups[h.group]["weight_decay"])
                    h.value.fill_(min(max(wd, h.bounds[0]), h.bounds[1]))
        self.engine = TangentEngine(self.method, hyperparameters, optimizer, self.warmup_steps)
        self._native_rnn = any(isinstance(m, torch.nn.RNNBase) for m in pl_module.modules())
        self._module = pl_module
        self._val_loader = self._find_val_loader(trainer, pl_module)
        self._val_seed = int(torch.initial_seed()) % (2**62)
        self._val_pass, self._val_index = 0, 0
        if state is not None:
            self.engine.load_state_dict(state["engine"])
            self._val_seed = int(state["val_seed"])
            self._val_pass = int(state["val_pass"])
            self._val_index = int(state["val_index"])
            self._restored = None
        self._val_iter = None
        self._stash.clear()

    @staticmethod
    def _find_val_loader(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
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

    # -------------------------------------------------------------------------- the step
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stash.clear()  # a batch skipped by `on_train_batch_start` returning -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the RNG state lets the replay draw the training step's own dropout masks
        cuda = torch.cuda.get_rng_state() if pl_module.device.type == "cuda" else None
        self._pending = (batch, torch.get_rng_state(), cuda)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # only micro-batches whose loss reached the gradient are replayed (a training_step
        # returning None has no backward)
        if self._pending is not None:
            self._stash.append(self._pending)
            self._pending = None

    def _replayed_losses(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> Iterator[Tensor]:
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
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        assert self.engine is not None
        if not self.engine.step_applies():
            # no gradient (training_step returned None) or a non-finite one (the AMP grad
            # scaler skips that step): θ does not move, so neither do y and λ
            self._stash.clear()
            return
        with torch.enable_grad(), _restoring_buffers(pl_module):
            self.engine.advance(lambda: self._replayed_losses(trainer, pl_module))
        self._stash.clear()
        self._stepped = True

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._stepped:  # a micro-batch of an accumulation window
            return
        self._stepped = False
        assert self.engine is not None
        with torch.enable_grad():
            self.engine.update(lambda: self._validation_loss(trainer, pl_module))
        metrics = self.engine.metrics()
        for name, value in metrics.items():
            prog_bar = self.prog_bar and name in self.engine.names
            pl_module.log(
                f"hyperopt/{name}", value, on_step=True, on_epoch=False, prog_bar=prog_bar
            )

    # ------------------------------------------------------------------- validation batches
    def _next_val_batch(self) -> Any:
        """The next batch of the endless validation iterator, reproducible across resumes."""
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
                        batch = next(self._val_iter)
                else:
                    batch = next(self._val_iter)
            except StopIteration:
                self._val_iter, self._val_pass, self._val_index = None, self._val_pass + 1, 0
                continue
            self._val_index += 1
            return batch
        raise ValueError("the validation dataloader for OnlineHyperparamCallback is empty")

    def _validation_loss(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        batch = trainer.precision_plugin.convert_input(self._next_val_batch())
        # the batch-transfer hooks see a validation batch (`trainer.validating`), so
        # training-only augmentation there leaves g_V's batches alone
        stage = trainer.state.stage
        trainer.state.stage = RunningStage.VALIDATING
        try:
            batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
            batch = trainer.strategy.batch_to_device(batch)
        finally:
            trainer.state.stage = stage
        # cuDNN's RNN has no backward in eval mode: g_V of an RNN runs on the native kernels
        kernels = _native_rnn_kernels() if self._native_rnn else contextlib.nullcontext()
        with _eval_mode(pl_module), kernels, trainer.precision_plugin.forward_context():
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
