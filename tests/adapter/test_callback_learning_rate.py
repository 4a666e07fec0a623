"""LearningRate and Momentum through a real Trainer: the tangent against central differences of
two whole plain-torch trainings (float64), the schedule left alone, bad input, DDP, resume."""

from __future__ import annotations

import pytest
import torch
from conftest import NO_UPDATE, Regression, fit, regression_data

from lightning_hyperopt import Exact, LearningRate, Momentum, WeightDecay

OPTIMIZERS = ("sgd_momentum", "sgd_nesterov_two_groups", "adam", "adamw")


class Tunable(Regression):
    """The regression MLP with tunable optimizer settings.

    optimizer: "sgd_momentum" (one group, momentum 0.9, dampening 0.1), "sgd_nesterov_two_groups"
    (Nesterov momentum 0.8, the second layer its own group with half the lr), "adam", "adamw"
    (weight decay 0.01). schedule: None, "step" (a chained StepLR) or "onecycle".
    tune: hyperparameter name → its module (declared here, so the callback finds them).
    """

    def __init__(self, optimizer="sgd_momentum", schedule=None, tune=None, l2=0.0):
        super().__init__("none", lr=0.05 if optimizer.startswith("sgd") else 0.01)
        self.optimizer_kind, self.schedule = optimizer, schedule
        self.l2_value = l2
        for name, module in (tune or {}).items():
            setattr(self, name, module)

    def training_loss(self, batch):
        loss = self.data_loss(batch)
        if self.l2_value:
            loss = loss + 0.5 * self.l2_value * sum((p * p).sum() for p in self.parameters())
        return loss

    def configure_optimizers(self):
        kind = self.optimizer_kind
        if kind == "sgd_nesterov_two_groups":
            groups = [
                {"params": list(self.first.parameters())},
                {"params": list(self.second.parameters()), "lr": self.lr / 2},
            ]
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=0.8, nesterov=True)
        elif kind == "sgd_momentum":
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, dampening=0.1)
        elif kind == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        else:  # "adamw", or "adamw_amsgrad" / "adamw_foreach" / "adamw_fused"
            variant = {kind.removeprefix("adamw_"): True} if kind != "adamw" else {}
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01, **variant)
        if self.schedule is None:
            return opt
        if self.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        else:
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[2 * g["lr"] for g in opt.param_groups], total_steps=40
            )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


CLIPPED_STEPS: list[int] = []  # per plain training with clipping: the steps it clipped


def plain_training(model, steps, clip=None):
    """θ after ``steps`` steps of a plain torch loop that steps each group at λ·lr_t (the
    model's LearningRate), with its WeightDecay and Momentum written into the groups, Lightning's
    clipping (by norm or by value) and the schedule stepped after every step."""
    configured = model.configure_optimizers()
    opt = configured["optimizer"] if isinstance(configured, dict) else configured
    sched = configured["lr_scheduler"]["scheduler"] if isinstance(configured, dict) else None
    hypers = {n: m for n, m in model.named_modules() if hasattr(m, "value")}
    for h in hypers.values():
        h.write_to(opt)  # weight decay and momentum live in the groups
    batch = regression_data()[0].tensors
    clipped = 0
    for _ in range(steps):
        opt.zero_grad()
        model.training_loss(batch).backward()
        if clip is not None:
            params = [p for g in opt.param_groups for p in g["params"]]
            grads = torch.cat([p.grad.reshape(-1) for p in params])
            if clip[0] == "norm":
                clipped += bool(grads.norm() > clip[1])
                torch.nn.utils.clip_grad_norm_(params, clip[1])
            else:
                clipped += bool(grads.abs().max() > clip[1])
                torch.nn.utils.clip_grad_value_(params, clip[1])
        saved = [g["lr"] for g in opt.param_groups]
        for h in hypers.values():
            if isinstance(h, LearningRate):
                for k in h.groups(opt):
                    opt.param_groups[k]["lr"] = saved[k] * float(h.value)
        opt.step()
        for g, lr in zip(opt.param_groups, saved):
            g["lr"] = lr
        if sched is not None:
            sched.step()
    if clip is not None:
        CLIPPED_STEPS.append(clipped)
    return flat(model.parameters())


def check_tangent(build, which, steps=25, clip=None, delta=1e-7, rtol=1e-6):
    """y of hyperparameter ``which`` from a Lightning fit (Exact, λ fixed) against the central
    difference of two plain-torch trainings at λ ± δ."""
    kwargs = {}
    if clip is not None:
        kwargs = {"gradient_clip_algorithm": clip[0], "gradient_clip_val": clip[1]}
    model = build()
    cb, _, _ = fit(model, Exact(), steps, warmup_steps=NO_UPDATE, **kwargs)
    names = list(cb.engine.names)
    tangent = flat(cb.engine.tangents[names.index(which)])

    def shifted(sign):
        m = build()
        h = getattr(m, which)
        h.value.fill_(float(h.value) + sign * delta)
        return plain_training(m, steps, clip)

    fd = (shifted(+1) - shifted(-1)) / (2 * delta)
    assert fd.abs().max() > 1e-4  # the hyperparameter matters
    torch.testing.assert_close(tangent, fd, rtol=rtol, atol=rtol * float(fd.abs().max()))
    return float((tangent - fd).abs().max() / fd.abs().max())


#: clipping thresholds within the range of each optimizer's gradient norms (largest entries) over
#: its 25 clipped steps here, so that clipping is active on some steps but not all (checked)
CLIP_AT = {
    "sgd_momentum": {"norm": 3.0, "value": 0.8},
    "sgd_nesterov_two_groups": {"norm": 1.5, "value": 0.5},
    "adam": {"norm": 5.8, "value": 2.2},
    "adamw": {"norm": 5.8, "value": 2.2},
}
CLIPS = ("none", "norm", "value")


@pytest.mark.parametrize("clip", CLIPS, ids=CLIPS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_learning_rate_tangent_equals_finite_differences(optimizer, clip):
    """λ scales every group's lr: y = ∂θ_T/∂λ through SGD momentum, Nesterov with two groups,
    Adam and AdamW, with and without clipping (active on some steps), under a StepLR."""

    def build():
        return Tunable(optimizer, "step", {"lr_scale": LearningRate(init=1.3)})

    CLIPPED_STEPS.clear()
    setting = None if clip == "none" else (clip, CLIP_AT[optimizer][clip])
    check_tangent(build, "lr_scale", clip=setting, delta=1e-8 if "adam" in optimizer else 1e-6)
    if clip != "none":  # active on some steps, not all
        assert all(0 < n < 25 for n in CLIPPED_STEPS), CLIPPED_STEPS


@pytest.mark.parametrize("variant", ["adamw_amsgrad", "adamw_foreach", "adamw_fused"])
def test_learning_rate_tangent_through_adamw_variants(variant):
    """AdamW with amsgrad (the running maximum of v̂), and its foreach and fused
    implementations: the same exact tangent (norm clipping active on some steps)."""

    def build():
        return Tunable(variant, schedule="step", tune={"lr_scale": LearningRate()})

    check_tangent(build, "lr_scale", clip=("norm", CLIP_AT["adamw"]["norm"]))


@pytest.mark.parametrize("optimizer, group", [("sgd_nesterov_two_groups", 1), ("adamw", None)])
def test_learning_rate_under_one_cycle(optimizer, group):
    """Under OneCycleLR (which also cycles the momentum, β₁ for AdamW): λ scales the second
    group's lr only, or every group's; the tangent is still exact."""

    def build():
        return Tunable(optimizer, "onecycle", {"lr_scale": LearningRate(group=group, init=0.8)})

    check_tangent(build, "lr_scale", delta=1e-8 if "adam" in optimizer else 1e-6)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamw"])
@pytest.mark.parametrize("which", ["lr_scale", "wd"])
def test_learning_rate_and_weight_decay_as_two_rows(optimizer, which):
    """Two rows in one run: each tangent equals its own finite difference (coupled weight decay
    for SGD, decoupled for AdamW, whose decay step is η·wd = λ_lr·lr_t·wd)."""

    def build():
        tune = {"lr_scale": LearningRate(init=1.2), "wd": WeightDecay(init=0.02)}
        return Tunable(optimizer, "step", tune)

    check_tangent(build, which, delta=1e-8 if "adam" in optimizer else 1e-6)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "sgd_nesterov_two_groups", "adam", "adamw"])
def test_momentum_tangent_equals_finite_differences(optimizer):
    """SGD's momentum (with dampening; Nesterov over two groups) and Adam's β₁ (its bias
    correction 1 − β₁ᵗ included), each with an L2 term in the loss."""

    def build():
        return Tunable(optimizer, "step", {"mu": Momentum(init=0.85)}, l2=0.01)

    check_tangent(build, "mu", delta=1e-8 if "adam" in optimizer else 1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_beta2_tangent_equals_finite_differences(optimizer):
    """Adam's β₂ (Momentum(moment="second")): the second moment's direct term and its bias
    correction 1 − β₂ᵗ."""

    def build():
        return Tunable(optimizer, "step", {"b2": Momentum(init=0.95, moment="second")})

    check_tangent(build, "b2", delta=1e-8)


def test_sgd_has_no_second_moment():
    with pytest.raises(ValueError, match=r"Momentum 'b2' sets 'beta2', which the tangent rule"):
        fit(Tunable("sgd_momentum", tune={"b2": Momentum(init=0.9, moment="second")}), "clip", 3)


def test_the_schedule_is_left_alone_and_lambda_moves():
    """Outside the step each group's lr is the schedule's own (StepLR chained on itself never
    sees λ): after the fit it equals a plain run of the same schedule; λ moved, and the
    effective learning rate λ·lr_t is logged beside it."""
    model = Tunable("sgd_momentum", "step", {"lr_scale": LearningRate(init=2.0)})
    _, rec, trainer = fit(model, "first_order", 30, log_every_n_steps=1)
    reference = Tunable("sgd_momentum", "step")
    opt = reference.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(30):
        opt.optimizer.step()
        opt.step()
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs == [g["lr"] for g in opt.optimizer.param_groups] == [0.05 * 0.5**4]
    values = [v[0] for v in rec.values]
    assert values[-1] != 2.0 and len(set(values)) > 10
    logged = trainer.logged_metrics
    effective = float(logged["hyperopt/lr_scale/effective_lr"])
    assert effective == pytest.approx(values[-1] * lrs[0], rel=1e-12)


def test_the_averaged_iterate_through_a_trainer_leaves_theta_alone():
    """Clip(average=β) in a Lightning fit: g_V is taken at θ̄ on every step, θ is swapped back
    bit for bit (with λ fixed the fit's θ is the plain-torch run's), θ̄ averaged every step."""
    from lightning_hyperopt import Clip

    def build():
        return Tunable(
            "adamw", "step", {"lr_scale": LearningRate(init=1.5), "wd": WeightDecay(init=0.02)}
        )

    model = build()
    cb, _, _ = fit(model, Clip(50.0, hyper_lr_scale=0.0, average=0.9), 25)
    engine = cb.engine
    assert engine.state.updates == 25 and engine.average.count == 25
    theta = flat(model.parameters())
    assert torch.equal(theta, plain_training(build(), 25))
    assert not torch.allclose(engine.average.theta, theta)
    assert torch.isfinite(engine.state.hypergradients).all()
    assert (engine.average.tangent != 0).any()


def test_resume_from_an_epoch_end_checkpoint_follows_the_same_lambda_trajectory(tmp_path):
    from conftest import Recorder, make_trainer, pl
    from torch.utils.data import DataLoader

    from lightning_hyperopt import Clip, OnlineHyperparamCallback

    total, at = 20, 8

    def run(max_steps, callbacks, ckpt_path=None):
        torch.manual_seed(0)
        model = Tunable("adamw", "step", {"lr_scale": LearningRate(), "wd": WeightDecay(init=0.05)})
        cb, rec = OnlineHyperparamCallback(Clip(5.0)), Recorder()
        trainer = make_trainer(
            [cb, rec, *callbacks], max_steps, enable_checkpointing=True, default_root_dir=tmp_path
        )
        train, val = regression_data()
        trainer.fit(
            model,
            DataLoader(train, batch_size=6),
            DataLoader(val, batch_size=48, shuffle=True),
            ckpt_path=ckpt_path,
        )
        return rec.values, trainer

    straight, _ = run(total, [])
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=at, save_top_k=-1)
    run(at, [saver])
    ckpt = tmp_path / f"epoch=1-step={at}.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    # the checkpoint's optimizer holds the schedule's lr (StepLR: 0.01·0.5 from step 7), not λ·lr
    assert straight[at - 1][0] != 1.0
    assert [g["lr"] for g in saved["optimizer_states"][0]["param_groups"]] == [0.005]
    resumed, _ = run(total, [], ckpt_path=str(ckpt))
    assert len(set(v[0] for v in straight)) > 5
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(straight[at:]), rtol=0, atol=0)


class RMSpropModel(Tunable):
    def configure_optimizers(self):
        return torch.optim.RMSprop(self.parameters(), lr=0.01)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (
            lambda: RMSpropModel(tune={"lr_scale": LearningRate()}),
            TypeError,
            r"supports torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW .* got RMSprop",
        ),
        (
            lambda: Tunable("adam", tune={"lr_scale": LearningRate(group=2)}),
            ValueError,
            r"LearningRate\(group=2\) but the optimizer has 1 param group",
        ),
        (
            lambda: Tunable("sgd_momentum", tune={"mu": Momentum(group=1, init=0.5)}),
            ValueError,
            r"Momentum\(group=1\) but the optimizer has 1 param group",
        ),
        (
            lambda: PlainSGD(tune={"mu": Momentum()}),
            ValueError,
            r"Momentum\(init=None\) takes the optimizer's momentum, which is 0.*init=",
        ),
    ],
    ids=["unknown-optimizer", "lr-group", "momentum-group", "momentum-at-zero"],
)
def test_bad_input_fails_before_the_first_step(build, error, match):
    model = build()
    before = flat(model.parameters())
    with pytest.raises(error, match=match):
        fit(model, "first_order", 5)
    assert torch.equal(flat(model.parameters()), before)  # no optimizer step ran


class PlainSGD(Tunable):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"LearningRate bounds=\(0.0, 10.0\) must have low > 0"):
        LearningRate(bounds=(0.0, 10.0))
    with pytest.raises(ValueError, match=r"group=-1 must be a param-group index >= 0 or None"):
        LearningRate(group=-1)
    with pytest.raises(ValueError, match=r"Momentum bounds=\(0.0, 1.0\) must satisfy"):
        Momentum(bounds=(0.0, 1.0))


class ToZero(Tunable):
    """A schedule that holds lr at 0 for steps 5 to 9, then at 0.05 again."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        zero = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.0 if 5 <= t < 10 else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": zero, "interval": "step"}}


def test_a_schedule_at_zero_keeps_the_tangent_finite_and_exact():
    """lr_t = 0: η = λ·0, the step adds nothing to the tangent, which stays finite and equals
    the finite difference; first order's λ keeps a finite hypergradient there."""
    check_tangent(lambda: ToZero(tune={"lr_scale": LearningRate(init=1.5)}), "lr_scale", steps=15)
    cb, rec, _ = fit(ToZero(tune={"lr_scale": LearningRate(init=1.5)}), "first_order", 15)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in rec.values)
    assert cb.engine.nonfinite == [0]
