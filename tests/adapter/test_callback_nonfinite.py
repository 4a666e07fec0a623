"""A training loss that turns NaN: λ keeps its last finite value, the steps are counted, a
warning says so once, the run stops after ``max_nonfinite_steps`` in a row without saving a
checkpoint of the broken weights, and an earlier checkpoint resumes."""

import math

import pytest
import torch
from conftest import Recorder, Regression, fit, make_trainer, pl, regression_data
from torch.utils.data import DataLoader

from lightning_hyperopt import Clip, NonFiniteTrainingError, OnlineHyperparamCallback


class NaNFrom(Regression):
    """Float32 regression (no grad scaler) whose training loss is NaN from step ``bad_from``."""

    def __init__(self, bad_from=None):
        super().__init__("l2", 0.05, momentum=0.9)
        self.bad_from = bad_from

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.bad_from is not None and self.global_step >= self.bad_from:
            loss = loss * math.nan
        return loss


def loaders():
    train, val = regression_data()
    return DataLoader(train, batch_size=6), DataLoader(val, batch_size=64)


def test_nan_loss_stops_the_run_and_an_earlier_checkpoint_resumes(tmp_path):
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=20, save_top_k=-1)
    callback = OnlineHyperparamCallback(Clip(5.0, 0.05), max_nonfinite_steps=10)
    recorder = Recorder()
    trainer = make_trainer(
        [callback, recorder, saver],
        200,
        enable_checkpointing=True,
        default_root_dir=tmp_path,
        log_every_n_steps=5,
    )
    model = NaNFrom(bad_from=50)
    with (
        pytest.warns(UserWarning, match=r"non-finite values at step \d+"),
        pytest.raises(
            NonFiniteTrainingError, match=r"1\d training steps in a row had a non-finite loss"
        ),
    ):
        trainer.fit(model, *loaders())
    lam = [v[0] for v in recorder.values]
    assert 59 <= len(lam) < 70  # stopped at the first check after 10 bad steps (50–59)
    assert all(math.isfinite(v) for v in lam)
    assert len(set(lam[49:])) == 1 and lam[48] != lam[49]  # frozen from step 50 on
    assert callback.engine.nonfinite[0] >= 10
    saved = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert saved == ["epoch=4-step=20.ckpt", "epoch=9-step=40.ckpt"]  # not the broken 60
    state = torch.load(tmp_path / "epoch=9-step=40.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values())
    resumed, callback = NaNFrom(), OnlineHyperparamCallback(Clip(5.0, 0.05))
    trainer = make_trainer([callback], 60)
    trainer.fit(resumed, *loaders(), ckpt_path=str(tmp_path / "epoch=9-step=40.ckpt"))
    assert callback.engine.state.steps == 60 and math.isfinite(float(resumed.l2.value))
    assert callback.engine.nonfinite == [0]


def test_a_few_non_finite_steps_are_skipped_and_the_run_goes_on():
    """One NaN loss (then finite again, θ restored by the test): counted, λ and y skip that
    step only, no stop."""

    class OnceNaN(Regression):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * math.nan if self.global_step == 5 else loss

        def on_before_optimizer_step(self, optimizer):
            if self.global_step == 5:  # the optimizer would apply NaN: drop this gradient
                for p in self.parameters():
                    p.grad = torch.zeros_like(p)

    callback = OnlineHyperparamCallback(Clip(5.0, 0.05), max_nonfinite_steps=3)
    recorder = Recorder()
    model = OnceNaN("l2", 0.05)
    with pytest.warns(UserWarning, match="non-finite values"):
        make_trainer([callback, recorder], 12, log_every_n_steps=4).fit(model, *loaders())
    lam = [v[0] for v in recorder.values]
    assert lam[5] == lam[4] and lam[6] != lam[5]
    assert callback.engine.nonfinite == [1] and callback.engine.state.steps == 12
    assert all(torch.isfinite(p).all() for p in model.parameters())


def scaled_precision():
    """Lightning's ``16-mixed`` precision plugin with a grad scaler on the CPU (the Trainer flag
    turns 16-mixed into bf16 there). The float64 model is left alone by autocast, so the loss
    scale is the only difference from a 32-bit run."""
    from importlib import import_module

    plugins = import_module(f"{pl.__name__}.plugins")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    return plugins.MixedPrecision("16-mixed", "cpu", scaler=scaler)


def test_grad_scaler_steps_carry_the_unscaled_tangent():
    """Under a grad scaler the back-propagated loss carries the scale S (growing 2^12 → 2^18
    here): the tangent divides it out and follows the 32-bit run exactly."""
    runs = []
    for plugins in ([], [scaled_precision()]):
        cb, rec, trainer = fit(
            Regression("l2", 0.05, momentum=0.9), Clip(5.0, 1.0), 20, plugins=plugins
        )
        runs.append((cb.engine.tangent.clone(), rec.values))
    assert trainer.precision_plugin.scaler.get_scale() > 2.0**12
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-12, atol=0)
    assert [v[0] for v in runs[1][1]] == pytest.approx([v[0] for v in runs[0][1]], rel=1e-12)
    assert len({v[0] for v in runs[0][1]}) > 10


def test_a_step_the_grad_scaler_skips_moves_neither_y_nor_lambda_and_is_not_counted():
    class InfAtSeven(Regression):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * math.inf if self.global_step == 7 else loss

    plugin = scaled_precision()
    cb, rec, _ = fit(InfAtSeven("l2", 0.05, momentum=0.9), Clip(5.0, 1.0), 12, plugins=[plugin])
    lam = [v[0] for v in rec.values]
    assert lam[7] == lam[6] and lam[8] != lam[7] and all(math.isfinite(v) for v in lam)
    assert cb.engine.nonfinite == [0]  # the scaler's skip is expected, not a failure
    # the scaler saw the inf: 2^12 grows every 3 good steps, halves at step 7 (2^16 without it)
    assert plugin.scaler.get_scale() == 2.0**14
    assert torch.isfinite(cb.engine.tangent).all()
