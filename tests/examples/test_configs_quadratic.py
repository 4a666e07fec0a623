"""Every shipped YAML config parses and runs a few steps through LightningCLI."""

from pathlib import Path

import pytest

from lightning_hyperopt import Clip, Exact, FirstOrder, OnlineHyperparamCallback, Unroll
from lightning_hyperopt.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
QUADRATIC_OVERLAYS = {
    "clip.yaml": Clip,
    "exact.yaml": Exact,
    "unroll.yaml": Unroll,
    "first_order.yaml": FirstOrder,
}


def run_cli(tmp_path, *configs, extra=()):
    args = ["fit"]
    for c in configs:
        args += ["--config", str(c)]
    args += [
        "--trainer.max_steps=30",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]
    return build_cli(args)


def test_every_quadratic_overlay_is_tested():
    shipped = {p.name for p in (CONFIGS / "quadratic").glob("*.yaml")} - {"base.yaml"}
    assert shipped == set(QUADRATIC_OVERLAYS)


@pytest.mark.parametrize("overlay, method", QUADRATIC_OVERLAYS.items())
def test_quadratic_overlay_runs(tmp_path, overlay, method):
    cli = run_cli(tmp_path, CONFIGS / "quadratic" / "base.yaml", CONFIGS / "quadratic" / overlay)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    assert type(cb.method) is method
    assert cli.trainer.global_step == 30
    assert float(cli.model.lam.value) != 0.0  # λ moved from init_lambda = 0


def test_base_alone_is_the_fixed_lambda_baseline(tmp_path):
    cli = run_cli(tmp_path, CONFIGS / "quadratic" / "base.yaml")
    assert not any(isinstance(c, OnlineHyperparamCallback) for c in cli.trainer.callbacks)
    assert float(cli.model.lam.value) == 0.0


def test_method_by_name(tmp_path):
    cli = run_cli(
        tmp_path,
        CONFIGS / "quadratic" / "base.yaml",
        extra=[
            "--trainer.callbacks+=lightning_hyperopt.OnlineHyperparamCallback",
            "--trainer.callbacks.method=unroll",
            "--trainer.callbacks.warmup_steps=10",
        ],
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    assert isinstance(cb.method, Unroll) and cb.warmup_steps == 10


@pytest.mark.parametrize(
    "bad, named",
    [
        ("radious: 10.0", "radious"),
        ("radius: ten", "radius"),
        ("radius: -1.0", "radius=-1.0 must be a finite number > 0"),
    ],
)
def test_config_typos_and_bad_values_are_rejected(tmp_path, capsys, bad, named):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_hyperopt.OnlineHyperparamCallback\n"
        "      init_args:\n        method:\n          class_path: lightning_hyperopt.Clip\n"
        f"          init_args:\n            {bad}\n"
    )
    # the parser rejects typos and types; the constructor's own check rejects bad values
    with pytest.raises((SystemExit, ValueError)) as error:
        run_cli(tmp_path, CONFIGS / "quadratic" / "base.yaml", overlay)
    assert named in capsys.readouterr().err + str(error.value)


def test_unknown_method_name_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(
            tmp_path,
            CONFIGS / "quadratic" / "base.yaml",
            extra=[
                "--trainer.callbacks+=lightning_hyperopt.OnlineHyperparamCallback",
                "--trainer.callbacks.method=newton",
            ],
        )
    assert "method" in capsys.readouterr().err


def test_a_declared_lambda_trains_fixed_from_the_written_overlay(tmp_path):
    """The module's own λ (``init_lambda`` in the config) is written to tuned.yaml; the base
    config with it trains with λ fixed at the tuned value."""
    import yaml

    quadratic = CONFIGS / "quadratic"
    cli = run_cli(tmp_path / "tuned", quadratic / "base.yaml", quadratic / "clip.yaml")
    lam = float(cli.model.lam.value)
    overlay = Path(cli.trainer.log_dir) / "tuned.yaml"
    assert yaml.safe_load(overlay.read_text(encoding="utf-8")) == {
        "model": {
            "class_path": "experiments.quadratic.QuadraticProblem",
            "init_args": {"init_lambda": lam},
        }
    }
    fixed = run_cli(tmp_path / "fixed", quadratic / "base.yaml", overlay)
    assert not any(isinstance(c, OnlineHyperparamCallback) for c in fixed.trainer.callbacks)
    assert float(fixed.model.lam.value) == lam and fixed.trainer.global_step == 30
