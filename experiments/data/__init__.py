"""Data modules for the paper's MNIST and Penn Treebank experiments (no torchvision/torchtext)."""

from .mnist import MNISTDataModule, parse_idx, read_idx
from .ptb import BPTTChunks, PTBDataModule, batchify, build_vocab, encode, read_words

__all__ = [
    "BPTTChunks",
    "MNISTDataModule",
    "PTBDataModule",
    "batchify",
    "build_vocab",
    "encode",
    "parse_idx",
    "read_idx",
    "read_words",
]
