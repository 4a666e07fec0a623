"""The method ``"auto"`` picks: Clip(50) for a learning rate or momentum, FirstOrder otherwise;
the callback resolves it at fit start, from the hyperparameters the fit tunes."""

import pytest
import torch

from lightning_hyperopt import (
    Clip,
    FirstOrder,
    L2Penalty,
    LearningRate,
    Momentum,
    OnlineHyperparamCallback,
    WeightDecay,
)
from lightning_hyperopt.core.methods import (
    HORIZON_RADIUS,
    default_method,
    default_method_reason,
    resolve_method,
)


@pytest.mark.parametrize(
    ("hyperparameters", "expected"),
    [
        ({"l2": L2Penalty(1e-3)}, FirstOrder),
        ({"wd": WeightDecay()}, FirstOrder),
        ({"wd": WeightDecay(), "lr": LearningRate()}, Clip),
        ({"momentum": Momentum(init=0.9)}, Clip),
    ],
)
def test_auto_is_clip_for_a_learning_rate_or_momentum(hyperparameters, expected):
    method = default_method(hyperparameters)
    assert type(method) is expected
    if expected is Clip:
        assert method.radius == HORIZON_RADIUS == 50.0


def test_the_reason_names_what_made_the_choice():
    assert default_method_reason({"l2": L2Penalty(1e-3)}).startswith("regularizers only")
    one = default_method_reason({"wd": WeightDecay(), "lr": LearningRate()})
    assert one.startswith("lr sets how far θ travels") and "r = 50 carries its" in one
    two = default_method_reason({"lr": LearningRate(), "beta": Momentum(init=0.9)})
    assert two.startswith("lr, beta set how far") and "carries their effect" in two


def test_auto_is_the_callbacks_default_and_resolves_at_fit_start():
    import pytorch_lightning as pl
    from conftest import make_trainer

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.lr_scale = LearningRate()

        def training_step(self, batch, batch_idx):
            return (self.w * batch[0]).sum().pow(2)

        def validation_loss(self, batch):
            return (self.w * batch[0]).sum().pow(2)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.randn(8, 3), batch_size=4)

        hyperopt_dataloader = train_dataloader

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    cb = OnlineHyperparamCallback()
    assert cb.method is None
    make_trainer([cb], max_steps=3).fit(Model())
    assert isinstance(cb.method, Clip) and cb.method.radius == 50.0
    assert isinstance(cb.engine.method, Clip)


def test_auto_is_not_a_method_outside_the_callback():
    with pytest.raises(ValueError, match="method='auto' is not supported"):
        resolve_method("auto")
