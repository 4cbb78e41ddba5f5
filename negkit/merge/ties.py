"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint mean."""
from __future__ import annotations

import builtins
import math
from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from tqdm.auto import tqdm

from negkit.merge.fold import _acc_dtype, _choice, _Fold, _in_memory
from negkit.pool import Pool, abs_bits, bits_width, kth_largest_abs

__all__ = ["ties"]


class _TiesFold(_Fold):
    # TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean.
    def __init__(self, pool: Pool, density: float = 0.2, trim: str = "reference", sign_tie: str = "global",
                 progress: bool = False) -> None:
        super().__init__(pool)
        if not 0 < float(density) <= 1:
            raise ValueError(f"ties density must be in (0, 1], got {density}")
        self.trim = _choice("ties", "trim", trim, ("reference", "exact"))
        self.sign_tie = _choice("ties", "sign_tie", sign_tie, ("global", "majority"))
        n = builtins.sum(math.prod(pool.shapes[key]) for key in pool.keys)
        if trim == "reference":
            # The reference keeps |τ| >= the k-th smallest |τ|, k = N − int(N·density):
            # that is the (int(N·density) + 1)-th largest (all N when density = 1).
            n_keep = min(n, int(float(density) * n) + 1)
        else:
            n_keep = min(n, max(1, int(float(density) * n + 0.5)))  # round half up
        self.width = bits_width(pool)
        self.bounds = [max(1, key) for key in kth_largest_abs(pool, [n_keep] * pool.K, progress=progress)]
        if self.sign_tie == "global":
            self.global_sign = self._global_sign(pool, progress)

    def _trim(self, t: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
        # Keep |τ| >= the vector's threshold (ties at the threshold all kept; the bound
        # is at least the smallest positive key, so zeros never are, which changes
        # nothing: a zero adds to no sum and no count). Multiplying by the mask is
        # exact (x·1 = x, x·0 = ±0) and much faster than where().
        return t.to(dtype) * (abs_bits(t, self.width) >= self.bounds[k])

    def _global_sign(self, pool: Pool, progress: bool) -> int:
        # One extra pass: sign(Σ over all N elements of sign(Σ_k trimmed τ_k)), the
        # sign the reference gives every element whose trimmed values sum to exactly 0.
        votes = 0
        for key in tqdm(pool.keys, desc="ties elected signs", disable=not progress):
            total = None
            for k in range(pool.K):
                t = pool.get(k, key)
                trimmed = self._trim(t, k, _acc_dtype(t.dtype))
                total = trimmed if total is None else total.add_(trimmed)
            votes += int(torch.sign(total).sum())
        return (votes > 0) - (votes < 0)

    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            acc = _acc_dtype(t.dtype)
            count = torch.int16 if self.K < 2**15 else torch.int32
            self.dtype, self.first = t.dtype, False
            self.pos_sum = torch.zeros(t.shape, dtype=acc, device=t.device)
            self.neg_sum = torch.zeros_like(self.pos_sum)
            self.pos_cnt = torch.zeros(t.shape, dtype=count, device=t.device)
            self.neg_cnt = torch.zeros_like(self.pos_cnt)
            if self.sign_tie == "global":
                self.total = torch.zeros_like(self.pos_sum)
        trimmed = self._trim(t, k, self.pos_sum.dtype)
        self.pos_sum += trimmed.clamp(min=0)
        self.neg_sum += trimmed.clamp(max=0)
        self.pos_cnt += trimmed > 0
        self.neg_cnt += trimmed < 0
        if self.sign_tie == "global":
            self.total += trimmed  # in vector order, as the reference's sum over dim 0

    def finish(self) -> torch.Tensor:
        if self.sign_tie == "global":
            # Elected sign: sign of the sum of trimmed values; an exactly zero sum takes
            # the vector-wide sign computed in _global_sign. When that vote is exactly 0
            # too, the reference's sign stays 0 and its `where(sign > 0, τ > 0, τ < 0)`
            # keeps the negative entries, so a zero sign counts as "down" here as well.
            up = (self.total > 0) | ((self.total == 0) & (self.global_sign > 0))
            down = (self.total < 0) | ((self.total == 0) & (self.global_sign <= 0))
        else:
            # Elected sign: sign of the sum of trimmed values; an exactly zero sum falls
            # back to the majority sign of the trimmed non-zero entries; if the counts
            # tie as well (or nothing survived trimming) no sign is elected and the
            # element is 0.
            total = self.pos_sum + self.neg_sum
            tie = total == 0
            up = (total > 0) | (tie & (self.pos_cnt > self.neg_cnt))
            down = (total < 0) | (tie & (self.neg_cnt > self.pos_cnt))
        # up and down are disjoint, so the masked sum selects one disjoint mean exactly.
        out = (self.pos_sum / self.pos_cnt.clamp_min(1)).mul_(up)
        out += (self.neg_sum / self.neg_cnt.clamp_min(1)).mul_(down)
        return out.to(self.dtype)


@register("ties", fold=_TiesFold)
def ties(task_vectors: Sequence[Mapping[str, torch.Tensor]], density: float = 0.2, *, trim: str = "reference",
         sign_tie: str = "global", strict: bool = True, names: Sequence[str] | None = None,
         progress: bool = False) -> dict[str, torch.Tensor]:
    """TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint mean.

    The defaults reproduce the reference code (``ties_merging`` of the TIES release,
    used by NegMerge's); ``trim="exact"`` and ``sign_tie="majority"`` are negkit's
    own variants.

    1. Trim, one global threshold per vector over all N elements of all its tensors
       (not one per tensor). ``trim="reference"``: keep every |value| >= the
       ``(N − int(density·N))``-th smallest |value|, i.e. ``int(density·N) + 1``
       entries when no values tie (all of them when density = 1).
       ``trim="exact"``: keep the ``max(1, ⌊density·N + ½⌋)`` largest, i.e.
       ``round(density·N)``. Entries equal to the threshold are all kept.
    2. Elect: ``γ = sign(Σ_k trimmed τ_k)``. Where that sum is exactly 0:
       ``sign_tie="global"``: γ is one sign for the whole vector,
       ``sign(Σ over all elements of γ)``; ``sign_tie="majority"``: γ is the
       per-element majority sign of the trimmed non-zero entries, and 0 (the
       element is 0) if their counts tie too.
       Example, one element of values (+2, +2, −4) in a vector whose other elected
       signs are mostly negative: "global" gives −4, "majority" gives +2.
    3. Disjoint mean over the trimmed entries whose sign equals γ (0 where none).

    With K = 1 the result is the trimmed vector.

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        density: Fraction of each vector kept by trimming, in (0, 1].
        trim: ``"reference"`` or ``"exact"`` (see 1.).
        sign_tie: ``"global"`` or ``"majority"`` (see 2.); "global" costs one more
            pass over the vectors.
        strict, names, progress: As in :func:`negmerge`.

    Raises:
        ValueError: ``density`` outside (0, 1], an unknown ``trim`` or ``sign_tie``;
            otherwise as :func:`negmerge`.
    """
    return _in_memory(_TiesFold, task_vectors, strict, names, progress, density=density, trim=trim,
                      sign_tie=sign_tie)
