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
    DEFAULT_HYPER_EVERY,
    HORIZON_RADIUS,
    default_hyper_every,
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


@pytest.mark.parametrize(
    ("hyperparameters", "chosen", "expected"),
    [
        ({"l2": L2Penalty(1e-3)}, True, DEFAULT_HYPER_EVERY),
        ({"wd": WeightDecay(), "l2": L2Penalty(1e-3)}, True, DEFAULT_HYPER_EVERY),
        ({"l2": L2Penalty(1e-3)}, False, 1),  # a method the user named: the paper's cadence
        ({"wd": WeightDecay(), "lr": LearningRate()}, True, 1),
        ({"momentum": Momentum(init=0.9)}, True, 1),
    ],
)
def test_auto_cadence_is_four_for_the_first_order_default_only(hyperparameters, chosen, expected):
    assert DEFAULT_HYPER_EVERY == 4
    assert default_hyper_every(default_method(hyperparameters), chosen) == expected


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


def test_auto_cadence_resolves_at_fit_start():
    """The default callback on a regularizer draws g_V on every 4th step (λ moves after steps
    4 and 8 of 9); a named method keeps one update per step."""
    from conftest import Regression, make_trainer, regression_data
    from torch.utils.data import DataLoader

    def fit(**arguments):
        train, val = regression_data()
        model = Regression("l2", 0.05)
        cb = OnlineHyperparamCallback(**arguments)
        make_trainer([cb], 9).fit(model, DataLoader(train, batch_size=6), DataLoader(val, 48))
        return cb

    default = fit()
    assert isinstance(default.method, FirstOrder) and default.plan.hyper_every == 4
    assert default.engine.state.updates == 2
    named = fit(method="first_order")
    assert named.plan.hyper_every == 1 and named.engine.state.updates == 9
    assert fit(hyper_every=3).engine.state.updates == 3


def test_auto_is_not_a_method_outside_the_callback():
    with pytest.raises(ValueError, match="method='auto' is not supported"):
        resolve_method("auto")
