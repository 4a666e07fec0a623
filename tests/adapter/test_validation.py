"""adapter/validation.py without a fit: the stream g_V is drawn from, its dealing between
processes and its resumable position, eval mode, and L_V."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import pl
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_hyperopt.adapter.validation import ValidationStream, eval_mode, find_loader

ROWS = torch.arange(12, dtype=torch.float64).unsqueeze(1)


class Module(pl.LightningModule):
    """g_V's loader is its ``hyperopt_dataloader``: 12 rows in batches of 2 (6 a pass)."""

    def __init__(self, shuffle: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 1), nn.Dropout(0.5), nn.BatchNorm1d(1))
        self.shuffle = shuffle
        self.double()

    def hyperopt_dataloader(self):
        return DataLoader(TensorDataset(ROWS), batch_size=2, shuffle=self.shuffle)

    def validation_loss(self, batch):
        (x,) = batch
        return self.net(x).pow(2).mean()


def plan(rank: int = 0, world: int = 1, resume=None) -> SimpleNamespace:
    """The fields of a FitPlan the stream reads."""
    return SimpleNamespace(
        rank=rank, world=world, resume=resume, transfer_hooks=False, native_rnn=False,
        plain_train=True,
    )  # fmt: skip


TRAINER = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")


def stream(module, **plan_fields) -> ValidationStream:
    s = ValidationStream()
    s.start(TRAINER, module, plan(**plan_fields))
    return s


def rows(batch) -> list[int]:
    return [int(v) for v in batch[0].reshape(-1)]


def test_the_stream_is_endless_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    s = stream(Module())
    before = torch.get_rng_state()
    drawn = [rows(s.next_batch()) for _ in range(9)]  # a pass and a half
    assert torch.equal(torch.get_rng_state(), before)
    assert sorted(r for batch in drawn[:6] for r in batch) == list(range(12))  # a whole pass
    assert (s.passes, s.index) == (1, 3)  # 3 batches into the second pass
    torch.manual_seed(3)
    again = stream(Module())
    assert [rows(again.next_batch()) for _ in range(9)] == drawn  # the same seed, the same


def test_processes_take_every_world_th_batch_of_one_order():
    torch.manual_seed(0)
    alone = [rows(stream(Module(), world=1).next_batch())]
    whole = stream(Module(), world=1)
    order = [rows(whole.next_batch()) for _ in range(6)]
    shares = []
    for rank in range(2):
        torch.manual_seed(0)
        s = stream(Module(), rank=rank, world=2)
        shares.append([rows(s.next_batch()) for _ in range(3)])
    assert shares[0] == order[0::2] and shares[1] == order[1::2]
    assert alone[0] == order[0]


def test_a_resumed_stream_continues_where_it_was():
    torch.manual_seed(1)
    s = stream(Module())
    for _ in range(8):
        s.next_batch()
    state = s.state_dict()
    expected = [rows(s.next_batch()) for _ in range(5)]
    torch.manual_seed(99)  # another run's seed: the checkpoint's wins
    resumed = stream(Module(), resume=state)
    assert [rows(resumed.next_batch()) for _ in range(5)] == expected


def test_the_loss_runs_in_eval_mode_and_leaves_every_buffer_and_flag():
    module = Module(shuffle=False)
    module.train()
    s = stream(module)
    stats = [b.clone() for b in module.buffers()]
    loss_a = s.loss(TRAINER, module)
    assert loss_a.requires_grad and module.training and module.net[1].training
    assert all(torch.equal(a, b) for a, b in zip(stats, module.buffers()))
    batch = (ROWS[:2],)
    module.eval()
    expected = module.validation_loss(batch)  # eval: no dropout, running statistics
    module.train()
    torch.testing.assert_close(loss_a, expected, rtol=0, atol=0)


def test_eval_mode_restores_each_flag_even_a_mixed_tree():
    module = Module()
    module.train()
    module.net[2].eval()
    with eval_mode(module, plain=True):
        assert not any(m.training for m in module.modules())
    assert [m.training for m in module.modules()] == [True, True, True, True, False]


def test_find_loader_takes_the_modules_hook():
    loader = find_loader(TRAINER, Module())
    assert isinstance(loader, DataLoader) and loader.batch_size == 2


def test_an_empty_loader_is_named():
    class Empty(Module):
        def hyperopt_dataloader(self):
            return DataLoader(TensorDataset(ROWS[:0]), batch_size=2)

    with pytest.raises(ValueError, match=r"the validation dataloader for .* is empty"):
        stream(Empty()).next_batch()
