"""examples/zero_edit: an unmodified LightningCLI project, tuned by one YAML overlay."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from lightning_hyperopt import LearningRate, OnlineHyperparamCallback, TunableDropout, WeightDecay

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "zero_edit"
BASE, OVERLAY = EXAMPLE / "config.yaml", EXAMPLE / "hyperopt.yaml"


def project():
    spec = importlib.util.spec_from_file_location("zero_edit_model", EXAMPLE / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(tmp_path):
    """A few steps on little data: 256 training points in 8 batches of 32."""
    return [
        "--trainer.max_steps=12",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.n=320",
        "--data.batch_size=32",
    ]


def test_the_project_knows_nothing_of_the_package():
    tree = ast.parse((EXAMPLE / "model.py").read_text(encoding="utf-8"))
    imported = [
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        )
    ]
    assert imported and not any(n.startswith("lightning_hyperopt") for n in imported)
    assert "lightning_hyperopt" not in yaml.safe_dump(yaml.safe_load(BASE.read_text()))
    overlay = yaml.safe_load(OVERLAY.read_text())
    assert set(overlay) == {"trainer"} and set(overlay["trainer"]) == {"callbacks+"}


def test_the_overlay_tunes_the_unmodified_project(tmp_path):
    module = project()
    cli = module.cli_main(["fit", "--config", str(BASE), "--config", str(OVERLAY), *tiny(tmp_path)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    assert isinstance(cb.tune["weight_decay"], WeightDecay)
    assert isinstance(cb.tune["lr"], LearningRate)
    assert cb.engine.names == ["net.2.keep", "weight_decay", "lr"]
    assert cli.trainer.global_step == 12
    assert (
        isinstance(cli.model.net[2], TunableDropout)
        and cli.model.net[5].keep is cb.engine.hypers[0]
    )
    # every λ moved from where the project's config put it (keep 1 − 0.2, wd 0.01, lr × 1)
    moved = [float(h.value) for h in cb.engine.hypers]
    assert all(a != b for a, b in zip(moved, [0.8, 0.01, 1.0]))
    optimizer = cli.trainer.optimizers[0]
    assert optimizer.param_groups[0]["weight_decay"] == moved[1]
    logged = cli.trainer.logged_metrics
    for name in ("hyperopt/weight_decay", "hyperopt/lr", "hyperopt/net.2.keep"):
        assert name in logged
    # the checkpoint loads into the project's class as it is, strictly
    (ckpt,) = Path(cli.trainer.checkpoint_callback.dirpath).glob("*.ckpt")
    loaded = module.Classifier.load_from_checkpoint(ckpt)
    assert isinstance(loaded.net[2], torch.nn.Dropout)
    state = torch.load(ckpt, weights_only=True)
    assert set(state["state_dict"]) == set(module.Classifier().state_dict())
    assert set(state["callbacks"]["OnlineHyperparamCallback"]["values"]) == set(cb.engine.names)


def test_the_overlay_shows_in_print_config(tmp_path, capsys):
    with pytest.raises(SystemExit):
        project().cli_main(
            ["fit", "--config", str(BASE), "--config", str(OVERLAY), "--print_config"]
        )
    printed = yaml.safe_load(capsys.readouterr().out)
    (entry,) = printed["trainer"]["callbacks"]
    tune = entry["init_args"]["tune"]
    assert tune["weight_decay"]["class_path"] == "lightning_hyperopt.WeightDecay"
    assert tune["lr"]["class_path"] == "lightning_hyperopt.LearningRate"
    assert entry["init_args"]["adopt_dropout"] == "shared"


def test_the_overlay_appends_to_the_projects_own_callbacks(tmp_path, capsys):
    own = tmp_path / "own.yaml"
    monitor = "pytorch_lightning.callbacks.LearningRateMonitor"
    own.write_text(f"trainer:\n  callbacks:\n    - class_path: {monitor}\n")
    with pytest.raises(SystemExit):
        project().cli_main(
            [
                "fit",
                "--config",
                str(BASE),
                "--config",
                str(own),
                "--config",
                str(OVERLAY),
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == [
        monitor,
        "lightning_hyperopt.OnlineHyperparamCallback",
    ]


def test_a_bad_tune_entry_is_rejected_by_the_parser(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        OVERLAY.read_text().replace("lightning_hyperopt.LearningRate", "lightning_hyperopt.Clip")
    )
    with pytest.raises(SystemExit):
        project().cli_main(["fit", "--config", str(BASE), "--config", str(bad), *tiny(tmp_path)])
    assert "does not correspond to a subclass of Hyperparameter" in capsys.readouterr().err


def summary_of(messages):
    (summary,) = [m for m in messages if m.startswith("OnlineHyperparamCallback:")]
    return summary


def test_the_tuned_values_train_fixed_from_the_written_overlay(tmp_path, lightning_info):
    """The tuned fit writes <log_dir>/tuned.yaml; `fit --config config.yaml --config tuned.yaml`
    without the callback trains with exactly the tuned weight decay, learning rate (λ · the
    configured 0.001) and dropout rate (1 − the tuned keep probability)."""
    module = project()
    tuned_run = tmp_path / "tuned"
    cli = module.cli_main(
        ["fit", "--config", str(BASE), "--config", str(OVERLAY), *tiny(tuned_run)]
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    values = cb.tuned_values()
    keep, wd, lr = (float(h.value) for h in cb.engine.hypers)
    assert values == {
        "net.2.keep": keep,
        "weight_decay": wd,
        "lr": lr,
        "lr/base_lr": lr * 1e-3,
    }
    overlay = Path(cli.trainer.log_dir) / "tuned.yaml"
    assert yaml.safe_load(overlay.read_text(encoding="utf-8")) == {
        "model": {"dropout": 1.0 - keep, "weight_decay": wd, "lr": lr * 1e-3}
    }
    summary = summary_of(lightning_info).splitlines()
    assert summary[0].startswith("OnlineHyperparamCallback: 12 steps, 12 λ updates with Clip(")
    assert '("auto": lr sets how far θ travels' in summary[0]
    assert summary[1].split() == ["net.2.keep", "0.8", "→", f"{keep:.6g}"]
    assert summary[2].split() == ["weight_decay", "0.01", "→", f"{wd:.6g}"]
    assert summary[3].split()[:4] == ["lr", "1", "→", f"{lr:.6g}"]
    assert f"(base lr 0.001 → {lr * 1e-3:.6g})" in summary[3]
    assert "of the fit's" in summary[4]
    assert summary[5].endswith(f"--config {overlay} after your config, without this callback")

    fixed = module.cli_main(
        ["fit", "--config", str(BASE), "--config", str(overlay), *tiny(tmp_path / "fixed")]
    )
    assert not any(isinstance(c, OnlineHyperparamCallback) for c in fixed.trainer.callbacks)
    group = fixed.trainer.optimizers[0].param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (lr * 1e-3, wd)
    dropouts = [m for m in fixed.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert [m.p for m in dropouts] == [1.0 - keep] * 2
    assert fixed.model.hparams.dropout == 1.0 - keep
