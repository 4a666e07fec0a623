"""The LSTM language model of the paper's PTB experiment (Table 3): Zaremba et al. (2014).

    h_t⁽⁰⁾ = E x_t,   h_t⁽ᵏ⁾ = LSTM_k(D_{k−1}(h_t⁽ᵏ⁻¹⁾), h_{t−1}⁽ᵏ⁾)   (k = 1…L),
    p(x_{t+1} | x_{≤t}) = softmax(W D_L(h_t⁽ᴸ⁾) + b)

with the dropout layers D_k = :class:`TunableDropout` on the non-recurrent connections only
(h_{t−1} → h_t is never dropped), all sharing one keep probability λ (or one per layer).

    L_T(θ, λ) = E_m[ Σ_{t ≤ T} mean_batch CE_t ]     (Zaremba's cost: summed over the T unrolled
                                                        steps, so SGD's lr = 1 is theirs)
    L_V(θ)    = mean_{batch, t} CE_t                  (per token, dropout off; perplexity = e^{L_V})

Truncated BPTT: the windows of :class:`~experiments.data.PTBDataModule` come in stream
order, the hidden state is carried from one window to the next and detached (a fresh zero
state at the start of every pass over the training split, and of every validation/test run).
The carried states are not saved in checkpoints: a resumed run restarts them from zeros.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.text import Perplexity

from lightning_hyperopt.core.arguments import check_integer, check_positive
from lightning_hyperopt.core.dropout import TunableDropout
from lightning_hyperopt.core.hyperparameters import Difference, KeepProbability, LearningRate

State = list[tuple[Tensor, Tensor]]  # (h, c) of each layer, each (1, batch, hidden)
Batch = tuple[Tensor, Tensor]  # (input, target) token ids, (batch, time)


def _detached(state: State) -> State:
    return [(h.detach(), c.detach()) for h, c in state]


class _LSTMLanguageModelLogic:
    """The language model's logic, free of any Lightning namespace: :class:`LSTMLanguageModel`
    puts it on ``pytorch_lightning.LightningModule``, and
    :func:`experiments.models.for_namespace` on ``lightning.pytorch.LightningModule``."""

    def __init__(
        self,
        vocab_size: int = 10000,
        hidden_size: int = 200,
        embedding_size: int | None = None,
        num_layers: int = 2,
        keep_prob: float = 0.5,
        keep_bounds: tuple[float, float] = (0.1, 1.0),
        keep_eps: float = 0.05,
        keep_per_layer: bool = False,
        keep_difference: Difference = "central",
        init_scale: float = 0.1,
        lr: float = 1.0,
        lr_decay: float = 0.95,
        lr_decay_every: int = 5000,
        tune_lr: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        vocab_size = check_integer("vocab_size", vocab_size, 1)
        hidden_size = check_integer("hidden_size", hidden_size, 1)
        embedding_size = check_integer("embedding_size", embedding_size or hidden_size, 1)
        num_layers = check_integer("num_layers", num_layers, 1)
        self.lr = check_positive("lr", lr)
        if not 0.0 < lr_decay <= 1.0:
            raise ValueError(f"lr_decay={lr_decay!r} must be in (0, 1]")
        self.lr_decay = float(lr_decay)
        self.lr_decay_every = check_integer("lr_decay_every", lr_decay_every, 1)
        init_scale = check_positive("init_scale", init_scale)

        def keep() -> KeepProbability:
            return KeepProbability(keep_prob, keep_bounds, eps=keep_eps, difference=keep_difference)

        if not keep_per_layer:
            self.keep_prob = keep()  # registered first, so the tuner names it "keep_prob"
        #: λ scaling the step-decayed learning rate (η_t = λ·lr_t), when it is tuned
        self.lr_scale: LearningRate | None = LearningRate() if tune_lr else None
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        sizes = [embedding_size] + [hidden_size] * num_layers
        self.lstms = nn.ModuleList(
            nn.LSTM(a, b, batch_first=True) for a, b in itertools.pairwise(sizes)
        )
        self.dropouts = nn.ModuleList(
            TunableDropout(keep() if keep_per_layer else self.keep_prob)
            for _ in range(num_layers + 1)
        )
        self.decoder = nn.Linear(hidden_size, vocab_size)
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale)
        self.val_ppl = Perplexity()
        self.test_ppl = Perplexity()
        # carried hidden states, by stream; "train" is the input state of the current step
        self._states: dict[str, State | None] = {}
        self._next_train_state: State | None = None

    # ------------------------------------------------------------------------------- model
    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits (batch, time, vocab) of the next word, and the final (h, c) of each layer."""
        h = self.dropouts[0](self.embedding(x))
        new_state = []
        for k, lstm in enumerate(self.lstms):
            h, hc = lstm(h, None if state is None else state[k])
            h = self.dropouts[k + 1](h)
            new_state.append(hc)
        return self.decoder(h), new_state

    def _carried(self, stream: str, x: Tensor) -> State | None:
        state = self._states.get(stream)
        # a loader with another number of rows starts its own streams
        return state if state is not None and state[0][0].shape[1] == x.shape[0] else None

    def _token_loss(self, batch: Batch, stream: str) -> tuple[Tensor, Tensor, State]:
        """Mean cross-entropy per token, the logits and the new state, from ``stream``'s state."""
        x, y = batch
        logits, state = self(x, self._carried(stream, x))
        return F.cross_entropy(logits.flatten(0, 1), y.reshape(-1)), logits, state

    def _advance(self, stream: str, batch: Batch) -> tuple[Tensor, Tensor]:
        """Loss and logits of the next window of ``stream``, carrying its detached state."""
        loss, logits, state = self._token_loss(batch, stream)
        self._states[stream] = _detached(state)
        return loss, logits

    def weights(self) -> list[Tensor]:
        """The weight matrices (the embedding, the LSTMs' input and recurrent weights, the
        decoder's), not the biases: what a decoupled weight decay would act on."""
        return [p for name, p in self.named_parameters() if "bias" not in name]

    # ---------------------------------------------------------------------- the tuner's API
    def training_loss(self, batch: Batch) -> Tensor:
        """L_T(θ, λ): the cross-entropy summed over the window's time steps, averaged over the
        batch, from the input state of the current training step (no state is changed)."""
        loss, _, _ = self._token_loss(batch, "train")
        return loss * batch[0].shape[1]

    def validation_loss(self, batch: Batch) -> Tensor:
        """L_V(θ): the mean cross-entropy per token of the next window of the tuner's own
        validation stream (its state carried across calls)."""
        return self._advance("hyperopt", batch)[0]

    # ------------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        if self.trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"LSTMLanguageModel: accumulate_grad_batches="
                f"{self.trainer.accumulate_grad_batches} is not supported (truncated BPTT carries "
                "the hidden state from one batch to the next); use 1"
            )

    def on_train_epoch_start(self) -> None:
        self._states["train"] = None

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, _, state = self._token_loss(batch, "train")
        self._next_train_state = _detached(state)
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=False)
        self.log("train_ppl", loss.detach().exp(), on_step=True, on_epoch=False, prog_bar=True)
        return loss * batch[0].shape[1]  # = training_loss(batch)

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        self._states["train"] = self._next_train_state

    def on_validation_epoch_start(self) -> None:
        self._states["val"] = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, logits = self._advance("val", batch)
        self.val_ppl.update(logits, batch[1])
        self.log("val_loss", loss, on_step=False, on_epoch=True)
        self.log("val_ppl", self.val_ppl, on_step=False, on_epoch=True, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._states["test"] = None

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, logits = self._advance("test", batch)
        self.test_ppl.update(logits, batch[1])
        self.log("test_loss", loss, on_step=False, on_epoch=True)
        self.log("test_ppl", self.test_ppl, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=self.lr_decay_every, gamma=self.lr_decay
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class LSTMLanguageModel(_LSTMLanguageModelLogic, pl.LightningModule):
    """Zaremba et al.'s word-level LSTM LM with a tunable dropout keep probability.

    Paper configurations (batch 20 and 35 unrolled steps come from the datamodule): "small"
    ``hidden_size=200, init_scale=0.1``; "medium" ``hidden_size=650, init_scale=0.05``
    (the paper's Table 3). Gradient-norm clipping at 5 (Zaremba) is the Trainer's
    ``gradient_clip_val: 5.0``, which the tangent y = dθ/dλ follows exactly.

    ``training_loss(batch)`` is a pure function of (θ, λ, batch) and the hidden state that
    entered the current training step (``training_step`` stores the new state, which becomes
    the input only at ``on_train_batch_end``), so the tuner's replays see the step's own input.
    Gradient accumulation is refused: each micro-batch would need its own input state.

    Args:
        vocab_size: number of words (10,000 for PTB).
        hidden_size: units per LSTM layer.
        embedding_size: word-vector size; ``None`` takes ``hidden_size`` (Zaremba).
        num_layers: stacked LSTM layers.
        keep_prob: λ₀, the keep probability of every dropout layer (1.0: no dropout).
        keep_bounds: bounds of λ, 0 < low < high ≤ 1.
        keep_eps: ε of the finite-difference estimate of ∂g_T/∂λ (:class:`KeepProbability`).
        keep_per_layer: one λ per dropout layer (``num_layers + 1`` of them) instead of one.
        keep_difference: ``"central"`` (two coupled replays) or ``"one_sided"`` (one replay on
            the step's own masks), the finite difference of :class:`KeepProbability`.
        init_scale: weights start uniform in [−init_scale, init_scale].
        lr: SGD learning rate at step 0 (1.0 with Zaremba's summed cost).
        lr_decay: factor applied to lr every ``lr_decay_every`` optimizer steps (the paper:
            0.95 every 5,000).
        lr_decay_every: steps between two decays.
        tune_lr: declare ``self.lr_scale``, a :class:`LearningRate` λ₀ = 1 scaling the
            learning rate at every step (η_t = λ·lr_t; logged as ``hyperopt/lr_scale``).
    """
