"""``KeepProbability``: the keep probability λ of dropout layers, differentiated by coupled
finite differences (drift source ``finite_difference``).

    ∂g_T/∂λ ≈ (g_T(θ, m₊) − g_T(θ, m₋)) / (λ₊ − λ₋),   m₊ = [u < λ₊],  m₋ = [u < λ₋],

with one uniform draw u shared by both replays. Then m₊ ∼ Bernoulli(λ₊), m₋ ∼ Bernoulli(λ₋) and
m₋ = m₊ ⊙ Bernoulli(λ₋/λ₊): the paper's coupling, which keeps m₊ and m₋ equal on all but a
fraction λ₊ − λ₋ of the units and so cuts the estimator's variance. The layers that draw the
masks are :class:`~lightning_hyperopt.core.dropout.TunableDropout`; while λ is perturbed they
draw u from :func:`coupled_generator`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from lightning_hyperopt.core.hyperparameters.base import (
    DriftSource,
    Hyperparameter,
    Parameterization,
)

#: the finite difference of ∂g_T/∂λ: two replays at λ₊ and λ₋ with coupled masks, or one
#: replay at λ ± ε on the step's own uniforms against the step's own gradient
Difference = Literal["central", "one_sided"]
DIFFERENCES = ("central", "one_sided")


class _CoupledDraws:
    """The uniform draws of every TunableDropout during one finite-difference replay: one
    generator per device, all seeded with the same seed, so the replays at λ₊ and at λ₋ see
    the same sequence u (CUDA tensors need a CUDA generator)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device]


#: set while a KeepProbability is perturbed: then every TunableDropout, perturbed or not, draws
#: from the coupled generators instead of the global RNG, so the two replays differ only in λ
_COUPLED: contextvars.ContextVar[_CoupledDraws | None] = contextvars.ContextVar(
    "lightning_hyperopt_coupled_dropout", default=None
)
#: set while a one-sided KeepProbability is perturbed (its layers draw from the global RNG)
_SHIFTED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lightning_hyperopt_shifted_dropout", default=False
)


class KeepProbability(Hyperparameter):
    """Keep probability λ ∈ (0, 1] of one or more :class:`TunableDropout` layers.

        L_T(θ, λ) = E_{m∼Bernoulli(λ)}[L_T(θ, m)],
        ∂g_T/∂λ ≈ (g_T(θ, m₊) − g_T(θ, m₋)) / (λ₊ − λ₋),
        λ₊ = min(λ + ε, 1),  λ₋ = max(λ − ε, low)

    A central difference of width 2ε inside the bounds; it turns one-sided at the edges (λ = 1
    keeps every unit: λ₊ = 1, λ₋ = 1 − ε), so no probability leaves [low, 1] and the width is
    never 0. The central difference is biased by O(ε²) (by O(ε) at the edges); the coupled
    estimator's variance grows like 1/ε (m₊ and m₋ differ on a fraction 2ε of the units).

    ``difference="one_sided"``: one replay instead of two,

        ∂g_T/∂λ ≈ (g_T(θ, m₊, λ₊) − g_T(θ, m, λ)) / (λ₊ − λ),   m = [u < λ],  m₊ = [u < λ₊],

    where g_T(θ, m, λ) is the step's own gradient (already computed) and the replay draws the
    step's own uniforms u (its RNG state), so m₊ ≥ m differ on a fraction ε of the units;
    λ₊ = λ + ε, or λ − ε where λ + ε would leave (0, 1] (then the side with the wider step
    inside the bounds). Biased by O(ε); it needs the replayed loss (``training_loss``, else
    ``training_step``'s) to be the whole loss the step back-propagated.

    Pass the same instance to several layers to share one λ, or give each layer its own.

    Args:
        init: λ₀.
        bounds: (low, high) with 0 < low < high ≤ 1 (λ = 0 would divide by 0).
        parameterization: ``"identity"`` or ``"log"`` (see :class:`Hyperparameter`).
        eps: ε, the half-width of the finite difference, in (0, 0.5].
        difference: ``"central"`` (two coupled replays, the default) or ``"one_sided"``.
    """

    drift_source: DriftSource = "finite_difference"
    fast_start = True

    def __init__(
        self,
        init: float = 0.5,
        bounds: tuple[float, float] = (0.1, 1.0),
        parameterization: Parameterization = "identity",
        eps: float = 0.05,
        difference: Difference = "central",
    ) -> None:
        if difference not in DIFFERENCES:
            raise ValueError(
                f"KeepProbability difference={difference!r} is not supported; accepted values: "
                f"{DIFFERENCES}"
            )
        low, high = (float(b) for b in bounds)
        if not (0.0 < low < high <= 1.0):
            raise ValueError(
                f"KeepProbability bounds={bounds!r} must satisfy 0 < low < high <= 1 "
                "(a keep probability; 0 would divide by 0)"
            )
        eps = float(eps)
        if not (0.0 < eps <= 0.5):
            raise ValueError(f"KeepProbability eps={eps!r} must be in (0, 0.5]")
        super().__init__(init, (low, high), parameterization)
        self.eps = eps
        self.difference: Difference = difference
        self._shifted: Tensor | None = None

    @property
    def natural_space(self) -> Parameterization:
        # steps in probability itself: log-odds would hold λ = 1 (no dropout, a usual start)
        # at its edge, where a capped step could not move it
        return "identity"

    def current(self) -> Tensor:
        """The λ in use: the perturbed λ₊ or λ₋ inside :meth:`perturbed`, else ``value``."""
        return self.value if self._shifted is None else self._shifted

    def forward(self) -> Tensor:
        return self.current()

    def perturbed_values(self) -> tuple[float, float]:
        """(λ₊, λ₋) = (min(λ + ε, 1), max(λ − ε, low)); λ₊ > λ₋ for every λ in the bounds.
        One-sided: (λ + ε, λ), or (λ, λ − ε) where λ + ε > 1 (the wider side inside the
        bounds)."""
        lam = float(self.value)
        plus, minus = min(lam + self.eps, 1.0), max(lam - self.eps, self.bounds[0])
        if self.difference == "central":
            return plus, minus
        return (plus, lam) if self.replayed_signs() == (1,) else (lam, minus)

    def replayed_signs(self) -> tuple[int, ...]:
        """(+1, −1) for the central difference; one-sided, the one side replayed: +1 unless
        λ + ε > 1 and the step down inside the bounds is wider."""
        if self.difference == "central":
            return (1, -1)
        lam = float(self.value)
        up, down = min(lam + self.eps, 1.0) - lam, lam - max(lam - self.eps, self.bounds[0])
        return (1,) if lam + self.eps <= 1.0 or up >= down else (-1,)

    @contextlib.contextmanager
    def perturbed(self, sign: int, seed: int) -> Iterator[float]:
        """Within the context the layers use λ₊ (``sign=+1``) or λ₋ (``sign=-1``), and every
        TunableDropout draws u from generators seeded by ``seed`` (not the global RNG): the
        same ``seed`` for both signs gives coupled masks [u < λ₊] ≥ [u < λ₋]. Yields the λ used.
        One-sided, u comes from the global RNG as in the training step (``seed`` is unused):
        a replay from the step's RNG state draws the step's own u.
        """
        if sign not in (1, -1):
            raise ValueError(f"sign={sign!r} must be +1 or -1")
        if _COUPLED.get() is not None or _SHIFTED.get():
            raise RuntimeError("KeepProbability.perturbed contexts cannot be nested")
        lam = self.perturbed_values()[0 if sign == 1 else 1]
        self._shifted = torch.tensor(lam, dtype=self.value.dtype, device=self.value.device)
        coupled = self.difference == "central"
        token = _COUPLED.set(_CoupledDraws(int(seed))) if coupled else _SHIFTED.set(True)
        try:
            yield lam
        finally:
            if coupled:
                _COUPLED.reset(token)  # type: ignore[arg-type]
            else:
                _SHIFTED.reset(token)  # type: ignore[arg-type]
            self._shifted = None

    def extra_repr(self) -> str:
        one = ", difference='one_sided'" if self.difference == "one_sided" else ""
        return f"{super().extra_repr()}, eps={self.eps:.4g}{one}"


def coupled_generator(device: torch.device) -> torch.Generator | None:
    """The generator a dropout layer draws its uniforms from now: the coupled one of the
    finite-difference replay under way (one per device, seeded alike for λ₊ and λ₋), or
    ``None`` (the global RNG) outside a central difference's replays."""
    draws = _COUPLED.get()
    return None if draws is None else draws.generator(device)
