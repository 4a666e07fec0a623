"""The non-finite policy, in one place: a non-finite value never reaches y, the optimizer-state
tangents or λ, and every one is counted.

    a step whose loss is not finite      y, the state tangents and λ stay as they were
    a non-finite tangent row (good step) y_j starts again from 0
    a non-finite hypergradient or λ_j    λ_j stays as it was, y_j starts again from 0

:class:`FiniteGuard` applies it around the engine's tangent step and λ step (like optax's
``apply_if_finite`` around an update), and :class:`NonFiniteCounts` keeps the counts on the
device, so that nothing is read back to the host per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class NonFiniteTrainingError(RuntimeError):
    """Training stopped: too many training steps in a row had a non-finite loss (the weights
    are likely not finite any more). A ``RuntimeError``, so code that caught that still does."""


class NonFiniteCounts:
    """Per hyperparameter, the skipped steps, tangents and hypergradients; the current run of
    non-finite training steps and its longest length since the last :meth:`report`. Device
    tensors: the host reads them only in :meth:`report`, :meth:`per_row`."""

    def __init__(self, rows: int, device: torch.device) -> None:
        self.device = device
        self._per_row = torch.zeros(rows, dtype=torch.int64, device=device)
        self._run = torch.zeros((), dtype=torch.int64, device=device)
        self._longest = torch.zeros((), dtype=torch.int64, device=device)

    def add_step(self, bad_step: Tensor, bad_rows: Tensor | None) -> None:
        """One training step: ``bad_step`` (its loss was not finite) counts on every row,
        ``bad_rows`` (a non-finite tangent) on its own."""
        extra = bad_step if bad_rows is None else bad_step | bad_rows
        self._per_row += extra.long()
        self._run = (self._run + 1) * bad_step.long()
        self._longest = torch.maximum(self._longest, self._run)

    def add_rows(self, bad_rows: Tensor) -> None:
        """Non-finite hypergradients, one flag per row."""
        self._per_row += bad_rows.long()

    def per_row(self) -> list[int]:
        return [int(n) for n in self._per_row.tolist()]

    def as_tensor(self) -> Tensor:
        return self._per_row

    def report(self) -> tuple[int, int]:
        """(the current run, the longest run since the last report): one read."""
        now, longest = torch.stack([self._run, self._longest]).tolist()
        self._longest = self._run.clone()
        return int(now), int(longest)

    def load(self, per_row: list[int]) -> None:
        self._per_row = torch.tensor(per_row, dtype=torch.int64, device=self.device)


class FiniteGuard:
    """Applies the non-finite policy to the engine's updates and counts what it drops.

    Branch-free on the device when ``sync_free``; otherwise (the CPU, where reading a flag
    costs nothing) the common case, every row kept, returns the new values without a pass
    over them. Both give the same results.
    """

    def __init__(self, rows: int, device: torch.device, sync_free: bool) -> None:
        self.sync_free = sync_free
        self.counts = NonFiniteCounts(rows, device)

    @staticmethod
    def step_flags(finite: Tensor, step_skipped: Tensor | None) -> tuple[Tensor, Tensor]:
        """(the step moves y and λ, the step counts as non-finite) from whether its losses were
        finite and whether the optimizer skips it anyway (a grad scaler's inf: expected, not
        counted, but θ does not move)."""
        if step_skipped is None:
            return finite, ~finite
        return finite & ~step_skipped, ~finite & ~step_skipped

    def select(self, keep: Tensor, step_ok: Tensor, new: Tensor | None, old: Tensor | None):
        """Row j of ``new`` where ``keep[j]``; where not: 0 if the step is fine (a non-finite
        tangent starts again from 0), else ``old`` (a skipped step moves nothing)."""
        if new is None:
            return None
        if not self.sync_free and bool(keep.all()):
            return new
        fallback = new.new_zeros(()) if old is None else torch.where(step_ok, 0.0, old)
        return torch.where(keep.unsqueeze(1), new, fallback)

    def tangent_step(
        self,
        step_ok: Tensor,
        bad_step: Tensor,
        norms: Tensor,
        new: dict[str, Tensor | None],
        old: dict[str, Tensor | None],
    ) -> dict[str, Tensor | None]:
        """The tangent and its companions (the optimizer-state tangents) after a step whose
        new tangent rows have norms ``norms``: kept where the step and the row are finite."""
        rows_ok = torch.isfinite(norms)
        keep = step_ok & rows_ok
        out = {name: self.select(keep, step_ok, t, old[name]) for name, t in new.items()}
        self.counts.add_step(bad_step, step_ok & ~rows_ok)
        return out

    def direction_step(self, step_ok: Tensor, bad_step: Tensor, delta: Tensor) -> Tensor:
        """First order's direction: zero after a skipped step (a non-finite direction shows
        in the hypergradient, which :meth:`lambda_step` checks)."""
        self.counts.add_step(bad_step, None)
        return self.select(step_ok.expand(delta.shape[0]), step_ok, delta, None)

    def lambda_step(
        self,
        values: Tensor,
        new: Tensor,
        rows: Tensor,
        step_ok: Tensor,
        tangents: Sequence[Tensor],
    ) -> tuple[Tensor, list[Tensor]]:
        """(λ, the tangents) after a hyper step: λ_j moves where ``rows`` and the new λ_j is
        finite; where a good step gave a non-finite hypergradient, row j of every tangent (y,
        and ȳ of an averaged iterate) starts again from 0."""
        tangents = list(tangents)
        good = torch.isfinite(new) & rows  # not: a non-finite h, or an overflowing step
        if self.sync_free or not bool(good.all()):
            new = torch.where(good, new, values)
            bad = ~good & step_ok
            tangents = [self.select(~bad, step_ok, t, t) for t in tangents]
            self.counts.add_rows(bad)
        return new, tangents
