"""MLP options for several hyperparameters: an L2 coefficient per weight matrix, dropout."""

from pathlib import Path

import pytest
import torch
from fake_data import write_mnist
from torch.nn import functional as F

from experiments.models.mlp import MLP
from lightning_hyperopt import OnlineHyperparamCallback
from lightning_hyperopt.core.hyperparameters import KeepProbability, L2Penalty, find_hyperparameters

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs" / "mnist"
SMALL = dict(in_features=6, hidden=(5, 4), num_classes=3, seed=0)


def batch(n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_default_model_is_unchanged():
    """One penalty named "l2", no dropout: the same hyperparameters and state_dict keys (so the
    same checkpoints) as before the options existed."""
    model = MLP(**SMALL)
    assert list(find_hyperparameters(model)) == ["l2"]
    assert isinstance(model.l2, L2Penalty) and model.keep is None
    layers = [f"layers.{k}.{name}" for k in range(3) for name in ("weight", "bias")]
    assert list(model.state_dict()) == [*layers, "l2.value"]


def test_per_layer_l2_loss():
    model = MLP(l2=0.3, per_layer_l2=True, parameterization="log", min_l2=1e-6, **SMALL)
    hparams = find_hyperparameters(model)
    assert list(hparams) == ["l2.0", "l2.1", "l2.2"]  # one per weight matrix, named apart
    assert len({id(h) for h in hparams.values()}) == 3
    for h in hparams.values():
        assert float(h.value) == 0.3 and h.parameterization == "log" and h.bounds[0] == 1e-6
    lams = [0.5, 2.0, 0.125]
    for h, lam in zip(hparams.values(), lams, strict=True):
        h.value.fill_(lam)
    x, y = batch()
    expected = F.cross_entropy(model(x), y) + sum(
        lam / 2 * (layer.weight**2).sum() for lam, layer in zip(lams, model.layers, strict=True)
    )
    torch.testing.assert_close(model.training_loss((x, y)), expected)


def test_keep_adds_dropout_after_every_hidden_activation_in_training_mode_only():
    model = MLP(keep=0.6, **SMALL)
    assert list(find_hyperparameters(model)) == ["l2", "keep"]
    assert isinstance(model.keep, KeepProbability) and float(model.keep.value) == 0.6
    assert all(d.keep is model.keep for d in model.dropout)  # one shared λ
    plain = MLP(**SMALL)  # the same weights (seed 0), no dropout
    x, _ = batch()
    model.eval()
    torch.testing.assert_close(model(x), plain(x))
    model.train()
    torch.manual_seed(3)
    out = model(x)
    # the same forward by hand: inverted dropout m / λ with u from the global RNG, per layer
    torch.manual_seed(3)
    h = x
    for layer in plain.layers[:-1]:
        h = F.relu(layer(h))
        h = h * (torch.rand(h.shape) < 0.6).float() / 0.6
    torch.testing.assert_close(out, plain.layers[-1](h))
    assert not torch.allclose(out, plain(x))


@pytest.mark.parametrize("keep", [0, 0.05, 1.5, True, "0.5", float("nan")])
def test_keep_validation(keep):
    with pytest.raises(ValueError, match=r"keep=.* must be None \(no dropout\) or a keep prob"):
        MLP(keep=keep, **SMALL)


def test_keep_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="keep needs at least one hidden layer"):
        MLP(in_features=6, hidden=(), num_classes=3, keep=0.5)


def test_cli_tunes_every_hyperparameter(tmp_path):
    """Through LightningCLI and the shipped Clip overlay: the new arguments parse, and the
    callback finds and moves all five hyperparameters (4 L2 coefficients, 1 keep probability)."""
    from lightning_hyperopt.cli import build_cli

    folder = tmp_path / "mnist"
    folder.mkdir()
    write_mnist(folder, n_train=80, n_test=8)
    cli = build_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "base.yaml"),
            "--config",
            str(CONFIGS / "clip.yaml"),
            "--model.per_layer_l2=true",
            "--model.keep=0.8",
            "--model.hidden=[16, 16, 16]",
            "--trainer.callbacks.init_args.warmup_steps=0",
            f"--data.data_dir={folder}",
            "--data.verify=false",
            "--data.download=false",
            "--data.batch_size=10",
            "--trainer.max_steps=6",
            "--trainer.val_check_interval=6",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert any(isinstance(c, OnlineHyperparamCallback) for c in cli.trainer.callbacks)
    model = cli.model
    assert isinstance(model, MLP) and cli.trainer.global_step == 6
    hparams = find_hyperparameters(model)
    assert list(hparams) == ["l2.0", "l2.1", "l2.2", "l2.3", "keep"]
    assert all(float(model.l2[k].value) != 1e-3 for k in range(4))  # each λ_k moved
    assert float(model.keep.value) != 0.8


def test_adamw_with_tuned_weight_decay_builds_two_groups():
    from lightning_hyperopt import WeightDecay

    model = MLP(l2=None, optimizer="adamw", weight_decay=0.02, lr=1e-3, decay_steps=10, seed=0)
    assert model.l2 is None and isinstance(model.wd, WeightDecay)
    opt = model.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.02, 0.0]
    assert opt.param_groups[0]["params"] == model.weights()
    plain = MLP(l2=None, optimizer="adamw", lr=1e-3, decay_steps=10).configure_optimizers()
    assert plain["optimizer"].param_groups[0]["weight_decay"] == 0.0  # not AdamW's 0.01
    with pytest.raises(ValueError, match=r"optimizer='adam' is not supported"):
        MLP(optimizer="adam")
    with pytest.raises(ValueError, match=r"per_layer_l2=True needs l2"):
        MLP(l2=None, per_layer_l2=True)
