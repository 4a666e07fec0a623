"""What the tuner's autograd calls cannot go through, named: a known torch error raised inside
them becomes an error that names the setting and its fix.

    torch.utils.checkpoint(use_reentrant=True)   refuses torch.autograd.grad   → use_reentrant=False
    a sparse gradient (nn.Embedding(sparse=True)) in an H·y step               → sparse=False, or
                                                   FirstOrder (sparse gradients read densely)
    an operation without a double backward (a custom autograd.Function, a kernel) → FirstOrder()
    torch.compile'd code in an H·y step (the kernel guard runs it eagerly)       → FirstOrder()

Every tuner call of ``torch.autograd.grad`` (the probe's g_V, a step's gradient with
``create_graph=True``, its double back-prop, g_V at each λ update) runs inside
:func:`named_limits`; an error it does not recognize passes through unchanged. One limit raises
nothing in torch: the double back-prop through a ``@once_differentiable`` backward silently
drops that function's curvature (its error node hangs off a detached copy, which no gradient
reaches), so the first H·y step looks for such nodes (:func:`check_twice_differentiable`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

from torch import Tensor

REENTRANT = (
    "torch.utils.checkpoint(..., use_reentrant=True) cannot be differentiated by "
    "torch.autograd.grad, which the tuner uses for g_V and for H·y: pass use_reentrant=False "
    "(the same recomputation, and it supports .grad() and double backward)"
)
SPARSE_FIX = (
    "the methods with a tangent need H·y, which sparse gradients do not support: pass "
    "sparse=False, or use FirstOrder(), which reads sparse gradients densely"
)
SPARSE = (
    "a gradient is sparse (nn.Embedding(..., sparse=True), nn.EmbeddingBag(..., sparse=True) "
    f"or F.embedding(..., sparse=True)); {SPARSE_FIX}"
)
NO_DOUBLE_BACKWARD = (
    "an operation in the training loss has no double backward, which H·y needs (a custom "
    "torch.autograd.Function with @once_differentiable or without a differentiable backward, "
    "or a kernel without one): use FirstOrder(), which needs first derivatives only, or build "
    "the operation from differentiable torch operations"
)
COMPILED = (
    "code compiled by torch.compile has no double backward, which H·y needs; the steps that "
    "need H·y run it eagerly (torch.compiler.set_stance('force_eager')), but this call was "
    "still compiled: use FirstOrder() to keep compiling, or call the model uncompiled"
)


def explain(err: BaseException) -> str | None:
    """The named limit behind a raw torch error, or ``None`` if it is not a known one."""
    text = str(err)
    lower = text.lower()
    if "use_reentrant=true" in lower:
        return REENTRANT
    if "sparse" in lower:
        return SPARSE
    if "aot_autograd" in lower or "donated buffers" in lower:
        return COMPILED
    if ("derivative for" in lower and "not implemented" in lower) or "differentiate twice" in lower:
        return NO_DOUBLE_BACKWARD
    return None


@contextlib.contextmanager
def named_limits(where: str) -> Iterator[None]:
    """Within the context, a known torch error becomes a ``ValueError`` saying ``where`` it
    happened, the limit and its fix (the raw error is kept as its cause)."""
    try:
        yield
    except RuntimeError as err:
        fix = explain(err)
        if fix is None:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{where}: {fix} (torch: {first})") from err


def check_dense(grads: Iterable[Tensor | None], params: Sequence[Tensor], where: str) -> None:
    """Every gradient is a strided (dense) tensor; else a ``ValueError`` naming the first
    sparse one by its position and shape, and the fix."""
    for i, (g, p) in enumerate(zip(grads, params)):
        if g is not None and g.is_sparse:
            raise ValueError(
                f"{where}: the gradient of the optimizer's parameter {i} (shape "
                f"{tuple(p.shape)}) is sparse (nn.Embedding(..., sparse=True), "
                f"nn.EmbeddingBag(..., sparse=True) or F.embedding(..., sparse=True)); "
                f"{SPARSE_FIX}"
            )


#: the autograd node ``@once_differentiable`` puts on a backward's outputs
_ONCE_DIFFERENTIABLE = frozenset({"Error", "DelayedError"})


def check_twice_differentiable(grads: Iterable[Tensor | None], where: str) -> None:
    """No gradient built with ``create_graph=True`` passes through a ``@once_differentiable``
    backward (its second derivative would silently be 0); else a ``ValueError`` naming the fix.
    Walks the gradients' graphs once (a Python pass over their nodes)."""
    stack = [g.grad_fn for g in grads if g is not None and g.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in _ONCE_DIFFERENTIABLE:
            raise ValueError(
                f"{where}: {NO_DOUBLE_BACKWARD} (torch: a @once_differentiable backward)"
            )
        stack.extend(next_node for next_node, _ in node.next_functions)
