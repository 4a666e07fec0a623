"""The benchmarks' one recorder and one set of clocks: paused time does not count, a budget
stops a fit at its first validation past it, both namespaces get the same hooks."""

import time

import pytest
import torch

from benchmarks.clocks import CLOCKS, Clock, check_clock
from benchmarks.recorder import RecorderHooks, recorder_class
from benchmarks.records import bare_trainer


def test_a_paused_block_does_not_count_and_an_offset_continues():
    clock = Clock(offset={"wall": 100.0, "cpu": 5.0})
    with clock.paused():
        time.sleep(0.05)
    t = clock.read()
    assert 100.0 <= t["wall"] < 100.04
    assert 5.0 <= t["cpu"] < 5.04
    assert set(t) == set(CLOCKS)


def test_an_unknown_clock_is_refused_with_the_accepted_values():
    assert check_clock("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"clock='gpu'.*\('wall', 'cpu'\)"):
        check_clock("gpu")


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_the_recorder_is_a_callback_of_either_namespace(namespace):
    ns = pytest.importorskip(namespace)
    cls = recorder_class(namespace)
    assert issubclass(cls, ns.Callback) and issubclass(cls, RecorderHooks)
    assert recorder_class(namespace) is cls


def test_validations_steps_best_weights_and_the_budget_cut():
    import pytorch_lightning as pl

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([3.0]))

        def training_step(self, batch, batch_idx):
            return (self.w - batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", (self.w - batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)))
    # a budget of 0 s: the first validation is past it and stops the fit there
    recorder = recorder_class()(clock_name="cpu", budget=0.0, keep_best=True, stamp_steps=True)
    trainer = bare_trainer(
        max_steps=20,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0,
        callbacks=[recorder],
    )
    trainer.fit(Model(), data, data)
    assert recorder.cut and recorder.val["step"] == [2]
    assert trainer.global_step == 2
    assert recorder.best == recorder.val["val_loss"][0] < 9.0
    assert torch.equal(recorder.best_state["w"], trainer.lightning_module.w.detach())
    assert len(recorder.step_times(0)) == 1  # two steps stamped, one interval
    v = recorder.val
    assert 0 <= v["train_s"][0] <= v["wall_s"][0]
