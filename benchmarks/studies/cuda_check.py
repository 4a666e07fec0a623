"""One prepared GPU check of the tuner on the models people train: about 5 minutes on one H100
or H200, at most about 8.

    python -m benchmarks cuda-check          # from the repository root

Exit status: 0 every check passed, 1 some check failed, 2 no CUDA device (nothing checked).

On CUDA it runs, in order (each line says PASS or FAIL and what it measured):

1. **Attention.** A nanoGPT-small-like model (2 pre-norm blocks, width 768, 12 heads, T = 512,
   batch 8, vocabulary 8192, tied embedding, causal ``F.scaled_dot_product_attention``):
   a. the default CUDA kernels (flash for bf16, efficient/cuDNN for float32) have no double
      backward (expected to raise), and under the tuner's kernel guard
      (``core.kernels.second_order_kernels``) H·v runs; its float32 value against float64
      (relative error);
   b. flash → math fallback through the Trainer under bf16-mixed: with ``Unroll(2)`` the first
      step of each window runs the fast kernel, the second (H·y) the math kernel;
   c. forward+backward on the fast and on the math kernel, and H·v on the math kernel: ms and
      peak memory (the math kernel materializes B·heads·T² attention weights).
2. **cuDNN LSTM.** cuDNN's RNN has no double backward (expected to raise); H·v on the native
   kernels in float32 on the GPU against float64 on the CPU.
3. **Mixed precision.** The attention model under ``bf16-mixed`` and under ``16-mixed`` (the
   grad scaler: its scale is divided out of the tangent, a step it skips moves neither y nor
   λ) with ``Clip``: the fit finishes, λ moved and is finite, y is finite, no non-finite step
   was counted.
4. **Step cost.** Plain training, the callback's defaults (``OnlineHyperparamCallback()``:
   ``FirstOrder`` with one g_V in 4 steps here), ``FirstOrder`` every step and ``Clip`` through
   the Trainer on the attention model (bf16-mixed, AdamW with a tuned ``WeightDecay``) and on
   the 650-unit LSTM (batch 20 × 35, vocabulary 10k, a tuned dropout keep probability): ms per
   step (after 3 warm-up steps: the median step, or for the defaults the median over windows
   of 4 steps of their mean), the ratio to plain, and the fit's peak memory against plain.

Without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.cost import window_median
from benchmarks.records import bare_trainer, quiet_lightning
from experiments.data import BPTTChunks, batchify
from experiments.models.lstm_lm import LSTMLanguageModel
from lightning_hyperopt import (
    Clip,
    FirstOrder,
    OnlineHyperparamCallback,
    Unroll,
    WeightDecay,
)
from lightning_hyperopt.core.functional import inner
from lightning_hyperopt.core.kernels import second_order_kernels

FAILURES: list[str] = []
NOT_RUN = 2


def report(name: str, ok: bool, detail: str) -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def hvp(loss_fn: Callable[[], torch.Tensor], params, v) -> torch.Tensor:
    """H·v = ∇_θ⟨∇_θ L, v⟩ by double back-prop."""
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    return flat(torch.autograd.grad(inner(grads, v), params))


def timed(fn: Callable[[], object], repeats: int = 10) -> float:
    """Median seconds of ``fn`` on the GPU (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated by ``fn`` above what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ------------------------------------------------------------------------------- attention
WIDTH, HEADS, T, BATCH, VOCAB, LAYERS = 768, 12, 512, 8, 8192, 2


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(
            nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)
        )
        self.kernels: list[str] = []  # the attention backward of each training forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.training and a.grad_fn is not None:
            self.kernels.append(type(a.grad_fn).__name__)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, WIDTH))
        return x + self.mlp(self.norm2(x))


class GPT(pl.LightningModule):
    """Embedding, ``LAYERS`` blocks, final norm, tied head; AdamW with a tuned ``WeightDecay`` on
    the weight matrices and no decay on biases and norms."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.emb.weight
        self.wd = WeightDecay(init=0.1, group=0)

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        h = self.emb(x)
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.norm(h))
        return F.cross_entropy(logits.reshape(-1, VOCAB).float(), y.reshape(-1))

    def validation_loss(self, batch) -> torch.Tensor:
        return self.loss(batch)

    def training_step(self, batch, batch_idx) -> torch.Tensor:
        return self.loss(batch)

    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.ndim < 2]
        return torch.optim.AdamW(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=3e-4
        )


def token_loader(steps: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (steps * BATCH, T + 1), generator=g)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=BATCH)


FAST = ("Flash", "Efficient", "Cudnn")


def is_fast(kernel: str) -> bool:
    return any(name in kernel for name in FAST)


def check_attention_kernels() -> None:
    torch.manual_seed(0)
    model = GPT().cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    batch = tuple(t.cuda() for t in next(iter(token_loader(1, 0))))
    v = [torch.randn_like(p) for p in params]

    def default_hvp(dtype: torch.dtype) -> str:
        try:
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                hvp(lambda: model.loss(batch), params, v)
            return "works"
        except RuntimeError as err:
            return f"raises ({str(err).splitlines()[0][:70]}…)"

    found = {str(d).removeprefix("torch."): default_hvp(d) for d in (torch.bfloat16, torch.float32)}
    report("1a default SDPA kernels' double backward", True, f"{found}")
    # H·v under the guard, float32 against float64 (both on the math kernel, on the GPU)
    small = GPT().cuda()
    small.load_state_dict(model.state_dict())
    reference = GPT().cuda().double()
    reference.load_state_dict(model.state_dict())
    short = tuple(t[:2, :128] for t in batch)
    with second_order_kernels(native_rnn=False):
        got = hvp(lambda: small.loss(short), list(small.parameters()), v)
        expected = hvp(
            lambda: reference.loss(short), list(reference.parameters()), [t.double() for t in v]
        )
    error = float((got.double() - expected).norm() / expected.norm())
    report(
        "1a H·v under the kernel guard, float32 vs float64", error < 1e-3, f"rel. error {error:.2e}"
    )


def check_flash_to_math_fallback() -> None:
    torch.manual_seed(0)
    model = GPT()
    trainer = bare_trainer(
        [OnlineHyperparamCallback(Unroll(2))],
        4,
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
    )
    trainer.fit(model, token_loader(4, 0), token_loader(4, 1))
    kernels = model.blocks[0].kernels
    ok = len(kernels) == 4 and is_fast(kernels[0]) and is_fast(kernels[2])
    ok = ok and not is_fast(kernels[1]) and not is_fast(kernels[3])
    report("1b flash → math fallback at the H·y steps (Unroll(2), bf16-mixed)", ok, f"{kernels}")


def check_attention_kernel_cost() -> None:
    torch.manual_seed(0)
    model = GPT().cuda()
    params = list(model.parameters())
    batch = tuple(t.cuda() for t in next(iter(token_loader(1, 0))))
    v = [torch.randn_like(p) for p in params]

    def forward_backward() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.autograd.grad(model.loss(batch), params)

    def h_v() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hvp(lambda: model.loss(batch), params, v)

    fast, fast_mem = timed(forward_backward), peak_mib(forward_backward)
    with sdpa_kernel(SDPBackend.MATH):
        math_, math_mem = timed(forward_backward), peak_mib(forward_backward)
        double, double_mem = timed(h_v), peak_mib(h_v)
    weights = BATCH * HEADS * T * T * 2 / 2**20
    report(
        "1c attention kernels (bf16 autocast, one batch)",
        True,
        f"fast fwd+bwd {fast * 1e3:.1f} ms / {fast_mem:.0f} MiB; math fwd+bwd {math_ / fast:.2f}× "
        f"/ {math_mem:.0f} MiB; math H·v {double / fast:.2f}× / {double_mem:.0f} MiB "
        f"(one bf16 B·heads·T² matrix: {weights:.0f} MiB per layer)",
    )


# ------------------------------------------------------------------------------------ LSTM
def windows(vocab: int, rows: int, bptt: int, steps: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, ((steps + 1) * rows * bptt + 1,), generator=g)
    return DataLoader(BPTTChunks(batchify(tokens, rows), bptt), batch_size=None)


def check_cudnn_lstm() -> None:
    model = LSTMLanguageModel(vocab_size=50, hidden_size=16, keep_prob=1.0).cuda()
    x = torch.randint(0, 50, (4, 6), device="cuda")
    v = [torch.randn_like(p) for p in model.parameters()]
    try:
        hvp(lambda: model.training_loss((x, x)), list(model.parameters()), v)
        report(
            "2 cuDNN LSTM double backward",
            True,
            "works (a newer cuDNN); the guard still runs native",
        )
    except RuntimeError as err:
        report("2 cuDNN LSTM double backward", True, f"raises as expected: {str(err)[:80]}…")
    torch.manual_seed(0)
    reference = LSTMLanguageModel(vocab_size=1000, hidden_size=128, keep_prob=1.0).double()
    model = LSTMLanguageModel(vocab_size=1000, hidden_size=128, keep_prob=1.0)
    model.load_state_dict(reference.state_dict())
    model.cuda()
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, 1000, (8, 20), generator=g) for _ in range(2))
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in reference.parameters()]
    expected = hvp(lambda: reference.training_loss((x, y)), list(reference.parameters()), v)
    with second_order_kernels(native_rnn=True):
        got = hvp(
            lambda: model.training_loss((x.cuda(), y.cuda())),
            list(model.parameters()),
            [t.float().cuda() for t in v],
        )
    error = float((got.double().cpu() - expected).norm() / expected.norm())
    report(
        "2 LSTM H·v, native kernels, CUDA float32 vs CPU float64",
        error < 1e-4,
        f"rel. error {error:.2e}",
    )


# ------------------------------------------------------------------------ fits through Lightning
class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def median(self, warmup: int, every: int = 1) -> float:
        """The median step (``every`` = k > 1: over windows of k steps, of their mean)."""
        diffs = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return window_median(diffs[warmup:], every)


#: ``timed_fit``'s method for the callback's defaults (``OnlineHyperparamCallback()``)
DEFAULTS = "defaults"


def timed_fit(build, loaders, method, steps: int, warmup: int = 3, **trainer_args):
    """(ms per step, peak MiB of the fit, the callback or None, the model); ``method``: a
    method, :data:`DEFAULTS` (the callback with no arguments) or None (plain training)."""
    pl.seed_everything(0, verbose=False)
    model = build()
    timer = StepTimer()
    if method is None:
        callback = None
    elif method == DEFAULTS:
        callback = OnlineHyperparamCallback()
    else:
        callback = OnlineHyperparamCallback(method)
    callbacks = [timer] + ([callback] if callback is not None else [])
    trainer = bare_trainer(callbacks, steps, accelerator="gpu", devices=1, **trainer_args)
    torch.cuda.empty_cache()
    mem = peak_mib(lambda: trainer.fit(model, *loaders(steps)))
    every = 1 if callback is None else callback.plan.hyper_every
    return timer.median(warmup, every) * 1e3, mem, callback, model


def check_mixed_precision() -> None:
    for precision in ("bf16-mixed", "16-mixed"):
        ms, mem, callback, model = timed_fit(
            GPT,
            lambda n: (token_loader(n, 0), token_loader(n, 1)),
            Clip(5.0),
            12,
            precision=precision,
        )
        engine = callback.engine
        lam = float(model.wd.value)
        scaler = getattr(model.trainer.precision_plugin, "scaler", None)
        finite = all(bool(torch.isfinite(t).all()) for t in engine.tangents[0])
        ok = lam != 0.1 and math.isfinite(lam) and finite and engine.nonfinite == [0]
        report(
            f"3 {precision} with Clip",
            ok,
            f"λ 0.1 → {lam:.5f}, y finite {finite}, non-finite counts {engine.nonfinite}, "
            f"grad scaler {'scale ' + str(float(scaler.get_scale())) if scaler else 'none'}; "
            f"{ms:.1f} ms/step, peak {mem:.0f} MiB",
        )


def check_step_cost() -> None:
    gpt = (GPT, lambda n: (token_loader(n, 0), token_loader(n, 1)), {"precision": "bf16-mixed"})

    def lstm() -> LSTMLanguageModel:
        return LSTMLanguageModel(vocab_size=10_000, hidden_size=650, init_scale=0.05)

    lstm_case = (
        lstm,
        lambda n: (windows(10_000, 20, 35, n, 0), windows(10_000, 20, 35, n, 1)),
        {"gradient_clip_val": 5.0},
    )
    for name, (build, loaders, args) in {"attention": gpt, "LSTM 650": lstm_case}.items():
        plain_ms, plain_mem, _, _ = timed_fit(build, loaders, None, 19, **args)
        parts = [f"plain {plain_ms:.1f} ms, {plain_mem:.0f} MiB"]
        ok = True
        for method in (DEFAULTS, FirstOrder(), Clip(5.0)):
            ms, mem, callback, _ = timed_fit(build, loaders, method, 19, **args)
            ok = ok and callback.engine.nonfinite == [0]
            label = (
                f"defaults ({callback.method!r}, one g_V in {callback.plan.hyper_every})"
                if method == DEFAULTS
                else type(method).__name__
            )
            parts.append(f"{label} {ms / plain_ms:.2f}× time, {mem / plain_mem:.2f}× memory")
        report(f"4 step cost, {name}", ok, "; ".join(parts))


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m benchmarks cuda-check", description=__doc__.splitlines()[0]
    )


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, lightning {pl.__version__}", flush=True)
    if not torch.cuda.is_available():
        print(
            "CUDA is not available: nothing was checked. This script needs one CUDA GPU "
            "(exit status 2); the CPU behaviour is covered by the test suite.",
            flush=True,
        )
        return NOT_RUN
    quiet_lightning()
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    for check in (
        check_attention_kernels,
        check_flash_to_math_fallback,
        check_attention_kernel_cost,
        check_cudnn_lstm,
        check_mixed_precision,
        check_step_cost,
    ):
        began = time.perf_counter()
        try:
            check()
        except Exception as err:  # one broken check must not hide the others' results
            report(check.__name__, False, f"{type(err).__name__}: {err}")
        print(f"       ({time.perf_counter() - began:.0f} s)", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s; failures: {FAILURES or 'none'}")
    return 1 if FAILURES else 0
