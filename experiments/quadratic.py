"""The quadratic problem of the paper (Table 1), with its analytic optimum λ*.

    L_T(θ, λ) = ½ (θ − θ̄)ᵀ H (θ − θ̄) + ½ λ θᵀ H θ,     L_V(θ) = ½ (θ − θ̃)ᵀ H (θ − θ̃),

H diagonal. Then θ*(λ) = θ̄ / (1 + λ), dθ*/dλ = −θ̄ / (1 + λ)², and
λ* = θ̄ᵀH(θ̄ − θ̃) / θ̃ᵀHθ̄.

Sampling (the paper leaves it open): diag(H) ~ U[low, high], by default U[0.5, 2]
(``spectrum``); λ* ~ U[0.2, 0.4]; ‖dθ*/dλ‖ at λ* ~ U[3, 5], which sets
‖θ̄‖ = ‖dθ*/dλ‖·(1 + λ*)² along a uniformly random direction; θ̃ = θ̄ / (1 + λ*) + n with
n ⟂_H θ̄ (nᵀHθ̄ = 0, so λ* is exact for any positive spectrum) and ‖n‖ = ‖θ̄‖ / (1 + λ*).
The H-orthogonal part n is what makes first-order methods biased.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_hyperopt.core.engine import TangentEngine
from lightning_hyperopt.core.hyperparameters import Hyperparameter
from lightning_hyperopt.core.methods import HyperMethod


@dataclass(frozen=True)
class QuadraticInstance:
    """One (or a batch of) sampled problem(s): tensors of shape (..., dim)."""

    h: Tensor  # diag(H)
    theta_bar: Tensor  # θ̄, the training optimum at λ = 0
    theta_tilde: Tensor  # θ̃, the validation optimum
    lambda_star: Tensor  # λ*, shape (...)

    def validation_loss(self, theta: Tensor) -> Tensor:
        """L_V(θ) = ½ (θ − θ̃)ᵀ H (θ − θ̃), over the last dimension."""
        d = theta - self.theta_tilde
        return 0.5 * (d * self.h * d).sum(-1)

    def training_loss(self, theta: Tensor, lam: Tensor) -> Tensor:
        """L_T(θ, λ) = ½ (θ − θ̄)ᵀ H (θ − θ̄) + ½ λ θᵀ H θ, over the last dimension."""
        d = theta - self.theta_bar
        return 0.5 * (d * self.h * d).sum(-1) + 0.5 * lam * (theta * self.h * theta).sum(-1)

    def theta_star(self, lam: Tensor) -> Tensor:
        """θ*(λ) = θ̄ / (1 + λ)."""
        return self.theta_bar / (1 + lam.unsqueeze(-1))

    def tangent_star(self, lam: Tensor) -> Tensor:
        """dθ*/dλ = −θ̄ / (1 + λ)²."""
        return -self.theta_bar / (1 + lam.unsqueeze(-1)) ** 2


#: the default range of diag(H): U[0.5, 2]
DEFAULT_SPECTRUM: tuple[float, float] = (0.5, 2.0)


def check_spectrum(spectrum: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` with 0 < low ≤ high < ∞, so that H = diag(U[low, high]) is positive
    definite (θ*(λ) and λ* exist); raises ``ValueError`` naming the setting otherwise."""
    values = tuple(spectrum)
    if len(values) != 2:
        raise ValueError(
            f"spectrum={values!r}: expected two numbers (low, high), e.g. {DEFAULT_SPECTRUM}"
        )
    low, high = (float(v) for v in values)
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(
            f"spectrum={values!r}: diag(H) ~ U[low, high] needs 0 < low <= high < inf "
            f"(H positive definite), e.g. {DEFAULT_SPECTRUM} or (1.0, 100.0)"
        )
    return low, high


def sample_quadratic(
    dim: int = 20,
    repeats: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    spectrum: Sequence[float] = DEFAULT_SPECTRUM,
) -> QuadraticInstance:
    """Sample ``repeats`` problems (or one, with ``repeats=None``) as documented above, with
    diag(H) ~ U[``spectrum``]; the default draws the same problems as before the option."""
    low, high = check_spectrum(spectrum)
    g = torch.Generator().manual_seed(seed)
    shape = (1 if repeats is None else repeats, dim)
    n_rep = shape[0]
    h = low + (high - low) * torch.rand(shape, generator=g, dtype=dtype)
    lambda_star = 0.2 + 0.2 * torch.rand(n_rep, generator=g, dtype=dtype)
    tangent_norm = 3.0 + 2.0 * torch.rand(n_rep, generator=g, dtype=dtype)
    direction = torch.randn(shape, generator=g, dtype=dtype)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    scale = (1 + lambda_star) ** 2
    theta_bar = direction * (tangent_norm * scale).unsqueeze(-1)
    noise = torch.randn(shape, generator=g, dtype=dtype)
    hb = h * theta_bar
    noise = noise - ((noise * hb).sum(-1) / (hb * hb).sum(-1)).unsqueeze(-1) * hb
    noise = noise / noise.norm(dim=-1, keepdim=True)
    noise = noise * (theta_bar.norm(dim=-1) / (1 + lambda_star)).unsqueeze(-1)
    theta_tilde = theta_bar / (1 + lambda_star).unsqueeze(-1) + noise
    inst = QuadraticInstance(h, theta_bar, theta_tilde, lambda_star)
    if repeats is None:
        return QuadraticInstance(h[0], theta_bar[0], theta_tilde[0], lambda_star[0])
    return inst


def tune_with_engine(
    problem: QuadraticInstance,
    method: HyperMethod,
    schedule: Sequence[tuple[int, float]],
    init_lambda: float = 0.0,
    warmup_steps: int = 0,
) -> tuple[list[float], Tensor]:
    """The reference loop of :class:`TangentEngine` on one problem: θ₀ = 0, SGD with the
    ``schedule``'s (steps, η) phases, λ ∈ [0, 10]. Returns λ after every step and the final θ."""
    theta = torch.zeros_like(problem.theta_bar, requires_grad=True)
    lam = Hyperparameter(init_lambda, bounds=(0.0, 10.0))
    opt = torch.optim.SGD([theta], lr=schedule[0][1])
    engine = TangentEngine(method, {"lam": lam}, opt, warmup_steps=warmup_steps)
    trajectory = []
    for steps, lr in schedule:
        opt.param_groups[0]["lr"] = lr
        for _ in range(steps):
            opt.zero_grad()
            engine.backward(problem.training_loss(theta, lam.value))
            engine.advance()
            opt.step()
            engine.update(lambda: problem.validation_loss(theta))
            trajectory.append(float(lam.value.detach()))
    return trajectory, theta.detach()


class QuadraticProblem(pl.LightningModule):
    """The paper's quadratic problem as a LightningModule (no data: every batch is a dummy).

    Args:
        dim: dimension of θ.
        seed: the problem's sampling seed.
        init_lambda: λ₀.
        lr: SGD learning rate η.
        steps_per_epoch: dummy batches per epoch.
    """

    def __init__(
        self,
        dim: int = 20,
        seed: int = 0,
        init_lambda: float = 0.0,
        lr: float = 0.05,
        steps_per_epoch: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        inst = sample_quadratic(dim, seed=seed)
        for name in ("h", "theta_bar", "theta_tilde", "lambda_star"):
            self.register_buffer(name, getattr(inst, name))
        self.theta = nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.lam = Hyperparameter(init_lambda, bounds=(0.0, 10.0))
        self.lr = lr
        self.steps_per_epoch = steps_per_epoch

    @property
    def problem(self) -> QuadraticInstance:
        return QuadraticInstance(self.h, self.theta_bar, self.theta_tilde, self.lambda_star)

    def training_loss(self, batch: Tensor) -> Tensor:
        return self.problem.training_loss(self.theta, self.lam.value)

    def validation_loss(self, batch: Tensor) -> Tensor:
        return self.problem.validation_loss(self.theta)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.training_loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log("val_loss", self.validation_loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(self.steps_per_epoch, 1), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(1, 1), batch_size=1)

    def result_line(self) -> str:
        """``λ = …   analytic λ* = …   |λ − λ*| = …``: the tuned λ against the closed-form λ*."""
        lam, star = float(self.lam.value), float(self.problem.lambda_star)
        return f"λ = {lam:.6f}   analytic λ* = {star:.6f}   |λ − λ*| = {abs(lam - star):.2e}"

    def on_fit_end(self) -> None:
        # A plain print on rank zero, once, after fit: `self.print` goes through the progress bar,
        # which the bar's own `on_train_end` has already closed, so it printed nothing with the
        # default bar; `rank_zero_info` goes to the logging handler (stderr), not to stdout.
        if self.trainer.is_global_zero:
            print(self.result_line(), flush=True)
