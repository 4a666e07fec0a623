"""The MLP of the paper's MNIST experiment (Table 2), with an L2 penalty on its weights.

    L_T(θ, λ) = mean cross-entropy + (λ/2) Σ_layers ‖W‖²      (biases are not penalized)
    L_V(θ)    = mean cross-entropy

trained by plain SGD with an exponentially decaying learning rate η_t = η₀ (η_end/η₀)^(t/T).
Options for several hyperparameters: one λ_k per weight matrix,
L_T = CE + Σ_k (λ_k/2) ‖W_k‖² (``per_layer_l2``), and dropout after every hidden activation
with a tunable keep probability (``keep``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_hyperopt.core.arguments import check_positive
from lightning_hyperopt.core.dropout import TunableDropout
from lightning_hyperopt.core.hyperparameters import (
    Difference,
    KeepProbability,
    L2Penalty,
    LearningRate,
    Parameterization,
    WeightDecay,
)

#: the range a tuned keep probability stays in (KeepProbability's default bounds)
KEEP_BOUNDS = (0.1, 1.0)


class _MLPLogic:
    """The MLP's logic, free of any Lightning namespace: :class:`MLP` puts it on
    ``pytorch_lightning.LightningModule``, and :func:`experiments.models.for_namespace`
    on ``lightning.pytorch.LightningModule`` (one code path for both Trainers)."""

    def __init__(
        self,
        l2: float | None = 1e-3,
        in_features: int = 784,
        hidden: Sequence[int] = (100, 100, 100),
        num_classes: int = 10,
        lr: float = 0.1,
        final_lr: float = 0.01,
        decay_steps: int | None = None,
        momentum: float = 0.0,
        parameterization: Parameterization = "identity",
        min_l2: float = 0.0,
        seed: int | None = None,
        per_layer_l2: bool = False,
        keep: float | None = None,
        keep_difference: Difference = "central",
        optimizer: Literal["sgd", "adamw"] = "sgd",
        weight_decay: float | None = None,
        schedule: Literal["exponential", "cosine"] = "exponential",
        tune_lr: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = check_positive("lr", lr)
        self.final_lr = check_positive("final_lr", final_lr)
        if decay_steps is not None and (isinstance(decay_steps, bool) or decay_steps < 1):
            raise ValueError(f"decay_steps={decay_steps!r} must be an integer >= 1 or None")
        self.decay_steps = decay_steps
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
        self.momentum = float(momentum)
        sizes = [in_features, *hidden, num_classes]
        if any(isinstance(s, bool) or int(s) != s or s < 1 for s in sizes):
            raise ValueError(
                f"in_features, hidden and num_classes must be integers >= 1, got {sizes}"
            )
        if keep is not None and (
            isinstance(keep, bool)
            or not isinstance(keep, int | float)
            or not KEEP_BOUNDS[0] <= keep <= KEEP_BOUNDS[1]
        ):
            raise ValueError(
                f"keep={keep!r} must be None (no dropout) or a keep probability in "
                f"[{KEEP_BOUNDS[0]}, {KEEP_BOUNDS[1]}]"
            )
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={optimizer!r} is not supported; accepted: 'sgd', 'adamw'")
        self.optimizer_name = optimizer
        if schedule not in ("exponential", "cosine"):
            raise ValueError(
                f"schedule={schedule!r} is not supported; accepted: 'exponential', 'cosine'"
            )
        self.schedule = schedule
        if l2 is None and per_layer_l2:
            raise ValueError("per_layer_l2=True needs l2 (the coefficients' starting value)")
        if keep is not None and not hidden:
            raise ValueError("keep needs at least one hidden layer: dropout follows each of them")
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

        def penalty() -> L2Penalty:
            return L2Penalty(l2, bounds=(min_l2, math.inf), parameterization=parameterization)

        self.l2: L2Penalty | nn.ModuleList | None = None
        if l2 is not None:
            self.l2 = nn.ModuleList(penalty() for _ in self.layers) if per_layer_l2 else penalty()
        self.wd: WeightDecay | None = None
        if weight_decay is not None:
            self.wd = WeightDecay(group=0, init=weight_decay)
        #: λ scaling the learning rate of every group (η_t = λ·lr_t), when it is tuned
        self.lr_scale: LearningRate | None = LearningRate() if tune_lr else None
        self.keep: KeepProbability | None = None
        self.dropout: nn.ModuleList | None = None
        if keep is not None:
            # registered before the dropout layers, so the tuner names the shared λ "keep"
            self.keep = KeepProbability(float(keep), KEEP_BOUNDS, difference=keep_difference)
            self.dropout = nn.ModuleList(TunableDropout(self.keep) for _ in hidden)

    def forward(self, x: Tensor) -> Tensor:
        for k, layer in enumerate(self.layers[:-1]):
            x = F.relu(layer(x))
            if self.dropout is not None:
                x = self.dropout[k](x)
        return self.layers[-1](x)

    def weights(self) -> list[Tensor]:
        """The penalized parameters: every layer's weight matrix (not the biases)."""
        return [layer.weight for layer in self.layers]

    def validation_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """L_V: the mean cross-entropy of a batch, unregularized (no dropout in eval mode, in
        which the validation loop and the tuner call it)."""
        x, y = batch
        return F.cross_entropy(self(x), y)

    def penalty(self) -> Tensor | float:
        """The L2 term: (λ/2) Σ_k ‖W_k‖², or Σ_k (λ_k/2) ‖W_k‖² with ``per_layer_l2``; 0
        without L2."""
        if self.l2 is None:
            return 0.0
        if isinstance(self.l2, L2Penalty):
            return self.l2(self.weights())
        return sum(l2([w]) for l2, w in zip(self.l2, self.weights(), strict=True))

    def training_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """L_T(θ, λ): the mean cross-entropy (through dropout in training mode) plus the L2
        term (:meth:`penalty`)."""
        return self.validation_loss(batch) + self.penalty()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.training_loss(batch)
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.validation_loss(batch), on_step=False, on_epoch=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test_loss", self.validation_loss(batch), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> dict:
        steps = self.decay_steps or self.trainer.max_steps
        if steps is None or steps < 1:
            raise ValueError(
                "MLP: set decay_steps or trainer.max_steps (the learning-rate decay horizon)"
            )
        params: list | Any = self.parameters()
        if self.wd is not None:  # decay the weight matrices only
            biases = [layer.bias for layer in self.layers]
            params = [
                {"params": self.weights(), "weight_decay": float(self.wd.value)},
                {"params": biases, "weight_decay": 0.0},
            ]
        if self.optimizer_name == "adamw":
            # weight_decay=0 where not tuned: AdamW's own default (0.01) would apply silently
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=self.lr, weight_decay=0.0
            )
        else:
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if self.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=steps, eta_min=self.final_lr
            )
        else:
            gamma = (self.final_lr / self.lr) ** (1.0 / steps)
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class MLP(_MLPLogic, pl.LightningModule):
    """A ReLU MLP classifier (784-100-100-100-10 by default) with a tunable L2 penalty λ.

    ``self.l2`` is the :class:`L2Penalty` the :class:`OnlineHyperparamCallback` tunes; without
    the callback it is a fixed λ (the grid baseline). With ``per_layer_l2`` it is an
    ``nn.ModuleList`` of one L2Penalty per weight matrix instead (``self.l2[k]`` penalizes
    ``self.layers[k].weight``), each tuned on its own and logged as ``hyperopt/l2.<k>``. With
    ``keep``, a :class:`TunableDropout` follows every hidden activation, all sharing one
    :class:`KeepProbability` ``self.keep`` (logged as ``hyperopt/keep``); dropout is active in
    training mode only.

    With ``weight_decay``, the optimizer's weight decay on the weight matrices (param group 0;
    biases are group 1, never decayed) is a :class:`WeightDecay` hyperparameter ``self.wd``
    (coupled in SGD's gradient, decoupled in AdamW: θ ← θ(1 − ηλ)).

    Args:
        l2: λ₀, the L2 coefficient (its value at the start of training); ``None``: no L2
            penalty (e.g. with ``weight_decay``).
        in_features: input size (784 for flattened MNIST).
        hidden: sizes of the hidden layers.
        num_classes: output size.
        lr: η₀, the learning rate at step 0.
        final_lr: η_T, the learning rate reached after ``decay_steps`` steps (exponential decay,
            stepped every optimizer step); equal to ``lr`` for a constant rate.
        decay_steps: T; ``None`` takes the trainer's ``max_steps``.
        momentum: SGD momentum (the paper uses plain SGD: 0).
        parameterization: how the tuner steps λ (``"identity"``: λ itself, clamped at 0;
            ``"log"``: log λ, which needs ``min_l2 > 0``).
        min_l2: lower bound of λ.
        seed: seed of the weight initialization (``None``: the global RNG).
        per_layer_l2: one L2 coefficient per weight matrix, each starting at ``l2`` (with the
            same ``parameterization`` and ``min_l2``), instead of one for all.
        keep: λ₀ of the dropout keep probability after each hidden activation, in
            [0.1, 1] (the range it is tuned in); ``None``: no dropout.
        keep_difference: ``"central"`` (two coupled replays) or ``"one_sided"`` (one replay on
            the step's own masks), the finite difference of :class:`KeepProbability`.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"`` (torch's defaults besides
            ``lr`` and the weight decay).
        weight_decay: λ₀ of the optimizer's weight decay on the weight matrices, a
            :class:`WeightDecay` hyperparameter; ``None``: no weight decay.
        schedule: the learning rate's decay from ``lr`` to ``final_lr`` over the horizon,
            stepped every optimizer step: ``"exponential"`` or ``"cosine"``
            (``CosineAnnealingLR`` with ``eta_min=final_lr``).
        tune_lr: declare ``self.lr_scale``, a :class:`LearningRate` λ₀ = 1 scaling every
            group's learning rate (η_t = λ·lr_t; logged as ``hyperopt/lr_scale``).
    """
