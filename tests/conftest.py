"""The tests' own helpers: a small float64 regression model that declares its hyperparameters,
a fit with the callback, a Trainer that only trains, and finite differences of whole trainings.

The callback's tests run under ``pytorch_lightning`` (test files take ``pl`` from here);
tests/test_lightning.py fits the namespace-sensitive scenarios under both namespaces.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_hyperopt import (
    Hyperparameter,
    L2Penalty,
    OnlineHyperparamCallback,
    WeightDecay,
    find_hyperparameters,
)

NAMESPACE = "pytorch_lightning"
pl = importlib.import_module(NAMESPACE)
importlib.import_module(f"{NAMESPACE}.callbacks")
importlib.import_module(f"{NAMESPACE}.loggers")
importlib.import_module(f"{NAMESPACE}.utilities.model_summary")


def regression_data(n_train=24, n_val=256, n_features=12, noise=1.0, seed=0):
    """y = x·w + noise: few noisy training points, many clean validation points."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_features, 1, generator=g, dtype=torch.float64)
    x = torch.randn(n_train, n_features, generator=g, dtype=torch.float64)
    y = x @ w + noise * torch.randn(n_train, 1, generator=g, dtype=torch.float64)
    xv = torch.randn(n_val, n_features, generator=g, dtype=torch.float64)
    return TensorDataset(x, y), TensorDataset(xv, xv @ w)


class Regression(pl.LightningModule):
    """MLP regression with its regularization declared as hyperparameters.

    penalty: "l2" (one L2Penalty over every parameter), "wd" (the SGD group's weight_decay),
    "per_layer" (an L2Penalty per linear layer), "scalar" (L2 + a generic Hyperparameter
    scaling an L1-like smooth penalty), "none".
    """

    def __init__(
        self,
        penalty="l2",
        init=1e-3,
        lr=0.05,
        momentum=0.0,
        nesterov=False,
        n_features=12,
        hidden=16,
        optimizer="sgd",
        seed=0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Linear(n_features, hidden)
        self.second = nn.Linear(hidden, 1)
        self.penalty, self.lr, self.momentum, self.nesterov = penalty, lr, momentum, nesterov
        self.optimizer_name = optimizer
        if penalty == "l2":
            self.l2 = L2Penalty(init)
        elif penalty == "wd":
            self.wd = WeightDecay(init=init)
        elif penalty == "per_layer":
            self.l2_first = L2Penalty(init[0])
            self.l2_second = L2Penalty(init[1])
        elif penalty == "scalar":
            self.l2 = L2Penalty(init)
            self.smooth_l1 = Hyperparameter(init, bounds=(0.0, 1.0))
        self.double()

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))

    def data_loss(self, batch):
        x, y = batch
        return ((self(x) - y) ** 2).mean()

    def validation_loss(self, batch):
        return self.data_loss(batch)

    def training_loss(self, batch):
        loss = self.data_loss(batch)
        if self.penalty == "l2":
            loss = loss + self.l2(self.parameters())
        elif self.penalty == "per_layer":
            loss = loss + self.l2_first(self.first.parameters())
            loss = loss + self.l2_second(self.second.parameters())
        elif self.penalty == "scalar":
            loss = loss + self.l2(self.parameters())
            loss = loss + self.smooth_l1.value * torch.sqrt(self.first.weight**2 + 1e-2).sum()
        return loss

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.validation_loss(batch))

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, nesterov=self.nesterov
        )


class Recorder(pl.Callback):
    """Records every hyperparameter value after each training batch."""

    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from lightning_hyperopt import find_hyperparameters

        hs = find_hyperparameters(pl_module)
        self.values.append([float(h.value) for h in hs.values()])


def make_trainer(callbacks, max_steps, namespace: str = NAMESPACE, **overrides: Any):
    """A CPU ``Trainer`` of ``namespace`` for ``max_steps`` that only trains: no logger,
    checkpoints, progress bar, model summary, sanity check or validation loop (the tuner draws
    its own validation batches); ``overrides`` replace or add Trainer arguments."""
    trainer_class = importlib.import_module(namespace).Trainer
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    return trainer_class(
        callbacks=list(callbacks), accelerator="cpu", max_steps=max_steps, **{**quiet, **overrides}
    )


NO_UPDATE = 10**9  # a warm-up that never ends: λ stays fixed


def fit(
    model,
    method="clip",
    max_steps=20,
    batch_size=None,
    warmup_steps=0,
    data=None,
    val_batch_size=64,
    shuffle=False,
    extra_callbacks=(),
    **trainer_kwargs,
):
    """Fit ``model`` with the callback; returns (callback, recorder, trainer)."""
    train, val = data or regression_data()
    bs = batch_size or len(train)
    cb = OnlineHyperparamCallback(method, warmup_steps=warmup_steps)
    rec = Recorder()
    trainer = make_trainer([cb, rec, *extra_callbacks], max_steps, **trainer_kwargs)
    trainer.fit(
        model,
        DataLoader(train, batch_size=bs, shuffle=shuffle),
        DataLoader(val, batch_size=val_batch_size),
    )
    return cb, rec, trainer


def optimized_params(optimizer):
    """The optimizer's trained parameters laid end to end, in the engine's order (group order,
    those requiring grad)."""
    return torch.cat(
        [
            p.detach().reshape(-1)
            for g in optimizer.param_groups
            for p in g["params"]
            if p.requires_grad
        ]
    )


class WriteSettings(pl.Callback):
    """Writes the module's optimizer-setting hyperparameters (``WeightDecay``, ``Momentum``)
    into the optimizer at the start of a plain training, as the callback would."""

    def on_train_start(self, trainer, pl_module):
        for h in find_hyperparameters(pl_module).values():
            h.write_to(trainer.optimizers[0])


def exact_tangent_and_finite_difference(build, steps, data, hyper, delta=1e-6, batch_size=None):
    """(y of hyperparameter ``hyper`` after a fit with ``Exact()`` and λ held fixed, the central
    difference (θ_T(λ + δ) − θ_T(λ − δ)) / 2δ of two plain Lightning trainings without the
    callback; settings such as ``WeightDecay`` written into the optimizer, not a
    ``LearningRate`` scale). ``build()`` returns a fresh, seeded model; ``data``: (train, val)
    datasets."""
    from lightning_hyperopt import Exact

    model = build()
    cb, _, _ = fit(model, Exact(), steps, batch_size, NO_UPDATE, data=data)
    tangent = torch.cat([t.reshape(-1) for t in cb.engine.tangents[cb.engine.names.index(hyper)]])

    def shifted(sign):
        m = build()
        find_hyperparameters(m)[hyper].value.add_(sign * delta)
        trainer = make_trainer([WriteSettings()], steps)
        trainer.fit(m, DataLoader(data[0], batch_size=batch_size or len(data[0])))
        return optimized_params(trainer.optimizers[0])

    return tangent, (shifted(+1) - shifted(-1)) / (2 * delta)


# small models: one thread avoids oversubscribing the (2-core) CI machine
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    # one thread and a fixed seed for every test, whatever an earlier one set (a DDP fit sets
    # the thread count to the cores per process): a test's float32 results do not depend on
    # which tests ran before it
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _quiet_lightning():
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.fixture
def lightning_info():
    """The messages Lightning's ``rank_zero_info`` gives during the test (its loggers are quiet
    otherwise), as a list that fills as they come."""
    import logging

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.INFO)
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    yield messages
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)
