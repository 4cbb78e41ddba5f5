"""NegMerge (Kim, Han & Choe, ICML 2025): the mean where all K signs agree, 0 elsewhere."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from negkit.merge.fold import _in_memory, _SumFold

__all__ = ["negmerge"]


class _NegMergeFold(_SumFold):
    # Running sum plus two boolean masks, "positive in every vector so far" and
    # "negative in every vector so far": an element is kept iff one of them holds
    # after all K, i.e. |Σ_k sign(τ_k)| = K.
    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            self.all_pos, self.all_neg = t > 0, t < 0
        else:
            self.all_pos &= t > 0
            self.all_neg &= t < 0
        super().add(t, k)

    def finish(self) -> torch.Tensor:
        keep = self.all_pos | self.all_neg
        return (self.s / self.K).mul_(keep).to(self.dtype)


@register("negmerge", fold=_NegMergeFold)
def negmerge(task_vectors: Sequence[Mapping[str, torch.Tensor]], *, strict: bool = True,
             names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """NegMerge (Kim, Han & Choe, ICML 2025): keep only sign-consistent elements.

    An element is kept iff all K task vectors have the same non-zero sign there,
    ``|Σ_k sign(τ_k)| = K``; a kept element takes the mean of its K values, every
    other element is 0. With K = 1 this is the vector itself (its zeros stay 0).

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        strict: Require equal keys/shapes/dtypes (False: merge the shared keys).
        names: Labels of the vectors for error messages.
        progress: Show a tqdm bar over tensors.

    Returns:
        The merged vector, same keys (order of the first vector), shapes and dtypes.

    Raises:
        ValueError: K = 0, keys/shapes/dtypes disagree (strict), NaN/Inf, non-float tensors.
    """
    return _in_memory(_NegMergeFold, task_vectors, strict, names, progress)
