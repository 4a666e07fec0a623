"""An unmodified LightningModule tuned by the callback alone: ``tune=`` (weight decay, learning
rate) and ``adopt_dropout``, L_V from ``validation_step``; float64, CPU.

The module below knows nothing of lightning_hyperopt: AdamW with weight decay, two
``nn.Dropout``, a ``validation_step`` that logs and returns its loss.
"""

import pytest
import torch
import torchmetrics
from conftest import make_trainer, pl, regression_data
from torch import nn
from torch.utils.data import DataLoader

from lightning_hyperopt import (
    Clip,
    KeepProbability,
    L2Penalty,
    LearningRate,
    OnlineHyperparamCallback,
    TunableDropout,
    WeightDecay,
)


class Plain(pl.LightningModule):
    """A small project's model, as it is: no hyperopt code anywhere."""

    def __init__(self, p: float = 0.2, lr: float = 0.01, weight_decay: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(12, 16),
            nn.Tanh(),
            nn.Dropout(p),
            nn.Linear(16, 16),
            nn.Tanh(),
            nn.Dropout(p),
            nn.Linear(16, 1),
        )
        self.double()

    def forward(self, x):
        return self.net(x)

    def loss(self, batch):
        x, y = batch
        return ((self(x) - y) ** 2).mean()

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


class Declared(Plain):
    """The same model written the declared way: λ as submodules, the two losses as methods."""

    def __init__(self):
        super().__init__()
        keep = KeepProbability(0.8)
        self.net[2], self.net[5] = TunableDropout(keep), TunableDropout(keep)
        self.weight_decay = WeightDecay()
        self.lr = LearningRate()

    def validation_loss(self, batch):
        return self.loss(batch)

    def training_loss(self, batch):
        return self.loss(batch)


def tune():
    return {"weight_decay": WeightDecay(), "lr": LearningRate()}


class Trajectory(pl.Callback):
    """λ of every hyperparameter the callback tunes, after each training batch."""

    def __init__(self, cb):
        self.cb, self.values = cb, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append([float(h.value) for h in self.cb.engine.hypers])


class Reseed(pl.Callback):
    """Masks from the step alone, so a resumed run draws the uninterrupted run's masks."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(trainer.global_step)


def loaders():
    train, val = regression_data()
    return DataLoader(train, batch_size=6), DataLoader(val, batch_size=64)


def run(model, cb, max_steps, *callbacks, ckpt_path=None, **trainer_kwargs):
    torch.manual_seed(0)
    trajectory = Trajectory(cb)
    trainer = make_trainer(
        [*callbacks, cb, trajectory], max_steps, namespace=pl.__name__, **trainer_kwargs
    )
    trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
    return trajectory.values, trainer


def zero_edit_callback(**kwargs):
    return OnlineHyperparamCallback(Clip(5.0), tune=tune(), adopt_dropout="shared", **kwargs)


def test_zero_edit_run_equals_the_declared_model_bit_for_bit():
    """λ moves, and θ, y and λ equal those of the model that declares everything."""
    plain, cb_plain = Plain(), zero_edit_callback()
    values, _ = run(plain, cb_plain, 8)
    declared, cb_declared = Declared(), OnlineHyperparamCallback(Clip(5.0))
    reference, _ = run(declared, cb_declared, 8)
    assert cb_plain.engine.names == cb_declared.engine.names == ["net.2.keep", "weight_decay", "lr"]
    assert values[0] != [0.8, 0.01, 1.0] and values[-1] != values[0]  # every λ moved
    assert all(a != b for a, b in zip(values[-1], [0.8, 0.01, 1.0]))
    assert values == reference  # Python floats of the float64 λ: bit for bit
    assert cb_plain.engine.tangent.dtype == torch.float64
    assert cb_plain.engine.tangent.abs().sum() > 0
    torch.testing.assert_close(cb_plain.engine.tangent, cb_declared.engine.tangent, rtol=0, atol=0)
    for a, b in zip(plain.parameters(), declared.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_loads_into_the_unmodified_class_without_the_callback(tmp_path):
    model, cb = Plain(), zero_edit_callback()
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4)
    values, _ = run(model, cb, 4, saver, enable_checkpointing=True)
    ckpt = tmp_path / "epoch=0-step=4.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert set(saved["state_dict"]) == set(Plain().state_dict())
    held = saved["callbacks"]["OnlineHyperparamCallback"]["values"]
    assert {name: float(v) for name, v in held.items()} == dict(
        zip(["net.2.keep", "weight_decay", "lr"], values[-1])
    )
    group = saved["optimizer_states"][0]["param_groups"][0]
    assert group["weight_decay"] == values[-1][1]  # the tuned value the optimizer holds
    loaded = Plain.load_from_checkpoint(ckpt)  # strict, no callback
    assert isinstance(loaded.net[2], nn.Dropout)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_follows_the_uninterrupted_lambda_trajectory(tmp_path):
    """From an epoch-end checkpoint (4 batches an epoch), λ of the three hyperparameters the
    callback holds follows the uninterrupted run bit for bit."""
    total, at = 12, 8

    def resumable(max_steps, *callbacks, ckpt_path=None):
        cb = zero_edit_callback()
        values, _ = run(
            Plain(),
            cb,
            max_steps,
            Reseed(),
            *callbacks,
            enable_checkpointing=True,
            default_root_dir=tmp_path,
            ckpt_path=ckpt_path,
        )
        return values, cb

    straight, _ = resumable(total)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=at, save_top_k=-1)
    resumable(at, saver)
    resumed, cb = resumable(total, ckpt_path=str(tmp_path / f"epoch=1-step={at}.ckpt"))
    assert cb.engine.state.steps == total and straight[at] != straight[at - 1]
    assert resumed == straight[at:]


class ReturnsDict(Plain):
    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("val_loss", loss)
        return {"loss": loss, "batch_size": len(batch[0])}


def test_validation_step_returning_a_dict_gives_its_loss():
    as_tensor, _ = run(Plain(), zero_edit_callback(), 5)
    as_dict, _ = run(ReturnsDict(), zero_edit_callback(), 5)
    assert as_dict == as_tensor


class LogsOnly(Plain):
    steps = 0

    def training_step(self, batch, batch_idx):
        type(self).steps += 1
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))


class Detached(Plain):
    def validation_step(self, batch, batch_idx):
        return self.loss(batch).detach()


@pytest.mark.parametrize(
    "model, error, match",
    [
        (
            LogsOnly,
            TypeError,
            r"LogsOnly.validation_step returned None.*return the loss from validation_step "
            r"\(a scalar tensor, or a dict with a 'loss' entry\), or the module must define "
            r"`validation_loss\(batch\) -> Tensor`",
        ),
        (
            Detached,
            ValueError,
            r"validation_step returned a tensor without a graph.*define `validation_loss",
        ),
    ],
)
def test_validation_step_without_a_usable_loss_fails_before_training(model, error, match):
    LogsOnly.steps = 0
    with pytest.raises(error, match=match):
        run(model(), zero_edit_callback(), 3)
    assert LogsOnly.steps == 0


def test_validation_loss_is_kept_when_defined():
    class Both(Plain):
        calls = 0

        def validation_loss(self, batch):
            type(self).calls += 1
            return self.loss(batch)

        def validation_step(self, batch, batch_idx):
            raise AssertionError("g_V must come from validation_loss")

    run(Both(), zero_edit_callback(), 3)
    assert Both.calls == 4  # the probe, then one per step


class Metrics(pl.loggers.Logger):
    """Every (step, metrics) the Trainer logs."""

    def __init__(self):
        super().__init__()
        self.logged = []

    name, version = "metrics", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


class WithMetric(Plain):
    """Logs its loss and a torchmetrics mean of it from validation_step."""

    def __init__(self):
        super().__init__()
        self.val_mean = torchmetrics.MeanMetric().double()

    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.val_mean.update(loss)
        self.log("val_loss", loss)
        self.log("val_mean", self.val_mean)
        return loss


class ExpectedValidation(pl.Callback):
    """The validation loss over the whole validation loader, computed here at each validation
    epoch's end (the model's weights then are those Lightning validated)."""

    def __init__(self, loader):
        self.loader, self.values = loader, []

    def on_validation_epoch_end(self, trainer, pl_module):
        with torch.no_grad():
            losses = [pl_module.loss(b) for b in self.loader]
        self.values.append(float(torch.stack(losses).mean()))


def test_tuner_passes_log_nothing():
    """The logged val_loss (and a torchmetrics mean) are Lightning's epoch values only: the
    callback's g_V passes through validation_step, and its replays of training_step, log
    nothing and leave the metric's state alone."""
    model, logger = WithMetric(), Metrics()
    train, val = loaders()
    expected = ExpectedValidation(val)
    cb = zero_edit_callback()
    torch.manual_seed(0)
    trainer = make_trainer(
        [cb, expected],
        8,
        namespace=pl.__name__,
        logger=logger,
        log_every_n_steps=1,
        limit_val_batches=None,
        val_check_interval=4,
    )
    trainer.fit(model, train, val)
    val_logs = [(step, m) for step, m in logger.logged if "val_loss" in m]
    assert [step for step, _ in val_logs] == [3, 7]  # the two validation epochs, nothing else
    for (_, m), value in zip(val_logs, expected.values):
        assert m["val_loss"] == pytest.approx(value, rel=1e-6)  # logged in float32
        assert m["val_mean"] == pytest.approx(value, rel=1e-6)
    train_logs = [m for _, m in logger.logged if "train_loss" in m]
    assert len(train_logs) == 8  # one per step: the replays of training_step logged nothing
    assert any("hyperopt/weight_decay" in m and "hyperopt/lr" in m for m in train_logs)


@pytest.mark.parametrize(
    "tune, error, match",
    [
        ([WeightDecay()], TypeError, r"tune= must be a dict of name -> Hyperparameter"),
        ({"wd": 0.01}, TypeError, r"tune\['wd'\] must be a Hyperparameter .* got float"),
        ({"": WeightDecay()}, ValueError, r"tune= has the key '': each name"),
        ({1: WeightDecay()}, ValueError, r"tune= has the key 1"),
        ({"a/b": WeightDecay()}, ValueError, r"without '/'"),
        ({"l2": L2Penalty(0.1)}, ValueError, r"L2Penalty, which enters the training loss"),
        ({"keep": KeepProbability(0.8)}, ValueError, r"through adopt_dropout="),
    ],
)
def test_bad_tune_entries(tune, error, match):
    with pytest.raises(error, match=match):
        OnlineHyperparamCallback(tune=tune)


def test_same_object_twice_in_tune():
    wd = WeightDecay()
    with pytest.raises(ValueError, match=r"tune\['a'\] and tune\['b'\] are the same object"):
        OnlineHyperparamCallback(tune={"a": wd, "b": wd})


def test_names_clashing_with_the_module_fail_at_setup():
    class Steps(Declared):
        steps = 0

        def training_step(self, batch, batch_idx):
            type(self).steps += 1
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"names \['lr', 'weight_decay'\], which Steps declares"):
        run(Steps(), OnlineHyperparamCallback(tune=tune()), 3)
    model = Steps()
    with pytest.raises(ValueError, match=r"\['mine'\] are submodules of Steps"):
        run(model, OnlineHyperparamCallback(tune={"mine": model.weight_decay}), 3)
    assert Steps.steps == 0


def test_a_second_callback_setting_the_same_setting_is_an_error():
    class WithDecay(Plain):
        def __init__(self):
            super().__init__()
            self.wd = WeightDecay()

    with pytest.raises(ValueError, match=r"two WeightDecay hyperparameters tune param group 0"):
        run(WithDecay(), OnlineHyperparamCallback(tune={"weight_decay": WeightDecay()}), 3)
