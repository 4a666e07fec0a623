"""Every shipped PTB config parses and runs a few steps on a tiny generated corpus (CPU)."""

import random
from pathlib import Path

import pytest
import torch

from experiments.data.ptb import PTB_FILES
from experiments.models.lstm_lm import LSTMLanguageModel
from lightning_hyperopt import (
    Clip,
    Exact,
    FirstOrder,
    OnlineHyperparamCallback,
    Unroll,
)
from lightning_hyperopt.cli import build_cli

PTB = Path(__file__).resolve().parents[2] / "examples" / "configs" / "ptb"
OVERLAYS = {
    "clip.yaml": Clip,
    "exact.yaml": Exact,
    "unroll.yaml": Unroll,
    "first_order.yaml": FirstOrder,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """PTB-format files of random sentences over 30 words (each line starts with a space)."""
    folder = tmp_path_factory.mktemp("ptb")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    for name, lines in zip(PTB_FILES.values(), (60, 20, 20)):
        text = "".join(
            " " + " ".join(rng.choices(words, k=rng.randint(3, 12))) + " \n" for _ in range(lines)
        )
        (folder / name).write_text(text)
    return folder


def run_cli(tmp_path, corpus, *configs, extra=(), run=True):
    args = ["fit"] if run else []
    for name in configs:
        args += ["--config", str(PTB / name)]
    args += [
        f"--data.data_dir={corpus}",
        "--data.download=false",
        "--data.verify=false",
        "--data.batch_size=4",
        "--data.bptt=6",
        "--data.eval_batch_size=2",
        "--model.vocab_size=40",
        "--model.hidden_size=8",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=5",  # Unroll(5) updates λ after the fifth step
        "--trainer.val_check_interval=4",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]
    return build_cli(args, run=run)


def test_every_ptb_overlay_is_tested():
    shipped = {p.name for p in PTB.glob("*.yaml")} - {"base.yaml", "medium.yaml"}
    assert shipped == set(OVERLAYS)


@pytest.mark.parametrize("overlay, method", OVERLAYS.items())
def test_ptb_overlay_runs(tmp_path, corpus, overlay, method):
    cli = run_cli(
        tmp_path, corpus, "base.yaml", overlay, extra=["--trainer.callbacks.warmup_steps=0"]
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineHyperparamCallback)]
    assert type(cb.method) is method and cb.warmup_steps == 0
    assert cli.trainer.global_step == 5
    lam = float(cli.model.keep_prob.value)
    assert lam != 0.5 and 0.1 <= lam <= 1.0  # moved from keep_prob: 0.5
    assert "val_ppl" in cli.trainer.callback_metrics


def test_base_alone_keeps_the_keep_probability_fixed(tmp_path, corpus):
    cli = run_cli(tmp_path, corpus, "base.yaml")
    assert not any(isinstance(c, OnlineHyperparamCallback) for c in cli.trainer.callbacks)
    assert float(cli.model.keep_prob.value) == 0.5
    assert cli.trainer.gradient_clip_val == 5.0


def test_medium_overlay_is_the_650_unit_gpu_model(tmp_path, corpus):
    """Parsed, not trained: medium.yaml asks for a GPU; its model settings are checked here."""
    configs = ("base.yaml", "clip.yaml", "medium.yaml")
    args = [a for name in configs for a in ("--config", str(PTB / name))]
    cli = build_cli([*args, f"--data.data_dir={corpus}", "--trainer.accelerator=cpu"], run=False)
    model = cli.model
    assert isinstance(model, LSTMLanguageModel)
    assert [lstm.hidden_size for lstm in model.lstms] == [650, 650]
    assert model.embedding.weight.shape == (10000, 650)
    assert float(model.embedding.weight.abs().max()) <= 0.05
    assert cli.trainer.max_steps == 250000
    assert (cli.datamodule.batch_size, cli.datamodule.bptt) == (20, 35)
    # Zaremba's medium model: 19.8M parameters (PyTorch's LSTM has two bias vectors per gate)
    assert sum(p.numel() for p in model.parameters()) == 19_780_400
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 3, dtype=torch.long))[0]).all()
