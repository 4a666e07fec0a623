"""The benchmarks' one entry point, ``python -m benchmarks COMMAND``: the paper's tables
(``table1``, ``table2``, ``table3``), the cost and time-to-quality benchmarks (``cost``,
``ttq``), and the studies and tools of :data:`SCRIPTS` (each with its own ``--help``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def _schedule(text: str) -> tuple[tuple[int, float], ...]:
    """``"20000:1e-3,20000:1e-4"`` → ((20000, 1e-3), (20000, 1e-4))."""
    try:
        phases = tuple((int(n), float(lr)) for n, lr in (p.split(":") for p in text.split(",")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--schedule {text!r}: expected STEPS:LR[,STEPS:LR...], e.g. 20000:1e-3,20000:1e-4"
        ) from err
    if not phases or any(n < 1 or not lr > 0 for n, lr in phases):
        raise argparse.ArgumentTypeError(f"--schedule {text!r}: steps >= 1 and lr > 0 needed")
    return phases


def _spectrum(text: str) -> tuple[float, float]:
    """``"1,100"`` → (1.0, 100.0): the range of diag(H) in Table 1's problems."""
    from experiments.quadratic import check_spectrum

    try:
        return check_spectrum(_floats(text))
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise argparse.ArgumentTypeError(
            f"--spectrum {text!r}: expected LOW,HIGH, numbers with 0 < LOW <= HIGH < inf "
            "(diag(H) ~ U[LOW, HIGH], H positive definite), e.g. 0.5,2 (the default) or 1,100"
        ) from err


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in _names(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from err


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help="a tiny scale of the same protocol")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-parser per benchmark, each from its builder below."""
    from .training import EXPERIMENTS

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _table1_parser(sub)
    for name, exp in EXPERIMENTS.items():
        _experiment_parser(sub, name, exp)
    _ttq_parser(sub)
    _cost_parser(sub)
    for name, (_, about) in SCRIPTS.items():
        sub.add_parser(name, help=about, add_help=False)
    return parser


def _table1_parser(sub: Any) -> None:
    from .quadratic import TABLE1_METHODS

    t1 = sub.add_parser(
        "table1", help="the quadratic problem (Table 1), its repeats stacked in one engine"
    )
    _common(t1)
    t1.add_argument("--repeats", type=int, default=50)
    t1.add_argument("--dim", type=int, default=20)
    t1.add_argument("--seed", type=int, default=0, help="sampling seed of the problems")
    t1.add_argument(
        "--schedule",
        type=_schedule,
        default=None,
        help="STEPS:LR phases (default the paper's 20000:1e-3,20000:1e-4)",
    )
    t1.add_argument(
        "--spectrum",
        type=_spectrum,
        default=None,
        help="LOW,HIGH: diag(H) ~ U[LOW, HIGH] (default 0.5,2; 1,100 makes ηh reach 0.1 at "
        "η = 1e-3, where UnrollK's window differs from K copies of Unroll1's)",
    )
    t1.add_argument("--init-lambda", type=float, default=0.3)
    t1.add_argument("--warmup", type=int, default=0)
    t1.add_argument(
        "--methods",
        type=_names,
        default=None,
        help=f"comma-separated subset of {list(TABLE1_METHODS)}",
    )


def _experiment_parser(sub: Any, name: str, exp: Any) -> None:
    t = sub.add_parser(name, help=exp.description)
    _common(t)
    t.add_argument("--data-dir", type=Path, default=Path(exp.default_data_dir))
    t.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per run (default {exp.default_steps})",
    )
    t.add_argument(
        "--starts",
        type=int,
        default=None,
        help=f"initial values per method (default {len(exp.starts)}: "
        f"{', '.join(f'{v:g}' for v in exp.starts)}; another N spaces N values over "
        f"{list(exp.start_range or (min(exp.starts), max(exp.starts)))})",
    )
    t.add_argument(
        "--init-values",
        type=_floats,
        default=None,
        help="explicit initial λ values, for the online rows and the fixed grid alike",
    )
    t.add_argument(
        "--grid",
        type=_floats,
        default=None,
        help="explicit fixed-λ grid (default "
        + ("the starts" if exp.grid_is_starts else str(list(exp.grid)))
        + ")",
    )
    t.add_argument("--val-every", type=int, default=None, help="steps between validations")
    t.add_argument(
        "--methods",
        type=_names,
        default=None,
        help=f"comma-separated subset of {[r.label for r in exp.rows]}",
    )
    t.add_argument("--gpu", action="store_true", help="train on the GPU (accelerator=gpu)")
    t.add_argument(
        "--hyper-scale",
        type=float,
        default=None,
        help="multiply every method's hyper step, for runs shorter than the configs' "
        f"horizon (default {exp.default_hyper_scale:g}, whatever --steps; 1 keeps the "
        "configs' step)",
    )
    t.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="the tuner's warm-up steps (default "
        + (
            "the overlay's"
            if exp.default_warmup is None
            else f"{exp.default_warmup}, whatever --steps"
        )
        + ")",
    )
    t.add_argument(
        "--overlay",
        action="append",
        type=Path,
        default=[],
        help="a YAML overlay merged after the method's (e.g. examples/configs/ptb/medium.yaml)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in OUT/runs.jsonl and skip them",
    )
    t.add_argument(
        "--extra",
        action="append",
        default=[],
        help="config override for every run: model.init_args.lr=0.05",
    )


def _cost_parser(sub: Any) -> None:
    from .clocks import CLOCKS

    c = sub.add_parser(
        "cost",
        help="time per step and peak memory: callback vs plain training, one λ and per-layer",
    )
    _common(c)
    c.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"))
    c.add_argument("--ptb-dir", type=Path, default=Path("../shared/data/ptb"))
    c.add_argument("--models", type=_names, default=["mlp"], help="mlp and/or lstm")
    c.add_argument("--extra", action="append", default=[], help="config override for every fit")
    c.add_argument("--gpu", action="store_true", help="train on the GPU (accelerator=gpu)")
    c.add_argument(
        "--overlay", action="append", type=Path, default=[], help="LSTM overlay (medium.yaml)"
    )
    c.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median taken)")
    c.add_argument(
        "--rows",
        type=_names,
        default=None,
        help="comma-separated row labels to time besides plain (default every row)",
    )
    c.add_argument("--steps", type=int, default=60, help="timed steps per round and method")
    c.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="the clock of the table's times and ratios: wall, or this process's CPU time "
        "(less sensitive to other jobs on shared cores; one torch thread, CPU only); "
        "summary.json has both",
    )
    c.add_argument(
        "--kernels",
        action="store_true",
        help="also time the H·v work alone: forward+backward and H·v with torch's default "
        "kernels and with the native ones the callback's H·v steps run on (oneDNN/cuDNN RNN "
        "kernels off)",
    )


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _names(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from err


def _ttq_parser(sub: Any) -> None:
    from .clocks import CLOCKS
    from .ttq import SYSTEMS, TASKS

    t = sub.add_parser(
        "ttq",
        help="time to quality: the online tuner (library defaults) against a fixed grid, random "
        "search and Optuna TPE with median pruning, under one wall-time budget",
    )
    _common(t)
    t.add_argument(
        "--task",
        type=_names,
        default=None,
        help=f"comma-separated subset of {list(TASKS)} (default all)",
    )
    t.add_argument(
        "--systems",
        type=_names,
        default=None,
        help=f"comma-separated subset of {list(SYSTEMS)} (default all; optuna needs grid)",
    )
    t.add_argument(
        "--seeds",
        type=_seeds,
        default=[0, 1, 2],
        help="seeds of the online runs (each start × each seed); the baselines use the first "
        "(default 0,1,2)",
    )
    t.add_argument(
        "--online-args",
        default=None,
        help="OnlineHyperparamCallback arguments as a JSON object or a YAML/JSON file, e.g. "
        "'{\"warmup_steps\": 100}' (default {}: the library's defaults)",
    )
    t.add_argument(
        "--online-model-args",
        default=None,
        help="model constructor arguments of the online runs only, as a JSON object or a "
        'YAML/JSON file, e.g. \'{"keep_difference": "one_sided"}\' (default {})',
    )
    t.add_argument(
        "--online-data-args",
        default=None,
        help="datamodule attributes of the online runs only, as a JSON object or a YAML/JSON "
        "file, e.g. '{\"hyperopt_batch_size\": 50}' (the g_V batches; default {})",
    )
    t.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    t.add_argument("--ptb-dir", type=Path, default=Path("../shared/data/ptb"))
    t.add_argument("--steps", type=int, default=None, help="training steps per run (all tasks)")
    t.add_argument(
        "--val-every", type=int, default=None, help="steps between validations (all tasks)"
    )
    t.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="the clock of the tables, targets and curves (runs.jsonl has both): wall "
        "(perf_counter), or this process's CPU time (less sensitive to other jobs)",
    )
    t.add_argument(
        "--max-trials", type=int, default=500, help="a cap on Optuna's trials (default 500)"
    )
    t.add_argument("--no-verify", action="store_true", help="skip the data files' sha256 checks")
    t.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in OUT/runs.jsonl and skip them (a resumed Optuna study is "
        "rebuilt from its recorded trials and continues on its clock)",
    )


def _run_table1(args: argparse.Namespace) -> None:
    """``table1``: the quadratic problem."""
    from experiments.quadratic import DEFAULT_SPECTRUM

    from .quadratic import PAPER_SCHEDULE, run_table1

    schedule = args.schedule or PAPER_SCHEDULE
    repeats = args.repeats
    if args.smoke:
        schedule, repeats = tuple((max(1, n // 100), lr) for n, lr in schedule), 5
    run_table1(
        args.out,
        repeats=repeats,
        dim=args.dim,
        seed=args.seed,
        schedule=schedule,
        init_lambda=args.init_lambda,
        warmup_steps=args.warmup,
        methods=args.methods,
        record_every=max(1, sum(n for n, _ in schedule) // 400),
        show_progress=not args.no_progress,
        spectrum=args.spectrum or DEFAULT_SPECTRUM,
    )
    print((args.out / "table.md").read_text())


def _run_cost(args: argparse.Namespace) -> None:
    """``cost``: step time and memory."""
    from .cost import run_cost

    run_cost(
        args.out,
        models=args.models,
        mnist_dir=args.data_dir,
        ptb_dir=args.ptb_dir,
        rounds=args.rounds,
        steps=args.steps,
        smoke=args.smoke,
        show_progress=not args.no_progress,
        extra=args.extra,
        gpu=args.gpu,
        overlays=args.overlay,
        clock=args.clock,
        kernels=args.kernels,
        only=args.rows or (),
    )
    print((args.out / "cost.md").read_text())


def _run_ttq(args: argparse.Namespace) -> None:
    """``ttq``: time to quality."""
    from .ttq import SettingError, load_online_args, run_ttq

    try:
        run_ttq(
            args.out,
            tasks=args.task,
            systems=args.systems,
            seeds=args.seeds,
            online_args=load_online_args(args.online_args),
            online_model_args=load_online_args(args.online_model_args, "--online-model-args"),
            online_data_args=load_online_args(args.online_data_args, "--online-data-args"),
            mnist_dir=args.mnist_dir,
            ptb_dir=args.ptb_dir,
            smoke=args.smoke,
            steps=args.steps,
            val_every=args.val_every,
            resume=args.resume,
            clock=args.clock,
            verify=not args.no_verify,
            max_trials=args.max_trials,
            show_progress=not args.no_progress,
        )
    except SettingError as err:  # found before any run
        raise SystemExit(f"ttq: {err}") from err
    print((args.out / "table.md").read_text())


def _run_experiment(args: argparse.Namespace) -> None:
    """``table2``/``table3``: the paper's MLP and LSTM tables."""
    from .training import EXPERIMENTS, run_experiment

    run_experiment(
        EXPERIMENTS[args.command],
        args.out,
        data_dir=args.data_dir,
        steps=args.steps,
        starts=args.starts,
        val_every=args.val_every,
        methods=args.methods,
        smoke=args.smoke,
        gpu=args.gpu,
        resume=args.resume,
        extra=args.extra,
        overlays=args.overlay,
        hyper_scale=args.hyper_scale,
        warmup=args.warmup,
        init_values=args.init_values,
        grid_values=args.grid,
        show_progress=not args.no_progress,
    )
    print((args.out / "table.md").read_text())


_RUNNERS = {"table1": _run_table1, "cost": _run_cost, "ttq": _run_ttq}

#: the commands that are a module's own ``main(argv)``: name → (module, what it does)
SCRIPTS: dict[str, tuple[str, str]] = {
    "attention-kernels": (
        "benchmarks.studies.attention_kernels",
        "CPU cost of the H·y steps on attention: SDPA's math kernel against the default",
    ),
    "cuda-check": (
        "benchmarks.studies.cuda_check",
        "the prepared GPU check (kernels, cuDNN LSTM, mixed precision, step cost)",
    ),
    "dropout-cost": (
        "benchmarks.studies.dropout_cost",
        "what the keep probability's finite differences cost on the small PTB LSTM",
    ),
    "gv-fetch-cost": (
        "benchmarks.studies.gv_fetch_cost",
        "what drawing g_V's batch costs, per-sample fetch against gathered by index",
    ),
    "horizon-table": (
        "benchmarks.studies.horizon_table",
        "one ttq task's table over several online methods' output folders",
    ),
    "learning-rate-tangents": (
        "benchmarks.studies.learning_rate_tangents",
        "LearningRate and Momentum tangents against finite differences of whole trainings",
    ),
    "quadratic-methods": (
        "benchmarks.studies.quadratic_methods",
        "how far from λ* each method ends on the paper's quadratic problem",
    ),
    "step-profile": (
        "benchmarks.studies.step_profile",
        "the engine's phases per step outside Lightning: CPU ms and torch operator calls",
    ),
    "quickstart-tensorboard": (
        "benchmarks.tools.quickstart_tensorboard",
        "the quickstart's TensorBoard figure, docs/img/quickstart_tensorboard.png",
    ),
    "compare-trajectories": (
        "benchmarks.tools.compare_trajectories",
        "two λ-trajectory records of the test suite, compared bit for bit",
    ),
}


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the chosen benchmark (a script's arguments are its own)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SCRIPTS:
        module = importlib.import_module(SCRIPTS[argv[0]][0])
        raise SystemExit(module.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    from .records import quiet_lightning

    quiet_lightning()
    _RUNNERS.get(args.command, _run_experiment)(args)


if __name__ == "__main__":
    main()
