"""The Lightning adapter: ``OnlineHyperparamCallback`` and its collaborators, one concept each.

callback.py     the callback: arguments checked once, each hook a few lines of delegation
fit_plan.py     fit checks and ``FitPlan``, the frozen record of what a fit needs
validation.py   ``ValidationStream``: the loader, the seeded resumable iterator, DDP dealing,
                transfer hooks, eval mode, the probe; L_V on its batches
replay.py       ``StepReplay``: the step's batches and RNG for finite-difference replays
graph.py        ``GraphBridge``: the backward stand-in, kernel guards, the grad scaler
run_guard.py    ``RunGuard``: the non-finite decision (warn, stop, refuse to checkpoint), DDP
                agreement
"""

from lightning_hyperopt.adapter.callback import OnlineHyperparamCallback
from lightning_hyperopt.adapter.fit_plan import FitPlan, check_strategy

__all__ = ["FitPlan", "OnlineHyperparamCallback", "check_strategy"]
