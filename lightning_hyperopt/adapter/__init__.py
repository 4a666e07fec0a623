"""The Lightning adapter: ``OnlineHyperparamCallback`` and its collaborators, one concept each.

callback.py       the callback: each hook a few lines of delegation
arguments.py      ``CallbackArguments``: the callback's arguments, checked once at construction
fit_plan.py       ``plan_fit``: every check, "auto" and the initial λ resolved into a frozen
                  ``FitPlan``; ``build_engine``: the engine from the plan
checks.py         the fit checks: what the tuner cannot follow, refused before training
tuned.py          ``TunedHyperparameters``: what a fit tunes (the module's and ``tune=``'s) and
                  which values the callback saves
validation.py     ``ValidationStream``: the loader, the seeded resumable iterator, DDP dealing,
                  transfer hooks, eval mode, the probe; L_V on its batches
gather.py         validation batches gathered by index from a loader over stored tensors
rebatch.py        the g_V loader rebuilt at ``validation_batch_size`` samples per batch
module_losses.py  ``ModuleLoss``: L_V and L_T from the module's methods or steps;
                  ``PassIsolation``: the tuner's passes log nothing and leave metrics alone
replay.py         ``LossReplay``: the step's batches and RNG for finite-difference replays
graph.py          ``GraphBridge``: the backward stand-in and the kernel guards
scaled_step.py    ``ScaledOptimizerStep``: ``optimizer.step`` at λ·lr_t for a tuned learning rate
run_guard.py      ``RunGuard``: the non-finite decision (warn, stop, refuse to checkpoint), DDP
                  agreement
report.py         ``FitReport``: the end-of-fit summary, ``tuned_values()``, the loggers'
                  hyperparameters, TensorBoard's layout, the ``save_weights_only`` warning
overlay.py        the tuned values as a LightningCLI overlay (``tuned.yaml``): where each goes

Lightning's (and torchmetrics', torch's) private state and the patches of their objects are
read and made in :mod:`lightning_hyperopt._lightning` only.
"""

from lightning_hyperopt.adapter.callback import OnlineHyperparamCallback
from lightning_hyperopt.adapter.checks import check_strategy
from lightning_hyperopt.adapter.fit_plan import FitPlan

__all__ = ["FitPlan", "OnlineHyperparamCallback", "check_strategy"]
