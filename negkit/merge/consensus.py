"""Consensus merging with TALL masks (Wang et al., ICML 2024): keep what enough members find important.

With τ_MTL = Σ_k τ_k, member k's TALL mask marks the elements where it dominates the rest,
m_k = |τ_k| ≥ λ · |τ_MTL − τ_k|. The consensus mask keeps an element where at least ``m``
of the K masks hold, and the merged vector is the masked mean (1/K) τ_MTL. ``m = K`` asks
every member to find the element important: a magnitude-based cousin of NegMerge's
"every member agrees in sign". Each key's K slices are held at once (τ_MTL is needed
before any mask), so memory grows with K per tensor, not with the model.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from negkit.merge.fold import _acc_dtype, _Fold, _in_memory
from negkit.pool import Pool

__all__ = ["consensus", "tall_masks"]


def tall_masks(slices: Sequence[torch.Tensor], lam: float) -> torch.Tensor:
    """The K TALL masks of one tensor, stacked (K, ...): |τ_k| ≥ λ · |Σ_j τ_j − τ_k|."""
    stack = torch.stack([s.to(_acc_dtype(s.dtype)) for s in slices])
    total = stack.sum(0)
    return stack.abs() >= lam * (total - stack).abs()


class _ConsensusFold(_Fold):
    def __init__(self, pool: Pool, m: int | None = None, lam: float = 0.4, progress: bool = False) -> None:
        super().__init__(pool)
        m = min(2, pool.K) if m is None else m
        if not 1 <= int(m) <= pool.K:
            raise ValueError(f"consensus: m must be in [1, K={pool.K}] (members that must agree), got {m}")
        if not lam >= 0:
            raise ValueError(f"consensus: lam must be >= 0, got {lam}")
        self.m, self.lam = int(m), float(lam)

    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            self.dtype, self.slices, self.first = t.dtype, [], False
        self.slices.append(t)

    def finish(self) -> torch.Tensor:
        votes = tall_masks(self.slices, self.lam).sum(0)
        total = torch.stack([s.to(_acc_dtype(s.dtype)) for s in self.slices]).sum(0)
        self.slices = []
        return (total / self.K * (votes >= self.m)).to(self.dtype)


@register("consensus", fold=_ConsensusFold)
def consensus(task_vectors: Sequence[Mapping[str, torch.Tensor]], m: int | None = None, lam: float = 0.4, *,
              strict: bool = True, names: Sequence[str] | None = None,
              progress: bool = False) -> dict[str, torch.Tensor]:
    """Consensus merge: the mean where at least ``m`` members' TALL masks (λ = ``lam``) agree, 0 elsewhere.

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        m: Members that must mark an element important (None: 2, the paper's consensus, or
            K when K < 2; ``m = K``: all of them).
        lam: λ of the TALL masks (default 0.4, inside the range the paper searches).
        strict, names, progress: As in :func:`negkit.merge.negmerge`.

    Raises:
        ValueError: ``m`` outside [1, K] or ``lam`` < 0; otherwise as :func:`negkit.merge.negmerge`.
    """
    return _in_memory(_ConsensusFold, task_vectors, strict, names, progress, m=m, lam=lam)
