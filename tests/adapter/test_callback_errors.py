"""Bad input is rejected with a clear error before any training step is taken."""

import pytest
import torch
import torch.nn.functional as F
from conftest import Regression, fit, make_trainer, pl, regression_data
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader

from lightning_hyperopt import (
    Clip,
    Exact,
    FirstOrder,
    Hyperparameter,
    L2Penalty,
    OnlineHyperparamCallback,
    Unroll,
    WeightDecay,
)


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: OnlineHyperparamCallback("newton"),
            r"method='newton' is not supported.*clip.*or 'auto' \(the default\)",
        ),
        (lambda: Clip(radius=0.0), r"radius=0.0 must be a finite number > 0"),
        (lambda: Clip(radius=-1.0), r"radius=-1.0 must be"),
        (lambda: Clip(radius=float("inf")), r"use Exact\(\) for r = ∞"),
        (lambda: Unroll(steps=0), r"steps=0 must be an integer K >= 1"),
        (lambda: Unroll(steps=2.5), r"steps=2.5 must be an integer"),
        (lambda: OnlineHyperparamCallback(warmup_steps=-1), r"warmup_steps=-1 must be"),
        (lambda: Clip(hyper_lr_scale=-0.1), r"hyper_lr_scale=-0.1 must be a finite number >= 0"),
        (lambda: Exact(hyper_lr_scale=float("nan")), r"hyper_lr_scale=nan"),
        (lambda: FirstOrder(hyper_lr=-1.0), r"hyper_lr=-1.0 must be"),
        (lambda: L2Penalty(2.0, bounds=(0.0, 1.0)), r"init=2.0 is outside bounds"),
        (lambda: L2Penalty(0.5, bounds=(1.0, 0.0)), r"must satisfy low < high"),
        (lambda: L2Penalty(0.5, parameterization="exp"), r"parameterization='exp'.*identity"),
        (lambda: L2Penalty(0.5, parameterization="log"), r"'log' needs bounds with low > 0"),
        (lambda: WeightDecay(group=-1), r"group=-1 must be"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


class Steps(Regression):
    """Counts training steps, to prove that errors come before any."""

    steps = 0

    def training_step(self, batch, batch_idx):
        type(self).steps += 1
        return super().training_step(batch, batch_idx)


def fit_raises(model, error, match, **kwargs):
    """Fits ``model`` expecting the error; returns the number of training steps taken."""
    Steps.steps = type(model).steps = 0
    with pytest.raises(error, match=match):
        fit(model, **kwargs)
    return max(Steps.steps, type(model).steps)


def test_module_without_hyperparameter():
    assert fit_raises(Steps("none"), ValueError, "declares no hyperparameter") == 0


def test_hyperparameter_not_in_the_training_loss():
    model = Steps("l2")
    model.unused = Hyperparameter(0.1)
    before = [p.detach().clone() for p in model.parameters()]
    # found at the first backward: one training step ran, but no optimizer step
    assert fit_raises(model, ValueError, r"does not depend on hyperparameter 'unused'") == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_missing_loss_methods():
    class NoValidationLoss(Steps):
        validation_loss = None

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.data_loss(batch))  # logs its loss, returns nothing

    class NoValidationStep(NoValidationLoss):
        validation_step = pl.LightningModule.validation_step

    # the probe finds validation_step's None; without a validation_step, setup says so
    match = r"validation_step returned None.*return the loss from validation_step.*must define"
    match += r" `validation_loss\(batch\)"
    assert fit_raises(NoValidationLoss("l2"), TypeError, match) == 0
    match = r"must define `validation_loss\(batch\) -> Tensor`, or a `validation_step` that"
    assert fit_raises(NoValidationStep("l2"), TypeError, match) == 0


def test_no_validation_data():
    model = Steps("l2")
    cb = OnlineHyperparamCallback()
    trainer = make_trainer([cb], 5)
    with pytest.raises(ValueError, match="needs validation data for g_V"):
        trainer.fit(model, DataLoader(regression_data()[0], batch_size=8))
    assert Steps.steps == 0


def test_empty_validation_data():
    train, val = regression_data()
    empty = torch.utils.data.Subset(val, [])
    with pytest.raises(ValueError, match=r"validation dataloader .* is empty"):
        fit(Regression("l2"), data=(train, empty))


@pytest.mark.parametrize(
    "make",
    [
        lambda params: torch.optim.LBFGS(params, lr=0.1),
        lambda params: torch.optim.RMSprop(params, lr=0.1),
        lambda params: torch.optim.NAdam(params, lr=0.1),
    ],
    ids=["lbfgs", "rmsprop", "nadam"],
)
def test_unsupported_optimizer(make):
    class Other(Steps):
        def configure_optimizers(self):
            return make(self.parameters())

    name = type(make([torch.nn.Parameter(torch.zeros(1))])).__name__
    match = rf"supports torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW .* got {name}"
    assert fit_raises(Other("l2"), TypeError, match) == 0


def test_several_optimizers():
    class Two(Steps):
        def configure_optimizers(self):
            return [torch.optim.SGD([p], lr=0.1) for p in self.parameters()][:2]

    # Lightning itself refuses several optimizers under automatic optimization
    assert fit_raises(Two("l2"), RuntimeError, "multiple optimizers") == 0


def test_manual_optimization():
    class Manual(Steps):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.automatic_optimization = False

    assert fit_raises(Manual("l2"), ValueError, "manual optimization") == 0


def test_weight_decay_group_out_of_range():
    model = Steps("none")
    model.wd = WeightDecay(group=3)
    assert fit_raises(model, ValueError, r"WeightDecay\(group=3\).*1 param group") == 0


def test_two_callbacks():
    # the fixed state_key makes Lightning refuse a second instance (one tunes everything)
    with pytest.raises(RuntimeError, match="more than one stateful callback"):
        make_trainer([OnlineHyperparamCallback(), OnlineHyperparamCallback()], 5)


def test_custom_gradient_clipping_is_refused():
    class CustomClip(Steps):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val, algorithm):
            self.clip_gradients(optimizer, gradient_clip_val * 2, algorithm)

    match = r"CustomClip overrides configure_gradient_clipping"
    assert fit_raises(CustomClip("l2"), ValueError, match, gradient_clip_val=1.0) == 0


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    cb, _, _ = fit(Regression("l2"), max_steps=2)
    state = cb.state_dict()
    state["engine"]["names"] = ["other"]
    fresh = OnlineHyperparamCallback()
    fresh.load_state_dict(state)
    with pytest.raises(ValueError, match=r"checkpoint tunes hyperparameters \['other'\]"):
        make_trainer([fresh], 2).fit(
            Regression("l2"), DataLoader(regression_data()[0]), DataLoader(regression_data()[1])
        )


class VectorValidation(Steps):
    def validation_loss(self, batch):
        x, y = batch
        return ((self(x) - y) ** 2).squeeze(1)  # per-sample losses, not their mean


class VectorTraining(Steps):
    def training_step(self, batch, batch_idx):
        Steps.steps += 1
        x, y = batch
        return ((self(x) - y) ** 2).squeeze(1)


def test_non_scalar_validation_loss_is_caught_before_training():
    match = r"validation_loss must return a scalar tensor .* got a tensor of shape \(64,\)"
    assert fit_raises(VectorValidation("l2"), ValueError, match, warmup_steps=200) == 0


def test_non_scalar_training_loss_is_caught_before_the_first_optimizer_step():
    model = VectorTraining("l2")
    before = [p.detach().clone() for p in model.parameters()]
    match = r"the loss training_step returns must be a scalar .* shape \(24,\)"
    assert fit_raises(model, ValueError, match) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_validation_batch_the_hook_cannot_take_fails_at_fit_start():
    class WantsThree(Steps):
        def validation_loss(self, batch):
            x, y, _ = batch
            return super().validation_loss((x, y))

    match = r"validation_loss failed on a batch of the validation dataloader before training"
    assert fit_raises(WantsThree("l2"), ValueError, match) == 0


def test_non_finite_validation_loss_at_start():
    class NaNValidation(Steps):
        def validation_loss(self, batch):
            return super().validation_loss(batch) * float("nan")

    assert fit_raises(NaNValidation("l2"), ValueError, r"validation_loss returned nan") == 0


def test_dropout_model_without_a_replayable_training_loss():
    """Without training_loss the replays take training_step's loss; a step that returns no
    loss is an error before the first step, naming both ways out."""
    from lightning_hyperopt import KeepProbability, TunableDropout

    class NoReplay(Regression):
        training_loss = None
        steps = 0

        def __init__(self):
            super().__init__("none")
            self.drop = TunableDropout(KeepProbability(0.8))

        def training_step(self, batch, batch_idx):
            type(self).steps += 1
            return {"out": self.data_loss(batch)}

    match = (
        r"NoReplay.training_step returned a dict without a 'loss' tensor \(keys: \['out'\]\)"
        r".*return the loss from training_step.*must define `training_loss\(batch\) -> Tensor`"
    )
    with pytest.raises(TypeError, match=match):
        fit(NoReplay())
    assert NoReplay.steps == 1  # the probe's call, before any training step


def test_bad_max_nonfinite_steps():
    with pytest.raises(ValueError, match=r"max_nonfinite_steps=0 must be an integer >= 1"):
        OnlineHyperparamCallback(max_nonfinite_steps=0)


class Checkpointed(Steps):
    """The last layer under ``torch.utils.checkpoint``; ``where``: in both losses, or in the
    training loss only."""

    def __init__(self, use_reentrant, where="both"):
        super().__init__("l2")
        self.use_reentrant, self.where = use_reentrant, where

    def forward(self, x):
        h = torch.tanh(self.first(x))
        if self.where == "both" or self.training:
            return checkpoint(self.second, h, use_reentrant=self.use_reentrant)
        return self.second(h)


REENTRANT = (
    r"torch.utils.checkpoint\(..., use_reentrant=True\) cannot be differentiated .* "
    r"pass use_reentrant=False"
)


@pytest.mark.parametrize("method", [FirstOrder(), Clip(5.0), Exact()], ids=type)
def test_reentrant_checkpointing_is_named_at_fit_start(method):
    """The probe differentiates validation_loss: reentrant checkpointing refuses .grad()."""
    match = r"validation_loss, differentiated for g_V before training started: " + REENTRANT
    assert fit_raises(Checkpointed(True), ValueError, match, method=method) == 0


def test_reentrant_checkpointing_in_the_training_loss_only():
    """Clip's first backward needs .grad(): named before the first optimizer step. FirstOrder
    back-propagates with .backward(), which reentrant checkpointing supports: it trains."""
    model = Checkpointed(True, where="train")
    before = [p.detach().clone() for p in model.parameters()]
    match = r"the training loss, back-propagated by OnlineHyperparamCallback: " + REENTRANT
    assert fit_raises(model, ValueError, match, method=Clip(5.0)) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    _, rec, _ = fit(Checkpointed(True, where="train"), FirstOrder(), 3)
    assert rec.values[-1][0] != 1e-3


@pytest.mark.parametrize("method", [FirstOrder(), Clip(5.0), Exact()], ids=type)
def test_non_reentrant_checkpointing_trains(method):
    _, rec, _ = fit(Checkpointed(False), method, 3)
    assert rec.values[-1][0] != 1e-3


class Embedded(Steps):
    """Regression plus an embedding of the signs of three inputs, its gradient sparse by the
    module (``sparse="module"``) or by ``F.embedding(..., sparse=True)`` (``"functional"``).
    The L2 penalty leaves the embedding out (its dense gradient would make the sum dense)."""

    def __init__(self, sparse="module", momentum=0.0):
        super().__init__("l2", momentum=momentum)
        self.sparse = sparse
        self.emb = torch.nn.Embedding(8, 16, sparse=sparse == "module").double()

    def forward(self, x):
        idx = (x[:, :3] > 0).long() @ torch.tensor([1, 2, 4])
        e = F.embedding(idx, self.emb.weight, sparse=self.sparse != "none")
        return self.second(torch.tanh(self.first(x) + e))

    def training_loss(self, batch):
        return self.data_loss(batch) + self.l2(
            [*self.first.parameters(), *self.second.parameters()]
        )


SPARSE = r"pass sparse=False, or use FirstOrder\(\), which reads sparse gradients densely"


@pytest.mark.parametrize("method", [Clip(5.0), Exact(), Unroll(2)], ids=type)
def test_sparse_embedding_is_named_at_fit_start(method):
    match = rf"{type(method).__name__}: emb \(Embedding\(..., sparse=True\)\) .*" + SPARSE
    assert fit_raises(Embedded("module"), ValueError, match, method=method) == 0


@pytest.mark.parametrize("method", [Clip(5.0), Unroll(2)], ids=type)
def test_sparse_gradient_is_named_before_the_first_optimizer_step(method):
    """F.embedding(sparse=True): no module to name; the first gradient's layout is checked,
    in Clip's create-graph backward, and before Unroll's first step (which needs no H·y)."""
    model = Embedded("functional")
    before = [p.detach().clone() for p in model.parameters()]
    match = r"parameter 4 \(shape \(8, 16\)\) is sparse .*" + SPARSE
    assert fit_raises(model, ValueError, match, method=method) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_first_order_reads_sparse_gradients_densely(momentum):
    """FirstOrder with sparse gradients: the same λ trajectory as the dense embedding."""
    trajectories = []
    for sparse in ("module", "none"):
        _, rec, _ = fit(Embedded(sparse, momentum), FirstOrder(), 6, batch_size=8)
        trajectories.append(torch.tensor(rec.values))
    assert (trajectories[1] != 1e-3).all()
    torch.testing.assert_close(trajectories[0], trajectories[1], rtol=1e-12, atol=0)


class TwiceUndifferentiable(torch.autograd.Function):
    """tanh with a backward that cannot itself be differentiated."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class FusedAttention(Steps):
    """A kernel without a double backward called directly (as libraries that pick their own
    fused kernels do): CPU flash attention, which the SDPA guard cannot switch."""

    def forward(self, x):
        h = torch.tanh(self.first(x)).view(-1, 1, 4, 4)
        a = torch._scaled_dot_product_flash_attention_for_cpu(h, h, h)[0]
        return self.second(a.reshape(-1, 16))


class OnceDifferentiable(Steps):
    def forward(self, x):
        return self.second(TwiceUndifferentiable.apply(self.first(x)))


@pytest.mark.parametrize("build", [FusedAttention, OnceDifferentiable], ids=lambda c: c.__name__)
def test_an_operation_without_double_backward_is_named_before_the_first_optimizer_step(build):
    """A kernel's missing derivative raises in torch; a @once_differentiable backward does not
    (its curvature would silently be 0) and is found in the graph. Both name FirstOrder,
    which trains."""
    model = build("l2")
    before = [p.detach().clone() for p in model.parameters()]
    match = r"an operation in the training loss has no double backward.*use FirstOrder\(\)"
    assert fit_raises(model, ValueError, match, method=Clip(5.0)) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    _, rec, _ = fit(build("l2"), FirstOrder(), 3)
    assert rec.values[-1][0] != 1e-3
