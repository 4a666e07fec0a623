"""The tasks of ``bench ttq``: search spaces (:class:`Dim`), fixed grids, online starts and the
model, data and trainer settings of each (:data:`TASKS`), with their smoke scale."""

from __future__ import annotations

import importlib
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..records import logspace

SYSTEMS = ("grid", "random", "optuna", "prodigy", "schedulefree", "online")
#: the name of a learning-rate dim: λ multiplies the task's ``lr`` (see ``runs.build_model``)
LR_SCALE = "lr_scale"


class SettingError(ValueError):
    """A bad benchmark setting or a missing package, found before any run (the command line
    prints it)."""


def lightning_pytorch() -> Any:
    try:
        return importlib.import_module("lightning.pytorch")
    except ImportError as err:
        raise SettingError(
            "the ttq benchmark trains under lightning.pytorch: pip install -r "
            "benchmarks/requirements.txt (lightning, optuna, optuna-integration)"
        ) from err


# ------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Dim:
    """One tuned hyperparameter: its name in the model (as :func:`find_hyperparameters` names
    it) and its search range, log-uniform (``log``: penalties, weight decay; final values are
    compared by ratio) or uniform (keep probabilities; compared by difference)."""

    name: str
    low: float
    high: float
    log: bool = True

    def sample(self, rng: random.Random) -> float:
        """A value drawn from the range (log-uniform or uniform)."""
        if self.log:
            return 10 ** rng.uniform(math.log10(self.low), math.log10(self.high))
        return rng.uniform(self.low, self.high)

    def fmt(self, value: float) -> str:
        return f"{value:.3g}" if self.log else f"{value:.2f}"


Point = Mapping[str, float]  # a value for every Dim, by name


@dataclass(frozen=True)
class Task:
    """A benchmark task: the model and data, the searched hyperparameters, the grid, the online
    starts and the training length (the same for every run of every system).

    ``model_args``/``data_args`` are the fixed constructor arguments (the hyperparameters'
    values are set per run, by name); ``trainer_args`` extra Trainer arguments (e.g. gradient
    clipping). ``smoke`` replaces fields for ``--smoke`` (tiny data; ``model_args``,
    ``data_args`` and ``trainer_args`` are merged)."""

    name: str
    description: str
    model: str  # a key of experiments.models.MODELS
    data: str  # "mnist" or "ptb"
    dims: tuple[Dim, ...]
    grid: tuple[Point, ...]
    starts: tuple[Point, ...]
    steps: int
    val_every: int
    model_args: Mapping[str, Any] = field(default_factory=dict)
    data_args: Mapping[str, Any] = field(default_factory=dict)
    trainer_args: Mapping[str, Any] = field(default_factory=dict)
    loss_label: str = "cross-entropy"
    smoke: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    #: the tuning-free optimizers run on this task (``tuning_free.TUNING_FREE``), once at each
    #: of the grid's values of the other dims (:meth:`regularizer_points`), the best reported
    tuning_free: tuple[str, ...] = ()

    def middle(self) -> dict[str, float]:
        """Per dim, the middle of the grid's sorted values."""
        out = {}
        for d in self.dims:
            values = sorted({p[d.name] for p in self.grid})
            out[d.name] = values[(len(values) - 1) // 2]
        return out

    def regularizer_points(self) -> tuple[dict[str, float], ...]:
        """The tuning-free systems' points: each distinct combination of the grid's values of
        the dims other than the learning rate, in grid order, the learning rate at the grid's
        middle (the tuning-free optimizer sets its own step size; the value only names the
        run)."""
        lr = self.middle().get(LR_SCALE)
        out: list[dict[str, float]] = []
        for p in self.grid:
            point = {k: v for k, v in p.items() if k != LR_SCALE}
            if lr is not None:
                point[LR_SCALE] = lr
            if point not in out:
                out.append(point)
        return tuple(out)

    def check(self) -> None:
        """Raise ValueError if the preset is inconsistent (names, ranges, points, steps)."""
        names = [d.name for d in self.dims]
        for kind, points in (("grid", self.grid), ("starts", self.starts)):
            for p in points:
                if sorted(p) != sorted(names):
                    raise SettingError(
                        f"task {self.name}: a {kind} point {dict(p)} must set {names}"
                    )
                for d in self.dims:
                    if not d.low <= p[d.name] <= d.high:
                        raise SettingError(
                            f"task {self.name}: {kind} value {d.name}={p[d.name]} is outside "
                            f"the search range [{d.low}, {d.high}]"
                        )
        for d in self.dims:
            if not (0 < d.low < d.high if d.log else d.low < d.high):
                raise SettingError(f"task {self.name}: bad range for {d.name}: {d}")
        if self.steps < 1 or self.val_every < 1 or self.steps % self.val_every:
            raise SettingError(
                f"task {self.name}: steps={self.steps} must be a positive multiple of "
                f"val_every={self.val_every}"
            )

    def scaled(self, smoke: bool, steps: int | None, val_every: int | None) -> Task:
        """This task with the smoke settings and the command line's steps/val_every."""
        task = self
        if smoke:
            changes = dict(self.smoke)
            for key in ("model_args", "data_args", "trainer_args"):
                if key in changes:
                    changes[key] = {**getattr(self, key), **changes[key]}
            task = _replace(self, **changes)
        if steps is not None or val_every is not None:
            task = _replace(task, steps=steps or task.steps, val_every=val_every or task.val_every)
        task.check()
        return task


def _replace(task: Task, **changes: Any) -> Task:
    import dataclasses

    return dataclasses.replace(task, **changes)


def _shared(names: Sequence[str], value: float) -> dict[str, float]:
    return dict.fromkeys(names, value)


def _product(**axes: Sequence[dict[str, float]]) -> tuple[dict[str, float], ...]:
    """Every combination of the points of each axis (merged dicts)."""
    return tuple(
        {k: v for part in combo for k, v in part.items()}
        for combo in itertools.product(*axes.values())
    )


MNIST_SMOKE = {
    "steps": 6,
    "val_every": 3,
    "model_args": {"hidden": (16, 16, 16)},
    "data_args": {"batch_size": 50, "train_size": None},
}
PTB_SMOKE = {
    "steps": 8,
    "val_every": 4,
    "model_args": {"hidden_size": 8},
    "data_args": {"batch_size": 4, "bptt": 10, "eval_batch_size": 2, "train_fraction": 0.3},
    "trainer_args": {"limit_val_batches": 1.0},
}
L2_RANGE = (1e-5, 1e-1)
#: the PTB tasks' model, data and training (ptb_keep's and ptb_lr_keep's): the LSTM LM, 2 × 100
#: units, on the first 2% of the training text, SGD at lr 1 with a step decay and clipping
PTB_LSTM: dict[str, Any] = {
    "model": "lstm_lm",
    "data": "ptb",
    # 8.6 epochs of 93 steps: without dropout the model overfits after about 5
    "steps": 800,
    "val_every": 100,
    "model_args": {
        "hidden_size": 100,
        "keep_prob": 0.5,
        "lr": 1.0,
        "lr_decay": 0.8,
        "lr_decay_every": 200,
    },
    # 10 × 20 tokens per step: more updates per token than Zaremba's 20 × 35
    "data_args": {"train_fraction": 0.02, "batch_size": 10, "bptt": 20, "eval_batch_size": 10},
    # validation on the first 50 windows of 10 × 20 tokens (10,000 of the 73,760)
    "trainer_args": {"gradient_clip_val": 5.0, "limit_val_batches": 50},
    "loss_label": "cross-entropy per token",
    "smoke": PTB_SMOKE,
}
WD_RANGE = (1e-4, 1e1)  # AdamW at lr 1e-3: 1e2 kills the network
LAYERS = ("l2.0", "l2.1", "l2.2", "l2.3")
#: 3 starts spanning 3 decades: 1e-5, 3.2e-4, 1e-2
L2_STARTS = tuple(logspace(1e-5, 1e-2, 3))
#: an over-regularized start, 1.6 decades above mnist_l2's best grid point (2.5e-3 before)
L2_OVER = 1e-1

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="mnist_l2",
            description="MNIST MLP 784-100-100-100-10, 5,000 training images, one global L2, SGD",
            model="mlp",
            data="mnist",
            dims=(Dim("l2", *L2_RANGE),),
            grid=tuple({"l2": v} for v in logspace(*L2_RANGE, 6)),
            starts=tuple({"l2": v} for v in (*L2_STARTS, L2_OVER)),
            steps=3000,
            val_every=250,
            model_args={"l2": 1e-3, "lr": 0.1, "final_lr": 0.01},
            data_args={"train_size": 5000, "batch_size": 100},
            smoke=MNIST_SMOKE,
        ),
        Task(
            name="mnist_multi",
            description="MNIST MLP, 5,000 training images, an L2 per weight matrix (4) and one "
            "dropout keep probability: 5 hyperparameters, SGD",
            model="mlp",
            data="mnist",
            dims=(*(Dim(n, *L2_RANGE) for n in LAYERS), Dim("keep", 0.3, 1.0, log=False)),
            # one L2 value shared by the 4 layers (2 decades apart) × with and without dropout
            grid=_product(
                l2=[_shared(LAYERS, v) for v in logspace(*L2_RANGE, 3)],
                keep=[{"keep": 0.5}, {"keep": 1.0}],
            ),
            # from weak to strong regularization on both axes, then an over-regularized start:
            # every L2 at 0.1 and keep 0.3 (the best trials of every system keep 0.86-1)
            starts=tuple(
                {**_shared(LAYERS, v), "keep": k}
                for v, k in zip((*L2_STARTS, L2_OVER), (0.95, 0.75, 0.55, 0.3), strict=True)
            ),
            steps=3000,
            val_every=250,
            model_args={"l2": 1e-3, "per_layer_l2": True, "keep": 0.5, "lr": 0.1, "final_lr": 0.01},
            data_args={"train_size": 5000, "batch_size": 100},
            smoke=MNIST_SMOKE,
        ),
        Task(
            name="mnist_adamw",
            description="MNIST MLP, 5,000 training images, AdamW's decoupled weight decay",
            model="mlp",
            data="mnist",
            dims=(Dim("wd", *WD_RANGE),),
            grid=tuple({"wd": v} for v in logspace(*WD_RANGE, 6)),
            # 3 decades around the grid's best in the pilot (1): 0.01, 0.32, 10
            starts=tuple({"wd": v} for v in logspace(1e-2, 1e1, 3)),
            steps=3000,
            val_every=250,
            model_args={
                "l2": None,
                "optimizer": "adamw",
                "weight_decay": 1e-2,
                "lr": 1e-3,
                "final_lr": 1e-4,
            },
            data_args={"train_size": 5000, "batch_size": 100},
            smoke=MNIST_SMOKE,
        ),
        Task(
            name="mnist_lr_wd",
            description="MNIST MLP, 5,000 training images, AdamW: the learning rate (a factor of "
            "lr 1e-3, cosine to 1e-5) and the decoupled weight decay",
            model="mlp",
            data="mnist",
            dims=(Dim(LR_SCALE, 1.0, 31.6227766), Dim("wd", 1e-2, 1e1)),  # the grid's span
            # 4 learning rates (1e-3 to 3.2e-2) × 3 weight decays (3 decades)
            grid=_product(
                lr=[{LR_SCALE: v} for v in logspace(1.0, 31.6227766, 4)],
                wd=[{"wd": v} for v in logspace(1e-2, 1e1, 3)],
            ),
            # lr 10× too low and 3× too high against the pilot's best (1e-2), × 2 weight decays
            starts=_product(
                lr=[{LR_SCALE: 1.0}, {LR_SCALE: 30.0}],
                wd=[{"wd": 0.03}, {"wd": 3.0}],
            ),
            steps=2000,
            val_every=250,
            model_args={
                "l2": None,
                "optimizer": "adamw",
                "weight_decay": 1e-2,
                "lr": 1e-3,
                "final_lr": 1e-5,
                "schedule": "cosine",
            },
            data_args={"train_size": 5000, "batch_size": 100},
            smoke=MNIST_SMOKE,
            tuning_free=("prodigy", "schedulefree"),
        ),
        Task(
            name="mnist_sgd_lr_l2",
            description="MNIST MLP, 5,000 training images, SGD with momentum 0.9: the learning "
            "rate (a factor of lr 0.1, exponential decay to 0.01) and one global L2",
            model="mlp",
            data="mnist",
            dims=(Dim(LR_SCALE, 0.1, 3.16227766), Dim("l2", 3e-5, 3e-2)),  # the grid's span
            # 4 learning rates (0.01 to 0.32 at momentum 0.9) × 3 L2 (3e-5 to 3e-2); a pilot
            # with lr 1e-3 to 3.2e-2 had its best at the grid's edge
            grid=_product(
                lr=[{LR_SCALE: v} for v in logspace(0.1, 3.16227766, 4)],
                l2=[{"l2": v} for v in (3e-5, 3e-5 * 10**1.5, 3e-2)],
            ),
            starts=_product(
                lr=[{LR_SCALE: 0.1}, {LR_SCALE: 3.0}],
                l2=[{"l2": 1e-4}, {"l2": 1e-2}],
            ),
            steps=2000,
            val_every=250,
            model_args={"l2": 1e-3, "momentum": 0.9, "lr": 0.1, "final_lr": 0.01},
            data_args={"train_size": 5000, "batch_size": 100},
            smoke=MNIST_SMOKE,
            tuning_free=("prodigy", "schedulefree"),
        ),
        Task(
            name="ptb_keep",
            description="PTB LSTM LM (2 × 100 units), the first 2% of the training text (18,600 "
            "tokens), one dropout keep probability, SGD with gradient clipping",
            dims=(Dim("keep_prob", 0.1, 1.0, log=False),),
            grid=tuple({"keep_prob": v} for v in (0.1, 0.28, 0.46, 0.64, 0.82, 1.0)),
            starts=tuple({"keep_prob": v} for v in (0.3, 0.6, 0.9)),
            **PTB_LSTM,
        ),
        Task(
            name="ptb_lr_keep",
            description="PTB LSTM LM (2 × 100 units), the first 2% of the training text, SGD with "
            "gradient clipping: the learning rate (a factor of lr 1, step decay ×0.8 every 200 "
            "steps) and one dropout keep probability",
            # the starts' span: lr 0.1 to 31.6 (the grid spans 0.1 to 3.16)
            dims=(Dim(LR_SCALE, 0.1, 31.6227766), Dim("keep_prob", 0.3, 1.0, log=False)),
            # 4 learning rates (0.1 to 3.2, around Zaremba's 1) × 3 keep probabilities
            grid=_product(
                lr=[{LR_SCALE: v} for v in logspace(0.1, 3.16227766, 4)],
                keep=[{"keep_prob": v} for v in (0.3, 0.65, 1.0)],
            ),
            # lr 10× low, 3× high and 30× high against Zaremba's lr 1, × two keep probabilities
            starts=_product(
                lr=[{LR_SCALE: 0.1}, {LR_SCALE: 3.0}, {LR_SCALE: 30.0}],
                keep=[{"keep_prob": 0.4}, {"keep_prob": 0.9}],
            ),
            **PTB_LSTM,
            tuning_free=("prodigy", "schedulefree"),
        ),
    )
}


def run_protocol(task: Task) -> dict[str, Any]:
    """What a run's numbers depend on besides its point and seed (checked on resume)."""
    return {"steps": task.steps, "val_every": task.val_every, "data_args": dict(task.data_args)}


def protocol(task: Task) -> dict[str, Any]:
    """The task's settings, as the summary records them."""
    return {
        "description": task.description,
        "steps": task.steps,
        "val_every": task.val_every,
        "dims": [vars(d) for d in task.dims],
        "grid": list(task.grid),
        "starts": list(task.starts),
        "model_args": dict(task.model_args),
        "data_args": dict(task.data_args),
        "trainer_args": dict(task.trainer_args),
        "loss_label": task.loss_label,
    }
