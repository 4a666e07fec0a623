"""OnlineHyperparamCallback through a real Trainer on CPU (float64, seeded)."""

import math

import pytest
import torch
from conftest import NO_UPDATE, Regression, fit, regression_data
from torch.utils.data import DataLoader

from lightning_hyperopt import Clip, Exact, Unroll

SGD_VARIANTS = {
    "plain": dict(momentum=0.0),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
}


def final_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("sgd", SGD_VARIANTS.values(), ids=SGD_VARIANTS.keys())
@pytest.mark.parametrize(
    "penalty, init, which",
    [
        ("l2", 0.02, 0),
        ("wd", 0.02, 0),
        ("per_layer", (0.02, 0.05), 0),
        ("per_layer", (0.02, 0.05), 1),
        ("scalar", 0.02, 1),
    ],
)
def test_tangent_equals_finite_differences_of_two_trainings(sgd, penalty, init, which):
    """y_T = (θ_T(λ+δ) − θ_T(λ−δ)) / 2δ for hyperparameter ``which``, others held fixed."""
    steps, delta = 15, 1e-6
    cb, _, _ = fit(Regression(penalty, init, **sgd), Exact(), steps, warmup_steps=NO_UPDATE)
    tangent = torch.cat([t.reshape(-1) for t in cb.engine.tangents[which]])

    def shifted(sign):
        vals = list(init) if isinstance(init, tuple) else [init, init]
        vals[which] += sign * delta
        shifted_init = tuple(vals) if isinstance(init, tuple) else vals[0]
        model = Regression(penalty, shifted_init, **sgd)
        if penalty == "scalar":  # which=1: the generic Hyperparameter
            model = Regression(penalty, init, **sgd)
            model.smooth_l1.value.fill_(init + sign * delta)
        fit(model, Exact(), steps, warmup_steps=NO_UPDATE)
        return final_params(model)

    fd = (shifted(+1) - shifted(-1)) / (2 * delta)
    torch.testing.assert_close(tangent, fd, rtol=1e-5, atol=1e-8)


class TwoGroups(Regression):
    """Adam, AdamW or SGD over two param groups, with a step learning-rate schedule."""

    def __init__(self, penalty, init, optimizer, weight_decay=0.0):
        super().__init__(penalty, init, lr=0.02)
        self.optimizer_name, self.weight_decay = optimizer, weight_decay

    def configure_optimizers(self):
        groups = [
            {"params": list(self.first.parameters())},
            {"params": list(self.second.parameters()), "lr": 0.01},
        ]
        wd = self.weight_decay
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=0.9, weight_decay=wd)
        else:
            cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
            opt = cls(groups, lr=self.lr, weight_decay=wd)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize(
    "optimizer, penalty, clip",
    [
        ("adam", "l2", ("norm", 0.5)),
        ("adam", "wd", ("value", 0.05)),
        ("adamw", "wd", None),
        ("adamw", "l2", ("norm", 0.5)),
        ("sgd", "scalar", ("norm", 0.5)),
    ],
)
def test_tangent_through_lightning_optimizers_and_gradient_clipping(optimizer, penalty, clip):
    """y_T against central differences of two whole Lightning trainings (30 steps, float64):
    Adam (coupled weight decay), AdamW (decoupled), SGD momentum; Lightning's
    gradient_clip_val by norm or by value; a step schedule; two param groups. Adam's update is
    steep where a gradient entry is near 0, so the difference's O(δ²) error needs a small δ
    (float64 keeps its rounding error near 1e-8 of the tangent)."""
    steps, delta, lam = 30, 1e-8, 0.05
    kwargs = {}
    if clip is not None:
        kwargs = {"gradient_clip_algorithm": clip[0], "gradient_clip_val": clip[1]}
    which = 1 if penalty == "scalar" else 0

    def train(shift):
        model = TwoGroups(penalty, lam, optimizer)
        getattr(model, {"l2": "l2", "wd": "wd", "scalar": "smooth_l1"}[penalty]).value += shift
        cb, _, _ = fit(model, Exact(), steps, warmup_steps=NO_UPDATE, **kwargs)
        return cb, final_params(model)

    cb, _ = train(0.0)
    fd = (train(delta)[1] - train(-delta)[1]) / (2 * delta)
    tangent = torch.cat([t.reshape(-1) for t in cb.engine.tangents[which]])
    assert fd.abs().max() > 1e-3
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))


@pytest.mark.parametrize("init, direction", [(3.0, -1), (1e-4, +1)], ids=["over", "under"])
def test_lambda_moves_the_right_way(init, direction):
    """Over-regularized starts go down, under-regularized ones go up, towards one value."""
    _, rec, _ = fit(Regression("l2", init), Clip(5.0, 1.0), max_steps=300, warmup_steps=100)
    start, end = rec.values[0][0], rec.values[-1][0]
    assert rec.values[99][0] == start  # warm-up: λ fixed
    assert direction * (end - start) > 0
    assert 0.1 < end < 1.0  # both runs end near the same λ (0.45 and 0.54 here)


def test_two_hyperparameters_move_independently():
    """Per-layer L2: one over- and one under-regularized layer move in opposite directions."""
    _, rec, _ = fit(
        Regression("per_layer", (3.0, 1e-4)), Clip(5.0, 1.0), max_steps=300, warmup_steps=100
    )
    (first0, second0), (first, second) = rec.values[0], rec.values[-1]
    assert first < first0 / 5 and second > second0 * 100


@pytest.mark.parametrize("sgd", SGD_VARIANTS.values(), ids=SGD_VARIANTS.keys())
def test_weight_decay_follows_the_explicit_l2_trajectory(sgd):
    """SGD weight_decay λ and the loss term (λ/2)‖θ‖² give the same λ trajectory and θ."""
    l2 = Regression("l2", 0.05, **sgd)
    wd = Regression("wd", 0.05, **sgd)
    _, rec_l2, _ = fit(l2, Clip(5.0, 1.0), max_steps=60)
    _, rec_wd, trainer = fit(wd, Clip(5.0, 1.0), max_steps=60)
    lam_l2 = torch.tensor(rec_l2.values)
    assert lam_l2[-1, 0] != lam_l2[0, 0]
    torch.testing.assert_close(torch.tensor(rec_wd.values), lam_l2, rtol=1e-9, atol=0)
    torch.testing.assert_close(final_params(wd), final_params(l2), rtol=1e-9, atol=1e-12)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == float(wd.wd.value)


def test_weight_decay_starts_from_the_optimizer_value():
    class FromOptimizer(Regression):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, weight_decay=0.125)

    model = FromOptimizer("none")
    from lightning_hyperopt import WeightDecay

    model.wd = WeightDecay()
    cb, rec, _ = fit(model, Clip(5.0, 1.0), max_steps=1)
    assert cb.engine.state.hypergradients[0] is not None
    assert rec.values[0][0] == pytest.approx(
        0.125 - 0.05 * float(cb.engine.state.hypergradients[0])
    )


def test_gradient_accumulation_replays_every_micro_batch():
    """Two accumulated half-batches give the tangent and λ of one full batch (mean loss)."""
    full = Regression("l2", 0.05, momentum=0.5)
    half = Regression("l2", 0.05, momentum=0.5)
    cb_full, rec_full, _ = fit(full, Exact(1.0), max_steps=10)
    cb_half, rec_half, _ = fit(
        half, Exact(1.0), max_steps=10, batch_size=12, accumulate_grad_batches=2
    )
    assert len(rec_half.values) == 2 * len(rec_full.values)
    torch.testing.assert_close(
        torch.tensor(rec_half.values[1::2]), torch.tensor(rec_full.values), rtol=1e-10, atol=0
    )
    for a, b in zip(cb_half.engine.tangents[0], cb_full.engine.tangents[0]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_hyper_step_uses_the_scheduled_learning_rate():
    """η is read from the optimizer at each step: with η = 0 from step 5 on, λ stops."""

    class Scheduled(Regression):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 if t < 5 else 0.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    _, rec, _ = fit(Scheduled("l2", 0.5), Clip(5.0, 1.0), max_steps=10)
    lam = [v[0] for v in rec.values]
    assert len(set(lam[:5])) == 5  # moving while η > 0
    assert len(set(lam[4:])) == 1  # frozen once η = 0


def test_unroll_updates_once_per_window():
    _, rec, _ = fit(Regression("l2", 0.05), Unroll(3, 1.0), max_steps=9)
    lam = [v[0] for v in rec.values]
    assert lam[0] == lam[1] == 0.05 and lam[2] != 0.05
    assert lam[2] == lam[3] == lam[4] and lam[5] != lam[4]


def test_lambda_stays_in_bounds():
    model = Regression("l2", 1e-4)
    model.l2.bounds = (1e-4, 2e-4)
    _, rec, _ = fit(model, Clip(5.0, 1000.0), max_steps=50)
    lam = torch.tensor(rec.values)
    assert lam.min() >= 1e-4 and lam.max() <= 2e-4
    assert (lam == 2e-4).any()  # the big hyper step hits the upper bound


def test_nonfinite_hypergradient_is_skipped_and_counted():
    class NaNOnce(Regression):
        calls = 0

        def validation_loss(self, batch):
            type(self).calls += 1
            loss = super().validation_loss(batch)
            # call 1 is the probe before training, calls 2, 3… the updates after steps 0, 1…
            return loss * math.nan if type(self).calls == 4 else loss

    model = NaNOnce("l2", 0.05)
    cb, rec, _ = fit(model, Clip(5.0, 1.0), max_steps=5)
    lam = [v[0] for v in rec.values]
    assert lam[2] == lam[1]  # the NaN step left λ alone
    assert lam[3] != lam[2]  # and updates resume
    assert cb.engine.nonfinite == [1]
    assert all(math.isfinite(v) for v in lam)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_tangent_is_reset_and_counted(monkeypatch):
    """A Hessian-vector product that overflows (here: made to) resets y to 0 at that step
    and is counted; θ's own step is untouched, and later steps carry a finite tangent."""
    from lightning_hyperopt.core import functional as functional_module

    original, calls = functional_module.second_order_drift, [0]

    def overflowing(*args, **kwargs):
        calls[0] += 1
        out = original(*args, **kwargs)
        return [d * math.inf for d in out] if calls[0] == 2 else out

    monkeypatch.setattr(functional_module, "second_order_drift", overflowing)
    model = Regression("l2", 0.05)
    cb, rec, _ = fit(model, Clip(5.0, 1.0), max_steps=4)
    lam = [v[0] for v in rec.values]
    assert cb.engine.nonfinite == [1]
    assert lam[1] == lam[0]  # y was reset to 0 at step 1, so ⟨g_V, y⟩ = 0
    assert lam[3] != lam[2]  # later steps carry a finite tangent again
    assert all(torch.isfinite(t).all() for t in cb.engine.tangents[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_validation_batches_come_from_hyperopt_dataloader_in_eval_mode():
    seen = []

    class Custom(Regression):
        def hyperopt_dataloader(self):
            return DataLoader(regression_data(seed=5)[1], batch_size=100)

        def validation_loss(self, batch):
            seen.append((len(batch[0]), self.training))
            return super().validation_loss(batch)

    fit(Custom("l2", 0.05), Clip(), max_steps=4)
    # the probe before training, then 256 samples in batches of 100: 100, 100, 56, a new pass
    assert seen == [(100, False), (100, False), (100, False), (56, False), (100, False)]


def test_bf16_tuning_takes_h_y_from_the_autocast_graph(monkeypatch):
    """Under bf16-mixed the training step runs under autocast, and H y comes from that graph:
    the drift the engine takes equals H y of the step's own (autocast) loss."""
    from replay_probe import DriftRecorder, hessian_vector_products

    recorder = DriftRecorder(monkeypatch)
    seen, in_step = [], []

    class Float32(Regression):
        def training_step(self, batch, batch_idx):
            seen.append(torch.is_autocast_enabled("cpu"))
            loss = super().training_step(batch, batch_idx)
            (cb,) = [c for c in self.trainer.callbacks if hasattr(c, "engine")]
            in_step.append(hessian_vector_products(loss, cb.engine.params, cb.engine.tangents))
            return loss

    model = Float32("wd", 0.05).float()
    train, val = regression_data()
    data = tuple(
        torch.utils.data.TensorDataset(*(t.float() for t in ds.tensors)) for ds in (train, val)
    )
    _, rec, _ = fit(model, Clip(5.0, 1.0), max_steps=3, data=data, precision="bf16-mixed")
    assert seen == [True] * 3
    assert len(recorder.drifts) == 3
    for taken, expected in zip(recorder.drifts[1:], in_step[1:]):
        assert expected[0].norm() > 0
        torch.testing.assert_close(taken[0], expected[0], rtol=1e-5, atol=1e-7)
    assert rec.values[-1][0] != 0.05 and math.isfinite(rec.values[-1][0])
