"""The model zoo: what the tuner supports, as a catalogue of small models people train today.

Each entry is a LightningModule with an L2 penalty (or AdamW's weight decay) declared as a
hyperparameter:

- ``nanogpt``: a nanoGPT block (pre-norm, causal ``F.scaled_dot_product_attention``, GELU MLP)
  with the embedding tied to the output head;
- ``conv_bn``: conv + ``BatchNorm2d`` + pooling, a classifier;
- ``lstm_lm``: an LSTM language model;
- ``transformer_encoder``: a pre-norm GELU ``nn.TransformerEncoder`` (SDPA inside
  ``nn.MultiheadAttention``);
- ``adamw_groups``: AdamW with two param groups, no decay on biases and norms (its
  ``WeightDecay`` tunes the decayed group);
- ``checkpointed``: ``torch.utils.checkpoint(..., use_reentrant=False)`` around a block;
- ``compiled``: a block behind ``torch.compile`` (the steps that need H·y run it eagerly).

For each: ``FirstOrder`` and ``Clip`` fit and move λ; a float64 miniature's ``Exact`` tangent
equals the central finite difference of two whole trainings (rtol 1e-6). What is refused, with
the error and its fix, is in tests/adapter/test_callback_errors.py (reentrant checkpointing, sparse
gradients, operations without a double backward) and docs/how-to/supported-models.md.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Recorder, exact_tangent_and_finite_difference, make_trainer, pl
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_hyperopt import (
    Clip,
    FirstOrder,
    L2Penalty,
    OnlineHyperparamCallback,
    WeightDecay,
    find_hyperparameters,
)

VOCAB, T, WIDTH = 13, 6, 8


class NanoGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(
            nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH)
        )
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.emb.weight  # weight tying

    def forward(self, tokens):
        x = self.emb(tokens)
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, 2, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, WIDTH))
        return self.head(x + self.mlp(self.norm2(x)))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2)
        )
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, images):
        return self.head(self.features(images).flatten(1))


class LSTMLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.lstm = nn.LSTM(WIDTH, WIDTH, batch_first=True)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens):
        return self.head(self.lstm(self.emb(tokens))[0])


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        layer = nn.TransformerEncoderLayer(
            WIDTH, 2, 2 * WIDTH, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens):
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.head(self.encoder(self.emb(tokens), mask=mask.to(self.head.weight.dtype)))


class NormedMLP(nn.Module):
    """Linear, LayerNorm, tanh, Linear over 10 features (``checkpointed``: the first two
    under non-reentrant activation checkpointing)."""

    def __init__(self, checkpointed=False):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(10, 12), nn.LayerNorm(12), nn.Tanh())
        self.head = nn.Linear(12, 3)
        self.checkpointed = checkpointed

    def forward(self, x):
        if self.checkpointed:
            return self.head(checkpoint(self.block, x, use_reentrant=False))
        return self.head(self.block(x))


class Compiled(nn.Module):
    """A GELU MLP block behind ``torch.compile`` (``self.fwd = torch.compile(self.block)``),
    with the ``aot_eager`` backend: aot_autograd (which has no double backward) without
    generating C++, which would take seconds per model on the CPU. The inductor backend is
    tested in tests/adapter/test_callback_kernels.py."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(10, 12), nn.GELU(), nn.Linear(12, 3))
        self.fwd = torch.compile(self.block, backend="aot_eager")

    def forward(self, x):
        return self.fwd(x)


class Zoo(pl.LightningModule):
    """Cross-entropy of ``net`` on (inputs, targets) batches, an L2 penalty over every
    parameter (SGD with momentum), or AdamW with a tuned ``WeightDecay`` on the weight matrices
    and no decay on biases and norms (``adamw=True``)."""

    def __init__(self, net, dtype, adamw=False, lr=0.1):
        super().__init__()
        self.net, self.adamw, self.lr = net, adamw, lr
        if adamw:
            self.wd = WeightDecay(init=0.1, group=0)
        else:
            self.l2 = L2Penalty(0.01)
        self.to(dtype)

    def data_loss(self, batch):
        inputs, targets = batch
        logits = self.net(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def validation_loss(self, batch):
        return self.data_loss(batch)

    def training_step(self, batch, batch_idx):
        loss = self.data_loss(batch)
        return loss if self.adamw else loss + self.l2(self.parameters())

    def configure_optimizers(self):
        if not self.adamw:
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.5)
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.named_parameters() if p.ndim < 2]  # biases, norms
        return torch.optim.AdamW(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=self.lr
        )


def token_data(dtype, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, T + 1), generator=g)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def image_data(dtype, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 8, 8, generator=g, dtype=dtype)
    return TensorDataset(images, (images.mean((1, 2, 3)) > 0).long() + (images[:, 0, 0, 0] > 1))


def feature_data(dtype, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g, dtype=dtype)
    return TensorDataset(x, x[:, :3].argmax(1))


#: name → the model in a dtype
MODELS = {
    "nanogpt": lambda dtype: Zoo(NanoGPT(), dtype),
    "conv_bn": lambda dtype: Zoo(ConvBN(), dtype),
    "lstm_lm": lambda dtype: Zoo(LSTMLM(), dtype),
    "transformer_encoder": lambda dtype: Zoo(Encoder(), dtype),
    "adamw_groups": lambda dtype: Zoo(NormedMLP(), dtype, adamw=True, lr=0.01),
    "checkpointed": lambda dtype: Zoo(NormedMLP(checkpointed=True), dtype),
    "compiled": lambda dtype: Zoo(Compiled(), dtype),
}
DATA = {
    "conv_bn": image_data,
    "adamw_groups": feature_data,
    "checkpointed": feature_data,
    "compiled": feature_data,
}


def build(name, dtype, seed=0):
    torch.manual_seed(seed)
    return MODELS[name](dtype)


def datasets(name, dtype):
    data = DATA.get(name, token_data)
    return data(dtype, seed=0), data(dtype, n=8, seed=1)


class FirstHypergradient(pl.Callback):
    """The tuner's hypergradient of its first λ update (read after the tuner's own hook)."""

    def __init__(self, tuner):
        self.tuner, self.h = tuner, None

    def on_train_batch_end(self, trainer, pl_module, *args):
        if self.h is None:
            self.h = float(self.tuner.engine.state.hypergradients[0])


@pytest.mark.parametrize("method", [FirstOrder(), Clip(5.0)], ids=type)
@pytest.mark.parametrize("name", MODELS)
def test_fits_and_moves_lambda_by_the_adaptive_first_step(name, method):
    """λ's first update is AdaptiveStep's: in log space (an L2 or a weight decay) by the
    decaying start's ρ₁ = 0.3 against the sign of the hypergradient, m̂/√v̂ = sign(h) at k = 1:
    λ₁ = λ₀·exp(−0.3·sign(h₁))."""
    model = build(name, torch.float32)
    hyper = next(iter(find_hyperparameters(model).values()))
    assert hyper.natural_space == "log" and hyper.fast_start
    start = float(hyper.value)
    tuner = OnlineHyperparamCallback(method)
    first = FirstHypergradient(tuner)
    rec = Recorder()
    train, val = datasets(name, torch.float32)
    trainer = make_trainer([tuner, first, rec], 3)
    trainer.fit(model, DataLoader(train, batch_size=4), DataLoader(val, batch_size=64))
    assert trainer.global_step == 3 and first.h != 0
    expected = start * math.exp(-0.3 * math.copysign(1.0, first.h))
    assert rec.values[0][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_exact_tangent_equals_finite_differences_of_trainings(name):
    """float64: Exact's y after 4 steps against (θ_4(λ + δ) − θ_4(λ − δ)) / 2δ of two plain
    trainings (which run the fast kernels, compiled code, cuDNN/oneDNN where they apply)."""

    def model():
        return build(name, torch.float64)

    hyper = next(iter(find_hyperparameters(model())))
    tangent, fd = exact_tangent_and_finite_difference(
        model, 4, datasets(name, torch.float64), hyper, batch_size=4
    )
    assert fd.abs().max() > 1e-4  # the hyperparameter matters
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))
