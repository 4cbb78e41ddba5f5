"""Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): per layer, drop the outliers and the noise.

For member k and tensor (layer) L, the elements are ranked by |τ_k|: the ``top`` fraction of
largest magnitudes (outliers) and the ``bottom`` fraction of smallest (noise) are set to 0,
the rest kept as they are; the merged vector is the mean of the masked members. The ranks
are exact per tensor (``torch.kthvalue``), ties at a threshold kept. Memory is flat in K.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from negkit.merge.fold import KeptMeanFold, _in_memory
from negkit.pool import Pool

__all__ = ["breadcrumbs", "breadcrumb_mask"]


def breadcrumb_mask(t: torch.Tensor, top: float, bottom: float) -> torch.Tensor:
    """True where |t| is neither among the ``top`` largest nor the ``bottom`` smallest fractions of ``t``."""
    a = t.detach().abs().flatten().float()
    n = a.numel()
    keep = torch.ones_like(a, dtype=torch.bool)
    n_top, n_bottom = math.floor(top * n), math.floor(bottom * n)
    if n_top + n_bottom >= n:
        return torch.zeros_like(t, dtype=torch.bool)
    if n_bottom > 0:
        keep &= a > torch.kthvalue(a, n_bottom).values       # drop the n_bottom smallest (and ties with them)
    if n_top > 0:
        keep &= a < torch.kthvalue(a, n - n_top + 1).values  # drop the n_top largest (and ties with them)
    return keep.view(t.shape)


class _BreadcrumbsFold(KeptMeanFold):
    def __init__(self, pool: Pool, top: float = 0.01, bottom: float = 0.85, progress: bool = False) -> None:
        super().__init__(pool)
        if not (0.0 <= top < 1.0 and 0.0 <= bottom < 1.0 and top + bottom < 1.0):
            raise ValueError(f"breadcrumbs: need 0 <= top, bottom and top + bottom < 1; got top={top}, bottom={bottom}")
        self.top, self.bottom = float(top), float(bottom)

    def kept(self, t: torch.Tensor, k: int) -> torch.Tensor:
        return t * breadcrumb_mask(t, self.top, self.bottom)


@register("breadcrumbs", fold=_BreadcrumbsFold)
def breadcrumbs(task_vectors: Sequence[Mapping[str, torch.Tensor]], top: float = 0.01, bottom: float = 0.85, *,
                strict: bool = True, names: Sequence[str] | None = None,
                progress: bool = False) -> dict[str, torch.Tensor]:
    """Model Breadcrumbs: per tensor and member, drop the ``top`` largest and ``bottom`` smallest magnitudes; mean.

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        top: Fraction of largest |τ| dropped per tensor (default 1 %).
        bottom: Fraction of smallest |τ| dropped per tensor (default 85 %; our choice, tune it).
        strict, names, progress: As in :func:`negkit.merge.negmerge`.

    Raises:
        ValueError: Fractions outside [0, 1) or summing to ≥ 1; otherwise as :func:`negkit.merge.negmerge`.
    """
    return _in_memory(_BreadcrumbsFold, task_vectors, strict, names, progress, top=top, bottom=bottom)
