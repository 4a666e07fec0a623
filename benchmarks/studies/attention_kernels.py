"""CPU cost of the steps that need H·y on attention: SDPA's math kernel against the default one.

    python -m benchmarks attention-kernels [--threads 1] [--reps 7] [--lengths 64,256]

A nanoGPT-like block (pre-norm, causal ``F.scaled_dot_product_attention``, 4 heads, GELU MLP,
tied embedding head; width 128, vocabulary 256, batch 8) on sequences of T tokens. Per T, medians
of ``--reps`` timed runs after one warm-up, in ms and relative to a forward+backward on the
default kernel (the fast one: what plain training, ``FirstOrder`` and g_V passes run):

- forward+backward on the math kernel;
- a step that needs H·y as the callback runs it: the math kernel, a backward with
  ``create_graph=True``, then one double back-prop for H·v (the default kernel has no double
  backward: "raises");
- peak tensor memory of a forward+backward on each kernel (``bench.cost.peak_tensor_memory``:
  the profiler's allocation events), and of the H·v step; and B·heads·T² float32 values, the
  size of one T × T attention matrix, which the math kernel materializes (and keeps for the
  backward) where the flash kernel keeps O(T) per row.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.cost import peak_tensor_memory

WIDTH, HEADS, VOCAB, BATCH = 128, 4, 256, 8


class Block(nn.Module):
    """Embedding, one pre-norm transformer block, the tied head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(
            nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)
        )

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens[:, :-1])
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, WIDTH))
        x = x + self.mlp(self.norm2(x))
        logits = x @ self.emb.weight.T
        return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def peak_mib(fn) -> float:
    with peak_tensor_memory() as result:
        fn()
    return result["peak"] / 2**20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks attention-kernels", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--lengths", default="64,256")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Block()
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def forward_backward(tokens):
        def run() -> None:
            torch.autograd.grad(model.loss(tokens), params)

        return run

    def h_v(tokens):
        def run() -> None:
            grads = torch.autograd.grad(model.loss(tokens), params, create_graph=True)
            torch.autograd.grad(grads, params, v)

        return run

    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, width {WIDTH}")
    print(
        "| T | fwd+bwd default ms | fwd+bwd math | H·v step, math | H·v step, default "
        "| peak MiB default → math → H·v step | one T × T |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in map(int, args.lengths.split(",")):
        tokens = torch.randint(0, VOCAB, (BATCH, t + 1))
        base = timed(forward_backward(tokens), args.reps)
        with sdpa_kernel(SDPBackend.MATH):
            math = timed(forward_backward(tokens), args.reps)
            hvp = timed(h_v(tokens), args.reps)
        try:
            h_v(tokens)()
            default_hvp = f"{timed(h_v(tokens), args.reps) / base:.2f}×"
        except RuntimeError:
            default_hvp = "raises"
        memory = [peak_mib(forward_backward(tokens))]
        with sdpa_kernel(SDPBackend.MATH):
            memory += [peak_mib(forward_backward(tokens)), peak_mib(h_v(tokens))]
        weights = BATCH * HEADS * t * t * 4 / 2**20
        print(
            f"| {t} | {base:.1f} | {math:.1f} ({math / base:.2f}×) | {hvp:.1f} ({hvp / base:.2f}×) "
            f"| {default_hvp} | {' → '.join(f'{m:.1f}' for m in memory)} | {weights:.1f} MiB |",
            flush=True,
        )
