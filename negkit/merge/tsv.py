"""TSV-M (Gargiulo et al., CVPR 2025): merge in the space of each layer's task singular vectors.

For a 2-D tensor (a layer's weight matrix) every member is factored τ_k = U_k Σ_k V_kᵀ and
keeps its top r = max(1, ⌊rank / K⌋) singular triplets. The K kept bases are concatenated,
U = [U_1 … U_K], V = [V_1 … V_K], Σ = diag(Σ_1 … Σ_K), and made orthonormal by their
closest orthogonal matrices (the polar factor: U = P S Qᵀ → U⊥ = P Qᵀ), which removes the
interference between members' directions; the merged layer is U⊥ Σ V⊥ᵀ — a sum, like
task arithmetic (the λ search scales it). Convolution kernels are treated as matrices
(out channels × the rest); vectors (biases, norms) take the mean. Each key's K slices are
held at once (SVDs of all members), so memory grows with K per tensor.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from negkit.merge.fold import _acc_dtype, _Fold, _in_memory
from negkit.pool import Pool

__all__ = ["tsv", "tsv_layer"]


def _polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal (semi-orthogonal) matrix closest to ``a``: P Qᵀ of its SVD P S Qᵀ."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def tsv_layer(slices: Sequence[torch.Tensor], fraction: float | None = None) -> torch.Tensor:
    """TSV-M of one 2-D tensor's K member slices (float64 SVDs, result in the slices' dtype).

    Args:
        slices: K tensors (out, in).
        fraction: Fraction of each member's rank kept (None: 1/K, the paper's default).
    """
    k = len(slices)
    mats = [s.to(torch.float64) for s in slices]
    rank = min(mats[0].shape)
    r = max(1, int((fraction if fraction is not None else 1.0 / k) * rank))
    us, ss, vs = [], [], []
    for m in mats:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        us.append(u[:, :r])
        ss.append(s[:r])
        vs.append(vh[:r].T)
    u, s, v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    if u.shape[1] > min(u.shape):  # more directions than dimensions: keep the strongest that fit
        keep = torch.argsort(s, descending=True)[:min(u.shape[0], v.shape[0])]
        u, s, v = u[:, keep], s[keep], v[:, keep]
    merged = _polar(u) @ torch.diag(s) @ _polar(v).T
    return merged.to(slices[0].dtype)


class _TsvFold(_Fold):
    def __init__(self, pool: Pool, fraction: float | None = None, progress: bool = False) -> None:
        super().__init__(pool)
        if fraction is not None and not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"tsv: fraction must be in (0, 1] or None (1/K), got {fraction}")
        self.fraction = None if fraction is None else float(fraction)

    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            self.dtype, self.slices, self.first = t.dtype, [], False
        self.slices.append(t)

    def finish(self) -> torch.Tensor:
        slices, self.slices = self.slices, []
        shape = slices[0].shape
        if len(shape) >= 2 and min(shape[0], int(torch.tensor(shape[1:]).prod())) > 1:
            flat = [s.reshape(shape[0], -1) for s in slices]  # conv kernels: (out, in · kh · kw)
            return tsv_layer(flat, self.fraction).reshape(shape)
        acc = torch.stack([s.to(_acc_dtype(s.dtype)) for s in slices]).mean(0)
        return acc.to(self.dtype)


@register("tsv", fold=_TsvFold)
def tsv(task_vectors: Sequence[Mapping[str, torch.Tensor]], fraction: float | None = None, *, strict: bool = True,
        names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """TSV-M: per matrix, each member's top singular directions, orthogonalised and summed; other tensors: mean.

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        fraction: Fraction of each member's rank it keeps (None: 1/K).
        strict, names, progress: As in :func:`negkit.merge.negmerge`.

    Raises:
        ValueError: ``fraction`` outside (0, 1]; otherwise as :func:`negkit.merge.negmerge`.
    """
    return _in_memory(_TsvFold, task_vectors, strict, names, progress, fraction=fraction)
