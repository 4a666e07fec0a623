"""How λ moves once its hypergradient h = dL_V/dλ is known: the hyper step.

Every rule steps a parameterized value u = φ(λ), one row per hyperparameter, and maps it back:

    identity  u = λ                    dλ/du = 1
    log       u = log λ                dλ/du = λ
    logit     u = log(λ / (1 − λ))     dλ/du = λ (1 − λ)

with the gradient g_u = h · dλ/du; the result is clamped into each λ's bounds. The rules:

    PaperStep      u ← u − α_t g_u,                   α_t from the method (c·η_t, or FirstOrder's α)
    AdaptiveStep   u ← u − clip(ρ m̂ / (√v̂ + ε), ±δ)    m, v: Adam's moments of g_u

The paper's rule needs its step c tuned per task (g_V, y and η set the scale of α_t g_u). The
adaptive rule is scale-free: multiplying h by any constant leaves its steps unchanged, so one
ρ (the typical move of u per update) serves every task, and δ caps a single move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_hyperopt.core.arguments import check_integer, check_positive
from lightning_hyperopt.core.functional import from_space, space_slope, to_space

__all__ = [
    "AdaptiveStep",
    "HyperOptimizer",
    "PaperStep",
    "check_hyper_optimizer",
    "from_space",
    "resolve_hyper_optimizer",
    "space_slope",
    "to_space",
]

Space = Literal["identity", "log", "logit"]
HyperOptimizerName = Literal["paper", "adaptive"]
Coordinates = Literal["own", "applied_decay"]


class HyperOptimizer:
    """Base class of the hyper steps: ``step`` takes u, g_u (one row per hyperparameter), the
    method's α_t and a mask of the rows to update, and returns the new u. State is plain
    tensors and numbers (checkpointed with the engine)."""

    #: the parameterization each hyperparameter is stepped in: its own (``"declared"``), or
    #: the natural one of its kind (log for penalties and weight decay, the probability itself
    #: for keep probabilities; see :meth:`Hyperparameter.natural_space`)
    space: Literal["declared", "natural"] = "declared"
    #: the rows' coordinates: each its own (``"own"``), or a weight decay tuned beside the
    #: learning rate that scales it as the applied decay log(λ_lr·λ_wd) (``"applied_decay"``,
    #: :mod:`~lightning_hyperopt.core.coordinates`)
    coordinates: Coordinates = "own"

    def step(self, u: Tensor, grad: Tensor, alpha: float, rows: Tensor) -> Tensor:
        raise NotImplementedError

    def bind(self, fast_start: Sequence[bool], like: Tensor, window: int = 1) -> None:
        """The rows' kinds, once per fit: which rows may take large first steps
        (:attr:`Hyperparameter.fast_start`); ``window``: the update points each update stands
        for (``hyper_every``)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class PaperStep(HyperOptimizer):
    """The paper's rule: u ← u − α_t g_u, with α_t = c·η_t (``Clip``, ``Exact``, ``Unroll``:
    their ``hyper_lr_scale`` c) or FirstOrder's constant ``hyper_lr``, in each hyperparameter's
    declared parameterization (identity: λ ← λ − α_t h; log: λ ← λ·exp(−α_t λ h))."""

    def step(self, u: Tensor, grad: Tensor, alpha: float, rows: Tensor) -> Tensor:
        return u - alpha * grad


class AdaptiveStep(HyperOptimizer):
    """An Adam-normalized step on u, capped:

        m ← β₁ m + (1 − β₁) g_u,   v ← β₂ v + (1 − β₂) g_u²,   (bias-corrected m̂, v̂)
        u ← u − clip(ρ m̂ / (√v̂ + ε), −δ, δ)

    in each hyperparameter's natural space (log λ for L2 penalties and weight decay, the
    probability itself for keep probabilities: in log-odds, λ = 1 would sit at an edge a
    capped step cannot leave). Scale-free in h (so in g_V, y and η): ρ is the typical move of u per
    update (ρ = 0.01 in log space: 1% of λ), whatever the task; when h's sign is noisy, m̂/√v̂
    and the steps shrink by themselves. The method's α_t is not used.

    The step of a regularizer's row (L2 penalty, weight decay, keep probability:
    :attr:`Hyperparameter.fast_start`) starts at ρ₀ (``initial_lr``) and decays geometrically
    to ρ over the row's first K updates (``decay_updates``; k = 1, 2, … counts them), never
    below ρ; a learning rate, a momentum or a generic scalar moves by ρ from the start, and so
    does every row of a fit that tunes a learning rate or a momentum
    (:func:`~lightning_hyperopt.core.hyper_update.fast_start_rows`):

        ρ_k = ρ · max(1, (ρ₀ / ρ)^max(0, 1 − (k − 1)/K))

    so a start far from the optimum (an over-regularized network, which a constant 1% per
    update would leave only after hundreds of crippled steps) is left within the first tens of
    updates, and the later steps are the steady ones. ``initial_lr=None`` or K = 0: ρ
    throughout.

    **One update per window of w update points** (``hyper_every`` = w, bound at fit start):
    each update stands for the w it replaces, so λ keeps its pace per step. The move is
    w·ρ_c, with c = (n − 1)·w + (w + 1)/2 the middle of the window in update points (n: the
    row's updates), the cap w·δ, and the moments decay by β₁ʷ, β₂ʷ: with a steady
    hypergradient, λ after N windows is λ after N·w single updates (exactly once ρ has
    decayed, to the midpoint rule's error during the decaying start).

    The defaults (ρ = 0.01, ρ₀ = δ = 0.3, K = 200) were chosen on the
    time-to-quality benchmark, over-regularized starts included (docs/results.md).

    Args:
        lr: ρ, the step in u per update for a steady hypergradient.
        betas: (β₁, β₂), the decay of the moments.
        max_step: δ, the largest move of u in one update.
        eps: ε, relative to nothing: keep it far below any |g_u| (float64 λ).
        initial_lr: ρ₀, the step of the first update (``None``: ρ throughout).
        decay_updates: K, the updates over which ρ₀ decays to ρ (0: ρ throughout).
        coordinates: ``"own"``: each row in its natural space; ``"applied_decay"``: a
            ``WeightDecay`` tuned beside the ``LearningRate`` of the same param groups (SGD,
            AdamW) moves as log(λ_lr·λ_wd), the decay the optimizer applies, and the learning
            rate's row at a fixed applied decay (:mod:`~lightning_hyperopt.core.coordinates`).
    """

    space = "natural"

    def __init__(
        self,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        max_step: float = 0.3,
        eps: float = 1e-30,
        initial_lr: float | None = 0.3,
        decay_updates: int = 200,
        coordinates: Coordinates = "own",
    ) -> None:
        self.lr = check_positive("lr", lr)
        if coordinates not in ("own", "applied_decay"):
            raise ValueError(
                f"coordinates={coordinates!r} is not supported; accepted values: 'own', "
                "'applied_decay'"
            )
        if coordinates != "own":  # the class's default: the repr stays as it was
            self.coordinates = coordinates
        self.initial_lr = None if initial_lr is None else check_positive("initial_lr", initial_lr)
        self.decay_updates = check_integer("decay_updates", decay_updates, 0)
        self.max_step = check_positive("max_step", max_step)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas={betas!r} must both be in [0, 1)")
        self.betas = (beta1, beta2)
        self.eps = float(eps)
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps={eps!r} must be a finite number > 0")
        self._m: Tensor | None = None
        self._v: Tensor | None = None
        self._count: Tensor | None = None
        #: the rows the decaying start applies to (None: every row, e.g. outside a fit)
        self._fast: Tensor | bool | None = None
        #: the update points one update stands for (hyper_every)
        self._window = 1

    def bind(self, fast_start: Sequence[bool], like: Tensor, window: int = 1) -> None:
        flags = [bool(f) for f in fast_start]
        if len(set(flags)) <= 1:
            self._fast = flags[0] if flags else None
        else:
            self._fast = torch.tensor(flags, device=like.device)
        self._window = check_integer("window", window, 1)

    def step(self, u: Tensor, grad: Tensor, alpha: float, rows: Tensor) -> Tensor:
        w = self._window  # w = 1: the single update (every factor below is exact then)
        beta1, beta2 = (b**w for b in self.betas)
        if self._m is None or self._v is None or self._count is None:
            self._m, self._v = torch.zeros_like(u), torch.zeros_like(u)
            self._count = torch.zeros_like(u)
        elif self._m.device != u.device:  # restored from a checkpoint loaded on the CPU
            self._m, self._v, self._count = (t.to(u) for t in (self._m, self._v, self._count))
        g = torch.where(rows, grad, 0.0)  # a skipped row leaves its moments alone
        m = torch.where(rows, beta1 * self._m + (1.0 - beta1) * g, self._m)
        v = torch.where(rows, beta2 * self._v + (1.0 - beta2) * g * g, self._v)
        updates = self._count + rows.to(u.dtype)
        self._m, self._v, self._count = m, v, updates
        safe = updates.clamp_min(1.0)
        m_hat = m / (1.0 - beta1**safe)
        v_hat = v / (1.0 - beta2**safe)
        # the window's w update points, at the rate of its middle one
        rate, cap = w * self._rate((updates - 1.0) * w + (w + 1) / 2), w * self.max_step
        move = (rate * m_hat / (v_hat.sqrt() + self.eps)).clamp(-cap, cap)
        return u - torch.where(rows, move, 0.0)

    def _rate(self, updates: Tensor) -> Tensor | float:
        """ρ_k per row (k = ``updates``, the row's update points so far, this one included)."""
        if (
            self.initial_lr is None
            or self.decay_updates == 0
            or self.initial_lr <= self.lr
            or self._fast is False
        ):
            return self.lr
        left = (1.0 - (updates - 1.0) / self.decay_updates).clamp(0.0, 1.0)
        rate = self.lr * (self.initial_lr / self.lr) ** left
        return (
            rate
            if self._fast is None or self._fast is True
            else torch.where(self._fast, rate, self.lr)
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "m": None if self._m is None else self._m.clone(),
            "v": None if self._v is None else self._v.clone(),
            "count": None if self._count is None else self._count.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._m, self._v, self._count = state.get("m"), state.get("v"), state.get("count")


HYPER_OPTIMIZERS: dict[str, type[HyperOptimizer]] = {
    "paper": PaperStep,
    "adaptive": AdaptiveStep,
}


def check_hyper_optimizer(hyper_optimizer: Any) -> HyperOptimizer | str | None:
    """``hyper_optimizer`` if it is an instance, a name (``"paper"``, ``"adaptive"``) or ``None``;
    else a clear error naming the accepted values (nothing is built)."""
    if hyper_optimizer is None or isinstance(hyper_optimizer, HyperOptimizer):
        return hyper_optimizer
    if isinstance(hyper_optimizer, str) and hyper_optimizer in HYPER_OPTIMIZERS:
        return hyper_optimizer
    raise ValueError(
        f"hyper_optimizer={hyper_optimizer!r} is not supported; accepted values: "
        f"{sorted(HYPER_OPTIMIZERS)}, an instance of PaperStep or AdaptiveStep, or None"
    )


def resolve_hyper_optimizer(
    hyper_optimizer: HyperOptimizer | str | None, method: Any
) -> HyperOptimizer:
    """An instance from an instance, a name (``"paper"``, ``"adaptive"``), or ``None``: the
    paper's rule when the method was given its step (``hyper_lr_scale`` / ``hyper_lr``),
    the adaptive rule otherwise."""
    hyper_optimizer = check_hyper_optimizer(hyper_optimizer)
    if isinstance(hyper_optimizer, HyperOptimizer):
        return hyper_optimizer
    if hyper_optimizer is None:
        return PaperStep() if getattr(method, "paper_step_given", False) else AdaptiveStep()
    return HYPER_OPTIMIZERS[hyper_optimizer]()


def space_masks(
    spaces: Sequence[Space], device: torch.device
) -> tuple[Tensor | bool, Tensor | bool]:
    """(log rows, logit rows): a Python bool when every row agrees (one branch computed),
    else boolean vectors."""

    def mask(kind: str) -> Tensor | bool:
        flags = [s == kind for s in spaces]
        return flags[0] if len(set(flags)) == 1 else torch.tensor(flags, device=device)

    return mask("log"), mask("logit")
