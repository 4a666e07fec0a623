"""Runs the tuner under DDP on 2 CPU processes (gloo) and saves what each rank saw.

    python tests/adapter/ddp_script.py OUT_DIR [spawn|diverge]

Lightning re-launches this script for rank 1. Each scenario trains a float64 regression MLP with
rank r's shard of the training set (items r, r + 2, …: the two ranks' batches of b make up the
single-process batch of 2b) and the callback's own shard of the validation stream (batches
r, r + 2, …); every rank writes ``OUT_DIR/<scenario>_rank<r>.pt`` with λ after every step, θ,
the tangent and the hypergradients. tests/adapter/test_callback_ddp.py compares them with one
process on the global batches. The models and data are defined here so the test can build the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_hyperopt import (
    Clip,
    L2Penalty,
    LearningRate,
    OnlineHyperparamCallback,
    PaperStep,
    Unroll,
    WeightDecay,
)

STEPS = 20
RESUME_AT = 8
TRAIN_BATCH, VAL_BATCH = 6, 32  # per process: the single-process run takes twice as much


def data(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 1, generator=g, dtype=torch.float64)
    x = torch.randn(48, 8, generator=g, dtype=torch.float64)
    xv = torch.randn(256, 8, generator=g, dtype=torch.float64)
    y = x @ w + torch.randn(48, 1, generator=g, dtype=torch.float64)
    return TensorDataset(x, y), TensorDataset(xv, xv @ w)


class Net(pl.LightningModule):
    """Float64 tanh MLP, an L2Penalty, SGD's weight decay or a LearningRate (``penalty``:
    "l2", "wd", "lr"); ``world`` processes each train on
    their shard of the training set, with ``TRAIN_BATCH · 2 / world`` items per batch."""

    def __init__(
        self, penalty: str, world: int, momentum: float = 0.9, dtype=torch.float64
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 1)).to(dtype)
        self.penalty, self.world, self.momentum, self.dtype_ = penalty, world, momentum, dtype
        if penalty == "l2":
            self.l2 = L2Penalty(0.02)
        elif penalty == "lr":
            self.lr_scale = LearningRate(init=1.2)
        else:
            self.wd = WeightDecay(init=0.02)

    def validation_loss(self, batch):
        x, y = batch
        return ((self.body(x) - y) ** 2).mean()

    def training_step(self, batch, batch_idx):
        loss = self.validation_loss(batch)
        return loss + self.l2(self.body.parameters()) if self.penalty == "l2" else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=self.momentum)

    def _cast(self, dataset: TensorDataset) -> TensorDataset:
        return TensorDataset(*(t.to(self.dtype_) for t in dataset.tensors))

    def train_dataloader(self):
        train = self._cast(data()[0])
        rank = self.trainer.global_rank if self.world > 1 else 0
        shard = Subset(train, range(rank, len(train), self.world))
        return DataLoader(shard, batch_size=TRAIN_BATCH * 2 // self.world)

    def hyperopt_dataloader(self):
        # the same loader on every process: the callback deals its batches out by index
        return DataLoader(self._cast(data()[1]), batch_size=VAL_BATCH * 2 // self.world)


SCENARIOS = {
    "clip_l2": (lambda: Clip(5.0, 1.0), "l2"),
    "unroll_wd": (lambda: Unroll(3, 1.0), "wd"),
    "clip_lr": (lambda: Clip(5.0, 1.0), "lr"),
}


class Record(pl.Callback):
    """λ and the hypergradient after every step; with ``save_to``, saved at the end of the fit
    by every process (``ddp_spawn`` trains in processes of its own)."""

    def __init__(self, save_to: Path | None = None) -> None:
        self.values: list[float] = []
        self.hypergradients: list[float] = []
        self.save_to = save_to

    def on_train_end(self, trainer, pl_module):
        if self.save_to is not None:
            (cb,) = [c for c in trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
            save(self.save_to.parent, self.save_to.name, pl_module, cb, self, trainer)

    def on_train_batch_end(self, trainer, pl_module, *args):
        (cb,) = [c for c in trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
        self.values.append(float(cb.engine.hypers[0].value))
        h = cb.engine.state.hypergradients
        self.hypergradients.append(float("nan") if h is None else float(h[0]))


def fit(
    method,
    penalty: str,
    world: int,
    max_steps: int = STEPS,
    callbacks=(),
    ckpt_path=None,
    root: Path | None = None,
    strategy: str | pl.strategies.Strategy = "ddp",
    dtype=torch.float64,
    save_to: Path | None = None,
    **trainer_kwargs,
):
    """One fit on ``world`` processes (``strategy`` when 2); returns the model, callback,
    record and trainer."""
    model = Net(penalty, world, dtype=dtype)
    callback = OnlineHyperparamCallback(method, hyper_optimizer=PaperStep())
    record = Record(save_to)
    distributed = {"strategy": strategy, "devices": 2} if world > 1 else {"devices": 1}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=[callback, record, *callbacks],
        logger=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=root,
        **distributed,
        **trainer_kwargs,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, callback, record, trainer


def save(out: Path, name: str, model, callback, record, trainer) -> None:
    torch.save(
        {
            "values": record.values,
            "hypergradients": record.hypergradients,
            "theta": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
            "tangent": callback.engine.tangent.detach().clone(),
            "step": callback.engine.state.steps,
            "updates": callback.engine.state.updates,
        },
        out / f"{name}_rank{trainer.global_rank}.pt",
    )


def main(out: Path) -> None:
    torch.set_num_threads(1)
    for name, (method, penalty) in SCENARIOS.items():
        save(out, name, *fit(method(), penalty, world=2))
    # checkpoint under DDP at step 8 (an epoch's end: 4 batches per epoch, so Lightning resumes
    # the same batches), then resume to STEPS
    ckpt_dir = out / "checkpoints"
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=RESUME_AT, save_top_k=-1, filename="at{step}"
    )
    fit(Clip(5.0, 1.0), "l2", world=2, max_steps=RESUME_AT, callbacks=[saver], root=out)
    checkpoint = ckpt_dir / f"atstep={RESUME_AT}.ckpt"
    resumed = fit(Clip(5.0, 1.0), "l2", world=2, ckpt_path=str(checkpoint))
    save(out, "resumed", *resumed)
    # bf16 autocast, and the strategy that looks for unused parameters, briefly
    bf16 = fit(
        Clip(5.0, 1.0), "wd", world=2, max_steps=6, precision="bf16-mixed", dtype=torch.float32
    )
    save(out, "bf16", *bf16)
    unused = fit(
        Clip(5.0, 1.0), "l2", world=2, max_steps=6, strategy="ddp_find_unused_parameters_true"
    )
    save(out, "unused", *unused)


class Nudge(pl.Callback):
    """Moves λ on rank 1 only, after step 3: the processes disagree from then on."""

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_rank == 1 and trainer.global_step == 3:
            pl_module.l2.value.add_(1e-9)


def main_diverge(out: Path) -> None:
    """λ made to differ between the processes: the callback's check stops the run. (DDP
    broadcasts rank 0's buffers, λ among them, before every forward by default, which would
    undo the nudge: that safety net is switched off here.)"""
    torch.set_num_threads(1)
    strategy = pl.strategies.DDPStrategy(broadcast_buffers=False)
    fit(
        Clip(5.0, 1.0),
        "l2",
        world=2,
        max_steps=10,
        callbacks=[Nudge()],
        log_every_n_steps=2,
        strategy=strategy,
    )


def main_spawn(out: Path) -> None:
    """ddp_spawn, in a launch of its own (its processes cannot join the group of "ddp")."""
    torch.set_num_threads(1)
    fit(Clip(5.0, 1.0), "l2", world=2, max_steps=6, strategy="ddp_spawn", save_to=out / "spawn")


def _leave_the_group() -> None:
    """Destroy the process group before the interpreter exits: a gloo group left to the exit
    handlers once aborted a process at its very end ("terminate called without an active
    exception", after every fit had finished and saved)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    runs = {"spawn": main_spawn, "diverge": main_diverge}
    runs.get(sys.argv[2] if len(sys.argv) > 2 else "", main)(Path(sys.argv[1]))
    _leave_the_group()
