"""Lightning's conventions and what users run beside the callback: the end-of-fit summary,
``tuned_values()``, the loggers' hyperparameters, configuration errors as
``MisconfigurationException``, warnings once on rank 0, ``save_weights_only``,
``fast_dev_run``, ``test``/``predict`` after a tuned fit, the ``Tuner``, ``RichProgressBar``,
``CSVLogger`` and ``logger=False``."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
import yaml
from conftest import NAMESPACE, Regression, make_trainer, pl, regression_data
from torch import nn
from torch.utils.data import DataLoader

from lightning_hyperopt import (
    Clip,
    FirstOrder,
    LearningRate,
    OnlineHyperparamCallback,
    WeightDecay,
)
from lightning_hyperopt._lightning import installed


def loaders(batch_size=6):
    train, val = regression_data()
    return DataLoader(train, batch_size=batch_size), DataLoader(val, batch_size=48)


def summary_of(messages):
    found = [m for m in messages if m.startswith("OnlineHyperparamCallback:")]
    assert len(found) == 1, messages
    return found[0]


class AdamW(Regression):
    """Regression trained by AdamW (a weight decay and a learning rate to tune)."""

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.02)


# ---------------------------------------------------------------------------- the summary
def test_the_summary_names_the_method_each_value_and_the_tuners_share(lightning_info):
    model = AdamW("l2", 0.05, lr=0.01)
    cb = OnlineHyperparamCallback(tune={"wd": WeightDecay(), "lr": LearningRate()})
    make_trainer([cb], 8).fit(model, *loaders())
    lines = summary_of(lightning_info).splitlines()
    assert lines[0].startswith("OnlineHyperparamCallback: 8 steps, 8 λ updates with Clip(")
    assert '("auto": lr sets how far θ travels' in lines[0]
    l2, wd, lr = (float(h.value) for h in cb.engine.hypers)
    assert lines[1].split() == ["l2", "0.05", "→", f"{l2:.6g}"]
    assert lines[2].split() == ["wd", "0.02", "→", f"{wd:.6g}"]
    assert lines[3].split() == [
        "lr", "1", "→", f"{lr:.6g}", "(base", "lr", "0.01", "→", f"{lr * 0.01:.6g})"
    ]  # fmt: skip
    assert "the tuner's hooks took" in lines[4]
    assert lines[5] == "  not configured by LightningCLI: tuned_values() returns the values"
    assert cb.tuned_values() == {"l2": l2, "wd": wd, "lr": lr, "lr/base_lr": lr * 0.01}


def test_the_summary_says_a_bound_was_hit_and_steps_were_skipped(lightning_info):
    class Poisoned(Regression):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.global_step == 2 else loss

    model = Poisoned("l2", 1e-3)
    # a huge constant hyper step (the paper's rule) drives λ to its lower bound, 0
    cb = OnlineHyperparamCallback(FirstOrder(hyper_lr=1e6), hyper_optimizer="paper")
    with pytest.warns(UserWarning, match="non-finite values at step"):
        make_trainer([cb], 6).fit(model, *loaders())
    (line,) = [s for s in summary_of(lightning_info).splitlines() if s.startswith("  l2")]
    # the NaN step's gradient made θ NaN: steps 2 to 5 were all skipped
    assert line.endswith("at its lower bound 0; 4 non-finite steps skipped"), line
    assert float(model.l2.value) == 0.0


def test_the_summary_gives_the_default_cadence_on_a_regularizer(lightning_info):
    make_trainer([OnlineHyperparamCallback()], 9).fit(Regression("l2", 0.05), *loaders())
    first = summary_of(lightning_info).splitlines()[0]
    assert first.startswith(
        "OnlineHyperparamCallback: 9 steps, 2 λ updates (one in 4 steps) with FirstOrder("
    )
    assert '("auto": regularizers only' in first


def test_verbose_false_gives_no_summary(lightning_info):
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0), verbose=False)
    make_trainer([cb], 3).fit(Regression("l2", 0.05), *loaders())
    assert not [m for m in lightning_info if m.startswith("OnlineHyperparamCallback")]
    assert set(cb.tuned_values()) == {"l2"}


def test_tuned_values_before_any_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"tuned_values\(\): no fit has run yet"):
        OnlineHyperparamCallback().tuned_values()


def test_tuned_values_and_the_start_survive_a_resume(tmp_path, lightning_info):
    """A resumed run reports against the run's first start, and a callback that only loaded
    the checkpoint's state gives the checkpoint's values."""
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    first = OnlineHyperparamCallback(tune={"wd": WeightDecay()}, verbose=False)
    options = {"enable_checkpointing": True, "default_root_dir": tmp_path}
    make_trainer([first, saver], 4, **options).fit(AdamW("none", lr=0.01), *loaders())
    at_checkpoint = first.tuned_values()
    ckpt = tmp_path / "epoch=0-step=4.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"]["OnlineHyperparamCallback"]
    loaded = OnlineHyperparamCallback(tune={"wd": WeightDecay()})
    loaded.load_state_dict(state)
    assert loaded.tuned_values() == at_checkpoint

    resumed = OnlineHyperparamCallback(tune={"wd": WeightDecay()})
    model = AdamW("none", lr=0.01)
    make_trainer([resumed], 8, **options).fit(model, *loaders(), ckpt_path=str(ckpt))
    wd = float(resumed.engine.hypers[0].value)
    assert resumed.tuned_values() == {"wd": wd} and wd != at_checkpoint["wd"]
    lines = summary_of(lightning_info).splitlines()
    assert lines[0].startswith("OnlineHyperparamCallback: 8 steps")  # the run's, not the fit's
    assert lines[1].split() == ["wd", "0.02", "→", f"{wd:.6g}"]


# --------------------------------------------------------------------------------- loggers
def test_every_logger_gets_the_tuned_values_as_hyperparameters(tmp_path):
    csv = pl.loggers.CSVLogger(tmp_path, name="csv", version=0)
    tensorboard = pl.loggers.TensorBoardLogger(tmp_path, name="tb", version=0)
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0), tune={"wd": WeightDecay()})
    make_trainer([cb], 4, logger=[csv, tensorboard], log_every_n_steps=2).fit(
        AdamW("l2", 0.05, lr=0.01), *loaders()
    )
    expected = {f"hyperopt/{k}": v for k, v in cb.tuned_values().items()}
    expected["hyperopt/method"] = "Clip(radius=5.0, hyper_lr_scale=1.0)"
    saved = yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text())
    assert {k: saved[k] for k in expected} == expected
    assert {k: tensorboard.hparams[k] for k in expected} == expected
    header, *rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    assert "hyperopt/l2" in header.split(",") and "hyperopt/wd" in header.split(",")
    assert len(rows) == 2  # steps 2 and 4


def test_no_logger_and_fast_dev_run(lightning_info):
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0))
    model = Regression("l2", 0.05)
    make_trainer([cb], 4, logger=False).fit(model, *loaders())
    assert cb.engine.state.steps == 4 and float(model.l2.value) != 0.05
    fast = OnlineHyperparamCallback(Clip(5.0, 1.0))
    trainer = make_trainer([fast], -1, fast_dev_run=True)
    trainer.fit(model := Regression("l2", 0.05), *loaders())
    assert fast.engine.state.steps == 1 and float(model.l2.value) != 0.05
    assert len([m for m in lightning_info if m.startswith("OnlineHyperparamCallback")]) == 2


# --------------------------------------------------------------------------------- errors
def misconfiguration_exceptions():
    return [
        importlib.import_module(f"{ns.__name__}.utilities.exceptions").MisconfigurationException
        for ns in installed()
    ]


@pytest.mark.parametrize(
    ("arguments", "builtin", "message"),
    [
        ({"method": "clipp"}, ValueError, "method='clipp'"),
        ({"warmup_steps": -1}, ValueError, "warmup_steps"),
        ({"verbose": "yes"}, TypeError, "verbose"),
        ({"log_diagnostics": 1}, TypeError, "log_diagnostics"),
    ],
)
def test_configuration_errors_are_misconfiguration_exceptions(arguments, builtin, message):
    with pytest.raises(builtin, match=message) as caught:
        OnlineHyperparamCallback(**arguments)
    for exception in misconfiguration_exceptions():
        assert isinstance(caught.value, exception)


def test_a_fit_start_error_is_one_too():
    train, _ = loaders()
    with pytest.raises(ValueError, match="needs validation data for g_V") as caught:
        make_trainer([OnlineHyperparamCallback()], 2).fit(Regression("l2", 0.05), train)
    for exception in misconfiguration_exceptions():
        assert isinstance(caught.value, exception)


# ------------------------------------------------------------------------------- warnings
def test_an_adoption_warning_is_given_once():
    class Internal(nn.Module):
        dropout = 0.1

        def forward(self, x):
            return x

    class WithInternal(Regression):
        def __init__(self):
            super().__init__("l2", 0.05)
            self.blocks = nn.ModuleList([Internal(), Internal()])
            self.drop = nn.Dropout(0.2)

    cb = OnlineHyperparamCallback(Clip(5.0, 1.0), adopt_dropout="shared")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([cb], 2).fit(WithInternal(), *loaders())
    adopted = [str(w.message) for w in caught if "adopt_dropout" in str(w.message)]
    assert len(adopted) == 2 and len(set(adopted)) == 2  # blocks.0 and blocks.1, once each


def test_weights_only_checkpoints_warn_when_the_callback_holds_values(tmp_path):
    weights_only = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    options = {"enable_checkpointing": True, "default_root_dir": tmp_path}
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0), tune={"wd": WeightDecay()})
    with pytest.warns(UserWarning, match=r"save_weights_only=True\) saves no callback state") as w:
        make_trainer([cb, weights_only], 2, **options).fit(AdamW("l2", 0.05), *loaders())
    (message,) = [str(x.message) for x in w if "save_weights_only" in str(x.message)]
    assert "['wd']" in message and "tuned_values()" in message
    # a declared λ lives in the module's state_dict: nothing is lost, nothing is said
    declared = OnlineHyperparamCallback(Clip(5.0, 1.0))
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "b", save_weights_only=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([declared, saver], 2, **options).fit(Regression("l2", 0.05), *loaders())
    assert not [x for x in caught if "save_weights_only" in str(x.message)]


# ---------------------------------------------------------------------- beside the callback
def test_test_and_predict_after_a_tuned_fit_leave_lambda_alone():
    model = Regression("l2", 0.05)
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0))
    trainer = make_trainer([cb], 4, limit_test_batches=2, limit_predict_batches=2)
    train, val = loaders()
    trainer.fit(model, train, val)
    lam = float(model.l2.value)
    model.test_step = model.validation_step
    (result,) = trainer.test(model, val, verbose=False)
    assert result["val_loss"] > 0
    predictions = trainer.predict(model, DataLoader(val.dataset.tensors[0], batch_size=48))
    assert len(predictions) == 2 and predictions[0].shape == (48, 1)
    assert float(model.l2.value) == lam and cb.engine.state.steps == 4


def test_the_tuner_before_a_tuned_fit_in_the_same_script(lightning_info):
    """lr_find and scale_batch_size run their own short fits; the tuner stays out of them and
    tunes the real fit from its start."""
    tuner_module = importlib.import_module(f"{NAMESPACE}.tuner")

    class Tunable(Regression):
        def __init__(self):
            super().__init__("l2", 0.05)
            self.batch_size = 4
            self.train_set, self.val_set = regression_data(n_train=64)

        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=self.batch_size)

        def val_dataloader(self):
            return DataLoader(self.val_set, batch_size=48)

    model = Tunable()
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0))
    trainer = make_trainer([cb], 6, limit_val_batches=1, num_sanity_val_steps=0)
    tuner = tuner_module.Tuner(trainer)
    finder = tuner.lr_find(model, min_lr=1e-4, max_lr=0.1, num_training=8)
    model.lr = finder.suggestion() or 0.05
    tuner.scale_batch_size(model, mode="power", steps_per_trial=1, max_trials=2)
    assert cb.engine is None  # neither search started the tuner
    trainer.fit(model)
    assert trainer.optimizers[0].param_groups[0]["lr"] == model.lr
    assert cb.engine.state.steps == 6 and float(model.l2.value) != 0.05
    assert summary_of(lightning_info).startswith("OnlineHyperparamCallback: 6 steps")


def test_rich_progress_bar_shows_lambda():
    pytest.importorskip("rich")
    bar = importlib.import_module(f"{NAMESPACE}.callbacks").RichProgressBar()
    seen = []

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append(bar.get_metrics(trainer, trainer.lightning_module).get("hyperopt/l2"))

    model = Regression("l2", 0.05)
    trainer = make_trainer(
        [OnlineHyperparamCallback(Clip(5.0, 1.0)), bar, Look()],
        4,
        enable_progress_bar=True,
        log_every_n_steps=1,
    )
    trainer.fit(model, *loaders())
    assert seen[0] is not None and seen[-1] == pytest.approx(float(model.l2.value), rel=1e-3)


def test_a_value_with_no_config_entry_is_named_not_written(tmp_path, lightning_info):
    """Under LightningCLI the overlay holds what the config can express (the module's l2
    argument) and the summary names what it cannot (a learning rate hard-coded in
    configure_optimizers)."""
    cli_module = importlib.import_module(f"{NAMESPACE}.cli")

    class Hardcoded(AdamW):
        def __init__(self, l2: float = 0.05):
            super().__init__("l2", l2, lr=0.01)
            self.train_set, self.val_set = regression_data()

        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=6)

        def val_dataloader(self):
            return DataLoader(self.val_set, batch_size=48)

    cb = OnlineHyperparamCallback(Clip(5.0, 1.0), tune={"lr": LearningRate()})
    cli = cli_module.LightningCLI(
        Hardcoded,
        trainer_defaults={"callbacks": [cb], "default_root_dir": str(tmp_path)},
        args=["fit", "--trainer.max_steps=3", "--trainer.enable_progress_bar=false"],
    )
    overlay = tmp_path / "lightning_logs" / "version_0" / "tuned.yaml"
    assert cli.trainer.log_dir == str(overlay.parent)
    text = overlay.read_text(encoding="utf-8")
    assert yaml.safe_load(text) == {"model": {"l2": float(cli.model.l2.value)}}
    assert "# not written: lr: no config entry holds its starting value" in text
    lines = summary_of(lightning_info).splitlines()
    assert lines[-1] == "  not in the overlay: lr: no config entry holds its starting value"
