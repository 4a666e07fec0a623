"""Edge cases of the Lightning loop: skipped steps, stateful layers, fit twice, data plumbing."""

import torch
from conftest import NO_UPDATE, Regression, fit, make_trainer, pl, regression_data
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_hyperopt import Clip, Exact, OnlineHyperparamCallback, WeightDecay


def flat(ts):
    return torch.cat([t.detach().reshape(-1) for t in ts])


class SkipsAndPartialWindows(Regression):
    """3 batches per epoch with accumulation 2 (a partial last window), epoch 1 cut short by
    on_train_batch_start returning -1, and a training_step that returns None once."""

    def on_train_batch_start(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            return -1
        return None

    def training_step(self, batch, batch_idx):
        if self.current_epoch == 2 and batch_idx == 0:
            return None
        return super().training_step(batch, batch_idx)


def test_tangent_exact_with_skips_and_partial_accumulation_windows():
    def train(init):
        model = SkipsAndPartialWindows("l2", init, momentum=0.9)
        cb, _, _ = fit(
            model,
            Exact(),
            max_steps=7,
            batch_size=8,
            warmup_steps=NO_UPDATE,
            accumulate_grad_batches=2,
        )
        return cb, flat(model.parameters())

    delta = 1e-6
    cb, _ = train(0.02)
    fd = (train(0.02 + delta)[1] - train(0.02 - delta)[1]) / (2 * delta)
    torch.testing.assert_close(flat(cb.engine.tangents[0]), fd, rtol=1e-5, atol=1e-8)
    assert cb.engine.state.steps == 7


def test_step_without_gradient_moves_neither_tangent_nor_lambda():
    class NoneOnce(Regression):
        def training_step(self, batch, batch_idx):
            return (
                None
                if self.global_step == 2 and not hasattr(self, "_skipped")
                else (super().training_step(batch, batch_idx))
            )

        def on_train_batch_end(self, outputs, batch, batch_idx):
            if outputs is None:
                self._skipped = True

    cb, rec, _ = fit(NoneOnce("l2", 0.05), Clip(5.0, 1.0), max_steps=4, batch_size=24)
    lam = [v[0] for v in rec.values]
    assert lam[2] == lam[1]  # the batch without a step left λ alone
    assert cb.engine.state.steps == cb.engine.state.updates == 3  # 4 batches, one without a step


class BatchNormNet(Regression):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = nn.BatchNorm1d(16).double()

    def forward(self, x):
        return self.second(torch.tanh(self.norm(self.first(x))))


def test_replay_leaves_batch_norm_statistics_alone():
    tuned = BatchNormNet("l2", 0.05)
    fit(tuned, Clip(5.0, 1.0), max_steps=5, batch_size=8)

    plain = BatchNormNet("l2", 0.05)
    trainer = make_trainer([], 5)
    train, _ = regression_data()
    trainer.fit(plain, DataLoader(train, batch_size=8))
    assert int(tuned.norm.num_batches_tracked) == int(plain.norm.num_batches_tracked) == 5
    # θ differ (λ moved), but the running statistics were updated once per step, not twice
    assert float((tuned.norm.running_mean - plain.norm.running_mean).abs().max()) < 0.05


def test_second_fit_continues_the_tuning():
    class FromOptimizer(Regression):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, weight_decay=0.5)

    model = FromOptimizer("none")
    model.wd = WeightDecay()
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0))
    train, val = regression_data()
    make_trainer([cb], 3).fit(model, DataLoader(train), DataLoader(val, batch_size=64))
    lam, step = float(model.wd.value), cb.engine.state.steps
    assert lam != 0.5 and step == 3
    trainer = make_trainer([cb], 3)
    trainer.fit(model, DataLoader(train), DataLoader(val, batch_size=64))
    assert cb.engine.state.steps == 6  # continued, not restarted
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == float(model.wd.value)
    # the stream continued too: 6 g_V batches of a 4-batch pass drawn (2 into the second pass)
    assert (cb.validation.passes, cb.validation.index) == (1, 2)


class Indexed(Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.tensor([float(i)], dtype=torch.float64)


class IndexModel(pl.LightningModule):
    """Records which validation batches g_V saw; the loss is a simple quadratic."""

    def __init__(self):
        super().__init__()
        from lightning_hyperopt import L2Penalty

        self.w = nn.Parameter(torch.ones(1, dtype=torch.float64))
        self.l2 = L2Penalty(0.1)
        self.seen = []

    def training_loss(self, batch):
        return ((self.w * batch - 1) ** 2).mean() + self.l2([self.w])

    def validation_loss(self, batch):
        self.seen.append(float(batch[0, 0]))
        return ((self.w * batch - 2) ** 2).mean()

    def training_step(self, batch, batch_idx):
        return self.training_loss(batch)

    def validation_step(self, batch, batch_idx):
        return None

    def on_after_batch_transfer(self, batch, dataloader_idx):
        # training-only augmentation, the Lightning way
        return batch + 1000.0 if self.trainer.training else batch

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_persistent_validation_workers_and_training_augmentation():
    """Lightning's validation runs don't reset g_V's iterator, and the training-only
    augmentation in on_after_batch_transfer is not applied to g_V's batches."""
    model = IndexModel()
    val = DataLoader(Indexed(), batch_size=10, num_workers=1, persistent_workers=True)
    trainer = make_trainer([OnlineHyperparamCallback(Clip(5.0, 1.0))], 6, limit_val_batches=1)
    trainer.fit(model, DataLoader(Indexed(), batch_size=40), val)
    # the probe before training, then the stream: 0, 10, 20, 30, a new pass: 0, 10
    assert model.seen == [0.0, 0.0, 10.0, 20.0, 30.0, 0.0, 10.0]


def test_hyperparameter_values_stay_float64_under_precision_casts():
    model = Regression("l2", 0.05).float()
    assert model.l2.value.dtype == torch.float64
    model.half()
    assert model.l2.value.dtype == torch.float64 and float(model.l2.value) == 0.05
    assert (
        model.training_loss(tuple(t[:4].half() for t in regression_data()[0].tensors)).dtype
        == torch.float16
    )


class TinyRNN(IndexModel):
    """An LSTM model: g_V's pass must avoid cuDNN, whose RNN has no backward in eval mode."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(1, 2, batch_first=True).double()
        self.kernels = []

    def validation_loss(self, batch):
        self.kernels.append((torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled))
        out, _ = self.rnn(batch.unsqueeze(-1))
        return (out**2).mean() + super().validation_loss(batch)

    def training_loss(self, batch):
        out, _ = self.rnn(batch.unsqueeze(-1))
        return (out**2).mean() + super().training_loss(batch)


def test_rnn_validation_gradient_runs_on_native_kernels():
    model = TinyRNN()
    trainer = make_trainer([OnlineHyperparamCallback(Clip(5.0, 1.0))], 2)
    trainer.fit(model, DataLoader(Indexed(), batch_size=40), DataLoader(Indexed(), batch_size=10))
    assert model.kernels == [(False, False)] * 3  # the probe, then after each of 2 steps
    assert torch.backends.cudnn.enabled and torch.backends.mkldnn.enabled  # restored
