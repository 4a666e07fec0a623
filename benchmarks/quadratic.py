"""Table 1 of the paper: the quadratic problem, its repeats stacked and tuned by one engine.

The R repeats are stacked in one (R, d) parameter θ with one λ_r per row, and
L_T = Σ_r L_T,r(θ_r, λ_r), L_V = Σ_r L_V,r(θ_r). Problem r's losses depend on θ_r and λ_r only,
so in :class:`~lightning_hyperopt.core.engine.TangentEngine` over these R hyperparameters the
tangent y_r stays on θ_r's entries, ⟨g_V, y_r⟩ is problem r's own hypergradient and the
method's row-wise projection is problem r's: the engine's own step, in its own order (backward,
advance, ``optimizer.step()``, update), runs every repeat at once. A test checks each row
against the engine on that problem alone.

Protocol (paper, Table 1): d = 20, H diagonal, 50 repeats; 20K steps of plain SGD at η = 1e-3
(→ θ₁, λ₁), then 20K at η = 1e-4 (→ θ₂, λ₂); hyper step 0.1η. Metrics: mean |λᵢ − λ*| and the
mean relative increase of L_V(θᵢ) over L_V(θ*(λ*)). The paper leaves the sampling, λ₀ and the
warm-up open: the sampling is :func:`~experiments.quadratic.sample_quadratic`'s,
diag(H) ~ U[0.5, 2] unless ``spectrum`` says otherwise, λ₀ = ``init_lambda`` (0.3 by default,
the middle of the λ* range) and there is no warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from experiments.quadratic import (
    DEFAULT_SPECTRUM,
    QuadraticInstance,
    check_spectrum,
    sample_quadratic,
)
from lightning_hyperopt.core import (
    Clip,
    Exact,
    FirstOrder,
    HyperMethod,
    Hyperparameter,
    PaperStep,
    TangentEngine,
    Unroll,
)

from .records import RunLog, environment, fmt, markdown_table, progress, write_json

#: the rows of Table 1 (hyper step c·η with c = 0.1), plus the exact tangent and Unroll1-gTgV.
#: Unroll1-gTgV has no η factor: its constant α = 1e-4 is 0.1·η of the first phase.
TABLE1_METHODS: dict[str, Callable[[], HyperMethod]] = {
    "Unroll1-gTgV": lambda: FirstOrder(hyper_lr=1e-4),
    "Unroll1": lambda: Unroll(1, 0.1),
    "Unroll5": lambda: Unroll(5, 0.1),
    "Unroll10": lambda: Unroll(10, 0.1),
    "Clip2": lambda: Clip(2.0, 0.1),
    "Clip5": lambda: Clip(5.0, 0.1),
    "Exact (R=∞)": lambda: Exact(0.1),
}
#: the paper's Table 1: (mean |λ₁ − λ*|, mean |λ₂ − λ*|, L_V increase at 1, at 2) in %
PAPER_TABLE1: dict[str, tuple[float, float, float, float]] = {
    "Unroll1": (0.047, 0.047, 0.77, 0.77),
    "Unroll5": (0.039, 0.045, float("nan"), float("nan")),
    "Unroll10": (0.032, 0.044, float("nan"), float("nan")),
    "Clip2": (0.012, 0.012, 0.07, 0.07),
    "Clip5": (0.000, 0.000, 0.00, 0.00),
}
#: the paper's schedule: (steps, η) per phase
PAPER_SCHEDULE: tuple[tuple[int, float], ...] = ((20_000, 1e-3), (20_000, 1e-4))
#: λ is clamped to this range after every hyper step
LAMBDA_BOUNDS: tuple[float, float] = (0.0, 10.0)


def check_stable(
    spectrum: Sequence[float],
    schedule: Sequence[tuple[int, float]],
    bounds: tuple[float, float] = LAMBDA_BOUNDS,
) -> None:
    """η·(1 + λ)·h < 2 for every η of ``schedule``, every h ≤ the spectrum's high end and every
    λ the clamp ``bounds`` allows: SGD on L_T, whose step multiplies θ − θ*(λ) by
    I − η(1 + λ)H, and the tangent recurrence (the same matrix) contract. Raises
    ``ValueError`` naming the settings otherwise."""
    _, high = check_spectrum(spectrum)
    lr = max(lr for _, lr in schedule)
    rate = lr * (1 + bounds[1]) * high
    if not rate < 2:
        raise ValueError(
            f"spectrum={tuple(spectrum)} with schedule {tuple(schedule)}: "
            f"η_max·(1 + λ_max)·h_max = {lr:g}·{1 + bounds[1]:g}·{high:g} = {rate:.3g} >= 2, so "
            f"SGD diverges for some λ in the clamp range {bounds}; lower the schedule's learning "
            f"rates or the spectrum's high end (the paper's: {DEFAULT_SPECTRUM}, "
            f"{PAPER_SCHEDULE})"
        )


@dataclass
class VectorizedRun:
    """What :func:`run_vectorized` returns: snapshots of (θ, λ) and the clipping rate."""

    steps: list[int] = field(default_factory=list)  # step count after which each snapshot was taken
    thetas: list[Tensor] = field(default_factory=list)  # (R, d) each
    lambdas: list[Tensor] = field(default_factory=list)  # (R,) each
    clipped: list[float] = field(default_factory=list)  # share of clipped rows since the last one
    phase_ends: list[int] = field(default_factory=list)  # index of each phase's last snapshot
    seconds: float = 0.0


def run_vectorized(
    problem: QuadraticInstance,
    method: HyperMethod,
    schedule: Sequence[tuple[int, float]],
    init_lambda: float,
    warmup_steps: int = 0,
    bounds: tuple[float, float] = LAMBDA_BOUNDS,
    record_every: int = 1,
    show_progress: bool = False,
    desc: str = "",
) -> VectorizedRun:
    """Tune λ_r online on each of the R stacked problems of ``problem`` (tensors (R, d)) with
    one :class:`TangentEngine` (the paper's rule, :class:`PaperStep`).

    Plain ``torch.optim.SGD`` from θ = 0, y = 0, λ = ``init_lambda`` in ``bounds``;
    ``schedule`` lists (steps, η) phases. Snapshots are taken every ``record_every`` steps and
    at each phase's end."""
    if record_every < 1:
        raise ValueError(f"record_every={record_every!r} must be an integer >= 1")
    theta = torch.zeros_like(problem.theta_bar).requires_grad_(True)
    rows = problem.lambda_star.shape[0]
    lams = {f"lambda_{r}": Hyperparameter(init_lambda, bounds=bounds) for r in range(rows)}
    optimizer = torch.optim.SGD([theta], lr=schedule[0][1])
    engine = TangentEngine(method, lams, optimizer, warmup_steps, hyper_optimizer=PaperStep())

    def values() -> torch.Tensor:
        return torch.stack([h.value for h in lams.values()])

    run = VectorizedRun()
    clipped_sum, clipped_n = 0.0, 0
    lrs = [lr for n_steps, lr in schedule for _ in range(n_steps)]
    phase_ends = {sum(n for n, _ in schedule[: i + 1]) for i in range(len(schedule))}
    start = time.perf_counter()
    for step, lr in progress(enumerate(lrs), len(lrs), desc, show_progress):
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad()
        engine.backward(problem.training_loss(theta, values()).sum())
        engine.advance()
        optimizer.step()
        engine.update(lambda: problem.validation_loss(theta).sum())
        if engine.state.clipped is not None:
            clipped_sum += float(engine.state.clipped.double().mean())
            clipped_n += 1
        done = step + 1
        if done % record_every == 0 or done in phase_ends:
            run.steps.append(done)
            run.thetas.append(theta.detach().clone())
            run.lambdas.append(values().detach().clone())
            run.clipped.append(clipped_sum / clipped_n if clipped_n else float("nan"))
            clipped_sum, clipped_n = 0.0, 0
        if done in phase_ends:
            run.phase_ends.append(len(run.steps) - 1)
    engine.detach()
    run.seconds = time.perf_counter() - start
    return run


def first_order_fixed_point(problem: QuadraticInstance) -> Tensor:
    """The λ where the first-order hypergradient ⟨g_V(θ*(λ)), ∂g_T/∂λ⟩ vanishes (Unroll1 and
    Unroll1-gTgV stop there): with θ*(λ) = θ̄/(1+λ), 1 + λ = θ̄ᵀH²θ̄ / θ̃ᵀH²θ̄."""
    h2 = problem.h * problem.h
    num = (problem.theta_bar * h2 * problem.theta_bar).sum(-1)
    den = (problem.theta_tilde * h2 * problem.theta_bar).sum(-1)
    return num / den - 1


def unroll_fixed_point(
    problem: QuadraticInstance,
    steps: int,
    lr: float,
    bounds: tuple[float, float] = LAMBDA_BOUNDS,
    iterations: int = 80,
) -> Tensor:
    """The λ where UnrollK stops once θ has converged to θ*(λ) = θ̄/(1+λ).

    A window of K tangent steps from y = 0 with M = I − η(1+λ)H gives
    y_K = −(I − M^K) θ̄/(1+λ)², so ⟨g_V(θ*(λ)), y_K⟩ = −f(λ)/(1+λ)² with
    f(λ) = ⟨H(θ*(λ) − θ̃), (I − M^K) θ̄⟩, and λ rises while f > 0. The root of f is found by
    bisection in ``bounds`` (a bound when f keeps one sign there). K = 1 is the first-order
    fixed point (:func:`first_order_fixed_point`); as Kηh grows, λ_K → λ*. A window that is K
    copies of Unroll1's (Kηh ≪ 1) has M^K ≈ I − Kη(1+λ)H: the same root as K = 1."""

    def f(lam: Tensor) -> Tensor:
        m = 1 - lr * (1 + lam.unsqueeze(-1)) * problem.h
        g_val = problem.h * (problem.theta_star(lam) - problem.theta_tilde)
        return (g_val * (1 - m**steps) * problem.theta_bar).sum(-1)

    low = torch.full_like(problem.lambda_star, bounds[0])
    high = torch.full_like(problem.lambda_star, bounds[1])
    below, above = f(low) <= 0, f(high) >= 0  # λ is pushed onto a bound
    for _ in range(iterations):
        mid = (low + high) / 2
        rising = f(mid) > 0
        low, high = torch.where(rising, mid, low), torch.where(rising, high, mid)
    root = (low + high) / 2
    return torch.where(below, bounds[0], torch.where(above, bounds[1], root))


def unroll_fixed_point_errors(
    problem: QuadraticInstance, names: Sequence[str], schedule: Sequence[tuple[int, float]]
) -> dict[str, list[float]]:
    """Mean |λ_K − λ*| over the repeats for each UnrollK row of ``names``, one value per phase
    of ``schedule`` (at that phase's η)."""
    out: dict[str, list[float]] = {}
    for name in names:
        method = TABLE1_METHODS[name]()
        if isinstance(method, Unroll):
            out[name] = [
                float(
                    (unroll_fixed_point(problem, method.steps, lr) - problem.lambda_star)
                    .abs()
                    .mean()
                )
                for _, lr in schedule
            ]
    return out


def phase_metrics(problem: QuadraticInstance, theta: Tensor, lam: Tensor) -> dict[str, float]:
    """Mean |λ − λ*| and mean relative increase of L_V(θ) over L_V(θ*(λ*)) across repeats."""
    best = problem.validation_loss(problem.theta_star(problem.lambda_star))
    increase = problem.validation_loss(theta) / best - 1
    return {
        "abs_lambda_error": float((lam - problem.lambda_star).abs().mean()),
        "max_abs_lambda_error": float((lam - problem.lambda_star).abs().max()),
        "val_loss_increase": float(increase.mean()),
    }


def run_table1(
    out: Path,
    repeats: int = 50,
    dim: int = 20,
    seed: int = 0,
    schedule: Sequence[tuple[int, float]] = PAPER_SCHEDULE,
    init_lambda: float = 0.3,
    warmup_steps: int = 0,
    methods: Sequence[str] | None = None,
    record_every: int = 100,
    show_progress: bool = True,
    spectrum: Sequence[float] = DEFAULT_SPECTRUM,
) -> dict[str, Any]:
    """Run Table 1 end to end, diag(H) ~ U[``spectrum``]; writes ``table.md``, ``runs.jsonl``,
    ``summary.json`` and ``table1.png`` into ``out`` and returns the summary."""
    names = list(TABLE1_METHODS) if methods is None else list(methods)
    unknown = [m for m in names if m not in TABLE1_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; accepted values: {list(TABLE1_METHODS)}")
    spectrum = check_spectrum(spectrum)
    check_stable(spectrum, schedule)
    problem = sample_quadratic(dim, repeats, seed, spectrum=spectrum)
    log = RunLog(out)
    start = time.perf_counter()
    curves: dict[str, dict[str, list[float]]] = {}
    rows: dict[str, list[dict[str, float]]] = {}
    for name in progress(names, len(names), "table1", show_progress):
        method = TABLE1_METHODS[name]()
        run = run_vectorized(
            problem,
            method,
            schedule,
            init_lambda,
            warmup_steps,
            record_every=record_every,
            show_progress=show_progress,
            desc=name,
        )
        rows[name] = [phase_metrics(problem, run.thetas[i], run.lambdas[i]) for i in run.phase_ends]
        curves[name] = _curves(problem, run)
        log.add(
            {
                "key": name,
                "method": name,
                "method_repr": repr(method),
                "seed": seed,
                "repeats": repeats,
                "dim": dim,
                "spectrum": spectrum,
                "schedule": schedule,
                "init_lambda": init_lambda,
                "warmup_steps": warmup_steps,
                "phases": rows[name],
                "lambda_final": run.lambdas[-1],
                "lambda_star": problem.lambda_star,
                "curves": curves[name],
                "wall_s": run.seconds,
            }
        )
    summary = {
        "environment": environment(),
        "protocol": {
            "repeats": repeats,
            "dim": dim,
            "spectrum": spectrum,
            "seed": seed,
            "schedule": schedule,
            "init_lambda": init_lambda,
            "warmup_steps": warmup_steps,
        },
        "first_order_fixed_point_error": float(
            (first_order_fixed_point(problem) - problem.lambda_star).abs().mean()
        ),
        "unroll_fixed_point_error": unroll_fixed_point_errors(problem, names, schedule),
        "rows": rows,
        "wall_s": time.perf_counter() - start,
    }
    write_json(out / "summary.json", summary)
    (out / "table.md").write_text(table1_markdown(summary))
    from .plots import plot_curves

    plot_curves(
        {name: {k: (curves[name]["step"], v) for k, v in curves[name].items()} for name in names},
        panels=[
            ("abs_lambda_error", "mean |λ − λ*|", "log"),
            ("train_loss", "mean L_T(θ, λ)", "log"),
            ("val_loss_increase", "L_V(θ) / L_V(θ*(λ*)) − 1", "log"),
        ],
        title=f"Quadratic problem, {repeats} repeats (d = {dim}, diag(H) ~ U[{spectrum[0]:g}, "
        f"{spectrum[1]:g}]); η changes at the dashed line",
        path=out / "table1.png",
        vlines=[s for s, _ in _phase_boundaries(schedule)],
    )
    return summary


def _phase_boundaries(schedule: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    ends, total = [], 0
    for n, lr in schedule[:-1]:
        total += n
        ends.append((total, lr))
    return ends


def _curves(problem: QuadraticInstance, run: VectorizedRun) -> dict[str, list[float]]:
    """Repeat-averaged curves at every snapshot (for the plots and the JSON record)."""
    out: dict[str, list[float]] = {
        "step": [float(s) for s in run.steps],
        "lambda_mean": [],
        "abs_lambda_error": [],
        "train_loss": [],
        "val_loss_increase": [],
        "clipped": list(run.clipped),
    }
    for theta, lam in zip(run.thetas, run.lambdas):
        m = phase_metrics(problem, theta, lam)
        out["lambda_mean"].append(float(lam.mean()))
        out["abs_lambda_error"].append(m["abs_lambda_error"])
        out["val_loss_increase"].append(m["val_loss_increase"])
        out["train_loss"].append(float(problem.training_loss(theta, lam).mean()))
    return out


def table1_markdown(summary: Mapping[str, Any]) -> str:
    """Table 1 in the paper's format, with the paper's numbers beside ours."""
    header = [
        "Method",
        "mean |λ₁ − λ*|",
        "mean |λ₂ − λ*|",
        "L_V(θ₁) increase",
        "L_V(θ₂) increase",
        "paper |λ₁ − λ*|, |λ₂ − λ*|",
        "paper increase",
    ]
    body = []
    for name, (p1, p2) in summary["rows"].items():
        paper = PAPER_TABLE1.get(name)
        body.append(
            [
                name,
                fmt(p1["abs_lambda_error"]),
                fmt(p2["abs_lambda_error"]),
                f"{100 * p1['val_loss_increase']:+.2f}%",
                f"{100 * p2['val_loss_increase']:+.2f}%",
                "—" if paper is None else f"{paper[0]:.3f}, {paper[1]:.3f}",
                "—" if paper is None or paper[2] != paper[2] else f"+{paper[2]:.2f}%",
            ]
        )
    p = summary["protocol"]
    phases = ", then ".join(f"{n} steps at η = {lr:g}" for n, lr in p["schedule"])
    low, high = p["spectrum"]
    note = (
        f"\n{p['repeats']} repeats, d = {p['dim']}, diag(H) ~ U[{low:g}, {high:g}], sampling "
        f"seed {p['seed']}; {phases}; hyper "
        f"step 0.1η; λ₀ = {p['init_lambda']}, warm-up {p['warmup_steps']}. First-order fixed "
        f"point (where Unroll1 and Unroll1-gTgV stop if λ converges): mean |λ_FO − λ*| = "
        f"{summary['first_order_fixed_point_error']:.3f}. "
    )
    unroll = summary["unroll_fixed_point_error"]
    if unroll:
        note += (
            "Fixed points λ_K (where UnrollK stops if λ converges) at each phase's η: mean "
            "|λ_K − λ*| = "
            + "; ".join(f"{n} {', '.join(f'{e:.3f}' for e in errs)}" for n, errs in unroll.items())
            + ". "
        )
    note += f"Wall time {summary['wall_s']:.0f} s.\n"
    return markdown_table(header, body) + note
