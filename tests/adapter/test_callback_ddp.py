"""The tuner under DDP: 2 CPU processes (gloo) against one process on the global batches.

tests/adapter/ddp_script.py runs every DDP scenario in one launch (a few seconds of start-up); the
single-process references run here. With per-process batches of b and the same global data
order, θ, y and λ must equal those of one process with batches of 2b (float64): the drift
terms and the hypergradient are averaged over the processes, as DDP averages the gradient.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_script import RESUME_AT, SCENARIOS, STEPS, fit

TESTS = Path(__file__).resolve().parent


def launch(out: Path, *extra: str) -> subprocess.CompletedProcess:
    launcher = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    return subprocess.run(
        [sys.executable, str(TESTS / "ddp_script.py"), str(out), *extra],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    for extra in ([], ["spawn"]):
        result = launch(out, *extra)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


def test_processes_that_disagree_on_lambda_stop_the_run(tmp_path):
    result = launch(tmp_path, "diverge")
    assert result.returncode != 0
    assert "the hyperparameters differ between processes" in result.stderr


def load(out: Path, name: str) -> tuple[dict, dict]:
    return tuple(torch.load(out / f"{name}_rank{r}.pt", weights_only=True) for r in (0, 1))


@pytest.mark.parametrize("name", SCENARIOS)
def test_two_processes_equal_one_process_on_the_global_batch(ddp_runs, name):
    method, penalty = SCENARIOS[name]
    rank0, rank1 = load(ddp_runs, name)
    model, callback, record, _ = fit(method(), penalty, world=1)
    # λ is bit-identical on both ranks at every step
    assert rank0["values"] == rank1["values"] and len(rank0["values"]) == STEPS
    assert torch.equal(rank0["theta"], rank1["theta"])
    assert torch.equal(rank0["tangent"], rank1["tangent"])
    single = torch.tensor(record.values, dtype=torch.float64)
    assert len(set(record.values)) > STEPS // 4  # λ moves
    values = torch.tensor(rank0["values"], dtype=torch.float64)
    torch.testing.assert_close(values, single, rtol=1e-9, atol=0)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(rank0["theta"], theta, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rank0["tangent"], callback.engine.tangent, rtol=1e-9, atol=1e-12)
    # the hypergradient is the one of the global validation batch (the ranks' two halves)
    single_h = torch.tensor(record.hypergradients, dtype=torch.float64)
    mask = ~torch.isnan(single_h)
    assert mask.sum() > STEPS // 4
    h = torch.tensor(rank0["hypergradients"], dtype=torch.float64)
    torch.testing.assert_close(h[mask], single_h[mask], rtol=1e-9, atol=1e-15)


def test_resume_under_ddp_continues_the_same_lambda_trajectory(ddp_runs):
    straight, _ = load(ddp_runs, "clip_l2")
    resumed0, resumed1 = load(ddp_runs, "resumed")
    assert resumed0["values"] == resumed1["values"]
    assert resumed0["values"] == straight["values"][RESUME_AT:]
    assert resumed0["step"] == STEPS


@pytest.mark.parametrize("name", ["bf16", "unused", "spawn"])
def test_bf16_find_unused_parameters_and_spawn_run(ddp_runs, name):
    rank0, rank1 = load(ddp_runs, name)
    assert rank0["values"] == rank1["values"]
    assert all(torch.isfinite(torch.tensor(rank0["values"])))
    assert len(set(rank0["values"])) > 1


MESSAGE = r"supports one device and DDP .* got {}.*FSDP, DeepSpeed, model parallelism"


def test_sharding_strategies_are_refused():
    import pytorch_lightning as pl

    from lightning_hyperopt.adapter import check_strategy

    # Lightning itself refuses FSDP without a GPU, so the check is called directly here
    with pytest.raises(ValueError, match=MESSAGE.format("FSDPStrategy")):
        check_strategy(pl.strategies.FSDPStrategy())
    assert check_strategy(pl.strategies.DDPStrategy()) is True
    assert check_strategy(pl.strategies.SingleDeviceStrategy("cpu")) is False


def test_a_ddp_subclass_is_refused_before_any_step():
    """DeepSpeed (not installed here) subclasses DDPStrategy: a subclass is refused at setup."""
    from conftest import Regression, make_trainer, pl, regression_data
    from torch.utils.data import DataLoader

    from lightning_hyperopt import OnlineHyperparamCallback

    class DeepSpeedLike(pl.strategies.DDPStrategy):
        pass

    trainer = make_trainer([OnlineHyperparamCallback()], 5, strategy=DeepSpeedLike(), devices=1)
    train, val = regression_data()
    with pytest.raises(ValueError, match=MESSAGE.format("DeepSpeedLike")):
        trainer.fit(Regression("l2"), DataLoader(train, batch_size=8), DataLoader(val))
    assert trainer.global_step == 0
