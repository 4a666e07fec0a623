"""PTB corpus reading, batchify/BPTT windows and PTBDataModule, on tiny corpora and the real PTB."""

import re
from pathlib import Path

import pytest
import torch
from fake_data import TINY, write_corpus
from torch import nn

from experiments.data import (
    BPTTChunks,
    PTBDataModule,
    batchify,
    build_vocab,
    encode,
    read_words,
)
from experiments.data.ptb import PTB_FILES, PTB_SHA256

REAL_PTB = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "ptb"


def expected_count(text: str) -> int:
    return len(text.split()) + text.count("\n")


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "ptb"
    return folder, write_corpus(folder)


def make_dm(tiny, **kwargs) -> PTBDataModule:
    folder, sums = tiny
    kwargs = {"download": False, "checksums": sums, "batch_size": 2, "bptt": 3, **kwargs}
    dm = PTBDataModule(str(folder), eval_batch_size=kwargs.pop("eval_batch_size", 1), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# --- corpus ----------------------------------------------------------------------------------


def test_read_words_appends_eos_per_line() -> None:
    assert read_words(" a b \n\n c\n d") == ["a", "b", "<eos>", "<eos>", "c", "<eos>", "d", "<eos>"]


def test_build_vocab_order() -> None:
    words = ["b", "c", "a", "c", "b", "d", "c"]
    assert build_vocab(words) == ["c", "b", "a", "d"]  # by count, then alphabetically
    assert build_vocab(list(reversed(words))) == ["c", "b", "a", "d"]


def test_encode_unknown_words() -> None:
    with pytest.raises(ValueError, match=r"valid.txt: 2 word\(s\) not in .*\['x', 'y'\]"):
        encode(["a", "y", "x", "y"], {"a": 0}, "valid.txt")
    assert encode(["a", "b", "a"], {"a": 0, "b": 1}, "s").tolist() == [0, 1, 0]


def test_datamodule_vocabulary_and_tokens(tiny) -> None:
    dm = make_dm(tiny)
    train_words = TINY["train"].split()
    assert set(dm.vocab) == set(train_words) | {"<eos>"}
    # by count (<eos> 5, the 4, a 3, four words twice, three once), then alphabetically
    assert dm.vocab == ["<eos>", "the", "a", "cat", "dog", "mat", "sat", "and", "end", "on"]
    assert dm.vocab_size == 10
    assert all(dm.vocab[i] == word for word, i in dm.word_to_id.items())
    for split, text in TINY.items():
        tokens = dm.tokens[split]
        assert tokens.dtype == torch.long
        assert len(tokens) == expected_count(text)
        assert [dm.vocab[i] for i in tokens] == read_words(text)
    assert dm.vocab[dm.tokens["valid"][-1]] == "<eos>"


def test_vocab_is_loaded_on_first_access(tiny) -> None:
    folder, sums = tiny
    dm = PTBDataModule(str(folder), download=False, checksums=sums)
    assert dm.vocab_size == 10  # before prepare_data/setup, e.g. for LightningCLI link_arguments


def test_word_outside_training_vocabulary(tmp_path: Path) -> None:
    sums = write_corpus(tmp_path, {**TINY, "test": " the zebra \n"})
    dm = PTBDataModule(str(tmp_path), download=False, checksums=sums)
    message = re.escape(str(tmp_path / "ptb.test.txt")) + r": 1 word\(s\) .*\['zebra'\]"
    with pytest.raises(ValueError, match=message):
        dm.setup()


# --- batchify and BPTT windows ---------------------------------------------------------------


def test_batchify_rows_are_contiguous_streams() -> None:
    tokens = torch.arange(23)
    data = batchify(tokens, 4)
    assert data.shape == (4, 5) and data.dtype == torch.long
    for r in range(4):
        assert data[r].tolist() == list(range(5 * r, 5 * r + 5))  # the last 3 tokens dropped


@pytest.mark.parametrize(
    ("tokens", "batch_size", "message"),
    [
        (torch.arange(3), 4, "3 tokens cannot fill batch_size=4 rows"),
        (torch.arange(8).reshape(2, 4), 2, "tokens must be one-dimensional"),
        (torch.arange(8), 0, "batch_size=0 must be an integer >= 1"),
    ],
)
def test_batchify_errors(tokens: torch.Tensor, batch_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        batchify(tokens, batch_size)


@pytest.mark.parametrize("bptt", [1, 3, 4, 9, 50])
def test_chunks_shift_and_continue(bptt: int) -> None:
    stream = batchify(torch.arange(3 * 10), 3)  # rows 0..9, 10..19, 20..29
    chunks = BPTTChunks(stream, bptt)
    items = [chunks[i] for i in range(len(chunks))]
    assert len(items) == -(-9 // bptt)  # 9 (input, target) pairs per row
    assert all(x.shape == (3, bptt) for x, _ in items[:-1])
    assert items[-1][0].shape == (3, 9 - bptt * (len(items) - 1))
    for x, y in items:
        assert x.shape == y.shape and x.is_contiguous() and y.is_contiguous()
        assert torch.equal(y, x + 1)  # the target is the next token of the same stream
    # row r continues across consecutive windows: together they are the whole row
    assert torch.equal(torch.cat([x for x, _ in items], 1), stream[:, :-1])
    assert torch.equal(torch.cat([y for _, y in items], 1), stream[:, 1:])
    with pytest.raises(IndexError):
        chunks[len(chunks)]


def test_chunks_errors() -> None:
    with pytest.raises(ValueError, match="bptt=0 must be an integer >= 1"):
        BPTTChunks(torch.zeros(2, 5, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"shape \(batch, n\) with n >= 2, got \(2, 1\)"):
        BPTTChunks(torch.zeros(2, 1, dtype=torch.long), 3)


def test_order_suits_carried_hidden_state() -> None:
    # An RNN run window by window, carrying (and detaching) its state, must see exactly what it
    # sees when run over each whole row at once.
    torch.manual_seed(0)
    rnn = nn.RNN(4, 5, batch_first=True).double()
    embed = nn.Embedding(40, 4).double()
    stream = batchify(torch.randint(0, 40, (3 * 17 + 2,)), 3)
    whole, _ = rnn(embed(stream[:, :-1]))
    outputs, h = [], None
    for x, _ in torch.utils.data.DataLoader(BPTTChunks(stream, 5), batch_size=None):
        out, h = rnn(embed(x), h)
        h = h.detach()
        outputs.append(out)
    assert torch.allclose(torch.cat(outputs, 1), whole, atol=1e-12)


# --- PTBDataModule loaders -------------------------------------------------------------------


def test_loaders_yield_windows_in_stream_order(tiny) -> None:
    dm = make_dm(tiny, batch_size=2, bptt=3, eval_batch_size=1)
    for loader, split, rows in [
        (dm.train_dataloader(), "train", 2),
        (dm.val_dataloader(), "valid", 1),
        (dm.test_dataloader(), "test", 1),
        (dm.hyperopt_dataloader(), "valid", 2),
    ]:
        stream = batchify(dm.tokens[split], rows)
        batches = list(loader)
        assert len(batches) == len(loader) == -(-(stream.shape[1] - 1) // 3)
        assert all(x.shape == (rows, 3) for x, _ in batches[:-1])
        assert torch.equal(torch.cat([x for x, _ in batches], 1), stream[:, :-1])
        assert torch.equal(torch.cat([y for _, y in batches], 1), stream[:, 1:])
    # 23 train tokens: 2 rows of 11, so 10 targets per row in windows of 3, 3, 3, 1
    assert [len(x[0]) for x, _ in dm.train_dataloader()] == [3, 3, 3, 1]


def stream_windows(tokens: torch.Tensor, rows: int, bptt: int) -> list[list[torch.Tensor]]:
    """The batches the loaders gave before, rebuilt by hand: the stream cut into ``rows`` rows
    (the remainder dropped), walked in windows of ``bptt`` with targets shifted by one; as the
    default collate handed them on, a list [input, target] of contiguous LongTensors."""
    n = len(tokens) // rows
    stream = tokens[: rows * n].reshape(rows, n)
    return [
        [stream[:, s : min(s + bptt, n - 1)].clone(), stream[:, s + 1 : min(s + bptt, n - 1) + 1]]
        for s in range(0, n - 1, bptt)
    ]


@pytest.mark.parametrize(("batch_size", "bptt", "eval_batch_size"), [(2, 3, 1), (3, 4, 2)])
def test_loaders_match_the_stream_windows(tiny, batch_size, bptt, eval_batch_size) -> None:
    dm = make_dm(tiny, batch_size=batch_size, bptt=bptt, eval_batch_size=eval_batch_size)
    for loader, split, rows in [
        (dm.train_dataloader(), "train", batch_size),
        (dm.val_dataloader(), "valid", eval_batch_size),
        (dm.test_dataloader(), "test", eval_batch_size),
        (dm.hyperopt_dataloader(), "valid", batch_size),
    ]:
        expected = stream_windows(dm.tokens[split], rows, bptt)
        assert len(loader) == len(expected)
        for _ in range(2):  # every pass gives the same windows
            for got, want in zip(loader, expected, strict=True):
                assert type(got) is list and len(got) == 2
                for a, b in zip(got, want, strict=True):
                    assert a.dtype == torch.long and a.is_contiguous()
                    assert torch.equal(a, b)


def test_train_fraction_trains_on_the_first_part_of_the_stream(tiny) -> None:
    whole = make_dm(tiny)
    dm = make_dm(tiny, train_fraction=0.5)
    assert dm.vocab == whole.vocab  # the vocabulary still comes from the whole split
    assert torch.equal(dm.tokens["train"], whole.tokens["train"])
    kept = dm.stream_tokens("train")
    assert len(kept) == round(0.5 * 23) == 12
    assert torch.equal(kept, whole.tokens["train"][:12])
    windows = [torch.cat(t, 1) for t in zip(*dm.train_dataloader())]
    assert torch.equal(windows[0], batchify(kept, 2)[:, :-1])
    assert len(dm.train_dataloader()) < len(whole.train_dataloader())
    for name in ("val_dataloader", "test_dataloader", "hyperopt_dataloader"):
        ours, theirs = list(getattr(dm, name)()), list(getattr(whole, name)())
        assert all(torch.equal(a[0], b[0]) for a, b in zip(ours, theirs, strict=True))


def test_train_fraction_too_small(tiny) -> None:
    # 23 training tokens, batch_size 2: at least 4 tokens (2 per row) are needed
    make_dm(tiny, train_fraction=4 / 23)
    with pytest.raises(ValueError, match=r"train_fraction=0.1 keeps 2 of the 23 .* >= 4/23"):
        make_dm(tiny, train_fraction=0.1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, r"train_fraction must be in \(0, 1\], got 0"),
        (1.5, r"train_fraction must be in \(0, 1\], got 1.5"),
        (float("nan"), r"train_fraction must be in \(0, 1\]"),
        ("0.5", r"train_fraction must be a number in \(0, 1\]"),
        (True, r"train_fraction must be a number"),
    ],
)
def test_train_fraction_validation(tmp_path: Path, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PTBDataModule(str(tmp_path), train_fraction=value)


def test_cli_parses_train_fraction(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PTBDataModule, "data")
    cfg = parser.parse_args(["--data.data_dir", str(tmp_path)])
    assert cfg.data.train_fraction == 1.0
    cfg = parser.parse_args(["--data.data_dir", str(tmp_path), "--data.train_fraction", "0.25"])
    assert parser.instantiate(cfg).data.train_fraction == 0.25


def test_checksums(tiny) -> None:
    folder, sums = tiny
    name = "ptb.valid.txt"
    with pytest.raises(ValueError, match=re.escape(f"expected {PTB_SHA256[PTB_FILES['train']]}")):
        PTBDataModule(str(folder), download=False).setup()
    wrong = {**sums, name: "f" * 64}
    message = re.escape(f"{folder / name}: sha256 mismatch: expected {'f' * 64}, got {sums[name]}")
    with pytest.raises(ValueError, match=message):
        PTBDataModule(str(folder), download=False, checksums=wrong).setup()
    assert PTBDataModule(str(folder), download=False, verify=False).vocab_size == 10


def test_missing_files(tmp_path: Path) -> None:
    dm = PTBDataModule(str(tmp_path), download=False)
    message = re.escape(f"{tmp_path}: missing ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    with pytest.raises(FileNotFoundError, match=message):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match=message):
        dm.setup()


def test_download(tiny, tmp_path: Path) -> None:
    folder, sums = tiny
    dm = PTBDataModule(str(tmp_path / "d"), checksums=sums, url=folder.as_uri() + "/")
    dm.prepare_data()
    assert dm.vocab_size == 10
    failing = PTBDataModule(str(tmp_path / "e"), url=(tmp_path / "nowhere").as_uri())
    with pytest.raises(FileNotFoundError, match=r"downloading .*nowhere/ptb\.train\.txt failed"):
        failing.prepare_data()


@pytest.mark.parametrize("arg", ["batch_size", "bptt", "eval_batch_size"])
def test_constructor_validation(tmp_path: Path, arg: str) -> None:
    with pytest.raises(ValueError, match=f"{arg}=0 must be an integer >= 1"):
        PTBDataModule(str(tmp_path), **{arg: 0})
    with pytest.raises(ValueError, match=r"checksums: unknown file name\(s\) \['train.txt'\]"):
        PTBDataModule(str(tmp_path), checksums={"train.txt": "0"})


def test_trains_with_lightning(tiny) -> None:
    import pytorch_lightning as pl

    class LanguageModel(pl.LightningModule):
        def __init__(self, vocab_size: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, 8)
            self.rnn = nn.LSTM(8, 8, batch_first=True)
            self.out = nn.Linear(8, vocab_size)
            self.state = None
            self.shapes = []

        def on_train_epoch_start(self) -> None:
            self.state = None

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.shapes.append(tuple(x.shape))
            h, state = self.rnn(self.embed(x), self.state)
            self.state = tuple(s.detach() for s in state)
            return nn.functional.cross_entropy(self.out(h).flatten(0, 1), y.view(-1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = make_dm(tiny)
    model = LanguageModel(dm.vocab_size)
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert model.shapes == [(2, 3)] * 3 + [(2, 1)]


# --- the real PTB ----------------------------------------------------------------------------


def test_real_corpus() -> None:
    if not REAL_PTB.is_dir():
        pytest.skip(f"no PTB at {REAL_PTB}")
    dm = PTBDataModule(str(REAL_PTB), download=False)
    dm.setup()
    assert dm.vocab_size == 10000
    assert {"<unk>", "<eos>", "N"} <= set(dm.word_to_id)
    counts = {split: len(tokens) for split, tokens in dm.tokens.items()}
    assert counts == {"train": 929589, "valid": 73760, "test": 82430}
    train = dm.train_dataloader()
    assert len(train) == 1328  # 929,589 // 20 = 46,479 per row, 46,478 targets in windows of 35
    x, y = next(iter(train))
    assert x.shape == y.shape == (20, 35)
    assert [dm.vocab[i] for i in x[0, :3]] == ["aer", "banknote", "berlitz"]
