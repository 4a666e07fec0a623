"""The fit checks: what the tuner cannot follow, refused with a clear error before any
training work, each a function of what it checks (the Trainer, the module, the hyperparameters)
that raises or returns what it found; :func:`check_fit` runs them all, in order."""

from __future__ import annotations

from typing import Any

import torch

from lightning_hyperopt._lightning import LightningModule, Trainer, namespace_of
from lightning_hyperopt.adapter.module_losses import ModuleLoss
from lightning_hyperopt.core.autograd_limits import SPARSE_FIX
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.methods import HyperMethod


def check_fit(
    trainer: Trainer,
    pl_module: LightningModule,
    hyperparameters: dict[str, Hyperparameter],
    method: HyperMethod,
) -> tuple[bool, torch.optim.Optimizer]:
    """Every check of a fit: the Trainer and the module, the replays, something to tune with one
    optimizer, sparse gradients. Returns (whether the fit is distributed, the optimizer)."""
    distributed = check_trainer(trainer, pl_module)
    check_replays(pl_module, hyperparameters)
    optimizer = check_hyperparameters(trainer, pl_module, hyperparameters)
    check_sparse_gradients(pl_module, method)
    return distributed, optimizer


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


def check_trainer(trainer: Trainer, pl_module: LightningModule) -> bool:
    """The strategy, automatic optimization, a source of L_V and Lightning's own gradient
    clipping (the tangent follows no other). Returns whether the fit is distributed."""
    distributed = check_strategy(trainer.strategy)
    if not pl_module.automatic_optimization:
        raise ValueError(
            "OnlineHyperparamCallback needs automatic optimization; manual optimization "
            "(automatic_optimization = False) is not supported"
        )
    if not ModuleLoss.available(pl_module, "validation_loss", "validation_step"):
        raise TypeError(
            f"{type(pl_module).__name__} must define `validation_loss(batch) -> Tensor`, or a "
            "`validation_step` that returns the loss, for OnlineHyperparamCallback: the "
            "unregularized L_V whose gradient g_V moves λ"
        )
    ns = namespace_of(trainer)
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
    return distributed


def check_replays(pl_module: LightningModule, hyperparameters: dict[str, Hyperparameter]) -> None:
    """Finite-difference hyperparameters replay the step's loss: ``training_loss``, else the
    loss ``training_step`` returns."""
    finite_difference = [
        name for name, h in hyperparameters.items() if h.drift_source == "finite_difference"
    ]
    if finite_difference and not ModuleLoss.available(pl_module, "training_loss", "training_step"):
        raise TypeError(
            f"{type(pl_module).__name__} must define `training_loss(batch) -> Tensor`, or a "
            f"`training_step` that returns the loss: hyperparameters {finite_difference} are "
            "differentiated by finite differences of replayed training losses"
        )


def check_hyperparameters(
    trainer: Trainer, pl_module: LightningModule, hyperparameters: dict[str, Hyperparameter]
) -> torch.optim.Optimizer:
    """Something to tune, and one optimizer; returns it."""
    if not hyperparameters:
        raise ValueError(
            f"{type(pl_module).__name__} declares no hyperparameter: pass "
            "OnlineHyperparamCallback(tune={'weight_decay': WeightDecay(), 'lr': "
            "LearningRate()}) or adopt_dropout='shared', or add a Hyperparameter, L2Penalty, "
            "WeightDecay or KeepProbability submodule (from lightning_hyperopt)"
        )
    if len(trainer.optimizers) != 1:
        raise ValueError(
            "OnlineHyperparamCallback supports exactly one optimizer, "
            f"got {len(trainer.optimizers)}"
        )
    return trainer.optimizers[0]


def check_sparse_gradients(pl_module: LightningModule, method: Any) -> None:
    """The methods with a tangent need H·y, which sparse gradients do not support: an
    ``nn.Embedding``/``nn.EmbeddingBag`` with ``sparse=True`` is named at fit start (other sparse
    gradients are caught at the first backward)."""
    if not method.uses_tangent:
        return
    sparse = [
        f"{name} ({type(m).__name__}(..., sparse=True))"
        for name, m in pl_module.named_modules()
        if isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag) and m.sparse
    ]
    if sparse:
        raise ValueError(
            f"{type(method).__name__}: {', '.join(sparse)} gives a sparse gradient; {SPARSE_FIX}"
        )
