"""``for_namespace``: the models rebuilt on ``lightning.pytorch`` train as the originals do."""

import pickle

import pytest
import pytorch_lightning as pl
import torch
from conftest import make_trainer
from torch.utils.data import DataLoader, TensorDataset

from experiments.models import for_namespace
from experiments.models.lstm_lm import LSTMLanguageModel
from experiments.models.mlp import MLP
from lightning_hyperopt import OnlineHyperparamCallback
from lightning_hyperopt.core.hyperparameters import find_hyperparameters

L = pytest.importorskip("lightning.pytorch", reason="the `lightning` package (dev extra)")

SMALL = dict(in_features=12, hidden=(8, 8), num_classes=3, seed=0, per_layer_l2=True, keep=0.8)


def test_the_public_classes_are_unchanged():
    for cls in (MLP, LSTMLanguageModel):
        assert issubclass(cls, pl.LightningModule) and not issubclass(cls, L.LightningModule)
        assert cls.__module__.startswith("experiments.models.")
    assert pickle.loads(pickle.dumps(MLP(**SMALL))).hparams == MLP(**SMALL).hparams


@pytest.mark.parametrize("name, cls", [("mlp", MLP), ("lstm_lm", LSTMLanguageModel)])
def test_twin_is_the_same_model_on_lightning_pytorch(name, cls):
    twin = for_namespace(name)
    assert twin is for_namespace(cls, "lightning.pytorch") is for_namespace(twin)  # cached
    assert for_namespace(cls, "pytorch_lightning") is cls
    assert issubclass(twin, L.LightningModule) and not issubclass(twin, pl.LightningModule)
    assert twin.__name__ == cls.__name__ and twin.__doc__ == cls.__doc__
    kwargs = SMALL if cls is MLP else dict(vocab_size=11, hidden_size=4)
    torch.manual_seed(0)
    a = cls(**kwargs)
    torch.manual_seed(0)
    b = twin(**kwargs)
    assert dict(a.hparams) == dict(b.hparams)
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v)


def test_twin_tunes_like_the_original():
    """Same seed, same data: the callback moves the five λ of the twin under a lightning.pytorch
    Trainer exactly as those of the original under a pytorch_lightning one."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(112, 12, generator=g)
    y = x[:, :3].argmax(1)
    train, val = TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])
    values = []
    for namespace in ("pytorch_lightning", "lightning.pytorch"):
        torch.manual_seed(0)
        model = for_namespace(MLP, namespace)(lr=0.05, decay_steps=8, **SMALL)
        trainer = make_trainer([OnlineHyperparamCallback()], 8, namespace=namespace)
        trainer.fit(model, DataLoader(train, batch_size=16), DataLoader(val, batch_size=32))
        values.append({k: float(h.value) for k, h in find_hyperparameters(model).items()})
    assert list(values[0]) == ["l2.0", "l2.1", "l2.2", "keep"]
    assert values[0] == values[1] and values[0]["l2.0"] != 1e-3


def test_errors():
    with pytest.raises(ValueError, match=r"namespace='lightning' is not supported; accepted"):
        for_namespace(MLP, "lightning")
    with pytest.raises(ValueError, match=r"model 'mlpp' not found; accepted: .*'lstm_lm', 'mlp'"):
        for_namespace("mlpp")

    class Own(pl.LightningModule):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="defines its logic in its own body"):
        for_namespace(Own)
    with pytest.raises(TypeError, match="is not a model declared as"):
        for_namespace(torch.nn.Linear)
