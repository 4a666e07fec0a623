"""core/kernels.py: the kernel guards switch and restore the flags they touch."""

from __future__ import annotations

import torch
from torch import nn

from lightning_hyperopt.core.kernels import has_rnn, native_rnn_kernels, second_order_kernels


def test_native_rnn_kernels_switch_cudnn_and_onednn_off_and_back():
    before = torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled
    with native_rnn_kernels():
        assert not torch.backends.cudnn.enabled and not torch.backends.mkldnn.enabled
    assert (torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled) == before


def test_second_order_kernels_run_sdpa_on_the_math_kernel_and_compiled_code_eagerly():
    q = torch.randn(1, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    with second_order_kernels(native_rnn=False):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
        torch.autograd.grad(g.sum(), q)  # a double backward: the math kernel has one
        assert torch.backends.mkldnn.enabled  # RNN kernels untouched without native_rnn
        calls = []
        compiled = torch.compile(lambda x: calls.append(1) or x * 2, backend="eager")
        compiled(torch.ones(1))
    from torch._dynamo.eval_frame import _stance

    assert _stance.stance == "default" and calls == [1]


def test_has_rnn():
    assert has_rnn(nn.Sequential(nn.Linear(1, 1), nn.GRU(1, 1)))
    assert not has_rnn(nn.Sequential(nn.Linear(1, 1)))
