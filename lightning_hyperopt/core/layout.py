"""``FlatLayout``: the optimized parameters laid end to end in one vector."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


class FlatLayout:
    """Parameters laid end to end in one vector of N entries (parameter i at ``spans[i]``).

    The parameters must share one dtype and one device (the tangents live beside them).
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        if not params:
            raise ValueError("no parameter to differentiate: the optimizer has none")
        dtypes = {p.dtype for p in params}
        devices = {p.device for p in params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                "online hyperparameter tuning needs the optimized parameters on one device with "
                f"one dtype; got dtypes {sorted(map(str, dtypes))} on {sorted(map(str, devices))}"
            )
        self.params = list(params)
        self.dtype, self.device = params[0].dtype, params[0].device
        self.sizes = [p.numel() for p in params]
        starts = [0]
        for n in self.sizes:
            starts.append(starts[-1] + n)
        self.spans = [slice(a, b) for a, b in itertools.pairwise(starts)]
        self.numel = starts[-1]

    @classmethod
    def of_optimizer(cls, optimizer: torch.optim.Optimizer) -> tuple[FlatLayout, list[int]]:
        """The layout of the parameters ``optimizer`` trains (those requiring grad, in group
        order) and the param-group index of each."""
        params, group_of = [], []
        for k, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if p.requires_grad:
                    params.append(p)
                    group_of.append(k)
        return cls(params), group_of

    def flatten(self, tensors: Iterable[Tensor | None]) -> Tensor:
        """One vector (N,) from one tensor per parameter (``None`` reads as zeros, a sparse
        tensor densely)."""
        parts = [
            torch.zeros(n, dtype=self.dtype, device=self.device)
            if t is None
            else dense(t.detach()).reshape(-1)
            for t, n in zip(tensors, self.sizes, strict=True)
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()

    def split(self, flat: Tensor) -> list[Tensor]:
        """Views of a vector (N,), one with each parameter's shape (writes go through)."""
        return [flat[s].view(p.shape) for s, p in zip(self.spans, self.params)]

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of a (m, N) matrix, one (m, *p.shape) per parameter (writes go through)."""
        return [flat[:, s].view(flat.shape[0], *p.shape) for s, p in zip(self.spans, self.params)]

    def expand(self, per_param: Sequence[Any], span: slice) -> Tensor:
        """One value per parameter of ``span`` (indices into ``params``) as a vector over its
        entries: a bool or float per parameter, repeated over the parameter's entries."""
        sizes = torch.tensor(self.sizes[span], device=self.device)
        values = torch.as_tensor(list(per_param), device=self.device)
        return torch.repeat_interleave(values, sizes)


def dense(t: Tensor) -> Tensor:
    """``t`` as a strided tensor: a sparse gradient (``nn.Embedding(sparse=True)``) is read
    densely, at the cost of one dense copy of it."""
    return t.to_dense() if t.is_sparse else t
