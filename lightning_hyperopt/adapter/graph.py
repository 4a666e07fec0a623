"""``GraphBridge``: where the engine meets the training step's graph.

- **The backward stand-in.** During a fit the bridge stands in for ``LightningModule.backward``
  (unless the module overrides it, or under DDP, whose own backward starts the gradient
  all-reduce): one back-prop of the step's loss fills ``p.grad`` and gives the graph H·y needs
  (:meth:`TangentEngine.backward`). Otherwise H·y comes from the same graph just before the
  module's own backward (``on_before_backward``), at the cost of one more backward pass.
- **Kernel guards.** The steps that need second derivatives run on kernels that have them
  (:mod:`lightning_hyperopt.core.kernels`); the other steps keep the fast ones.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import Tensor

from lightning_hyperopt._lightning import LightningModule, Patch
from lightning_hyperopt.adapter.fit_plan import FitPlan
from lightning_hyperopt.core import kernels
from lightning_hyperopt.core.arguments import check_scalar_loss
from lightning_hyperopt.core.engine import TangentEngine

_TRAINING_LOSS = "the loss training_step returns must be"


class GraphBridge:
    """The backward stand-in and the kernel guards of one fit."""

    def __init__(self) -> None:
        self._patch: Patch | None = None
        self._native_rnn = False
        #: entered while a step that needs H·y runs (kernels with a double backward)
        self._kernels: contextlib.AbstractContextManager | None = None

    def start(self, pl_module: LightningModule, engine: TangentEngine, plan: FitPlan) -> None:
        """Stand in for ``pl_module.backward`` for this fit, where the plan says so."""
        self._native_rnn = plan.native_rnn
        if not plan.patch_backward:
            return
        original = pl_module.backward

        def backward(loss: Tensor, *args: Any, **kwargs: Any) -> None:
            check_scalar_loss(_TRAINING_LOSS, loss)
            engine.backward(loss, run_backward=lambda: original(loss, *args, **kwargs))

        self._patch = Patch(pl_module, "backward", backward)

    @property
    def patched(self) -> bool:
        """Whether the bridge stands in for ``LightningModule.backward`` in this fit."""
        return self._patch is not None

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

    def end(self) -> None:
        """The fit ended (or failed): kernels and ``backward`` as they were."""
        self.exit_step()
        if self._patch is not None:
            self._patch.restore()
            self._patch = None
