"""Dropout whose keep probability λ is an online hyperparameter (torch only).

    TunableDropout(x) = x ⊙ m / λ,   m ∼ Bernoulli(λ) elementwise   (inverted dropout)

so L_T(θ, λ) = E_m[L_T(θ, m, λ)] (paper, "Regularizers"). Its ∂g_T/∂λ has no autograd path
(m is discrete): the layers' :class:`~lightning_hyperopt.core.hyperparameters.
keep_probability.KeepProbability` is differentiated by coupled finite differences.
:func:`adopt_dropout` swaps a model's ``nn.Dropout`` modules for these layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_hyperopt.core.hyperparameters.keep_probability import (
    Difference,
    KeepProbability,
    coupled_generator,
)

AdoptMode = Literal["shared", "per_module"]
ADOPT_MODES = ("shared", "per_module")


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
        generator = coupled_generator(x.device)
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
    _warn_internal_dropout(module)
    keeps = _keep_probabilities(found, mode, init, bounds)
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


def _warn_internal_dropout(module: nn.Module) -> None:
    """A warning for each module that applies a dropout rate of its own (not a module)."""
    for name, m in module.named_modules():
        rate = getattr(m, "dropout", None)
        if isinstance(rate, float) and rate > 0:
            warnings.warn(
                f"adopt_dropout: {name or type(m).__name__} ({type(m).__name__}) applies "
                f"dropout={rate} internally; it is not a module and stays fixed",
                stacklevel=3,
            )


def _keep_probabilities(
    found: Mapping[str, nn.Dropout],
    mode: AdoptMode,
    init: float | None,
    bounds: tuple[float, float],
) -> dict[str, float]:
    """Each dropout's starting keep probability, ``init`` or 1 − p, checked against ``bounds``
    (and, shared, against each other)."""
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
    return keeps
