"""The methods of the paper: when the tangent y = dθ/dλ is reset or projected, and when λ moves.

Every method shares the step of the joint system (η: the optimizer's learning rate at step t)

    y_{t+1} = P( y_t − η (H_t y_t + ∂g_T/∂λ) )       (tangent; SGD momentum adds its own tangent)
    θ_{t+1} = θ_t − η g_T                            (the ordinary optimizer step)
    λ ← λ − α_t ⟨g_V(θ_{t+1}), y_{t+1}⟩             (when the method updates, after warm-up)

and differs only in P, in the resets and in the hyper step α_t, which each class below states.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_hyperopt.core.arguments import check_integer, check_nonnegative
from lightning_hyperopt.core.functional import Tangent, global_norm, project_l2_ball


class HyperMethod:
    """Base class of the tuning methods (a strategy the callback is given).

    Subclasses set the rule through four small hooks; the engine calls them at step t.
    """

    #: whether the method carries a tangent (False: first order, y is replaced by −∂g_T/∂λ)
    uses_tangent: bool = True
    #: μ: the carried tangent (and the optimizer-state tangents) are multiplied by μ before each
    #: step, y_{t+1} = μ A_t y_t + B_t (1: the exact recurrence)
    discount: float = 1.0
    #: β: the hypergradient at the averaged iterate, h = ⟨g_V(θ̄), ȳ⟩ with θ̄ and ȳ the
    #: β-weighted averages of θ and y (:mod:`~lightning_hyperopt.core.averaging`); None: at θ_{t+1}
    average: float | None = None

    def _set_average(self, value: float | None) -> None:
        if value is None:  # the class's None: the method's repr stays as it was
            return
        value = float(value)
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"average={value!r} must be in [0, 1) (β, the averaged iterate's decay: a "
                "horizon of about 1/(1 − β) steps), or None (the hypergradient at θ_{t+1})"
            )
        self.average = value

    def resets_at(self, step: int) -> bool:
        """Whether y is reset to 0 before the tangent step of step ``step``."""
        return False

    def updates_at(self, step: int) -> bool:
        """Whether λ is updated after optimizer step ``step`` (warm-up aside)."""
        return True

    def project(
        self, tangent: Sequence[Tensor], batch_dim: int | None = None
    ) -> tuple[Tangent, Tensor, Tensor | None]:
        """P(y): returns the new tangent, ‖y‖ before P, and whether y was clipped (or None).

        ``batch_dim``: independent problems stacked along that dimension are projected
        row-wise (see :func:`~lightning_hyperopt.core.functional.project_l2_ball`).
        """
        return list(tangent), global_norm(tangent, batch_dim), None

    #: the paper rule's step when the method is given none: c (α_t = c·η_t), or FirstOrder's α
    default_paper_step: float = 0.1
    #: whether α_t follows the learning rate (c·η_t) or is a constant (FirstOrder's α)
    paper_step_follows_lr: bool = True
    #: the argument that holds the paper rule's step (None: not given)
    _paper_step_arg = "hyper_lr_scale"

    def _set_paper_step(self, value: float | None) -> None:
        name = self._paper_step_arg
        setattr(self, name, None if value is None else check_nonnegative(name, value))

    @property
    def paper_step_given(self) -> bool:
        """Whether the paper rule's step was set (then the callback uses that rule)."""
        return getattr(self, self._paper_step_arg, None) is not None

    def alpha(self, lr: float) -> float:
        """α_t, the paper rule's step (:class:`PaperStep`) given the learning rate η_t."""
        value = getattr(self, self._paper_step_arg, None)
        value = self.default_paper_step if value is None else value
        return value * lr if self.paper_step_follows_lr else value

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Clip(HyperMethod):
    """ClipR: y_{t+1} = P_B(r)(y_t − η(H y_t + ∂g_T/∂λ)), never reset; λ ← λ − c·η·⟨g_V, y⟩
    at every step.

    P_B(r)(y) = y · r / max(‖y‖, r). Pick r above ‖dθ*/dλ‖ for an unbiased limit; a smaller r
    turns the projection into a step-size filter (the direction is kept).

    Args:
        radius: r > 0.
        hyper_lr_scale: c, the paper rule's hyper step relative to the parameter learning
            rate (0.1 when not given; giving it selects that rule, see :class:`PaperStep`).
        average: β in [0, 1): the hypergradient at the averaged iterate, ⟨g_V(θ̄), ȳ⟩
            (θ̄, ȳ: β-weighted averages of θ and y over about 1/(1 − β) steps); ``None``: at
            θ_{t+1}.
    """

    def __init__(
        self,
        radius: float = 5.0,
        hyper_lr_scale: float | None = None,
        average: float | None = None,
    ) -> None:
        radius = float(radius)
        if not (radius > 0 and math.isfinite(radius)):
            raise ValueError(
                f"radius={radius!r} must be a finite number > 0 (use Exact() for r = ∞)"
            )
        self.radius = radius
        self._set_paper_step(hyper_lr_scale)
        self._set_average(average)

    def project(
        self, tangent: Sequence[Tensor], batch_dim: int | None = None
    ) -> tuple[Tangent, Tensor, Tensor | None]:
        return project_l2_ball(tangent, self.radius, batch_dim)


class Exact(HyperMethod):
    """Exact tangent (r = ∞): y_{t+1} = y_t − η(H y_t + ∂g_T/∂λ), never reset nor projected;
    λ ← λ − c·η·⟨g_V, y⟩ at every step. y is the exact forward-mode derivative dθ_t/dλ.

    Args:
        hyper_lr_scale: c, the paper rule's hyper step relative to the parameter learning
            rate (0.1 when not given; giving it selects that rule, see :class:`PaperStep`).
        average: β in [0, 1): the hypergradient at the averaged iterate, ⟨g_V(θ̄), ȳ⟩
            (θ̄, ȳ: β-weighted averages of θ and y over about 1/(1 − β) steps); ``None``: at
            θ_{t+1}.
    """

    def __init__(self, hyper_lr_scale: float | None = None, average: float | None = None) -> None:
        self._set_paper_step(hyper_lr_scale)
        self._set_average(average)


class Unroll(HyperMethod):
    """UnrollK: y ← 0 at steps t ≡ 0 (mod K), then K unprojected tangent steps with λ fixed;
    λ ← λ − c·η·⟨g_V(θ_K), y_K⟩ once per window, after steps t ≡ K − 1 (mod K).

    ⟨g_V(θ_K), y_K⟩ is exactly d L_V(θ_K)/dλ through the K steps of the window.

    Args:
        steps: K ≥ 1.
        hyper_lr_scale: c, the paper rule's hyper step relative to the parameter learning
            rate (0.1 when not given; giving it selects that rule, see :class:`PaperStep`).
    """

    def __init__(self, steps: int = 1, hyper_lr_scale: float | None = None) -> None:
        self.steps = check_integer("steps", steps, 1, symbol="K")
        self._set_paper_step(hyper_lr_scale)

    def resets_at(self, step: int) -> bool:
        return step % self.steps == 0

    def updates_at(self, step: int) -> bool:
        return step % self.steps == self.steps - 1


class Discount(HyperMethod):
    """A discounted tangent (MARTHE, Donini et al. 2020): y_{t+1} = μ·A_t y_t + B_t, with
    A_t y = y − η H y through the optimizer's update and B_t the step's own term; λ moves at
    every step. μ = 1 is :class:`Exact`, μ = 0 :class:`FirstOrder`'s one-step tangent; in
    between, a step s steps back weighs μˢ, a horizon of about 1/(1 − μ) steps.

    Args:
        mu: μ in [0, 1].
        hyper_lr_scale: c, the paper rule's hyper step relative to the parameter learning
            rate (0.1 when not given; giving it selects that rule, see :class:`PaperStep`).
        average: β in [0, 1): the hypergradient at the averaged iterate, ⟨g_V(θ̄), ȳ⟩
            (θ̄, ȳ: β-weighted averages of θ and y over about 1/(1 − β) steps); ``None``: at
            θ_{t+1}.
    """

    def __init__(
        self, mu: float = 0.99, hyper_lr_scale: float | None = None, average: float | None = None
    ) -> None:
        mu = float(mu)
        if not 0.0 <= mu <= 1.0:
            raise ValueError(f"mu={mu!r} must be in [0, 1]")
        self.discount = mu
        self._set_paper_step(hyper_lr_scale)
        self._set_average(average)


class FirstOrder(HyperMethod):
    """Unroll1-gTgV (Luketina et al. 2016): no tangent; y is replaced by −∂g_T/∂λ, so
    λ ← λ + α·⟨g_V(θ_{t+1}), ∂g_T/∂λ(θ_t)⟩ at every step, with a constant α (no η factor).

    Proportional to the true hypergradient only when the Hessian is a multiple of I. With an
    optimizer other than plain SGD, ∂g_T/∂λ is read as δ, the one-step tangent per unit
    learning rate (y₁ = −η δ from y₀ = 0): ∂g_T/∂λ through momentum's first step, or Adam's
    preconditioning, and θ for a decoupled (AdamW) weight decay.

    Args:
        hyper_lr: α, the paper rule's constant hyper step (1e-3 when not given; giving it
            selects that rule, see :class:`PaperStep`).
        average: β in [0, 1): the hypergradient at the averaged iterate, −⟨g_V(θ̄), δ̄⟩
            (θ̄, δ̄: β-weighted averages of θ and δ over about 1/(1 − β) steps; δ is then
            computed at every step); ``None``: at θ_{t+1}.
    """

    uses_tangent = False
    default_paper_step = 1e-3
    paper_step_follows_lr = False
    _paper_step_arg = "hyper_lr"

    def __init__(self, hyper_lr: float | None = None, average: float | None = None) -> None:
        self._set_paper_step(hyper_lr)
        self._set_average(average)

    def resets_at(self, step: int) -> bool:
        return True  # no tangent is carried from one step to the next


METHODS: dict[str, type[HyperMethod]] = {
    "clip": Clip,
    "exact": Exact,
    "unroll": Unroll,
    "first_order": FirstOrder,
    "discount": Discount,
}


#: ``Clip``'s radius in the default for a learning rate or momentum (docs/how-to/learning-rate.md)
HORIZON_RADIUS = 50.0


def default_method(hyperparameters: Mapping[str, Any]) -> HyperMethod:
    """The method ``"auto"`` picks for a fit's hyperparameters:

        Clip(r = 50)  if a LearningRate or Momentum is tuned,   FirstOrder()  otherwise.

    A learning rate or momentum is a kind with :attr:`Hyperparameter.short_horizon_bias`: its
    one-step (greedy) hypergradient favours a smaller one almost always, and a carried tangent
    follows λ's effect across the run. For penalties, weight decay and keep probabilities
    ``FirstOrder`` reached the grid's best soonest. The measurements behind both choices are
    on the results page (docs/results.md, time to quality)."""
    if any(h.short_horizon_bias for h in hyperparameters.values()):
        return Clip(HORIZON_RADIUS)
    return FirstOrder()


#: ``hyper_every`` where ``"auto"`` chose ``FirstOrder`` (a fit of regularizers only)
DEFAULT_HYPER_EVERY = 4


def default_hyper_every(method: HyperMethod, method_chosen: bool) -> int:
    """The cadence ``hyper_every="auto"`` picks for the fit's resolved ``method``:

        k = 4  where ``"auto"`` chose the method and it is ``FirstOrder`` (regularizers only),
        k = 1  otherwise (a method the user named, or Clip for a learning rate or momentum).

    With the adaptive hyper step each update stands for the k update points it replaces (its
    window), so λ keeps its pace per step while g_V is drawn once in k steps. k = 4 held every
    start of the four regularization tasks within 2% of the grid's best and cut the tuned run's
    cost; the measurements are on the results page (docs/results.md, time to quality). A named
    method keeps the paper's cadence, one λ update per step."""
    return DEFAULT_HYPER_EVERY if method_chosen and isinstance(method, FirstOrder) else 1


def default_method_reason(hyperparameters: Mapping[str, Any]) -> str:
    """Why :func:`default_method` chose what it did for these hyperparameters, in one clause."""
    biased = [name for name, h in hyperparameters.items() if h.short_horizon_bias]
    if biased:
        names, one = ", ".join(biased), len(biased) == 1
        return (
            f"{names} {'sets' if one else 'set'} how far θ travels, which a greedy "
            f"hypergradient would lower: a tangent clipped at r = {HORIZON_RADIUS:g} carries "
            f"{'its' if one else 'their'} effect across steps"
        )
    return "regularizers only: the first-order step reached a grid's best soonest"


def resolve_method(method: str | HyperMethod) -> HyperMethod:
    """A method instance from an instance or a name (built with its defaults)."""
    if isinstance(method, HyperMethod):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]()
    raise ValueError(
        f"method={method!r} is not supported; accepted values: {sorted(METHODS)} "
        "or an instance of Clip, Exact, Unroll, Discount or FirstOrder"
    )
