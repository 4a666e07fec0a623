"""``GraphBridge``: where the engine meets the training step's graph.

- **The backward stand-in.** During a fit the bridge stands in for ``LightningModule.backward``
  (unless the module overrides it, or under DDP, whose own backward starts the gradient
  all-reduce): one back-prop of the step's loss fills ``p.grad`` and gives the graph H·y needs
  (:meth:`TangentEngine.backward`). Otherwise H·y comes from the same graph just before the
  module's own backward (``on_before_backward``), at the cost of one more backward pass.
- **Kernel guards.** The steps that need second derivatives run on kernels that have them
  (:mod:`lightning_hyperopt.core.kernels`); the other steps keep the fast ones.
- **The grad scaler.** Under 16-mixed, the loss scale the back-propagated losses carried and
  whether the scaler will skip the step.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt.adapter.fit_plan import FitPlan, LightningModule, Trainer
from lightning_hyperopt.core import kernels
from lightning_hyperopt.core.arguments import check_scalar_loss
from lightning_hyperopt.core.engine import TangentEngine

_TRAINING_LOSS = "the loss training_step returns must be"


class GraphBridge:
    """The backward stand-in, the kernel guards and the grad scaler's state of one fit."""

    def __init__(self) -> None:
        self.patched = False
        self._native_rnn = False
        #: entered while a step that needs H·y runs (kernels with a double backward)
        self._kernels: contextlib.AbstractContextManager | None = None

    def start(self, pl_module: LightningModule, engine: TangentEngine, plan: FitPlan) -> None:
        """Stand in for ``pl_module.backward`` for this fit, where the plan says so."""
        self._native_rnn = plan.native_rnn
        self.patched = plan.patch_backward
        if not self.patched:
            return
        original = pl_module.backward

        def backward(loss: Tensor, *args: Any, **kwargs: Any) -> None:
            check_scalar_loss(_TRAINING_LOSS, loss)
            engine.backward(loss, run_backward=lambda: original(loss, *args, **kwargs))

        pl_module.backward = backward

    def before_backward(self, engine: TangentEngine, loss: Tensor) -> None:
        """Hook mode (the module's own backward runs): the drift terms from the graph first."""
        if self.patched:
            return
        check_scalar_loss(_TRAINING_LOSS, loss)
        engine.backward(loss, fill_grads=False)  # the module's own backward follows

    def enter_step(self, engine: TangentEngine) -> None:
        """Before a training step whose backward needs H·y: kernels with a double backward
        (SDPA's math kernel, compiled code run eagerly, native RNN kernels; see
        :func:`~lightning_hyperopt.core.kernels.second_order_kernels`)."""
        if engine.needs_graph and self._kernels is None:
            self._kernels = kernels.second_order_kernels(self._native_rnn)
            self._kernels.__enter__()

    def exit_step(self) -> None:
        """After the step's tangent: the kernels as they were."""
        if self._kernels is not None:
            guard, self._kernels = self._kernels, None
            guard.__exit__(None, None, None)

    def end(self, pl_module: LightningModule) -> None:
        """The fit ended (or failed): kernels and ``backward`` as they were."""
        self.exit_step()
        if self.patched and "backward" in vars(pl_module):
            del pl_module.backward
        self.patched = False


def grad_scaler_state(
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
