"""Tables 2 and 3 of the paper: online methods against a fixed-λ grid, through the Trainer.

Every run is one ``fit`` of a LightningCLI config: the experiment's ``base.yaml`` (alone: the
fixed-λ baseline) plus one method overlay (``clip.yaml``, ``unroll.yaml``,
``first_order.yaml``) whose method arguments a table row may change (radius, K). The merged
config of each run is written next to its record, so any run can be repeated with
``lightning-hyperopt fit --config OUT/configs/KEY.yaml``.

Per run it records λ, the training loss (mean over each interval), the learning rate, the share
of clipped tangent steps and ‖y‖ against steps; the validation loss at every validation (with
the wall time since the fit began); the final test loss. Tables report, per method and over
the starts that trained, the validation loss at its best point (early stopping), at the end,
and their relative gap (the paper's "stability"), and time-to-quality: when an online run's
validation loss first reaches the best one of the fixed-λ grid, against the grid's total time.
"""

from .experiments import EXPERIMENTS, MNIST, PTB, Experiment, Row, compose_config, instantiate
from .report import summarize, table_markdown
from .runs import run_experiment, run_one

__all__ = [
    "EXPERIMENTS",
    "MNIST",
    "PTB",
    "Experiment",
    "Row",
    "compose_config",
    "instantiate",
    "run_experiment",
    "run_one",
    "summarize",
    "table_markdown",
]
