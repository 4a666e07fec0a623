"""One installed package serves both Lightning namespaces: ``pytorch_lightning`` and the unified
``lightning`` package's ``lightning.pytorch``, in one environment where both are installed."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_hyperopt import Clip, L2Penalty, OnlineHyperparamCallback, WeightDecay

pytest.importorskip("lightning.pytorch", reason="the `lightning` package (dev extra) is needed")

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]
TESTS = Path(__file__).resolve().parent
# the DDP tests launch tests/adapter/ddp_script.py, which is written against pytorch_lightning
CALLBACK_TESTS = sorted(
    p.name for p in TESTS.glob("test_callback*.py") if p.name != "test_callback_ddp.py"
)


def quickstart_model(namespace: str):
    """The quickstart's model, written against ``namespace``."""
    pl = importlib.import_module(namespace)

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
            )
            self.l2 = L2Penalty(1e-3)

        def validation_loss(self, batch):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def training_step(self, batch, batch_idx):
            return self.validation_loss(batch) + self.l2(self.net.parameters())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    return pl, Model()


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    data = TensorDataset(x, x[:, :10].argmax(1))
    train, val = torch.utils.data.random_split(data, [384, 128], generator=g)
    return DataLoader(train, batch_size=64), DataLoader(val, batch_size=128)


def quiet_trainer(pl, max_steps: int, callback):
    """A ``pl.Trainer`` for ``max_steps`` steps with ``callback`` and nothing else."""
    return pl.Trainer(
        max_steps=max_steps,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_quickstart_model_tunes_under_each_namespace(namespace):
    pl, model = quickstart_model(namespace)
    callback = OnlineHyperparamCallback(Clip(radius=20.0, hyper_lr_scale=1e-2), warmup_steps=5)
    assert isinstance(callback, pl.Callback)
    quiet_trainer(pl, 20, callback).fit(model, *loaders())
    assert callback.engine.step == 20 and callback.engine.updates == 15
    assert float(model.l2.value) != 1e-3


def test_both_namespaces_give_the_same_lambda_trajectory():
    values = []
    for namespace in NAMESPACES:
        pl, model = quickstart_model(namespace)
        callback = OnlineHyperparamCallback(Clip(radius=20.0, hyper_lr_scale=1e-2))
        quiet_trainer(pl, 10, callback).fit(model, *loaders())
        values.append(model.l2.value.clone())
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)


class UnifiedModel(importlib.import_module("lightning.pytorch").LightningModule):
    """A lightning.pytorch model for the CLI test: SGD weight decay tuned online."""

    def __init__(self, lr: float = 0.1, weight_decay: float = 1e-3) -> None:
        super().__init__()
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
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "tune.yaml"
    config.write_text(
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
    assert callback.engine.updates == 4
    assert float(cli.model.wd.value) != 0.01
    assert cli.trainer.optimizers[0].param_groups[0]["weight_decay"] == float(cli.model.wd.value)


def test_callback_tests_pass_under_lightning_pytorch():
    """Every callback test file, run again with the unified package's namespace."""
    # without the rendezvous variables an earlier DDP test of this process left behind
    launcher = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["LIGHTNING_HYPEROPT_TEST_NAMESPACE"] = "lightning.pytorch"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CALLBACK_TESTS],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]
