"""lightning_hyperopt/_lightning.py: both Lightning namespaces, the private-state reads and the
one patch.

One installed package serves ``pytorch_lightning`` and the unified ``lightning.pytorch`` in one
environment. Every place the adapter asks which namespace it runs in (the strategy check, the
module's overridden hooks and backward, the batch-transfer hooks and their stage, the
callback's state in a checkpoint, LightningCLI) is exercised by a scenario below, fitted under
both namespaces: the λ trajectories must be equal bit for bit, and λ must have moved.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from conftest import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_hyperopt import (
    Clip,
    FirstOrder,
    L2Penalty,
    LearningRate,
    OnlineHyperparamCallback,
    WeightDecay,
    find_hyperparameters,
)
from lightning_hyperopt._lightning import (
    Patch,
    callback_bases,
    fit_validation_loader,
    grad_scaler_state,
    metric_state,
    namespace_of,
    patched,
    restore_metric,
)

pytest.importorskip("lightning.pytorch", reason="the `lightning` package (dev extra) is needed")

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]


def loaders(n: int = 512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=g)
    data = TensorDataset(x, x[:, :10].argmax(1))
    train, val = torch.utils.data.random_split(data, [n * 3 // 4, n // 4], generator=g)
    return DataLoader(train, batch_size=64), DataLoader(val, batch_size=128)


class Logic(nn.Module):
    """The scenarios' model, free of Lightning: a small classifier with dropout.

    ``kind``: "declared" (an L2Penalty the loss uses, ``validation_loss``), "step_losses" (no
    dedicated losses: the tuner reads ``validation_step``'s and replays ``training_step``),
    "own_backward" (the module overrides ``backward``), "transfer_hook" (the module overrides
    ``on_before_batch_transfer``: g_V's batches go through it, in the validating stage)."""

    def __init__(self, kind: str, dropout: float = 0.2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        layers = [nn.Linear(20, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 10)]
        self.net = nn.Sequential(*layers)
        if kind == "declared":
            self.l2 = L2Penalty(1e-3)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        return loss + self.l2(self.net.parameters()) if self.kind == "declared" else loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


class WithValidationLoss(Logic):
    def validation_loss(self, batch: Any) -> torch.Tensor:
        return self.loss(batch)


class OwnBackward(WithValidationLoss):
    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)


class TransferHook(WithValidationLoss):
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        # training-only augmentation: g_V's batches arrive in the validating stage, unchanged
        return (x + 0.5, y) if self.trainer.training else (x, y)


LOGIC = {
    "declared": WithValidationLoss,
    "step_losses": Logic,
    "own_backward": OwnBackward,
    "transfer_hook": TransferHook,
}


def model_on(namespace: str, kind: str, dropout: float = 0.2) -> Any:
    """The scenario's model, built on ``namespace``'s LightningModule."""
    base = importlib.import_module(namespace).LightningModule
    cls = type(f"Model_{kind}", (LOGIC[kind], base), {})
    return cls(kind, dropout)


def callback_for(kind: str) -> OnlineHyperparamCallback:
    if kind == "declared":
        return OnlineHyperparamCallback(Clip(radius=20.0, hyper_lr_scale=1e-2), warmup_steps=2)
    tune = {"weight_decay": WeightDecay(), "lr": LearningRate()}
    if kind == "step_losses":  # dropout replays training_step; FirstOrder with the adaptive step
        return OnlineHyperparamCallback(FirstOrder(), tune=tune, adopt_dropout="shared")
    return OnlineHyperparamCallback(Clip(10.0), tune=tune)


class Trajectory:
    """Every λ (the module's and the callback's) after each training batch, as float.hex."""

    def __init__(self, tuner: OnlineHyperparamCallback) -> None:
        self.tuner, self.values = tuner, []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
        hypers = {**find_hyperparameters(pl_module), **self.tuner.tune}
        self.values.append([float(h.value).hex() for h in hypers.values()])


def fit_under(
    namespace: str,
    kind: str,
    steps: int = 12,
    extra: tuple = (),
    ckpt_path: Any = None,
    dropout: float = 0.2,
) -> tuple[list, OnlineHyperparamCallback, Any]:
    """(λ after every batch, the callback, the Trainer) of the scenario under ``namespace``."""
    pl = importlib.import_module(namespace)
    model, tuner = model_on(namespace, kind, dropout), callback_for(kind)
    recorder = type("Recorder", (Trajectory, pl.Callback), {})(tuner)
    overrides = {"enable_checkpointing": True} if extra else {}
    trainer = make_trainer([tuner, recorder, *extra], steps, namespace, **overrides)
    torch.manual_seed(0)
    trainer.fit(model, *loaders(), ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return recorder.values, tuner, trainer


@pytest.mark.parametrize("kind", list(LOGIC))
def test_each_scenario_tunes_the_same_under_both_namespaces(kind):
    (first, tuner, _), (second, _, _) = (fit_under(ns, kind) for ns in NAMESPACES)
    assert first == second  # bit for bit
    assert len(first) == 12 and first[-1] != first[0]  # λ moved, and the same way
    assert tuner.engine.state.steps == 12
    if kind == "own_backward":
        assert not tuner.bridge.patched  # the module's own backward ran
    if kind == "transfer_hook":
        assert tuner.plan.transfer_hooks


def test_resume_from_a_lightning_pytorch_checkpoint_continues_the_trajectory(tmp_path):
    """The callback's state saved by a lightning.pytorch Trainer resumes there: the resumed
    steps are the uninterrupted run's, bit for bit (no dropout: Lightning does not restore the
    global RNG, so the masks would differ)."""
    L = importlib.import_module("lightning.pytorch")
    run = {"namespace": "lightning.pytorch", "kind": "declared", "dropout": 0.0}
    straight, _, _ = fit_under(**run, steps=12)
    # at an epoch's end (6 batches): Lightning restarts a plain loader's epoch on resume
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1)
    fit_under(**run, steps=6, extra=(saver,))
    (ckpt,) = tmp_path.glob("*.ckpt")
    resumed, tuner, _ = fit_under(**run, steps=12, ckpt_path=ckpt)
    assert resumed == straight[6:] and len(resumed) == 6
    assert tuner.engine.state.steps == 12


class UnifiedModel(importlib.import_module("lightning.pytorch").LightningModule):
    """A lightning.pytorch model for the CLI test: SGD weight decay tuned online."""

    def __init__(self, lr: float = 0.1, weight_decay: float = 1e-3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(20, 10)
        self.lr, self.weight_decay = lr, weight_decay
        self.wd = WeightDecay()

    def validation_loss(self, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def training_step(self, batch, batch_idx):
        return self.validation_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def train_dataloader(self):
        return loaders()[0]

    def val_dataloader(self):
        return loaders()[1]


def test_lightning_pytorch_cli_takes_the_callback_by_class_path(tmp_path):
    """The callback from YAML under lightning.pytorch's LightningCLI: the weight decay it
    tunes is the one a direct fit of the same model and callback reaches."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "tune.yaml"
    config.write_text(
        "seed_everything: 0\n"
        "trainer:\n"
        "  max_steps: 6\n"
        "  logger: false\n"
        "  enable_checkpointing: false\n"
        "  enable_progress_bar: false\n"
        "  callbacks:\n"
        "    - class_path: lightning_hyperopt.OnlineHyperparamCallback\n"
        "      init_args:\n"
        "        warmup_steps: 2\n"
        "        method:\n"
        "          class_path: lightning_hyperopt.Clip\n"
        "          init_args: {radius: 5.0, hyper_lr_scale: 0.5}\n"
        "model:\n"
        f"  class_path: {__name__}.UnifiedModel\n"
        "  init_args: {weight_decay: 0.01}\n"
    )
    cli = LightningCLI(
        args=["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"],
        save_config_callback=None,
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    assert callback.engine.state.updates == 4
    tuned = float(cli.model.wd.value)
    assert cli.trainer.optimizers[0].param_groups[0]["weight_decay"] == tuned
    torch.manual_seed(0)
    direct = UnifiedModel(weight_decay=0.01)
    Trainer(
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[OnlineHyperparamCallback(Clip(5.0, hyper_lr_scale=0.5), warmup_steps=2)],
        default_root_dir=tmp_path,
    ).fit(direct)
    assert tuned == float(direct.wd.value) and tuned != 0.01


# ------------------------------------------------------------------------ the namespace layer
def test_the_callback_is_a_callback_of_every_installed_namespace():
    bases = callback_bases()
    assert [b.__module__.split(".")[0] for b in bases] == ["pytorch_lightning", "lightning"]
    for name in NAMESPACES:
        assert isinstance(OnlineHyperparamCallback(), importlib.import_module(name).Callback)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_namespace_of_finds_the_package_of_an_object(namespace):
    pl = importlib.import_module(namespace)
    assert namespace_of(pl.Trainer(logger=False)) is pl
    assert namespace_of(model_on(namespace, "declared")) is pl
    with pytest.raises(TypeError, match="Linear is not a PyTorch Lightning object"):
        namespace_of(nn.Linear(1, 1))


# ------------------------------------------------------------------------------- the patch
class Holder:
    def method(self) -> str:
        return "class"


def test_a_patch_shadows_the_class_attribute_and_restores_it():
    h = Holder()
    patch = Patch(h, "method", lambda: "patched")
    assert h.method() == "patched" and "method" in vars(h)
    patch.restore()
    assert h.method() == "class" and "method" not in vars(h)
    patch.restore()  # idempotent
    assert "method" not in vars(h)


def test_a_patch_puts_back_an_instance_attribute_and_skips_module_bookkeeping():
    h = Holder()
    own = h.method = lambda: "own"  # type: ignore[method-assign]
    with patched(h, "method", lambda: "patched"):
        assert h.method() == "patched"
    assert h.method is own
    layer = nn.Linear(2, 2)
    with patched(layer, "forward", lambda x: x):
        assert torch.equal(layer(torch.ones(2)), torch.ones(2))
    assert "forward" not in vars(layer) and layer(torch.ones(2)).shape == (2,)


# ------------------------------------------------------------------------ private-state reads
def test_fit_validation_loader_is_the_loader_lightning_resolved():
    """The loader passed to ``fit``; ``None`` where the fit has none."""
    import pytorch_lightning as pl

    train, val = loaders()
    seen = []

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(fit_validation_loader(trainer))

    for loaders_given in ((train, val), (train,)):
        model = model_on("pytorch_lightning", "declared")
        make_trainer([Probe()], 1, limit_val_batches=None).fit(model, *loaders_given)
    assert seen == [val, None]


def test_without_a_grad_scaler_there_is_no_loss_scale():
    import pytorch_lightning as pl

    trainer = pl.Trainer(logger=False, precision="bf16-mixed", accelerator="cpu")
    assert grad_scaler_state(trainer, torch.optim.SGD([nn.Parameter(torch.ones(1))])) == (
        None,
        None,
    )


def test_a_metrics_state_and_counters_come_back_as_they_were():
    from torchmetrics import MeanMetric

    metric = MeanMetric()
    metric.update(torch.tensor([1.0, 3.0]))
    saved = metric_state(metric)
    metric.update(torch.tensor([100.0]))
    assert float(metric.compute()) != 2.0
    restore_metric(metric, saved)
    assert float(metric.compute()) == 2.0 and metric._update_count == 1
