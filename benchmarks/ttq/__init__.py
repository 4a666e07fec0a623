"""Time to quality: the online tuner against a fixed grid, random search and Optuna, per task.

On one task, one machine and one process, four systems tune the same regularization
hyperparameters, each fit under a ``lightning.pytorch`` Trainer (Optuna's pruning callback
imports only that namespace; every system uses it, for a like-for-like comparison):

- **grid**: 6 fixed points (:attr:`Task.grid`), one fit each;
- **random**: 6 fits at points drawn from the search space (:attr:`Task.dims`: log-uniform for
  penalties and weight decay, uniform for keep probabilities), seeded;
- **optuna**: Optuna's TPE sampler (seeded) and median pruner through optuna-integration's
  ``PyTorchLightningPruningCallback`` on the same validation losses, over the same space. It
  starts trials until its clock has used the grid's total time; the trial running when the
  budget runs out stops at its next validation (so it overshoots by less than one validation
  interval) and counts with the validations it had. Pruned trials free time for more trials;
- **online**: one fit with ``OnlineHyperparamCallback(**online_args)`` (``{}``: the library's
  defaults) per start (:attr:`Task.starts`, spanning 3 decades for penalties) and seed.

What is measured. Each system has a clock (``time.perf_counter()``, and the process's CPU time
``time.process_time()`` beside it) that runs from the system's start through every model
construction, ``fit`` (validation passes included) and the sampler's work, and is paused while
test losses are computed and records written. Each online run is its own system: its clock
starts at 0. Every ``val_every`` steps (the same for every system) a run records (step,
validation loss, clocks); the weights at its best validation are kept in memory, and after the
fit its **test loss is computed at that best-validation state** (early stopping, without
checkpoints) when that run improved its system's best validation loss (every online run; for
the others the test pass, outside the clocks, costs more than short runs, and the runs it skips
are never quoted). A system's best validation loss is the minimum over its runs; its "winner" is
the run that reached it, whose test loss is reported. Time to a target loss = the system clock
at the first validation whose loss is <= the target.

Targets (issue #11), printed as ratios measured in this run: an online run reaches the grid's
best validation loss within 0.25 × the grid's total time, and Optuna's best within 0.5 ×
Optuna's total time (median over the online runs); on ``mnist_multi`` its test loss beats that
of Optuna's best trial among those finished by the online run's own wall time; every online run
ends within 2× (penalties, weight decay) or ±0.05 (keep probabilities) of the grid's best value.

The package: :mod:`.tasks` (the search spaces, grids and starts), :mod:`.runs` (one fit on a
system's clock), :mod:`.systems` (the four systems and :func:`run_ttq`), :mod:`.summary` (the
numbers and targets) and :mod:`.report` (``table.md``, ``curves.png``).
"""

from .report import plot_ttq, table_markdown
from .runs import Context, build_datamodule, build_model, describe_callback, fit_run, make_callback
from .summary import overall, summarize
from .systems import load_online_args, random_points, run_ttq
from .tasks import SYSTEMS, TASKS, Dim, Point, SettingError, Task

__all__ = [
    "SYSTEMS",
    "TASKS",
    "Context",
    "Dim",
    "Point",
    "SettingError",
    "Task",
    "build_datamodule",
    "build_model",
    "describe_callback",
    "fit_run",
    "load_online_args",
    "make_callback",
    "overall",
    "plot_ttq",
    "random_points",
    "run_ttq",
    "summarize",
    "table_markdown",
]
