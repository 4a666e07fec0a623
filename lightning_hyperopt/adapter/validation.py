"""``ValidationStream``: the endless stream of validation batches g_V is drawn from, and the
validation loss on them.

    L_V(θ) = module.validation_loss(batch),   batch = the next of this process's share

(or, for a module without ``validation_loss``, the loss its ``validation_step`` returns; the
module's logging is dropped there: see :mod:`~lightning_hyperopt.adapter.module_losses`)
computed in eval mode (dropout off, batch-norm running statistics, every buffer left as it was)
with a graph to the parameters. The stream is the module's or datamodule's
``hyperopt_dataloader()``, else the validation dataloader, drawn with a seed per pass (the
global RNG is left alone, and shuffling is the same after a resume) and independent of
Lightning's own validation loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_hyperopt._lightning import (
    LightningModule,
    Trainer,
    before_batch_transfer,
    fit_validation_loader,
    namespace_of,
    own_iterator,
)
from lightning_hyperopt.adapter.fit_plan import FitPlan
from lightning_hyperopt.adapter.gather import gathered_iterator
from lightning_hyperopt.adapter.module_losses import ModuleLoss, NoLoss, PassIsolation
from lightning_hyperopt.adapter.rebatch import rebatched
from lightning_hyperopt.core.arguments import check_probed_loss
from lightning_hyperopt.core.autograd_limits import named_limits
from lightning_hyperopt.core.kernels import native_rnn_kernels


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module, plain: bool = False) -> Iterator[None]:
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


def find_loader(trainer: Trainer, pl_module: LightningModule) -> Any:
    """``hyperopt_dataloader()`` of the datamodule or module, else the fit's validation
    dataloader (there must be exactly one)."""
    for owner in (trainer.datamodule, pl_module):
        hook = getattr(owner, "hyperopt_dataloader", None)
        if callable(hook):
            return hook()
    loader = fit_validation_loader(trainer)
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


def _private_iterator(loader: Any) -> Iterator[Any]:
    """An iterator of our own: a DataLoader with persistent workers hands every ``iter()`` the
    same iterator, which Lightning's validation loop would reset under us. A loader over stored
    tensors yields the same batches gathered by index (:mod:`~lightning_hyperopt.adapter.
    gather`: no per-sample fetch and collate)."""
    gathered = gathered_iterator(loader)
    if gathered is not None:
        return gathered
    if isinstance(loader, DataLoader) and loader.persistent_workers and loader.num_workers > 0:
        return own_iterator(loader)
    return iter(loader)


class ValidationStream:
    """This process's share of the endless validation stream, and L_V on its batches.

    State (checkpointed): the shuffling seed, the pass, and the batches of the pass drawn so
    far. Under DDP the stream is dealt out in blocks of W batches (W processes): process r
    keeps the r-th batch of each block and every process draws the whole block, so all of them
    stay at the same position; a pass's last, incomplete block is dropped by all.

    ``batch_size``: the loader rebuilt with that many samples per batch
    (:func:`~lightning_hyperopt.adapter.rebatch.rebatched`), or ``None``: its own batches.
    """

    def __init__(self, batch_size: int | None = None) -> None:
        self.batch_size = batch_size
        self.loader: Any = None
        self.seed = 0
        self.passes = 0
        self.index = 0
        self._iter: Iterator[Any] | None = None
        self._plan: FitPlan | None = None
        self._source: ModuleLoss | None = None
        self._isolation = PassIsolation()
        self._batch_idx = 0

    def start(self, trainer: Trainer, pl_module: LightningModule, plan: FitPlan) -> None:
        """Find the loader; the seed is rank 0's (so the processes' shares partition the
        stream), or, continuing a run (``plan.resume``), its seed and position."""
        self._plan = plan
        self._source = ModuleLoss(pl_module, "validation_loss", "validation_step")
        self._isolation.start(pl_module)
        self.loader = find_loader(trainer, pl_module)
        if self.batch_size is not None:
            self.loader = rebatched(self.loader, self.batch_size)
        self.seed = int(trainer.strategy.broadcast(int(torch.initial_seed()) % (2**62)))
        self.passes, self.index = 0, 0
        if plan.resume is not None:
            self.load_state_dict(plan.resume)
        self._iter = None

    def next_batch(self) -> Any:
        """The next batch of this process's share, reproducible across resumes."""
        plan = self._plan
        assert plan is not None
        for _ in range(2):
            try:
                if self._iter is None:
                    # a seed per pass: shuffling is reproducible after resume and the global RNG
                    # (dropout masks of the training steps) is left untouched. Samplers draw
                    # their order lazily, at the first batch, so that batch is drawn here too.
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self.seed + self.passes)
                        self._iter = _private_iterator(self.loader)
                        for _ in range(self.index):
                            next(self._iter)
                        block = [next(self._iter)]
                else:
                    block = [next(self._iter)]
                block += [next(self._iter) for _ in range(plan.world - 1)]
            except StopIteration:
                self._iter, self.passes, self.index = None, self.passes + 1, 0
                continue
            self._batch_idx = self.index // plan.world
            self.index += plan.world
            return block[plan.rank]
        raise ValueError(
            "the validation dataloader for OnlineHyperparamCallback is empty"
            + (f" or has fewer batches than the {plan.world} processes" if plan.world > 1 else "")
            + self._at_batch_size()
        )

    def loss(self, trainer: Trainer, pl_module: LightningModule, batch: Any = None) -> Tensor:
        """L_V on ``batch`` (default: the stream's next), with a graph to the parameters."""
        plan, source = self._plan, self._source
        assert plan is not None and source is not None
        if batch is None:
            batch = self.next_batch()
        else:
            self._batch_idx = 0
        batch = trainer.precision_plugin.convert_input(batch)
        if plan.transfer_hooks:
            # the batch-transfer hooks see a validation batch (`trainer.validating`), so
            # training-only augmentation there leaves g_V's batches alone
            stage = trainer.state.stage
            trainer.state.stage = namespace_of(trainer).trainer.states.RunningStage.VALIDATING
            try:
                batch = before_batch_transfer(pl_module, batch)
                batch = trainer.strategy.batch_to_device(batch)
            finally:
                trainer.state.stage = stage
        elif pl_module.device.type != "cpu":  # the default hooks' transfer, minus their cost
            batch = move_data_to_device(batch, pl_module.device)
        # cuDNN's RNN has no backward in eval mode: g_V of an RNN runs on the native kernels
        kernels = native_rnn_kernels() if plan.native_rnn else contextlib.nullcontext()
        with (
            eval_mode(pl_module, plan.plain_train),
            kernels,
            trainer.precision_plugin.forward_context(),
            self._isolation(pl_module),
        ):
            return source(pl_module, batch, self._batch_idx)

    def probe(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """One validation batch through ``validation_loss`` (or ``validation_step``) before any
        training step, and its gradient: a batch the hook cannot take, a step that returns no
        loss, a loss that is not a finite scalar with a graph, or a graph ``torch.autograd.grad``
        cannot go through (reentrant checkpointing) fails now, not at the first λ update (after
        the warm-up)."""
        assert self._source is not None
        hook = self._source.name
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                batch = next(iter(self.loader))  # a throw-away pass, seeded like pass 0
            except StopIteration:
                raise ValueError(
                    "the validation dataloader for OnlineHyperparamCallback is empty"
                    + self._at_batch_size()
                ) from None
            try:
                with torch.enable_grad():
                    loss = self.loss(trainer, pl_module, batch)
            except NoLoss:
                raise
            except Exception as err:
                raise ValueError(
                    f"{hook} failed on a batch of the validation dataloader before "
                    f"training started: {type(err).__name__}: {err}"
                ) from err
        check_probed_loss(hook, loss)
        if not loss.requires_grad:
            alternative = "; or define `validation_loss(batch) -> Tensor`"
            raise ValueError(
                f"{hook} returned a tensor without a graph to the parameters: compute it from "
                "the model's outputs, not detached (g_V is its gradient)"
                + (alternative if hook == "validation_step" else "")
            )
        # g_V is its gradient: what autograd.grad cannot go through fails here, not at step 1
        with named_limits(f"{hook}, differentiated for g_V before training started"):
            torch.autograd.grad(
                loss, [p for p in pl_module.parameters() if p.requires_grad], allow_unused=True
            )

    def _at_batch_size(self) -> str:
        if self.batch_size is None:
            return ""
        return f" at validation_batch_size={self.batch_size}"

    def state_dict(self) -> dict[str, int]:
        return {"val_seed": self.seed, "val_pass": self.passes, "val_index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["val_seed"])
        self.passes = int(state["val_pass"])
        self.index = int(state["val_index"])
