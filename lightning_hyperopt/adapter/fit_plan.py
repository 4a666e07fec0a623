"""Fit checks: what a fit needs of the tuner, decided once, and the errors raised before any
training work when the tuner cannot follow the Trainer or the module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lightning_hyperopt._lightning import namespace_of
from lightning_hyperopt.adapter.module_losses import ModuleLoss
from lightning_hyperopt.core.autograd_limits import SPARSE_FIX
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.kernels import has_rnn
from lightning_hyperopt.core.optim import GradientClipping

#: Lightning objects, typed loosely: the adapter serves both Lightning namespaces
Trainer = Any
LightningModule = Any

_TRANSFER_HOOKS = (
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
)


@dataclass(frozen=True)
class FitPlan:
    """What this fit needs, decided at fit start.

    Attributes:
        distributed: data-parallel (DDP): drift terms and hypergradients are averaged.
        rank, world: this process and the number of processes (0, 1 without DDP).
        gradient_clipping: Lightning's clipping, which the tangent follows, or ``None``.
        native_rnn: the model has an RNN: H·y steps and g_V passes run on native kernels.
        replays: some hyperparameter is differentiated by finite differences of replayed
            training losses (the step's batch and RNG state are kept).
        patch_backward: the callback stands in for ``LightningModule.backward`` (one
            back-prop gives ``p.grad`` and the graph H·y needs); otherwise the module's own
            backward runs and H·y comes from the graph just before it.
        transfer_hooks: g_V's batches go through Lightning's batch-transfer hooks (a module
            or datamodule customizes one, or the strategy is not a plain single device).
        plain_train: no module in the tree overrides ``train()``: eval flags are set directly.
    """

    distributed: bool
    rank: int
    world: int
    gradient_clipping: GradientClipping | None
    native_rnn: bool
    replays: bool
    patch_backward: bool
    transfer_hooks: bool
    plain_train: bool


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
    """At setup: the strategy, automatic optimization, a source of L_V and Lightning's own
    gradient clipping (the tangent follows no other). Returns whether the fit is distributed."""
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
    """At fit start: something to tune, and one optimizer; returns it."""
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


def plan_fit(
    trainer: Trainer,
    pl_module: LightningModule,
    hyperparameters: dict[str, Hyperparameter],
    distributed: bool,
) -> FitPlan:
    """The :class:`FitPlan` of this fit (``distributed``: as :func:`check_trainer` found)."""
    ns = namespace_of(trainer)
    own_backward = type(pl_module).backward is ns.LightningModule.backward
    return FitPlan(
        distributed=distributed,
        rank=trainer.global_rank if distributed else 0,
        world=trainer.world_size if distributed else 1,
        gradient_clipping=_gradient_clipping(trainer),
        native_rnn=has_rnn(pl_module),
        replays=any(h.drift_source == "finite_difference" for h in hyperparameters.values()),
        # under DDP the module's own backward must run: it triggers the gradient all-reduce
        patch_backward=own_backward and not distributed,
        transfer_hooks=_overrides_transfer_hooks(trainer, pl_module),
        plain_train=all(type(m).train is torch.nn.Module.train for m in pl_module.modules()),
    )


def _gradient_clipping(trainer: Trainer) -> GradientClipping | None:
    if not trainer.gradient_clip_val:
        return None
    algorithm = trainer.gradient_clip_algorithm or "norm"
    name = str(getattr(algorithm, "value", algorithm))  # Lightning's enum or a string
    return GradientClipping(float(trainer.gradient_clip_val), name)  # type: ignore[arg-type]


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
