"""Dropout whose keep probability λ is an online hyperparameter (torch only).

    TunableDropout(x) = x ⊙ m / λ,   m ∼ Bernoulli(λ) elementwise   (inverted dropout)

so L_T(θ, λ) = E_m[L_T(θ, m, λ)] (paper, "Regularizers"). Its ∂g_T/∂λ has no autograd path
(m is discrete), so the engine estimates it by coupled finite differences
(``KeepProbability.drift_source = "finite_difference"``):

    ∂g_T/∂λ ≈ (g_T(θ, m₊) − g_T(θ, m₋)) / (λ₊ − λ₋),   m₊ = [u < λ₊],  m₋ = [u < λ₋],

with one uniform draw u shared by both replays. Then m₊ ∼ Bernoulli(λ₊), m₋ ∼ Bernoulli(λ₋) and
m₋ = m₊ ⊙ Bernoulli(λ₋/λ₊): the paper's coupling, which keeps m₊ and m₋ equal on all but a
fraction λ₊ − λ₋ of the units and so cuts the estimator's variance.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_hyperopt.core.hyperparameters import DriftSource, Hyperparameter, Parameterization

AdoptMode = Literal["shared", "per_module"]
ADOPT_MODES = ("shared", "per_module")
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


class TunableDropout(nn.Module):
    """Inverted dropout with a tunable keep probability: y = x ⊙ m / λ, m = [u < λ],
    u ∼ U[0, 1) elementwise; the identity in eval mode. A drop-in for ``nn.Dropout(p)`` with
    λ = 1 − p.

    u comes from the global RNG (so a replay after ``torch.set_rng_state`` sees the training
    step's masks), or from the coupled generators while a :class:`KeepProbability` is
    perturbed. u is drawn in float32 whatever the dtype of x (bfloat16 would round λ).

    Args:
        keep: a :class:`KeepProbability` (shared by every layer given it) or a number, which
            makes a KeepProbability of this layer's own with the default bounds and ε.
    """

    def __init__(self, keep: KeepProbability | float = 0.5) -> None:
        super().__init__()
        # a shared instance is registered under every layer that uses it, like tied weights:
        # named_modules() lists it once (under its first path), .to() moves it once
        self.keep = keep if isinstance(keep, KeepProbability) else KeepProbability(float(keep))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        draws = _COUPLED.get()
        generator = None if draws is None else draws.generator(x.device)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        keep = self.keep.current()
        # 0-dim keep: the result keeps x's dtype
        return x * (u < keep).to(x.dtype) / keep


#: the options of :func:`adopt_dropout` a caller may pass through (``persistent`` is the
#: caller's own decision)
ADOPT_OPTIONS = ("mode", "init", "bounds", "eps", "difference")


def adopt_options(value: AdoptMode | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``adopt_dropout``'s keyword arguments from a mode (``"shared"``, ``"per_module"``), a
    mapping of its options, or ``None`` (no adoption), checked now: an unknown option, mode,
    difference, or a bad ``eps``/``bounds``/``init`` is an error before any training."""
    if value is None:
        return None
    accepted = f"accepted values: {ADOPT_MODES}, a mapping of the options {ADOPT_OPTIONS}, or None"
    if isinstance(value, str):
        options: dict[str, Any] = {"mode": value}
    elif isinstance(value, Mapping):
        options = {"mode": "shared", **value}
    else:
        options = {"": value}
    if set(options) - set(ADOPT_OPTIONS) or options["mode"] not in ADOPT_MODES:
        raise ValueError(f"adopt_dropout={value!r} is not supported; {accepted}")
    if "bounds" in options:
        options["bounds"] = tuple(options["bounds"])
    bounds = options.get("bounds", (0.1, 1.0))
    try:  # the layers' own checks, before any training
        KeepProbability(
            bounds[1] if options.get("init") is None else options["init"],
            bounds,
            eps=options.get("eps", 0.05),
            difference=options.get("difference", "central"),
        )
    except (TypeError, ValueError, IndexError) as err:
        raise ValueError(f"adopt_dropout={value!r}: {err}") from None
    return options


def adopt_dropout(
    module: nn.Module,
    mode: AdoptMode = "shared",
    init: float | None = None,
    bounds: tuple[float, float] = (0.1, 1.0),
    eps: float = 0.05,
    persistent: bool = True,
    difference: Difference = "central",
) -> dict[str, TunableDropout]:
    """Replace every ``nn.Dropout(p)`` in ``module`` by a :class:`TunableDropout` with λ = 1 − p.

    ``mode="shared"``: one KeepProbability for all of them (``init`` or their common 1 − p);
    ``mode="per_module"``: one each (``init`` or each module's 1 − p). A KeepProbability is
    named ``<dropout path>.keep`` (the first path when shared). Layers that are already
    TunableDropout are kept, so adopting twice changes nothing. ``persistent=False`` leaves the
    new keep probabilities out of ``module.state_dict()`` (whoever tunes them saves them: the
    callback does, in its own state), so the module's checkpoint has the keys of the model as
    it was, and its unmodified class loads it strictly. Dropout that is not an
    ``nn.Dropout`` module (``nn.LSTM(dropout=…)``, ``nn.MultiheadAttention``'s) cannot be
    replaced and is reported with a warning; ``nn.Dropout1d/2d/3d`` (channel masks) are left.

    ``eps`` and ``difference`` are the new keep probabilities' (see :class:`KeepProbability`).

    Returns the TunableDropout layers, by path (those already there included).
    """
    if mode not in ADOPT_MODES:
        raise ValueError(f"adopt_dropout mode={mode!r} is not supported; accepted: {ADOPT_MODES}")
    found = {name: m for name, m in module.named_modules() if isinstance(m, nn.Dropout)}
    existing = {name: m for name, m in module.named_modules() if isinstance(m, TunableDropout)}
    if not found and not existing:
        raise ValueError(
            f"adopt_dropout: {type(module).__name__} has no nn.Dropout module to replace"
        )
    if "" in found:
        raise ValueError("adopt_dropout replaces submodules: wrap the nn.Dropout in a container")
    for name, m in module.named_modules():
        rate = getattr(m, "dropout", None)
        if isinstance(rate, float) and rate > 0:
            warnings.warn(
                f"adopt_dropout: {name or type(m).__name__} ({type(m).__name__}) applies "
                f"dropout={rate} internally; it is not a module and stays fixed",
                stacklevel=2,
            )
    # 1 − p rounded so that p = 0.9 gives 0.1, not 0.09999999999999998 (below a 0.1 bound)
    keeps = {
        name: round(1.0 - float(m.p), 12) if init is None else float(init)
        for name, m in found.items()
    }
    low, high = (float(b) for b in bounds)
    for name, keep in keeps.items():
        if not low <= keep <= high:
            raise ValueError(
                f"adopt_dropout: the keep probability {keep:.4g} of {name!r} is outside "
                f"bounds={bounds!r}: pass init= or wider bounds="
            )
    if mode == "shared" and len(set(keeps.values())) > 1:
        raise ValueError(
            f"adopt_dropout(mode='shared') found different keep probabilities "
            f"{sorted(set(keeps.values()))}: pass init= (one for all) or use mode='per_module'"
        )
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    current: KeepProbability | None = None
    for name, keep in keeps.items():
        if mode == "per_module" or current is None:  # shared: the first one serves them all
            current = KeepProbability(keep, bounds, eps=eps, difference=difference).to(device)
            current.register_buffer("value", current.value, persistent=persistent)
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, TunableDropout(current))
    return {name: m for name, m in module.named_modules() if isinstance(m, TunableDropout)}
