"""Cost of tuning the dropout keep probability of the PTB LSTM LM, per optimizer step.

    python benchmarks/lstm_cost.py                      # 200 and 650 units, ~5 min unloaded
    python benchmarks/lstm_cost.py --hidden 200 --threads 2 --kernels

Model: :class:`LSTMLanguageModel` (2 LSTM layers, vocabulary 10,000, one shared keep
probability 0.5), batch 20 × 35 unrolled steps of synthetic tokens, SGD lr 1, gradient norm
clipped at 5, float32. Configurations: the plain Trainer step (fixed keep probability) and the
step with ``OnlineHyperparamCallback(Clip(10, 1e-4))``, which adds per step one replay with
double back-prop (H y), two replays for the finite difference of ∂g_T/∂λ and one validation
gradient. Replays run on the native LSTM kernels (oneDNN off); the training step keeps oneDNN.

Time: a callback stamps the clocks at every ``on_train_batch_start``; the step time of a fit
is the median difference after ``--warmup`` steps (everything a step costs). Two clocks: wall
time, and the CPU time of this process (``time.process_time()``), which other load on a shared
machine inflates far less, provided torch runs one thread (``--threads 1``, the default: with
several, threads that wait for a descheduled sibling spin and bill CPU time). The plain and
callback fits alternate, ``--rounds`` times; each ratio is the median over rounds of
callback / plain of the same round.

``--kernels`` also times the replay's kernels alone, relative to a plain forward+backward with
oneDNN: forward+backward and H·v by double back-prop, with oneDNN on and off.

``--variance N`` also measures, on one batch at λ = 0.5, the total variance tr Cov of the
finite-difference estimate of ∂g_T/∂λ over N draws, with coupled masks (one seed for both
replays, as the tuner does) and with independent masks (two seeds), and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_hyperopt import Clip, LSTMLanguageModel, OnlineHyperparamCallback
from lightning_hyperopt.bench.records import bare_trainer
from lightning_hyperopt.data import BPTTChunks, batchify

VOCAB, BATCH, BPTT = 10_000, 20, 35


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []  # (wall, process CPU) seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def on_train_end(self, trainer, pl_module) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def median_step(self, skip: int) -> tuple[float, float]:
        """Median (wall, CPU) seconds between consecutive steps, after ``skip`` steps."""
        steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.stamps, self.stamps[1:])]
        walls, cpus = zip(*steps[skip:])
        return statistics.median(walls), statistics.median(cpus)


def loader(steps: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, ((steps + 1) * BPTT * BATCH + 1,), generator=g)
    return DataLoader(BPTTChunks(batchify(tokens, BATCH), BPTT), batch_size=None)


def step_time(hidden: int, tuned: bool, warmup: int, steps: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds per optimizer step of one fit, after ``warmup`` steps."""
    pl.seed_everything(0, verbose=False)
    model = LSTMLanguageModel(vocab_size=VOCAB, hidden_size=hidden, keep_prob=0.5)
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    if tuned:
        callbacks.append(OnlineHyperparamCallback(Clip(10.0, 1e-4)))
    trainer = bare_trainer(callbacks, warmup + steps, gradient_clip_val=5.0)
    trainer.fit(model, loader(warmup + steps, 0), loader(warmup + steps, 1))
    return timer.median_step(warmup)


def kernel_ratios(hidden: int, repeats: int) -> dict[str, float]:
    """Replay kernels relative to a plain forward+backward with oneDNN."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab_size=VOCAB, hidden_size=hidden, keep_prob=1.0)
    params = list(model.parameters())
    x, y = next(iter(loader(1, 0)))
    v = [torch.randn_like(p) for p in params]

    def forward_backward() -> None:
        torch.autograd.grad(model.training_loss((x, y)), params)

    def hvp() -> None:
        grads = torch.autograd.grad(model.training_loss((x, y)), params, create_graph=True)
        torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)

    def median_time(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    out = {"plain fwd+bwd, oneDNN": median_time(forward_backward)}
    out["H·v, oneDNN"] = median_time(hvp)
    with torch.backends.mkldnn.flags(enabled=False):
        out["fwd+bwd, native"] = median_time(forward_backward)
        out["H·v, native"] = median_time(hvp)
    base = out["plain fwd+bwd, oneDNN"]
    return {name: t / base for name, t in out.items()} | {"plain seconds": base}


def variance_ratio(hidden: int, draws: int) -> tuple[float, float]:
    """tr Cov of (g(m₊) − g(m₋)) / (λ₊ − λ₋) over ``draws`` draws: (coupled, independent)."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab_size=VOCAB, hidden_size=hidden, keep_prob=0.5)
    params = list(model.parameters())
    batch = next(iter(loader(1, 0)))

    def estimate(seed_plus: int, seed_minus: int) -> torch.Tensor:
        grads, used = [], []
        for sign, seed in ((1, seed_plus), (-1, seed_minus)):
            with model.keep_prob.perturbed(sign, seed) as value:
                grad = torch.autograd.grad(model.training_loss(batch), params)
            grads.append(torch.cat([g.reshape(-1) for g in grad]).double())
            used.append(value)
        return (grads[0] - grads[1]) / (used[0] - used[1])

    out = []
    for offset in (0, draws):  # the minus replay's seed: the same (coupled) or another
        total = squares = 0.0
        for s in range(draws):
            e = estimate(s, s + offset)
            total, squares = total + e, squares + e * e
        out.append(float((squares - total * total / draws).sum() / (draws - 1)))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 650])
    parser.add_argument("--warmup", type=int, default=1, help="steps skipped in each fit")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per fit")
    parser.add_argument("--rounds", type=int, default=3, help="alternating plain/callback fits")
    parser.add_argument("--kernels", action="store_true", help="also time the replay kernels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--variance", type=int, default=0, metavar="N", help="also measure ∂g_T/∂λ's variance"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for hidden in args.hidden:
        rounds = []
        for _ in range(args.rounds):
            plain = step_time(hidden, False, args.warmup, args.steps)
            tuned = step_time(hidden, True, args.warmup, args.steps)
            rounds.append((plain, tuned))
        for k, clock in enumerate(("wall", "CPU")):
            plain = statistics.median(p[k] for p, _ in rounds)
            tuned = statistics.median(t[k] for _, t in rounds)
            ratios = [t[k] / p[k] for p, t in rounds]
            print(
                f"{hidden} units, {clock} time: plain {plain:.2f} s/step, with callback "
                f"{tuned:.2f} s/step, ratio {statistics.median(ratios):.2f}× "
                f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})",
                flush=True,
            )
        if args.kernels:
            ratios = kernel_ratios(hidden, repeats=3)
            print(
                f"  kernels vs plain fwd+bwd ({ratios.pop('plain seconds'):.2f} s): "
                + ", ".join(f"{k} {r:.2f}×" for k, r in ratios.items()),
                flush=True,
            )
        if args.variance:
            coupled, independent = variance_ratio(hidden, args.variance)
            print(
                f"  ∂g_T/∂λ estimate, tr Cov over {args.variance} draws: coupled {coupled:.4g}, "
                f"independent {independent:.4g}, ratio {coupled / independent:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
