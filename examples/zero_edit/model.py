"""A small LightningCLI project as a team has it: a classifier, its data and a config.

Nothing here knows of lightning_hyperopt. Train with the configured weight decay, learning rate
and dropout:

    python examples/zero_edit/model.py fit --config examples/zero_edit/config.yaml

Tune all three online by adding one overlay on the command line, with no change to this file
or to config.yaml:

    python examples/zero_edit/model.py fit --config examples/zero_edit/config.yaml \
        --config examples/zero_edit/hyperopt.yaml
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Classifier(pl.LightningModule):
    """An MLP with dropout, trained by AdamW."""

    def __init__(
        self,
        features: int = 32,
        classes: int = 4,
        hidden: int = 64,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


class Blobs(pl.LightningDataModule):
    """``n`` noisy points around ``classes`` random centres in ``features`` dimensions; the
    first 80% train, the rest validate."""

    def __init__(
        self,
        n: int = 4096,
        features: int = 32,
        classes: int = 4,
        noise: float = 2.0,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        h = self.hparams
        g = torch.Generator().manual_seed(h.seed)
        centres = torch.randn(h.classes, h.features, generator=g)
        y = torch.randint(h.classes, (h.n,), generator=g)
        x = centres[y] + h.noise * torch.randn(h.n, h.features, generator=g)
        cut = int(0.8 * h.n)
        self.train_set = TensorDataset(x[:cut], y[:cut])
        self.val_set = TensorDataset(x[cut:], y[cut:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


def cli_main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(Classifier, Blobs, args=args)


if __name__ == "__main__":
    cli_main()
