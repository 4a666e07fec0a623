"""Lightning's resume limits that README.md and docs/how-to/resume.md state.

`test_callback_state.py` checks the guarantee: a resumed run follows the uninterrupted run's λ
trajectory bit for bit. It holds when Lightning feeds the resumed run the same training batches.
These check where that stops: a mid-epoch checkpoint, a shuffling training loader, and
ModelCheckpoint's per-epoch checkpoint of a run without a validation loop resume the tuner's
state but not the data order, so λ follows another trajectory. If a Lightning release fixes
one, its case fails here: update the docs' caveats then.
"""

import warnings

import pytest
import torch
from conftest import Recorder, Regression, make_trainer, regression_data
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_hyperopt import Clip, OnlineHyperparamCallback

TOTAL = 12  # 4 training batches per epoch


def run(tmp_path, shuffle, val_loop, max_steps, callbacks=(), ckpt_path=None):
    torch.manual_seed(0)
    train, val = regression_data()
    model = Regression("l2", 0.05, momentum=0.9)
    cb, rec = OnlineHyperparamCallback(Clip(5.0, 1.0)), Recorder()
    trainer = make_trainer(
        [cb, rec, *callbacks],
        max_steps,
        enable_checkpointing=True,
        default_root_dir=tmp_path,
        # ModelCheckpoint's per-epoch save (at on_train_epoch_end) comes after the epoch's
        # validation when there is one; Lightning's restart logic treats the two apart
        limit_val_batches=None if val_loop else 0,
    )
    trainer.fit(
        model,
        DataLoader(train, batch_size=6, shuffle=shuffle),
        DataLoader(val, batch_size=48, shuffle=True),
        ckpt_path=ckpt_path,
    )
    return rec.values, cb


def resumed_and_straight(tmp_path, shuffle, at, saver, val_loop):
    """λ after each step past ``at``: resumed from the step-``at`` checkpoint, and straight.
    ``saver="step"``: ModelCheckpoint(every_n_train_steps=at) in a run stopped at ``at``;
    ``"epoch"``: ModelCheckpoint's default (every epoch) in the uninterrupted run."""
    epoch_saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
    straight, _ = run(tmp_path, shuffle, val_loop, TOTAL, [epoch_saver] if saver == "epoch" else [])
    if saver == "step":
        step_saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=at, save_top_k=-1)
        run(tmp_path, shuffle, val_loop, at, [step_saver])
    (ckpt,) = tmp_path.glob(f"*-step={at}.ckpt")
    resumed, cb = run(tmp_path, shuffle, val_loop, TOTAL, ckpt_path=str(ckpt))
    # the tuner's state resumed
    assert cb.engine.state.steps == TOTAL and len(resumed) == TOTAL - at
    assert len(set(map(tuple, straight[at:]))) > 1  # λ moves after the checkpoint: comparable
    return torch.tensor(resumed), torch.tensor(straight[at:])


@pytest.mark.parametrize(
    "shuffle, at, saver, val_loop, same",
    [
        # the guarantee, as controls: a checkpoint ending an epoch, a fixed training order
        (False, 8, "step", False, True),
        (False, 8, "epoch", True, True),  # saved after the epoch's validation
        # mid-epoch: Lightning restarts a plain DataLoader from its first batch (and warns)
        (False, 6, "step", False, False),
        # the global RNG a shuffling loader draws its order from is not restored
        (True, 8, "step", False, False),
        # a per-epoch checkpoint without a validation loop: Lightning resumes with one more
        # batch of that epoch, from a restarted loader
        (False, 8, "epoch", False, False),
    ],
    ids=["step-at-epoch-end", "after-validation", "mid-epoch", "shuffled", "no-validation"],
)
def test_resume_reproduces_lambda_only_where_lightning_reproduces_the_data(
    tmp_path, shuffle, at, saver, val_loop, same
):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, straight = resumed_and_straight(tmp_path, shuffle, at, saver, val_loop)
    warned = any("checkpoint that ended before the epoch ended" in str(w.message) for w in caught)
    assert warned == (at % 4 != 0)  # Lightning warns for mid-epoch checkpoints only
    assert torch.equal(resumed, straight) == same
