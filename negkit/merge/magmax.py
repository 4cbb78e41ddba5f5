"""MagMax (Marczak et al., ECCV 2024): per element the value of largest magnitude."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from negkit.merge.fold import _choice, _Fold, _in_memory
from negkit.pool import Pool

__all__ = ["magmax"]


class _MagMaxFold(_Fold):
    # tie="last" (the reference): one running value, replaced wherever the next
    # slice's |τ| is at least as large, so on an exact +a/−a tie the later vector wins.
    # tie="positive": the element of largest |τ| is either the running maximum or
    # the running minimum, and on |max| = |min| the positive value wins, so the
    # result does not depend on the order of the vectors.
    def __init__(self, pool: Pool, tie: str = "last", progress: bool = False) -> None:
        super().__init__(pool)
        self.tie = _choice("magmax", "tie", tie, ("last", "positive"))

    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            self.hi, self.first = t.clone(), False
            if self.tie == "positive":
                self.lo = t.clone()
        elif self.tie == "last":
            torch.where(t.abs() >= self.hi.abs(), t, self.hi, out=self.hi)
        else:
            torch.maximum(self.hi, t, out=self.hi)
            torch.minimum(self.lo, t, out=self.lo)

    def finish(self) -> torch.Tensor:
        if self.tie == "last":
            return self.hi
        take_hi = self.hi >= -self.lo
        # masked sum instead of where(): exact (one term is ±0) and several times faster on CPU
        return self.hi * take_hi + self.lo * ~take_hi


@register("magmax", fold=_MagMaxFold)
def magmax(task_vectors: Sequence[Mapping[str, torch.Tensor]], *, tie: str = "last", strict: bool = True,
           names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """MagMax (Marczak et al., 2024): per element the value of largest magnitude.

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        tie: Which value wins among values of equal largest |value| (+a and −a):
            ``"last"`` (default, as the reference code, which replaces the running
            value wherever ``|τ_k| >= |running|``): the later vector in the list;
            ``"positive"``: the positive one, so the result does not depend on the
            order of the vectors.
        strict, names, progress: As in :func:`negmerge`.

    Raises:
        ValueError: An unknown ``tie``; otherwise as :func:`negmerge`.
    """
    return _in_memory(_MagMaxFold, task_vectors, strict, names, progress, tie=tie)
