"""Dropout keep probabilities through the callback: adoption of nn.Dropout, checkpoint/resume,
the replay's masks, the edges of λ and the eval-mode g_V pass (float64, CPU)."""

import pytest
import torch
from conftest import NO_UPDATE, Recorder, Regression, make_trainer, pl, regression_data
from replay_probe import DriftRecorder, hessian_vector_products
from torch import nn
from torch.utils.data import DataLoader

from lightning_hyperopt import (
    Clip,
    Exact,
    FirstOrder,
    KeepProbability,
    OnlineHyperparamCallback,
    TunableDropout,
)


class DropoutNet(Regression):
    """The regression MLP with plain nn.Dropout on its input and hidden units."""

    def __init__(self, p_in=0.2, p_hidden=0.2, **kwargs):
        super().__init__("none", **kwargs)
        self.drop_in = nn.Dropout(p_in)
        self.drop = nn.Dropout(p_hidden)

    def forward(self, x):
        return self.second(self.drop(torch.tanh(self.first(self.drop_in(x)))))


def loaders():
    train, val = regression_data()
    return DataLoader(train, batch_size=6), DataLoader(val, batch_size=64)


def run(model, callback, max_steps, *callbacks, ckpt_path=None, **trainer_kwargs):
    rec = Recorder()
    trainer = make_trainer([*callbacks, callback, rec], max_steps, **trainer_kwargs)
    trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
    return rec, trainer


@pytest.mark.parametrize(
    "mode, names", [("shared", ["drop_in.keep"]), ("per_module", ["drop_in.keep", "drop.keep"])]
)
def test_adopted_dropout_is_tuned_and_shows_in_the_summary(mode, names):
    model = DropoutNet(p_in=0.2, p_hidden=0.2 if mode == "shared" else 0.4)
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0), adopt_dropout=mode)
    rec, _ = run(model, cb, 8)
    assert cb.engine.names == names
    assert isinstance(model.drop_in, TunableDropout) and isinstance(model.drop, TunableDropout)
    assert (model.drop_in.keep is model.drop.keep) is (mode == "shared")
    assert rec.values[0] != [0.8] * len(names)  # moved from 1 − p at the first step
    assert all(0.1 <= v <= 1.0 for values in rec.values for v in values)
    summary = pl.utilities.model_summary.ModelSummary(model, max_depth=-1)
    assert summary.layer_types.count("TunableDropout") == 2
    assert "KeepProbability" in summary.layer_types


class Reseed(pl.Callback):
    """Seeds the global RNG from the step, so masks do not depend on where a run started."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(trainer.global_step)


def test_adoption_survives_checkpoint_and_resume(tmp_path):
    """A fresh model with plain nn.Dropout resumes the adopted keep probabilities: the same λ
    trajectory as an uninterrupted run."""
    total, at = 12, 8  # 4 batches per epoch: the checkpoint ends an epoch

    def resumable_run(max_steps, callbacks=(), ckpt_path=None):
        model = DropoutNet(p_hidden=0.4)
        cb = OnlineHyperparamCallback(Clip(5.0, 0.1), adopt_dropout="per_module")
        rec, _ = run(
            model,
            cb,
            max_steps,
            Reseed(),
            *callbacks,
            enable_checkpointing=True,
            default_root_dir=tmp_path,
            ckpt_path=ckpt_path,
        )
        return rec.values, model

    straight, model_straight = resumable_run(total)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=at, save_top_k=-1)
    resumable_run(at, [saver])
    ckpt = tmp_path / f"epoch=1-step={at}.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    # the adopted keep probabilities are the callback's: the module keeps the model's keys
    assert set(saved["state_dict"]) == set(DropoutNet().state_dict())
    values = saved["callbacks"]["OnlineHyperparamCallback"]["values"]
    assert set(values) == {"drop_in.keep", "drop.keep"}
    resumed, model_resumed = resumable_run(total, ckpt_path=str(ckpt))
    assert straight[at] != straight[at - 1]
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(straight[at:]), rtol=0, atol=0)
    for name in ("drop", "drop_in"):
        keep = getattr(model_resumed, name).keep.value
        assert keep == getattr(model_straight, name).keep.value


class InStepProbe(Regression):
    """Computes H y on the training step's own graph (its own masks) for the callback's tangent,
    and H y on a second forward pass (new masks) as a control."""

    def __init__(self):
        super().__init__("none")
        self.keep = KeepProbability(0.6)
        self.drop = TunableDropout(self.keep)
        self.in_step, self.other_masks = [], []

    def forward(self, x):
        return self.second(self.drop(torch.tanh(self.first(x))))

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch)
        (cb,) = [c for c in self.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
        params, tangents = cb.engine.params, cb.engine.tangents
        self.in_step.append(hessian_vector_products(loss, params, tangents))
        self.other_masks.append(
            hessian_vector_products(self.training_loss(batch), params, tangents)
        )
        return loss


def test_hessian_vector_product_uses_the_training_step_masks(monkeypatch):
    recorder = DriftRecorder(monkeypatch)
    model = InStepProbe()
    run(model, OnlineHyperparamCallback(Exact(), warmup_steps=NO_UPDATE), 6)
    assert len(recorder.drifts) == len(model.in_step) == 6
    for step, (taken, in_step, other) in enumerate(
        zip(recorder.drifts, model.in_step, model.other_masks)
    ):
        # the keep probability has no autograd path: the graph's G is H y alone
        torch.testing.assert_close(taken[0], in_step[0], rtol=1e-12, atol=1e-15)
        if step > 0:  # y_0 = 0; then H y depends on the masks
            assert (taken[0] - other[0]).norm() > 1e-3 * in_step[0].norm()


@pytest.mark.parametrize("init", [1.0, 0.99, 0.1], ids=["one", "near-one", "low"])
def test_keep_probability_stays_in_bounds_at_the_edges(init):
    """One-sided differences at λ = 1 and at the lower bound; a huge hyper step drives λ onto
    the bounds, and everything stays finite."""
    model = DropoutNet(p_in=0.0, p_hidden=1 - init)
    cb = OnlineHyperparamCallback(FirstOrder(hyper_lr=1e4), adopt_dropout="per_module")
    rec, _ = run(model, cb, 12)
    values = torch.tensor(rec.values)
    assert torch.isfinite(values).all() and (values >= 0.1).all() and (values <= 1.0).all()
    assert ((values == 1.0) | (values == 0.1)).any()
    assert cb.engine.nonfinite == [0, 0]
    assert torch.isfinite(cb.engine.state.direction).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_validation_pass_is_in_eval_mode_and_leaves_batch_norm_alone():
    """g_V: dropout is the identity, batch norm uses its running statistics and does not
    update them."""

    class WithBatchNorm(DropoutNet):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(16).double()
            self.seen = []

        def forward(self, x):
            return self.second(self.drop(self.norm(torch.tanh(self.first(self.drop_in(x))))))

        def validation_loss(self, batch):
            before = [b.clone() for b in self.norm.buffers()]
            x = batch[0]
            identity = torch.equal(self.drop(x), x) and torch.equal(self.drop_in(x), x)
            loss = super().validation_loss(batch)
            unchanged = all(torch.equal(a, b) for a, b in zip(before, self.norm.buffers()))
            self.seen.append((self.training, identity, unchanged))
            return loss

    model = WithBatchNorm()
    run(model, OnlineHyperparamCallback(Clip(5.0, 1.0), adopt_dropout="shared"), 3)
    assert model.seen == [(False, True, True)] * 4  # the probe before training, 3 updates


@pytest.mark.parametrize(
    "value, match",
    [
        ("all", r"adopt_dropout='all' is not supported; accepted values: \('shared', 'per_mod"),
        ({"mode": "all"}, r"adopt_dropout=\{'mode': 'all'\} is not supported"),
        ({"diff": "one_sided"}, r"a mapping of the options \('mode', 'init', 'bounds', 'eps'"),
        ({"difference": "two"}, r"adopt_dropout=.*difference='two' is not supported; accepted"),
        ({"eps": 0.9}, r"adopt_dropout=\{'eps': 0.9\}: KeepProbability eps=0.9 must be in"),
        ({"init": 0.05}, r"adopt_dropout=\{'init': 0.05\}: init=0.05 is outside bounds"),
        (3, r"adopt_dropout=3 is not supported"),
    ],
)
def test_bad_adopt_dropout_argument(value, match):
    with pytest.raises(ValueError, match=match):
        OnlineHyperparamCallback(adopt_dropout=value)


def test_adopt_dropout_options_choose_the_one_sided_difference():
    """A mapping passes adopt_dropout's options through: one replay per step instead of two
    (a different λ trajectory from the same start), the mode defaulting to shared."""

    def trajectory(adopt):
        torch.manual_seed(0)
        model = DropoutNet()
        cb = OnlineHyperparamCallback(FirstOrder(), adopt_dropout=adopt)
        rec, _ = run(model, cb, 6)
        return model, rec.values

    model, one_sided = trajectory({"difference": "one_sided", "eps": 0.1})
    assert model.drop_in.keep is model.drop.keep  # shared
    assert model.drop.keep.difference == "one_sided" and model.drop.keep.eps == 0.1
    _, central = trajectory("shared")
    assert one_sided != central and len(one_sided) == len(central) == 6


def test_adopting_a_model_without_dropout_fails_before_training():
    class Counting(Regression):
        steps = 0

        def training_step(self, batch, batch_idx):
            type(self).steps += 1
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"Counting has no nn\.Dropout module"):
        run(Counting("l2"), OnlineHyperparamCallback(adopt_dropout="shared"), 3)
    assert Counting.steps == 0


@pytest.mark.parametrize("method", ["clip", "first_order"])
def test_recurrent_model_with_gradient_accumulation(method):
    """Every accumulated micro-batch of an RNN model is replayed at λ₊ and λ₋ on the kernels
    of the step it replays: the native ones inside a step that needs H y (which comes from the
    step's own graph, no replay), the fast ones (oneDNN here, cuDNN on a GPU) under
    FirstOrder, whose steps need no second derivative."""

    class Recurrent(Regression):
        def __init__(self):
            super().__init__("l2")
            self.rnn = nn.GRU(1, 4, batch_first=True).double()
            self.keep = KeepProbability(0.8)
            self.drop = TunableDropout(self.keep)
            self.replays = 0

        def forward(self, x):
            _, h = self.rnn(x.unsqueeze(-1))
            return self.second(self.drop(torch.tanh(self.first(x)))) + h[-1].sum(1, keepdim=True)

        def training_loss(self, batch):
            if self.keep.current() is not self.keep.value:  # perturbed: a replay at λ ± ε
                self.replays.append(torch.backends.mkldnn.enabled)
            return super().training_loss(batch)

    model = Recurrent()
    model.replays = []
    cb = OnlineHyperparamCallback(Clip(5.0, 0.1) if method == "clip" else FirstOrder(1e-2))
    rec, _ = run(model, cb, 2, accumulate_grad_batches=2)
    # 2 steps × 2 micro-batches × (λ₊, λ₋), native kernels (oneDNN off) only under Clip
    assert model.replays == [method == "first_order"] * (2 * 2 * 2)
    assert torch.backends.mkldnn.enabled  # as it was
    assert len(rec.values) == 4 and rec.values[-1] != rec.values[0]


def test_first_order_runs_finite_differences_only_before_lambda_updates(monkeypatch):
    """FirstOrder with hyper_every=k: the keep probability's finite-difference replays run
    on the steps followed by a λ update only (none during the warm-up, one step in k after
    it), and λ and θ follow exactly the trajectory of replaying at every step."""
    import lightning_hyperopt.core.terms as terms
    from lightning_hyperopt.core.hyper_update import HyperUpdate

    calls = []
    original = terms.add_finite_differences

    def counted(drift, rows, hypers, contexts, *args):
        calls.append(contexts[0].step)
        return original(drift, rows, hypers, contexts, *args)

    monkeypatch.setattr(terms, "add_finite_differences", counted)

    def fit():
        torch.manual_seed(0)
        model = DropoutNet(p_in=0.1, p_hidden=0.3).double()
        cb = OnlineHyperparamCallback(
            FirstOrder(hyper_lr=0.5), adopt_dropout="per_module", warmup_steps=2, hyper_every=3
        )
        rec, _ = run(model, cb, 12)
        return rec.values, [p.detach().clone() for p in model.parameters()]

    values, params = fit()
    # steps t = 0..11, warm-up t < 2, then every 3rd update point: λ moves after t = 4, 7, 10
    assert calls == [4, 7, 10]
    assert values[3] == values[0] and values[4] != values[3] and values[5] == values[4]
    calls.clear()
    monkeypatch.setattr(HyperUpdate, "will_update", lambda self, step: True)  # replay every step
    every_values, every_params = fit()
    assert calls == list(range(12))
    assert values == every_values  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(params, every_params))


class OneSidedProbe(Regression):
    """One keep probability, one-sided; its training step computes, on its own masks, the
    one-sided estimate (g_T(m₊, λ₊) − g_T(m, λ)) / ε by hand (u from the step's RNG state)."""

    def __init__(self):
        super().__init__("none")
        self.keep = KeepProbability(0.6, eps=0.05, difference="one_sided")
        self.drop = TunableDropout(self.keep)
        self.expected = []

    def forward(self, x):
        return self.second(self.drop(torch.tanh(self.first(x))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        state = torch.get_rng_state()
        loss = self.training_loss(batch)
        params = [*self.first.parameters(), *self.second.parameters()]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            h = torch.tanh(self.first(x))
            u = torch.rand(h.shape, dtype=torch.float32)
            lam, plus = float(self.keep.value), float(self.keep.value) + 0.05
            grads = []
            for keep in (lam, plus):
                out = self.second(h * (u < keep).to(h.dtype) / keep)
                loss_k = nn.functional.mse_loss(out, y)
                grads.append(torch.autograd.grad(loss_k, params, retain_graph=True))
        self.expected.append(
            torch.cat([(b - a).reshape(-1) for a, b in zip(*grads)]) / (plus - lam)
        )
        return loss


def test_one_sided_difference_uses_the_step_masks_and_one_replay(monkeypatch):
    import lightning_hyperopt.core.terms as terms

    taken, replays = [], []
    original = terms.add_finite_differences

    def recording(drift, rows, hypers, contexts, replay, own_gradient=None):
        before = drift.clone()

        def counted():
            replays.append(contexts[0].step)
            return replay()

        original(drift, rows, hypers, contexts, counted, own_gradient)
        taken.append((drift - before)[0].clone())

    monkeypatch.setattr(terms, "add_finite_differences", recording)
    model = OneSidedProbe()
    rec, _ = run(model, OnlineHyperparamCallback(FirstOrder(hyper_lr=1e-3), warmup_steps=0), 5)
    assert replays == [0, 1, 2, 3, 4]  # one replay per step, not two
    assert rec.values[-1] != [0.6] and all(0.5 < v < 0.7 for (v,) in rec.values)  # λ + ε < 1
    assert len(taken) == len(model.expected) == 5
    for got, expected in zip(taken, model.expected):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
