"""Kernel guards: the steps that need second derivatives (or a backward in eval mode) run on
kernels that have them.

    a step that needs H·y:  SDPA on the math kernel, ``torch.compile``'d code run eagerly,
                            RNNs (of a model that has one) on the native kernels
    every other step:       the fast kernels
    g_V passes:             the fast kernels; RNNs on the native ones

Why: the flash and memory-efficient SDPA kernels (CPU and CUDA) have no double backward; code
compiled by ``torch.compile`` (aot_autograd) has none either; cuDNN's RNN has no double backward
and no backward in eval mode, and on the CPU the native LSTM's double back-prop is faster than
oneDNN's. The math kernel computes the same attention with its T × T weights materialized (more
memory on long sequences, see docs/how-to/cost.md); compiled code run eagerly computes the same
function as compiled, up to rounding.
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


@contextlib.contextmanager
def second_order_kernels(native_rnn: bool) -> Iterator[None]:
    """Within the context, every kernel has a double backward: SDPA runs the math kernel,
    ``torch.compile``'d functions and modules run eagerly, and with ``native_rnn`` RNNs run
    on the native kernels. Each setting is restored on exit."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_math_attention())
        set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
        if set_stance is not None:  # torch ≥ 2.6; before, compiled code fails with a named error
            stack.enter_context(set_stance("force_eager"))
        if native_rnn:
            stack.enter_context(native_rnn_kernels())
        yield


def _math_attention() -> contextlib.AbstractContextManager:
    """SDPA restricted to the math kernel (``torch.nn.attention.sdpa_kernel``, torch ≥ 2.3;
    the older ``torch.backends.cuda.sdp_kernel`` flags before)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return torch.backends.cuda.sdp_kernel(
            enable_flash=False, enable_math=True, enable_mem_efficient=False
        )
    return sdpa_kernel(SDPBackend.MATH)


def has_rnn(module: torch.nn.Module) -> bool:
    """Whether ``module`` contains an ``nn.RNNBase`` (LSTM, GRU, RNN)."""
    return any(isinstance(m, torch.nn.RNNBase) for m in module.modules())
