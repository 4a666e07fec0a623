"""``LossReplay``: the training step's batches and RNG state, kept for the finite-difference
replays of a dropout keep probability.

    capture (on_train_batch_start)  the batch and the RNG state the training step will draw from
    commit (on_after_backward)      only micro-batches whose loss reached the gradient
    losses()                        training_loss(batch) / accumulate_grad_batches per committed
                                    micro-batch, drawn from its own RNG state: the step's masks
                                    (without training_loss: training_step's loss, logging
                                    dropped)

The replays' side effects on buffers (batch-norm running statistics and counters) are undone:
the training step already updated them once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt._lightning import LightningModule, Trainer
from lightning_hyperopt.adapter.fit_plan import FitPlan
from lightning_hyperopt.adapter.module_losses import ModuleLoss, PassIsolation
from lightning_hyperopt.core.arguments import check_probed_loss
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter

Captured = tuple[Any, int, Tensor, Tensor | None]


@contextlib.contextmanager
def restoring_buffers(module: torch.nn.Module) -> Iterator[None]:
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


def _devices(pl_module: LightningModule) -> list[torch.device]:
    return [pl_module.device] if pl_module.device.type == "cuda" else []


class LossReplay:
    """The micro-batches of the current optimizer step, replayable with their own randomness."""

    def __init__(self) -> None:
        self.enabled = False
        self._probe = False
        self._pending: Captured | None = None
        self._stash: list[Captured] = []
        self._source: ModuleLoss | None = None
        self._isolation = PassIsolation()

    def start(self, plan: FitPlan, pl_module: LightningModule) -> None:
        """A new fit: replays only when some hyperparameter needs them; the first captured
        batch probes ``training_loss`` (or ``training_step``) first."""
        self.enabled = plan.replays
        self._probe = plan.replays
        if self.enabled:
            self._source = ModuleLoss(pl_module, "training_loss", "training_step")
            self._isolation.start(pl_module)
        self.clear()

    def _loss(self, pl_module: LightningModule, batch: Any, batch_idx: int) -> Tensor:
        assert self._source is not None
        with self._isolation(pl_module):
            return self._source(pl_module, batch, batch_idx)

    def capture(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Before the training step: its batch and the RNG state it will draw from."""
        if not self.enabled:
            return
        if self._probe:
            self._probe = False
            self.probe(trainer, pl_module, batch, batch_idx)
        cuda = torch.cuda.get_rng_state() if pl_module.device.type == "cuda" else None
        self._pending = (batch, batch_idx, torch.get_rng_state(), cuda)

    def commit(self) -> None:
        """After a backward: the captured micro-batch reached the gradient (a training_step
        returning None has no backward, and is not replayed)."""
        if self._pending is not None:
            self._stash.append(self._pending)
            self._pending = None

    def clear(self) -> None:
        self._stash.clear()

    def losses(self, trainer: Trainer, pl_module: LightningModule) -> Iterator[Tensor]:
        """The committed micro-batches' training losses again, each with its own RNG state
        (scaled like the originals)."""
        devices = _devices(pl_module)
        scale = trainer.accumulate_grad_batches
        for batch, batch_idx, cpu_state, cuda_state in self._stash:
            # the kernels of the step replayed: a replay needs only first derivatives, so it
            # runs where the step ran (native RNN kernels inside a step that needs H·y, whose
            # guard is still entered; cuDNN/oneDNN otherwise, e.g. every FirstOrder step)
            with torch.random.fork_rng(devices=devices):
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, pl_module.device)
                with trainer.precision_plugin.forward_context():
                    loss = self._loss(pl_module, batch, batch_idx)
            yield loss / scale

    def replaying(self, pl_module: LightningModule) -> contextlib.AbstractContextManager:
        """The context the replays run in: buffers restored afterwards."""
        return restoring_buffers(pl_module) if self.enabled else contextlib.nullcontext()

    def probe(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """``training_loss`` (or ``training_step``) on the first training batch, before its
        step: a finite scalar."""
        with (
            torch.random.fork_rng(devices=_devices(pl_module)),
            restoring_buffers(pl_module),
            torch.no_grad(),
            trainer.precision_plugin.forward_context(),
        ):
            loss = self._loss(pl_module, batch, batch_idx)
        assert self._source is not None
        check_probed_loss(self._source.name, loss)
