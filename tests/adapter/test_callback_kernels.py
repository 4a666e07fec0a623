"""Kernels without a double backward: steps that need H·y run SDPA on the math kernel and
``torch.compile``'d code eagerly; first-order steps keep the fast kernels."""

import pytest
import torch
import torch.nn.functional as F
from conftest import exact_tangent_and_finite_difference, fit, pl
from torch import nn
from torch.utils.data import TensorDataset

from lightning_hyperopt import Clip, FirstOrder, L2Penalty, Unroll

T, D = 5, 4


def attention_data(n_train=8, n_val=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, T, D, generator=g, dtype=torch.float64)
    y = x.flip(1).cumsum(1)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


class Attention(pl.LightningModule):
    """One causal self-attention layer calling ``F.scaled_dot_product_attention`` directly
    (nanoGPT style); records which kernel each training forward ran."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)
        self.l2 = L2Penalty(0.01)
        self.kernels = []
        self.double()

    def data_loss(self, batch):
        x, y = batch
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.training:
            self.kernels.append("flash" if "Flash" in type(a.grad_fn).__name__ else "math")
        return ((self.out(a.squeeze(1)) - y) ** 2).mean()

    def validation_loss(self, batch):
        return self.data_loss(batch)

    def training_step(self, batch, batch_idx):
        return self.data_loss(batch) + self.l2(self.parameters())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)


def test_the_default_cpu_attention_kernel_has_no_double_backward():
    """What the guard is for (if a later torch gives the flash kernel a double backward, this
    fails and the guard can go)."""
    q = torch.randn(2, 1, T, D, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(
        F.scaled_dot_product_attention(q, q, q).pow(2).sum(), q, create_graph=True
    )
    with pytest.raises(RuntimeError, match=r"flash_attention.*not implemented"):
        torch.autograd.grad(g.sum(), q)


def test_attention_tangent_equals_finite_differences_of_trainings():
    """Exact's y through 6 steps of math-kernel attention equals the central difference of two
    plain trainings (which run the default kernel), float64."""
    tangent, fd = exact_tangent_and_finite_difference(
        Attention, 6, attention_data(), "l2", batch_size=4
    )
    assert fd.abs().max() > 1e-3
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))


def test_only_the_steps_that_need_h_y_run_the_math_kernel():
    """Unroll(2): the first step of each window has y = 0 (no H·y): the fast kernel; the second
    needs H·y: the math kernel. FirstOrder never needs it. The flags are restored after."""
    model = Attention()
    fit(model, Unroll(2), 4, 4, data=attention_data())
    assert model.kernels == ["flash", "math", "flash", "math"]
    model = Attention()
    fit(model, FirstOrder(), 3, 4, data=attention_data())
    assert model.kernels == ["flash"] * 3
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()


def test_clip_with_attention_follows_the_math_kernel_everywhere():
    """Clip needs H·y at every step: every training step runs the math kernel, and the λ
    trajectory is the one of the same fit run entirely on the math kernel (g_V passes
    included), to float64 rounding."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = Attention()
    _, rec, _ = fit(model, Clip(5.0), 4, 4, data=attention_data())
    assert model.kernels == ["math"] * 4
    with sdpa_kernel(SDPBackend.MATH):
        _, everywhere, _ = fit(Attention(), Clip(5.0), 4, 4, data=attention_data())
    lam = torch.tensor(rec.values, dtype=torch.float64)
    torch.testing.assert_close(lam, torch.tensor(everywhere.values, dtype=torch.float64))
    assert (lam[1:] - lam[:-1]).abs().min() > 0  # λ moves at every step


class Compiled(Attention):
    """The attention layer as a module behind ``torch.compile`` (``self.fwd =
    torch.compile(self.net)``). ``backend``: inductor, or ``aot_eager`` (aot_autograd, which has
    no double backward, without generating code); ``None``: not compiled."""

    def __init__(self, backend="inductor", dtype=torch.float64, seed=0):
        super().__init__(seed)
        self.net = nn.Sequential(self.qkv, Heads(), self.out)
        self.fwd = self.net if backend is None else torch.compile(self.net, backend=backend)
        self.to(dtype)

    def data_loss(self, batch):
        x, y = batch
        return ((self.fwd(x) - y) ** 2).mean()


class Heads(nn.Module):
    def forward(self, qkv):
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)


def float32(data):
    return tuple(TensorDataset(*(t.float() for t in d.tensors)) for d in data)


def test_first_order_compiled_follows_the_uncompiled_lambda_trajectory():
    """FirstOrder runs compiled (inductor) throughout; its λ steps equal the uncompiled
    model's to float32 rounding."""
    steps = {}
    for backend in (None, "inductor"):
        _, rec, _ = fit(
            Compiled(backend, torch.float32), FirstOrder(), 6, 4, data=float32(attention_data())
        )
        lam = torch.tensor(rec.values, dtype=torch.float64)[:, 0]
        steps[backend] = lam - 0.01
    assert steps[None].abs().min() > 1e-5  # λ moves at every step
    torch.testing.assert_close(steps["inductor"], steps[None], rtol=1e-5, atol=0)


def test_compiled_module_tangent_runs_eagerly_and_equals_finite_differences():
    """aot_autograd has no double backward: Exact's steps run the compiled module eagerly
    (``torch.compiler.set_stance("force_eager")``); y equals the central difference of two
    plain trainings of the compiled module."""
    tangent, fd = exact_tangent_and_finite_difference(
        lambda: Compiled("aot_eager"), 5, attention_data(), "l2", batch_size=4
    )
    assert fd.abs().max() > 1e-3
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))


def test_unroll_runs_a_compiled_module_compiled_and_eagerly_and_restores_the_stance():
    """Unroll(2): the first step of each window runs compiled, the second (H·y) eagerly."""
    model = Compiled("aot_eager", torch.float32)
    _, rec, _ = fit(model, Unroll(2), 4, 4, data=float32(attention_data()))
    _, eager, _ = fit(
        Compiled(None, torch.float32), Unroll(2), 4, 4, data=float32(attention_data())
    )
    lam = torch.tensor(rec.values, dtype=torch.float64)[:, 0]
    torch.testing.assert_close(lam, torch.tensor(eager.values, dtype=torch.float64)[:, 0])
    assert lam[1] != lam[0] and lam[3] != lam[2]  # λ moves after each window (steps 2, 4)
    from torch._dynamo.eval_frame import _stance

    assert _stance.stance == "default"
