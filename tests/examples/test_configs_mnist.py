"""Every shipped MNIST config (Table 2) parses and trains a few steps through LightningCLI."""

from pathlib import Path

import pytest
import torch
from fake_data import write_mnist

from experiments.models.mlp import MLP
from lightning_hyperopt import Clip, Exact, FirstOrder, OnlineHyperparamCallback, Unroll
from lightning_hyperopt.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs" / "mnist"
OVERLAYS = {
    "clip.yaml": Clip,
    "exact.yaml": Exact,
    "unroll.yaml": Unroll,
    "first_order.yaml": FirstOrder,
    "adaptive.yaml": Clip,
}
#: overlays that change the model, not the method
MODEL_OVERLAYS = {"adamw.yaml"}


@pytest.fixture
def mnist_dir(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_mnist(folder, n_train=80, n_test=8)
    return folder


def run_cli(tmp_path, mnist_dir, *configs, extra=()):
    args = ["fit"]
    for c in configs:
        args += ["--config", str(c)]
    args += [
        f"--data.data_dir={mnist_dir}",
        "--data.verify=false",
        "--data.download=false",
        "--data.batch_size=10",
        "--trainer.max_steps=12",
        "--trainer.val_check_interval=6",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]
    return build_cli(args)


def test_every_mnist_overlay_is_tested():
    shipped = {p.name for p in CONFIGS.glob("*.yaml")} - {"base.yaml"}
    assert shipped == set(OVERLAYS) | MODEL_OVERLAYS


@pytest.mark.parametrize("overlay, method", OVERLAYS.items())
def test_mnist_overlay_runs(tmp_path, mnist_dir, overlay, method):
    # no warm-up, so that λ moves within the 12 steps
    cli = run_cli(
        tmp_path, mnist_dir, CONFIGS / "base.yaml", CONFIGS / overlay,
        extra=["--trainer.callbacks.init_args.warmup_steps=0"],
    )  # fmt: skip
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    assert type(cb.method) is method
    assert cli.trainer.global_step == 12
    assert float(cli.model.l2.value) != 1e-3  # λ moved from the base config's λ₀
    assert torch.isfinite(cli.trainer.callback_metrics["val_loss"])


def test_mnist_base_alone_is_the_fixed_lambda_baseline(tmp_path, mnist_dir):
    cli = run_cli(tmp_path, mnist_dir, CONFIGS / "base.yaml")
    assert not any(isinstance(c, OnlineHyperparamCallback) for c in cli.trainer.callbacks)
    assert isinstance(cli.model, MLP) and float(cli.model.l2.value) == 1e-3
    # the learning rate decayed from 0.1 towards 0.01 over max_steps (12 steps here)
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.01, rel=1e-9)


def test_mlp_penalizes_weights_only():
    model = MLP(l2=0.5, hidden=(3,), in_features=4, num_classes=2, seed=0)
    batch = (torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
    weights = sum((layer.weight**2).sum() for layer in model.layers)
    expected = model.validation_loss(batch) + 0.25 * weights
    torch.testing.assert_close(model.training_loss(batch), expected.to(torch.float32))
    assert [tuple(w.shape) for w in model.weights()] == [(3, 4), (2, 3)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, r"lr=0.0 must be a finite number > 0"),
        ({"final_lr": float("inf")}, r"final_lr=inf must be a finite number > 0"),
        ({"decay_steps": 0}, r"decay_steps=0 must be an integer >= 1 or None"),
        ({"momentum": 1.0}, r"momentum=1.0 must be in \[0, 1\)"),
        ({"hidden": (100, 0)}, r"must be integers >= 1, got \[784, 100, 0, 10\]"),
        ({"l2": -1.0}, r"init=-1.0 is outside bounds"),
        ({"parameterization": "log"}, r"parameterization='log' needs bounds with low > 0"),
    ],
)
def test_mlp_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP(**kwargs)


def test_mlp_seed_fixes_the_initialization_and_leaves_the_global_rng():
    state = torch.get_rng_state()
    a, b = MLP(seed=3), MLP(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_adamw_overlay_alone_keeps_its_weight_decay_and_tuned_moves_it(tmp_path, mnist_dir):
    from lightning_hyperopt import AdaptiveStep

    fixed = run_cli(tmp_path, mnist_dir, CONFIGS / "base.yaml", CONFIGS / "adamw.yaml")
    assert type(fixed.trainer.optimizers[0]) is torch.optim.AdamW
    assert float(fixed.model.wd.value) == 1e-2 and fixed.model.l2 is None
    tuned = run_cli(
        tmp_path,
        mnist_dir,
        CONFIGS / "base.yaml",
        CONFIGS / "adamw.yaml",
        CONFIGS / "adaptive.yaml",
        extra=["--trainer.callbacks.init_args.warmup_steps=0"],
    )
    (cb,) = [c for c in tuned.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    assert cb.engine.names == ["wd"] and isinstance(cb.hyper_optimizer, AdaptiveStep)
    lam = float(tuned.model.wd.value)
    assert lam != 1e-2 and tuned.trainer.optimizers[0].param_groups[0]["weight_decay"] == lam
    assert tuned.trainer.optimizers[0].param_groups[1]["weight_decay"] == 0.0
