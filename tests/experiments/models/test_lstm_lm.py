"""LSTMLanguageModel: truncated BPTT state, perplexity, and tuning its keep probability (CPU)."""

import math

import pytest
import torch
from conftest import NO_UPDATE, Regression, make_trainer, regression_data
from pytorch_lightning.loggers import CSVLogger
from replay_probe import DriftRecorder, hessian_vector_products
from torch.nn import functional as F
from torch.utils.data import DataLoader

from experiments.data import BPTTChunks, batchify
from experiments.models.lstm_lm import LSTMLanguageModel
from lightning_hyperopt import Clip, Exact, FirstOrder, OnlineHyperparamCallback
from lightning_hyperopt.core.hyperparameters import find_hyperparameters

VOCAB = 23
TINY = dict(vocab_size=VOCAB, hidden_size=6, embedding_size=5, keep_prob=0.7)


def stream(rows, n_tokens=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return batchify(torch.randint(0, VOCAB, (n_tokens,), generator=g), rows)


def windows(rows=3, bptt=5, seed=0):
    """Stream-ordered (input, target) windows, as PTBDataModule yields them."""
    return DataLoader(BPTTChunks(stream(rows, seed=seed), bptt), batch_size=None)


def test_validation_perplexity_is_that_of_the_whole_stream():
    """Windows with the carried state give the whole stream's logits: val_ppl is
    exp(mean cross-entropy over every token of the split), computed by torchmetrics."""
    model = LSTMLanguageModel(**TINY).double()
    data = stream(2)
    x, y = data[:, :-1], data[:, 1:]
    model.eval()
    with torch.no_grad():
        logits, _ = model(x)
    expected = math.exp(float(F.cross_entropy(logits.flatten(0, 1), y.reshape(-1))))
    trainer = make_trainer([], 1, limit_val_batches=None)
    (metrics,) = trainer.validate(model, DataLoader(BPTTChunks(data, 7), batch_size=None))
    assert metrics["val_ppl"] == pytest.approx(expected, rel=1e-6)  # logged in float32


class StateProbe(LSTMLanguageModel):
    """Records the input state of each training step and the state it hands on."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inputs, self.outputs = [], []

    def training_step(self, batch, batch_idx):
        self.inputs.append(self._carried("train", batch[0]))
        loss = super().training_step(batch, batch_idx)
        self.outputs.append(self._next_train_state)
        return loss


def test_training_state_is_carried_detached_and_reset_each_epoch():
    model = StateProbe(**TINY)
    loader = windows()
    per_epoch = len(loader)
    make_trainer([], per_epoch + 2).fit(model, loader)
    assert model.inputs[0] is None and model.inputs[per_epoch] is None
    for k in (*range(1, per_epoch), per_epoch + 1):
        assert model.inputs[k] is model.outputs[k - 1]
        assert all(not t.requires_grad for hc in model.inputs[k] for t in hc)


class InStepProbe(LSTMLanguageModel):
    """H y on the training step's own graph, for the callback's current tangent."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.in_step = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        (cb,) = [c for c in self.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
        self.in_step.append(hessian_vector_products(loss, cb.engine.params, cb.engine.tangents))
        return loss


def test_hessian_vector_product_uses_the_input_state_and_masks_of_the_step(monkeypatch):
    """H y is the one of the step's loss: same input state, same masks."""
    recorder = DriftRecorder(monkeypatch)
    model = InStepProbe(**TINY).double()
    cb = OnlineHyperparamCallback(Exact(), warmup_steps=NO_UPDATE)
    make_trainer([cb], 5).fit(model, windows(), windows(seed=1))
    assert len(recorder.drifts) == len(model.in_step) == 5
    assert model.in_step[-1][0].norm() > 0
    for taken, in_step in zip(recorder.drifts, model.in_step):
        torch.testing.assert_close(taken[0], in_step[0], rtol=1e-10, atol=1e-13)


def test_a_few_steps_move_the_keep_probability_and_log_it(tmp_path):
    model = LSTMLanguageModel(**TINY)
    cb = OnlineHyperparamCallback(Clip(5.0, 0.1))
    logger = CSVLogger(tmp_path, name="lm", version=0)
    trainer = make_trainer([cb], 6, logger=logger, log_every_n_steps=1)
    trainer.fit(model, windows(), windows(seed=1))
    assert cb.engine.names == ["keep_prob"]
    lam = float(model.keep_prob.value)
    assert lam != 0.7 and 0.1 <= lam <= 1.0
    logged = (tmp_path / "lm" / "version_0" / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    column = [row.split(",")[header.index("hyperopt/keep_prob")] for row in logged[1:]]
    values = [float(v) for v in column if v]
    assert len(values) == 6 and values[-1] == pytest.approx(lam) and len(set(values)) > 1


def test_rnn_steps_that_need_h_y_run_without_cudnn_and_onednn():
    """A step whose H y comes from its own graph runs an LSTM model's forward and backward on
    the native kernels (cuDNN's RNN has no double backward), and so do the finite-difference
    replays; steps without H y (first order) keep the fast kernels; other models are left
    alone; the flags are restored after each step."""

    def recording(cls):
        class Recording(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.flags = []

            def training_step(self, batch, batch_idx):
                self.flags.append((torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled))
                return super().training_step(batch, batch_idx)

            def on_train_batch_end(self, *args):
                self.flags.append((torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled))

        return Recording

    lm = recording(LSTMLanguageModel)(**TINY)
    make_trainer([OnlineHyperparamCallback(Clip())], 2).fit(lm, windows(), windows(seed=1))
    assert lm.flags == [(False, False), (True, True)] * 2  # native in the step, then restored
    assert torch.backends.mkldnn.enabled and torch.backends.cudnn.enabled
    first_order = recording(LSTMLanguageModel)(**TINY)
    make_trainer([OnlineHyperparamCallback(FirstOrder())], 2).fit(
        first_order, windows(), windows(seed=1)
    )
    assert set(first_order.flags) == {(True, True)}
    mlp = recording(Regression)("l2")
    train, val = regression_data()
    make_trainer([OnlineHyperparamCallback(Clip())], 2).fit(
        mlp, DataLoader(train, batch_size=8), DataLoader(val, batch_size=64)
    )
    assert set(mlp.flags) == {(True, True)}


def test_one_keep_probability_per_layer():
    model = LSTMLanguageModel(**TINY, keep_per_layer=True, num_layers=3)
    assert list(find_hyperparameters(model)) == [f"dropouts.{k}.keep" for k in range(4)]
    shared = LSTMLanguageModel(**TINY)
    assert list(find_hyperparameters(shared)) == ["keep_prob"]
    assert all(d.keep is shared.keep_prob for d in shared.dropouts)


def test_one_sided_keep_probability_moves_lambda_from_the_step_own_gradient():
    """keep_difference="one_sided": every keep probability differences one replay against the
    step's own gradient (its training_step loss is training_loss's, so the two agree)."""
    model = LSTMLanguageModel(**TINY, keep_difference="one_sided", keep_per_layer=True)
    assert {h.difference for h in find_hyperparameters(model).values()} == {"one_sided"}
    cb = OnlineHyperparamCallback(FirstOrder(hyper_lr=1e-3), warmup_steps=0)
    make_trainer([cb], 4).fit(model, windows(), windows(seed=1))
    values = [float(h.value) for h in find_hyperparameters(model).values()]
    assert all(v != 0.7 and 0.1 <= v <= 1.0 for v in values)
    assert cb.engine.nonfinite == [0, 0, 0]


def test_gradient_accumulation_is_refused_before_training():
    model = LSTMLanguageModel(**TINY)
    trainer = make_trainer([], 2, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 is not supported"):
        trainer.fit(model, windows())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=0), r"hidden_size=0 must be an integer >= 1"),
        (dict(lr=0.0), r"lr=0.0 must be a finite number > 0"),
        (dict(lr_decay=1.5), r"lr_decay=1.5 must be in \(0, 1\]"),
        (dict(keep_prob=0.0), r"init=0.0 is outside bounds"),
        (dict(keep_bounds=(0.0, 1.0)), r"0 < low < high <= 1"),
        (dict(init_scale=-1.0), r"init_scale=-1.0 must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSTMLanguageModel(**{**TINY, **kwargs})
