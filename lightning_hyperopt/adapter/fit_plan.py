"""Fit start in one room: :func:`plan_fit` runs every check and resolves what depends on the
fit, once, into a frozen :class:`FitPlan`; :func:`build_engine` makes the engine from it.

    plan_fit(trainer, module, arguments, continued)   checks (Trainer, module, hyperparameters,
                                                      sparse gradients), "auto"'s method, the
                                                      hyper optimizer, the initial λ → FitPlan
    build_engine(plan, strategy)                      λ₀ written, TangentEngine built, its state
                                                      restored where the fit continues a run

``continued`` is the callback state the fit continues (a checkpoint's, or the callback's own
when ``fit`` is called again on the same model), or ``None`` for a fresh start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_hyperopt._lightning import LightningModule, Trainer, namespace_of
from lightning_hyperopt.adapter.arguments import CallbackArguments
from lightning_hyperopt.adapter.checks import check_fit
from lightning_hyperopt.adapter.tuned import saved_values
from lightning_hyperopt.core.engine import TangentEngine
from lightning_hyperopt.core.hyper_optimizers import HyperOptimizer, resolve_hyper_optimizer
from lightning_hyperopt.core.hyperparameters.base import Hyperparameter
from lightning_hyperopt.core.kernels import has_rnn
from lightning_hyperopt.core.methods import HyperMethod, default_hyper_every, default_method
from lightning_hyperopt.core.optim import GradientClipping

_TRANSFER_HOOKS = (
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
)


@dataclass(frozen=True, eq=False)
class FitPlan:
    """What this fit needs, decided at fit start.

    Attributes:
        hyperparameters: name → hyperparameter: the module's and ``tune=``'s.
        optimizer: the one optimizer the tangent follows.
        method: the method (``"auto"`` resolved); ``method_chosen``: whether ``"auto"`` chose it.
        hyper_optimizer: the hyper step's rule (its state starts afresh in the engine).
        warmup_steps, hyper_every: the λ update's schedule.
        initial_values: λ₀ to write before the engine starts: taken from the optimizer on a
            fresh start, from the callback's state where the fit continues a run.
        device: the module's device (``tune=``'s hyperparameters are moved there).
        brought: the names ``tune=`` brings; ``saved``: those whose values the callback saves.
        extra_grad_targets: trained tensors of the module that the optimizer does not hold.
        resume: the callback state the fit continues, or ``None``.
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

    hyperparameters: Mapping[str, Hyperparameter]
    optimizer: torch.optim.Optimizer
    method: HyperMethod
    method_chosen: bool
    hyper_optimizer: HyperOptimizer
    warmup_steps: int
    hyper_every: int
    initial_values: Mapping[str, float]
    device: torch.device
    brought: tuple[str, ...]
    saved: tuple[str, ...]
    extra_grad_targets: tuple[Tensor, ...]
    resume: Mapping[str, Any] | None
    distributed: bool
    rank: int
    world: int
    gradient_clipping: GradientClipping | None
    native_rnn: bool
    replays: bool
    patch_backward: bool
    transfer_hooks: bool
    plain_train: bool


@contextlib.contextmanager
def resuming() -> Iterator[None]:
    """A continued state that does not fit this fit: one clear error."""
    try:
        yield
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"OnlineHyperparamCallback cannot resume from this checkpoint: {err}"
        ) from err


def plan_fit(
    trainer: Trainer,
    pl_module: LightningModule,
    arguments: CallbackArguments,
    continued: Mapping[str, Any] | None,
) -> FitPlan:
    """Every check of the fit, then the :class:`FitPlan`: the method (``"auto"``:
    :func:`~lightning_hyperopt.core.methods.default_method`), the hyper optimizer and the
    initial λ resolved once. Nothing is changed: :func:`build_engine` acts on the plan."""
    hyperparameters = arguments.tuned.of(pl_module)
    method = arguments.method or default_method(hyperparameters)
    distributed, optimizer = check_fit(trainer, pl_module, hyperparameters, method)
    saved = arguments.tuned.saved(hyperparameters)
    if continued is None:
        initial = {
            name: value
            for name, h in hyperparameters.items()
            if (value := h.initial_value(optimizer)) is not None
        }
    else:  # λ the module's state_dict does not carry, before the engine reads λ
        with resuming():
            initial = saved_values(hyperparameters, continued.get("values"), saved)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    ns = namespace_of(trainer)
    own_backward = type(pl_module).backward is ns.LightningModule.backward
    return FitPlan(
        hyperparameters=hyperparameters,
        optimizer=optimizer,
        method=method,
        method_chosen=arguments.method is None,
        hyper_optimizer=resolve_hyper_optimizer(arguments.hyper_optimizer, method),
        warmup_steps=arguments.warmup_steps,
        hyper_every=(
            default_hyper_every(method, arguments.method is None)
            if arguments.hyper_every == "auto"
            else arguments.hyper_every
        ),
        initial_values=initial,
        device=pl_module.device,
        brought=tuple(arguments.tuned.tune),
        saved=saved,
        extra_grad_targets=tuple(
            p for p in pl_module.parameters() if p.requires_grad and id(p) not in optimized
        ),
        resume=continued,
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


def build_engine(plan: FitPlan, strategy: Any) -> TangentEngine:
    """The engine of ``plan``: ``tune=``'s hyperparameters on the module's device, λ₀ written,
    the engine built over the plan's optimizer (averaging over ``strategy``'s processes under
    DDP) and, where the fit continues a run, its state restored."""
    for name in plan.brought:
        plan.hyperparameters[name].to(plan.device)
    with torch.no_grad():
        for name, value in plan.initial_values.items():
            plan.hyperparameters[name].value.fill_(value)
    engine = TangentEngine(
        plan.method,
        plan.hyperparameters,
        plan.optimizer,
        plan.warmup_steps,
        gradient_clipping=plan.gradient_clipping,
        hyper_optimizer=plan.hyper_optimizer,
        hyper_every=plan.hyper_every,
        reduce=_mean_over(strategy) if plan.distributed else None,
        extra_grad_targets=plan.extra_grad_targets,
    )
    if plan.resume is not None:
        with resuming():
            engine.load_state_dict(plan.resume["engine"])
    return engine


def saved_state(plan: FitPlan) -> dict[str, Tensor]:
    """The values the callback saves in its checkpoint state (``plan.saved``)."""
    return {name: plan.hyperparameters[name].value.detach().clone() for name in plan.saved}


def _mean_over(strategy: Any) -> Callable[[Tensor], Tensor]:
    """The mean of a tensor over the processes of a data-parallel ``strategy``."""

    def mean(tensor: Tensor) -> Tensor:
        return strategy.reduce(tensor, reduce_op="mean")

    return mean


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
