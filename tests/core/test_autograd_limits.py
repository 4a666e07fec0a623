"""Known torch errors inside the tuner's autograd calls become errors naming the fix."""

import pytest
import torch

from lightning_hyperopt.core.autograd_limits import (
    COMPILED,
    NO_DOUBLE_BACKWARD,
    REENTRANT,
    SPARSE,
    check_dense,
    explain,
    named_limits,
)


def double_backward(fn, x):
    (g,) = torch.autograd.grad(fn(x).pow(2).sum(), x, create_graph=True)
    torch.autograd.grad(g.sum(), x)


def raised(call):
    with pytest.raises(RuntimeError) as info:
        call()
    return info.value


def test_a_compiled_function_run_compiled_is_named():
    """What a compiled function gives when run compiled in an H·y step (torch < 2.6 has no
    ``set_stance``): aot_autograd's double-backward error, named with FirstOrder."""
    compiled = torch.compile(torch.tanh, backend="aot_eager")
    err = raised(lambda: double_backward(compiled, torch.randn(3, requires_grad=True)))
    assert explain(err) == COMPILED and "FirstOrder()" in COMPILED


def test_reentrant_checkpointing_is_named():
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(3, requires_grad=True)
    err = raised(
        lambda: torch.autograd.grad(checkpoint(torch.tanh, x, use_reentrant=True).sum(), x)
    )
    assert explain(err) == REENTRANT and "use_reentrant=False" in REENTRANT


def test_a_missing_derivative_and_sparse_tensors_are_named():
    q = torch.randn(1, 1, 4, 2, requires_grad=True)
    err = raised(
        lambda: double_backward(
            lambda t: torch.nn.functional.scaled_dot_product_attention(t, t, t), q
        )
    )
    assert explain(err) == NO_DOUBLE_BACKWARD
    sparse = torch.eye(3).to_sparse()
    assert explain(raised(lambda: sparse.reshape(-1))) == SPARSE
    assert explain(RuntimeError("shapes do not match")) is None


def test_named_limits_keeps_the_cause_and_passes_other_errors_through():
    err = RuntimeError("When use_reentrant=True, torch.utils.checkpoint is incompatible")
    with (
        pytest.raises(ValueError, match=r"^the probe: torch.utils.checkpoint") as info,
        named_limits("the probe"),
    ):
        raise err
    assert info.value.__cause__ is err
    with pytest.raises(RuntimeError, match="shapes do not match"), named_limits("the probe"):
        raise RuntimeError("shapes do not match")


def test_check_dense_names_the_first_sparse_gradient():
    params = [torch.zeros(2), torch.zeros(3, 3)]
    check_dense([torch.ones(2), None], params, "here")
    with pytest.raises(ValueError, match=r"here: .* parameter 1 \(shape \(3, 3\)\) is sparse"):
        check_dense([torch.ones(2), torch.eye(3).to_sparse()], params, "here")
