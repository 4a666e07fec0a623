"""Checkpoint/resume, logging and the validation iterator's state."""

import pytest
import torch
from conftest import Recorder, Regression, make_trainer, pl, regression_data
from torch.utils.data import DataLoader

from lightning_hyperopt import Clip, OnlineHyperparamCallback, Unroll, WeightDecay


def loaders():
    train, val = regression_data()
    # 4 training batches per epoch; 6 shuffled validation batches per pass
    return DataLoader(train, batch_size=6), DataLoader(val, batch_size=48, shuffle=True)


@pytest.mark.parametrize(
    "method, val_position",
    [(Clip(5.0, 1.0), (1, 2)), (Unroll(3, 1.0), (0, 2))],  # 8 or 2 validation batches drawn
    ids=["clip", "unroll3"],
)
def test_resume_continues_the_same_lambda_trajectory(tmp_path, method, val_position):
    total, at = 20, 8  # the checkpoint at step 8 sits mid-way through a validation pass

    def run(max_steps, callbacks, ckpt_path=None):
        torch.manual_seed(0)
        model = Regression("l2", 0.05, momentum=0.9)
        cb, rec = OnlineHyperparamCallback(method), Recorder()
        trainer = make_trainer(
            [cb, rec, *callbacks], max_steps, enable_checkpointing=True, default_root_dir=tmp_path
        )
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
        return rec.values, cb, model

    straight, cb_straight, model_straight = run(total, [])
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=at, save_top_k=-1)
    run(at, [saver])
    ckpt = tmp_path / f"epoch=1-step={at}.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"]["OnlineHyperparamCallback"]
    assert state["engine"]["step"] == at
    assert (state["val_pass"], state["val_index"]) == val_position
    resumed, cb_resumed, model_resumed = run(total, [], ckpt_path=str(ckpt))
    assert len(resumed) == total - at
    assert straight[at] != straight[at - 1] or isinstance(method, Unroll)
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(straight[at:]), rtol=0, atol=0)
    for a, b in zip(cb_resumed.engine.tangents[0], cb_straight.engine.tangents[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(model_resumed.l2.value, model_straight.l2.value, rtol=0, atol=0)


def test_lambda_scalars_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = Regression("per_layer", (0.05, 0.01))
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="run", version=0)
    cb = OnlineHyperparamCallback(Clip(0.5, 1.0), log_diagnostics=True)
    trainer = make_trainer([cb], 12, logger=logger, log_every_n_steps=3)
    trainer.fit(model, *loaders())
    events = EventAccumulator(str(tmp_path / "run" / "version_0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("l2_first", "l2_second"):
        for suffix in ("", "/hypergradient", "/tangent_norm", "/clipped", "/nonfinite"):
            assert f"hyperopt/{name}{suffix}" in tags
    values = events.Scalars("hyperopt/l2_second")
    assert [v.step for v in values] == [2, 5, 8, 11]  # every log_every_n_steps
    assert values[-1].value == pytest.approx(float(model.l2_second.value))
    assert {v.value for v in events.Scalars("hyperopt/l2_first/clipped")} <= {0.0, 1.0}


def test_diagnostics_are_off_by_default_and_the_layout_pairs_each_value(tmp_path):
    """By default λ and its effective value only; TensorBoard's custom-scalars layout puts them
    side by side (one category per hyperparameter)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    class AdamWRegression(Regression):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.02)

    logger = pl.loggers.TensorBoardLogger(tmp_path, name="run", version=0)
    cb = OnlineHyperparamCallback(Clip(0.5, 1.0), tune={"weight_decay": WeightDecay()})
    trainer = make_trainer([cb], 6, logger=logger, log_every_n_steps=3)
    trainer.fit(AdamWRegression("l2", 0.05), *loaders())
    events = EventAccumulator(str(tmp_path / "run" / "version_0"))
    events.Reload()
    tags = {t for t in events.Tags()["scalars"] if t.startswith("hyperopt/")}
    shrink = "hyperopt/weight_decay/effective_decay"  # AdamW's lr·wd per step
    assert tags == {"hyperopt/l2", "hyperopt/weight_decay", shrink}
    values = [v.value for v in events.Scalars(shrink)]
    decay = [v.value for v in events.Scalars("hyperopt/weight_decay")]
    assert values == pytest.approx([0.01 * d for d in decay], rel=1e-6)
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {c.title: [list(ch.multiline.tag) for ch in c.chart] for c in layout.category}
    assert charts == {
        "hyperopt/l2": [["hyperopt/l2"]],
        "hyperopt/weight_decay": [["hyperopt/weight_decay"], [shrink]],
    }


def test_lambda_is_on_the_progress_bar():
    """λ shows on the bar from the first step, refreshed when metrics are logged."""
    model = Regression("l2", 0.05)
    values = []

    class Bar(Recorder):
        def on_train_batch_end(self, trainer, *args):
            values.append(trainer.progress_bar_metrics.get("hyperopt/l2"))

    trainer = make_trainer(
        [OnlineHyperparamCallback(Clip(5.0, 1.0)), Bar()], 7, log_every_n_steps=3
    )
    trainer.fit(model, *loaders())
    assert "hyperopt/l2/hypergradient" not in trainer.progress_bar_metrics
    assert values[0] is not None and values[-1] == pytest.approx(float(model.l2.value))
    assert len(set(values)) == 3  # set at step 1, refreshed at steps 3 and 6


def test_state_dict_is_plain_and_survives_weights_only_loading(tmp_path):
    model = Regression("l2", 0.05, momentum=0.9)
    cb = OnlineHyperparamCallback(Clip(5.0, 1.0))
    make_trainer([cb], 3).fit(model, *loaders())
    path = tmp_path / "state.pt"
    torch.save(cb.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert state["engine"]["names"] == ["l2"] and state["engine"]["step"] == 3
    assert isinstance(state["engine"]["tangent"], torch.Tensor)
    assert isinstance(state["engine"]["optimizer_tangents"]["momentum_buffer"], torch.Tensor)
    assert cb.state_key == "OnlineHyperparamCallback"
    assert OnlineHyperparamCallback("unroll").state_key == cb.state_key  # args never change it
