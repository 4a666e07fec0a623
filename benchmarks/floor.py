"""The floor of an online step: what any online method must compute on top of a plain step,

    floor step = plain step + next batch of the validation loader + ∇_θ L_V(θ) on it,

one validation batch drawn from the loader the tuner would draw g_V from (its per-sample
fetch and collate included), one forward of the validation loss in eval mode and one backward
to the parameters, after every training step. ``bench cost`` times it like any other
configuration, so that every method's step is stated against the floor as well as against the
plain step: the method's own overhead is its ratio to the floor.

:func:`floor_class` gives the callback for a namespace (``pytorch_lightning`` or
``lightning.pytorch``); the hooks are written once, in :class:`FloorHooks`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

from lightning_hyperopt.adapter.gather import gathered_iterator
from lightning_hyperopt.adapter.module_losses import ModuleLoss, PassIsolation
from lightning_hyperopt.adapter.validation import eval_mode, find_loader
from lightning_hyperopt.core.kernels import has_rnn, native_rnn_kernels


class FloorHooks:
    """After every training step: the next validation batch and ∇_θ L_V on it (discarded).

    The batch comes from the module's or datamodule's ``hyperopt_dataloader()``, else the
    fit's validation dataloader (:func:`~lightning_hyperopt.adapter.validation.find_loader`,
    as for the tuner), endlessly, gathered by index where the tuner gathers it
    (:mod:`~lightning_hyperopt.adapter.gather`); L_V is ``validation_loss`` or
    ``validation_step``'s loss, in eval mode, on the native RNN kernels for a model with an
    RNN, its logging dropped (as the tuner's g_V pass)."""

    def __init__(self) -> None:
        self.passes = 0  # validation batches drawn (one per training step)
        self._loader: Any = None
        self._iter: Iterator[Any] | None = None
        self._loss: ModuleLoss | None = None
        self._params: list[torch.Tensor] = []
        self._plain = False
        self._rnn = False
        self._isolation = PassIsolation()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._loader = find_loader(trainer, pl_module)
        self._iter = None
        self._loss = ModuleLoss(pl_module, "validation_loss", "validation_step")
        self._params = [p for p in pl_module.parameters() if p.requires_grad]
        modules = list(pl_module.modules())
        self._plain = all(type(m).train is torch.nn.Module.train for m in modules)
        self._rnn = has_rnn(pl_module)
        self._isolation.start(pl_module)

    def _next_batch(self) -> Any:
        for _ in range(2):
            try:
                if self._iter is None:
                    # as the tuner's stream: a new pass draws its seed and order off the global
                    # RNG, so that the training steps' dropout masks are the plain fit's
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self.passes)
                        self._iter = gathered_iterator(self._loader) or iter(self._loader)
                        return next(self._iter)
                return next(self._iter)
            except StopIteration:
                self._iter = None
        raise ValueError("floor: the validation dataloader is empty")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        assert self._loss is not None
        batch = self._next_batch()
        if pl_module.device.type != "cpu":
            batch = move_data_to_device(batch, pl_module.device)
        kernels = native_rnn_kernels() if self._rnn else contextlib.nullcontext()
        with (
            torch.enable_grad(),
            eval_mode(pl_module, self._plain),
            kernels,
            self._isolation(pl_module),
        ):
            loss = self._loss(pl_module, batch, 0)
            torch.autograd.grad(loss, self._params, allow_unused=True)
        self.passes += 1


def floor_class(namespace: str = "pytorch_lightning") -> type:
    """The floor as a callback of ``namespace`` (``pytorch_lightning`` or
    ``lightning.pytorch``)."""
    callback = importlib.import_module(namespace).Callback
    return type("Floor", (FloorHooks, callback), {"__module__": __name__})
