"""Small data files in the real formats, written by the tests themselves (no download): MNIST's
gzipped IDX files and a Penn Treebank corpus."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import torch

from experiments.data.mnist import MNIST_SHA256
from experiments.data.ptb import PTB_FILES

NAMES = list(MNIST_SHA256)  # train images, train labels, test images, test labels
STRUCT_CODES = {
    torch.uint8: (0x08, "B"),
    torch.int8: (0x09, "b"),
    torch.int16: (0x0B, "h"),
    torch.int32: (0x0C, "i"),
    torch.float32: (0x0D, "f"),
    torch.float64: (0x0E, "d"),
}


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """IDX encoding of ``tensor``, written with struct (independently of the parser)."""
    code, fmt = STRUCT_CODES[tensor.dtype]
    header = struct.pack(f">BBBB{tensor.ndim}I", 0, 0, code, tensor.ndim, *tensor.shape)
    return header + struct.pack(f">{tensor.numel()}{fmt}", *tensor.flatten().tolist())


def write_mnist(folder: Path, n_train: int = 40, n_test: int = 8) -> dict[str, str]:
    """Tiny MNIST-format files in ``folder``; returns their sha256 sums (un-gzipped), by name.

    Training image ``i`` has pixel 0 equal to ``i``, so images can be told apart after a split.
    """
    gen = torch.Generator().manual_seed(1)
    sums = {}
    for n, (images_name, labels_name) in ((n_train, NAMES[:2]), (n_test, NAMES[2:])):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        images[:, 0, 0] = torch.arange(n)
        images[:, 1, :2] = torch.tensor([0, 255])  # both ends of the pixel range occur
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=gen)
        for name, tensor in ((images_name, images), (labels_name, labels)):
            raw = idx_bytes(tensor)
            (folder / name).write_bytes(gzip.compress(raw))
            sums[name] = hashlib.sha256(raw).hexdigest()
    return sums


# Mikolov's files start every line with a space.
TINY = {
    "train": " the cat sat on the mat \n the dog sat \n a cat and a dog \n the end \n a mat \n",
    "valid": " the dog sat on a mat \n the cat \n",
    "test": " a cat sat \n on the end \n the the \n",
}


def write_corpus(folder: Path, texts: dict[str, str] = TINY) -> dict[str, str]:
    """The corpus ``texts`` written as PTB files in ``folder``; returns their sha256 sums."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for split, text in texts.items():
        name = PTB_FILES[split]
        (folder / name).write_text(text)
        sums[name] = hashlib.sha256(text.encode()).hexdigest()
    return sums
