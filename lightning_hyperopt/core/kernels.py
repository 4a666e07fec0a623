"""Kernel guards: run the steps that need second derivatives (or a backward in eval mode) on
kernels that have them.

cuDNN's RNN kernel has no double backward (and no backward in eval mode); on the CPU the native
LSTM's double back-prop is faster than oneDNN's. So the steps that need H·y, and the g_V passes,
of a model with an ``nn.RNNBase`` run with cuDNN and oneDNN off; every other step keeps them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def kernels_off() -> tuple[bool, bool]:
    """Switch cuDNN and oneDNN off; returns their previous flags (for :func:`restore`)."""
    saved = torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled
    torch.backends.cudnn.enabled = torch.backends.mkldnn.enabled = False
    return saved


def restore(saved: tuple[bool, bool]) -> None:
    """Put back the flags :func:`kernels_off` returned."""
    torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled = saved


@contextlib.contextmanager
def native_rnn_kernels() -> Iterator[None]:
    """Within the context, RNNs run on the native kernels (cuDNN and oneDNN off)."""
    saved = kernels_off()
    try:
        yield
    finally:
        restore(saved)


def has_rnn(module: torch.nn.Module) -> bool:
    """Whether ``module`` contains an ``nn.RNNBase`` (LSTM, GRU, RNN)."""
    return any(isinstance(m, torch.nn.RNNBase) for m in module.modules())
