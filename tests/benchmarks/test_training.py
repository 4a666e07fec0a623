"""Tables 2 and 3 and the cost benchmark at smoke scale, on tiny generated data.

They check that every output is produced and sane, not that the numbers match the paper.
"""

import json
import math

import pytest
import yaml
from fake_data import write_corpus, write_mnist

from benchmarks.cli import main
from benchmarks.cost import COST_ROWS, PER_LAYER_ROWS, SMALL_GV_ROW
from benchmarks.records import bare_trainer
from benchmarks.training import MNIST, PTB, Row, compose_config, summarize

MNIST_EXTRA = ["data.init_args.verify=false", "data.init_args.download=false"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist(folder, n_train=200, n_test=20)
    return folder


@pytest.fixture(scope="module")
def ptb_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ptb")
    words = [f"w{i}" for i in range(30)]
    lines = [
        " " + " ".join(words[(3 * i + j * j) % 30] for j in range(8)) + " \n" for i in range(60)
    ]
    write_corpus(
        folder,
        {"train": "".join(lines), "valid": "".join(lines[:20]), "test": "".join(lines[20:40])},
    )
    return folder


def records(out):
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def test_table2_smoke(tmp_path, mnist_dir):
    out = tmp_path / "t2"
    args = ["table2", "--out", str(out), "--data-dir", str(mnist_dir), "--smoke", "--no-progress"]
    main([*args, "--hyper-scale", "2", "--warmup", "0", *[f"--extra={e}" for e in MNIST_EXTRA]])
    runs = records(out)
    # 1 start × (fixed grid + 7 online rows)
    assert len(runs) == 8 and {r["row"] for r in runs} == {row.label for row in MNIST.rows}
    for r in runs:
        assert r["steps"] == 12 and r["val"]["step"] == [6, 12]
        assert all(math.isfinite(v) for v in r["val"]["val_loss"] + r["curves"]["train_loss"])
        assert math.isfinite(r["test_loss"]) and r["fit_s"] > 0
        lam = r["curves"]["lambda/l2"]
        assert len(lam) == len(r["curves"]["step"]) and all(v >= 0 for v in lam)
        assert r["config"]["model"]["init_args"]["l2"] == r["init"]
        if r["row"] == "Fixed λ":
            assert r["method"] is None and set(lam) == {r["init"]}
        else:
            assert r["method"].startswith(("Clip", "Unroll", "FirstOrder"))
            assert r["method"].endswith("warmup_steps=0") and lam[-1] != r["init"]  # λ moved
    clip20 = next(r for r in runs if r["row"] == "Clip20")
    assert "radius=20.0" in clip20["method"]
    assert "hyper_lr_scale=0.0006" in clip20["method"]  # the config's 3e-4, --hyper-scale 2
    table = (out / "table.md").read_text()
    for label in ("Fixed λ", "Unroll1-gTgV", "Unroll10", "Clip20", "Time to quality"):
        assert label in table
    assert (out / "lambda_all.png").stat().st_size > 5_000
    assert len(list(out.glob("curves_*.png"))) == 1
    # every run's merged config is saved and is a complete LightningCLI config
    config = yaml.safe_load((out / "configs" / "Clip5_1e-06_seed0.yaml").read_text())
    assert config["trainer"]["max_steps"] == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["steps"] == 12 and summary["environment"]["torch_threads"] == 1


def test_table3_smoke(tmp_path, ptb_dir):
    out = tmp_path / "t3"
    extra = [
        "data.init_args.verify=false",
        "data.init_args.download=false",
        "data.init_args.batch_size=2",
        "data.init_args.bptt=5",
        "data.init_args.eval_batch_size=2",
        "model.init_args.hidden_size=8",
        "model.init_args.vocab_size=40",
    ]
    main(
        [
            "table3",
            "--out",
            str(out),
            "--data-dir",
            str(ptb_dir),
            "--smoke",
            "--no-progress",
            "--methods",
            "Fixed λ,Unroll1-gTgV,Unroll5,Clip5",
            "--grid",
            "0.4,1.0",
            *[f"--extra={e}" for e in extra],
        ]
    )
    runs = records(out)
    assert [r["row"] for r in runs[:4]] == ["Fixed λ", "Unroll1-gTgV", "Unroll5", "Clip5"]
    # the --grid values for the fixed row, the one default start (0.5) for each online row
    assert [(r["row"], r["init"]) for r in runs[4:]] == [("Fixed λ", 1.0)]
    assert {r["init"] for r in runs[1:4]} == {0.5} and runs[0]["init"] == 0.4
    for r in runs:
        assert 0 < r["curves"]["lambda/keep_prob"][-1] <= 1
        assert all(math.isfinite(v) for v in r["val"]["val_loss"])
    # the table's defaults adapt the configs' 50K-step warm-up and hyper step to 1,000 steps
    clip5 = next(r for r in runs if r["row"] == "Clip5")
    assert "warmup_steps=100" in clip5["method"] and "hyper_lr_scale=0.001" in clip5["method"]
    protocol = json.loads((out / "summary.json").read_text())["protocol"]
    assert protocol["grid"] == [0.4, 1.0] and protocol["hyper_scale"] == 10.0
    plots = {p.name for p in out.glob("curves_*.png")}
    assert plots == {"curves_0.4.png", "curves_0.5.png", "curves_1.png"}
    table = (out / "table.md").read_text()
    assert "validation perplexity" in table and "| Clip5 |" in table


def test_cost_smoke(tmp_path, mnist_dir):
    out = tmp_path / "cost"
    args = ["cost", "--out", str(out), "--data-dir", str(mnist_dir), "--smoke", "--no-progress"]
    main([*args, "--clock", "cpu", "--kernels", *[f"--extra={e}" for e in MNIST_EXTRA]])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clock"] == "cpu"
    rows = summary["models"]["mlp"]["rows"]
    one = [
        "plain",
        "floor",
        "Unroll1-gTgV",
        "Unroll1-gTgV k=4",
        "Unroll1",
        "Unroll5",
        "Clip10",
        "Exact",
        "Unroll1-gTgV B=50",
    ]
    several = [
        "plain per-layer",
        "floor per-layer",
        "Unroll1-gTgV per-layer",
        "Unroll5 per-layer",
        "Clip10 per-layer",
    ]
    assert list(rows) == one + several
    assert rows["plain"]["ratio"] == rows["plain"]["cpu_ratio"] == 1.0
    assert rows["plain"]["memory_ratio"] == 1.0
    # every row is stated against the floor of its model (one λ, or one per weight matrix)
    assert rows["floor"]["ratio_to_floor"] == rows["floor"]["cpu_ratio_to_floor"] == 1.0
    assert rows["floor per-layer"]["cpu_ratio_to_floor"] == 1.0
    for label, r in rows.items():
        assert r["floor"] == ("floor per-layer" if label in several else "floor")
        assert r["ratio_to_floor"] > 0 and r["cpu_ratio_to_floor"] > 0
    for label, r in rows.items():
        assert r["step_ms"] > 0 and r["cpu_step_ms"] > 0 and r["peak_mb"] > 0
        assert r["ratio"] > 0 and r["cpu_ratio"] > 0 and r["memory_ratio"] > 0
        if label in one:
            assert r["hyperparameters"] == 1 and r["one_lambda"] is None
            assert r["ratio_to_one"] is r["memory_ratio_to_one"] is None
        else:  # 784-100-100-100-10: one L2 coefficient per weight matrix
            assert r["hyperparameters"] == 4 and r["one_lambda"] == label.split()[0]
            assert r["ratio_to_one"] > 0 and r["cpu_ratio_to_one"] > 0
    # the tuner's tangents: one more copy of the parameters per λ
    assert rows["Clip10"]["state_mb"] > rows["plain"]["state_mb"]
    assert rows["Clip10 per-layer"]["memory_ratio_to_one"] > 1
    kernels = summary["models"]["mlp"]["kernels"]
    assert set(kernels) == {
        "plain s",
        *(f"{w}, {k}" for w in ("fwd+bwd", "H·v") for k in ("default", "native")),
    }
    assert kernels["fwd+bwd, default"] == 1.0 and kernels["H·v, native"] > 1
    table = (out / "cost.md").read_text()
    assert "× plain" in table and "× 1 λ" in table and "(this process's CPU time)" in table
    assert "| × floor |" in table and "| floor | 1 |" in table
    assert "| Clip10 per-layer | 4 |" in table and "H·v, native" in table


def test_cost_rows_measure_steps_with_lambda_updates(tmp_path):
    """No warm-up in the cost benchmark: every timed step pays for the validation gradient;
    the per-layer rows are the same methods with per_layer_l2."""
    online = [r for r in (*COST_ROWS, SMALL_GV_ROW, *PER_LAYER_ROWS) if r.overlay is not None]
    assert len(online) == 10
    for row in online:
        config = compose_config(MNIST, row, 1e-3, 10, 10, tmp_path)
        (cb,) = config["trainer"]["callbacks"]
        assert cb["init_args"]["warmup_steps"] == 0
    config = compose_config(MNIST, SMALL_GV_ROW, 1e-3, 10, 10, tmp_path)
    assert config["trainer"]["callbacks"][0]["init_args"]["validation_batch_size"] == 50
    for row in PER_LAYER_ROWS:
        config = compose_config(MNIST, row, 1e-3, 10, 10, tmp_path)
        assert config["model"]["init_args"]["per_layer_l2"] is True
    assert "per_layer_l2" not in compose_config(MNIST, COST_ROWS[0], 1e-3, 10, 10, tmp_path)


def test_cost_clock_errors(tmp_path):
    from benchmarks.cost import run_cost

    with pytest.raises(ValueError, match=r"clock='gpu' is not supported; accepted .*'wall', 'cpu'"):
        run_cost(tmp_path, clock="gpu")
    with pytest.raises(ValueError, match="use clock='wall' on a GPU"):
        run_cost(tmp_path, clock="cpu", gpu=True)
    with pytest.raises(SystemExit):
        main(["cost", "--out", str(tmp_path), "--clock", "process"])


def test_cost_rows_must_be_rows_of_the_model(tmp_path):
    from benchmarks.cost import run_cost

    with pytest.raises(ValueError, match=r"rows \['Clip99'\] are not rows of 'mlp'; accepted"):
        run_cost(tmp_path, only=["Clip10", "Clip99"])
    assert not (tmp_path / "runs.jsonl").exists()  # refused before any fit


def test_compose_config_applies_row_overlays_and_settings(tmp_path):
    config = compose_config(
        MNIST,
        Row("Clip7", "clip.yaml", {"radius": 7.0}),
        1e-4,
        50,
        25,
        tmp_path,
        extra=["model.init_args.lr=0.05"],
        hyper_scale=10.0,
    )
    (cb,) = config["trainer"]["callbacks"]
    method = cb["init_args"]["method"]["init_args"]
    assert method["radius"] == 7.0 and method["hyper_lr_scale"] == pytest.approx(3e-3)
    assert config["model"]["init_args"]["l2"] == 1e-4
    assert config["model"]["init_args"]["lr"] == 0.05
    assert config["trainer"]["max_steps"] == 50
    assert config["data"]["init_args"]["data_dir"] == str(tmp_path.resolve())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"extra": ["model.init_args.lr"]}, "expected KEY=VALUE"),
        ({"hyper_scale": 0.0}, "hyper_scale=0.0 must be a finite number > 0"),
    ],
)
def test_compose_config_rejects_bad_settings(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compose_config(MNIST, Row("Fixed λ"), 1e-4, 50, 25, tmp_path, **kwargs)


def test_unknown_method_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"methods: unknown \['Clip3'\]; accepted values"):
        main(["table2", "--out", str(tmp_path), "--methods", "Clip3", "--no-progress"])


def test_summary_counts_dead_runs_apart():
    def run(row, init, best, final, dead=False):
        val = {"step": [1, 2], "val_loss": [best, final], "wall_s": [1.0, 2.0]}
        return {
            "row": row,
            "init": init,
            "best_val_loss": best,
            "final_val_loss": final,
            "test_loss": final,
            "lambda_final": {"l2": init},
            "dead": dead,
            "fit_s": 2.0,
            "best_step": 1,
            "val": val,
        }

    s = summarize(
        PTB,
        [
            run("Fixed λ", 0.4, 4.5, 4.6),
            run("Fixed λ", 0.5, 4.4, 4.7),
            run("Clip5", 0.4, 4.3, 4.35),
            run("Clip5", 0.9, 9.0, 9.1, dead=True),
        ],
    )
    assert s["rows"]["Fixed λ"]["init"] == 0.5  # the grid's best by early stopping
    clip = s["rows"]["Clip5"]
    assert (clip["live"], clip["runs"], clip["dead_inits"]) == (1, 2, [0.9])
    assert clip["best"] == pytest.approx(math.exp(4.3))
    assert s["time_to_quality"]["Clip5"]["reached"] == 1  # 4.3 <= the grid's 4.4 at 1 s
    assert s["time_to_quality"]["Clip5"]["median_ratio"] == pytest.approx(1.0 / 4.0)


@pytest.mark.parametrize("flag", ["--grid", "--init-values"])
def test_non_numeric_values_are_rejected(tmp_path, capsys, flag):
    with pytest.raises(SystemExit):
        main(["table3", "--out", str(tmp_path), flag, "0.4,high", "--no-progress"])
    assert "'0.4,high': expected comma-separated numbers" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()  # nothing ran


def test_ttq_seeds_must_be_integers(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["ttq", "--out", str(tmp_path), "--seeds", "0,one", "--no-progress"])
    assert "'0,one': expected comma-separated integers" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


def test_kernel_ratios_report_a_missing_double_backward():
    """Where H·v raises (cuDNN's RNN on a GPU has no double backward) the ratio is None."""
    import torch

    from benchmarks.cost import kernel_ratios

    class OnceDifferentiable(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    class Square(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def training_loss(self, batch):
            return OnceDifferentiable.apply(self.w * batch).sum()

    ratios = kernel_ratios(Square(), torch.arange(3.0), repeats=1)
    assert ratios["plain s"] > 0 and ratios["fwd+bwd, default"] == 1.0
    assert ratios["fwd+bwd, native"] > 0
    assert ratios["H·v, default"] is None and ratios["H·v, native"] is None


def test_floor_draws_one_validation_gradient_per_step_and_leaves_training_alone():
    """The floor callback: one validation batch (cycling through a loader shorter than the fit)
    and one forward/backward on it after each step, in eval mode; the training is the plain
    one, bit for bit (no gradient left in .grad, the same weights after the fit)."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from benchmarks.floor import floor_class

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1)
            )
            self.val_calls, self.val_training = 0, []

        def validation_loss(self, batch):
            self.val_calls += 1
            self.val_training.append(self.training)
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g))

    def fit(callbacks):
        pl.seed_everything(0)
        model = Tiny()
        trainer = bare_trainer(callbacks, max_steps=5)
        trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
        return model

    plain = fit([])
    floor = floor_class()()
    model = fit([floor])
    assert floor.passes == model.val_calls == 5  # a 2-batch loader, drawn 5 times
    assert model.val_training == [False] * 5 and model.training
    for a, b in zip(plain.parameters(), model.parameters()):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)  # the last step's own


def test_a_cadence_rows_step_time_is_its_windows_mean():
    """A hyper_every=4 fit: three cheap steps and one with g_V in every 4; the median single
    step would be a cheap one, the window median is the cost per step of the cadence."""
    from benchmarks.cost import row_cadence, window_median

    times = [1.0, 1.0, 1.0, 5.0] * 4 + [9.0]  # a trailing partial window is dropped
    assert window_median(times, 4) == 2.0
    assert window_median([3.0, 1.0, 2.0], 1) == 2.0
    assert [row_cadence(r) for r in COST_ROWS if r.label.startswith("Unroll1-gTgV")] == [1, 4]
