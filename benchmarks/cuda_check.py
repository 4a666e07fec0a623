"""GPU check of dropout tuning on the LSTM language model; under 3 minutes on one H100.

    python benchmarks/cuda_check.py          # from the repository root; exit status 1 on a failure

On CUDA it checks, in order:

1. cuDNN's LSTM has no double backward (expected to raise), so the tuner replays with cuDNN off;
2. H·v of the replay path (cuDNN off, float32 on the GPU) against the same H·v in float64 on
   the CPU (relative error; keep probability 1, so both see the same network);
3. the replay's masks: through the Trainer, H y of the callback's replay equals H y computed on
   the training step's own graph (CUDA RNG state replayed; the step runs with cuDNN off here so
   that its graph has a double backward);
4. steps of the 650-unit LM (batch 20 × 35, vocabulary 10k, synthetic tokens) with and without
   ``OnlineHyperparamCallback(Clip)``: seconds per step and their ratio, λ moved and finite;
   and the replay kernels alone relative to a plain cuDNN forward+backward.

Without CUDA it says so, runs check 2 with float32 on the CPU instead, and skips the others.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

import lightning_hyperopt.core.engine as engine_module
from lightning_hyperopt import (
    Clip,
    Exact,
    LSTMLanguageModel,
    OnlineHyperparamCallback,
)
from lightning_hyperopt.bench.records import bare_trainer
from lightning_hyperopt.core.functional import inner
from lightning_hyperopt.data import BPTTChunks, batchify

FAILURES: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def windows(vocab: int, rows: int, bptt: int, steps: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, ((steps + 1) * rows * bptt + 1,), generator=g)
    return DataLoader(BPTTChunks(batchify(tokens, rows), bptt), batch_size=None)


def flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def hvp(model: LSTMLanguageModel, batch, v, retain: bool = False) -> torch.Tensor:
    """H·v = ∇_θ⟨∇_θ L_T, v⟩ by double back-prop."""
    params = list(model.parameters())
    grads = torch.autograd.grad(model.training_loss(batch), params, create_graph=True)
    return flat(torch.autograd.grad(inner(grads, v), params, retain_graph=retain))


def trainer(device: str, steps: int, callbacks) -> pl.Trainer:
    return bare_trainer(
        callbacks,
        steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        gradient_clip_val=5.0,
    )


def check_cudnn_has_no_double_backward() -> None:
    model = LSTMLanguageModel(vocab_size=50, hidden_size=16, keep_prob=1.0).cuda()
    x = torch.randint(0, 50, (4, 6), device="cuda")
    v = [torch.randn_like(p) for p in model.parameters()]
    try:
        hvp(model, (x, x), v)
        report("1 cuDNN double backward", True, "worked (newer cuDNN path); replay stays cuDNN-off")
    except RuntimeError as err:
        report("1 cuDNN double backward", True, f"raises as expected: {str(err)[:90]}…")


def check_hvp_against_float64_cpu(device: str) -> None:
    torch.manual_seed(0)
    reference = LSTMLanguageModel(vocab_size=1000, hidden_size=128, keep_prob=1.0).double()
    model = LSTMLanguageModel(vocab_size=1000, hidden_size=128, keep_prob=1.0)
    model.load_state_dict(reference.state_dict())
    model.to(device)
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, 1000, (8, 20), generator=g) for _ in range(2))
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in reference.parameters()]
    expected = hvp(reference, (x, y), v)
    with torch.backends.cudnn.flags(enabled=False), torch.backends.mkldnn.flags(enabled=False):
        got = hvp(model, (x.to(device), y.to(device)), [t.float().to(device) for t in v])
    error = float((got.double().cpu() - expected).norm() / expected.norm())
    report(f"2 H·v on {device} float32 vs CPU float64", error < 1e-4, f"relative error {error:.2e}")


class InStep(LSTMLanguageModel):
    """The training step with cuDNN off, and H y on its own graph for the callback's tangent."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.in_step: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        with torch.backends.cudnn.flags(enabled=False):
            loss = super().training_step(batch, batch_idx)
        (cb,) = [c for c in self.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
        params, (y,) = cb.engine.params, cb.engine.tangents
        grads = torch.autograd.grad(loss, params, create_graph=True)
        self.in_step.append(flat(torch.autograd.grad(inner(grads, y), params, retain_graph=True)))
        return loss


def check_replay_masks_on_cuda() -> None:
    replayed: list[torch.Tensor] = []
    original = engine_module.tangent_drift

    def recording(loss, params, values, tangents):
        out = original(loss, params, values, tangents)
        replayed.append(flat(out[0]))
        return out

    engine_module.tangent_drift = recording
    try:
        torch.manual_seed(0)
        model = InStep(vocab_size=1000, hidden_size=128, keep_prob=0.6)
        cb = OnlineHyperparamCallback(Exact(), warmup_steps=10**9)
        trainer("cuda", 5, [cb]).fit(model, windows(1000, 8, 20, 5, 0), windows(1000, 8, 20, 5, 1))
    finally:
        engine_module.tangent_drift = original
    errors = [
        float((r - s).norm() / s.norm()) for r, s in zip(replayed[1:], model.in_step[1:])
    ]  # y_0 = 0
    ok = len(replayed) == 5 and max(errors) < 1e-4
    report("3 replay sees the step's masks (CUDA RNG)", ok, f"relative errors {errors}")


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())


def step_time(tuned: bool, warmup: int = 3, steps: int = 10) -> tuple[float, LSTMLanguageModel]:
    pl.seed_everything(0, verbose=False)
    model = LSTMLanguageModel(vocab_size=10_000, hidden_size=650, init_scale=0.05)
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    if tuned:
        callbacks.append(OnlineHyperparamCallback(Clip(10.0, 1e-2)))
    n = warmup + steps
    trainer("cuda", n, callbacks).fit(
        model, windows(10_000, 20, 35, n, 0), windows(10_000, 20, 35, n, 1)
    )
    diffs = [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]
    return statistics.median(diffs[warmup:]), model


def check_step_cost() -> None:
    plain, _ = step_time(False)
    tuned, model = step_time(True)
    lam = float(model.keep_prob.value)
    report(
        "4 650-unit LM steps with the callback",
        lam != 0.5 and 0.1 <= lam <= 1.0,
        f"plain {plain * 1e3:.1f} ms/step, with callback {tuned * 1e3:.1f} ms/step, "
        f"ratio {tuned / plain:.2f}×; keep probability 0.5 → {lam:.4f}",
    )
    # the replay's kernels alone, against a plain cuDNN forward+backward
    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab_size=10_000, hidden_size=650, keep_prob=1.0).cuda()
    batch = tuple(t.cuda() for t in next(iter(windows(10_000, 20, 35, 1, 0))))
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def timed(fn, repeats: int = 10) -> float:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    base = timed(lambda: torch.autograd.grad(model.training_loss(batch), params))
    with torch.backends.cudnn.flags(enabled=False):
        native = timed(lambda: torch.autograd.grad(model.training_loss(batch), params))
        double = timed(lambda: hvp(model, batch, v))
    print(
        f"       kernels vs cuDNN forward+backward ({base * 1e3:.1f} ms): native "
        f"forward+backward {native / base:.2f}×, native H·v {double / base:.2f}×",
        flush=True,
    )


def main() -> None:
    start = time.perf_counter()
    print(f"torch {torch.__version__}, lightning {pl.__version__}", flush=True)
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}", flush=True)
        check_cudnn_has_no_double_backward()
        check_hvp_against_float64_cpu("cuda")
        check_replay_masks_on_cuda()
        check_step_cost()
    else:
        print("CUDA not available: skipping the CUDA checks 1, 3 and 4; check 2 runs on the CPU")
        check_hvp_against_float64_cpu("cpu")
    print(f"done in {time.perf_counter() - start:.0f} s; failures: {FAILURES or 'none'}")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
