"""DARE (Yu et al., ICML 2024): drop each element of every task vector at random, rescale the rest.

For member k and element i, m_ki ~ Bernoulli(1 − p) and τ̃_ki = m_ki · τ_ki / (1 − p), so
E[τ̃_k] = τ_k; the merged vector is the mean (1/K) Σ_k τ̃_k — the uniform merge of the
sparsified vectors, which is what the negation protocol compares with (the λ search
absorbs DARE's global scale). The masks are seeded per (seed, member, key), so a merge
is reproducible and does not depend on the order the keys are read in. Memory is flat
in K: one running sum per key.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from negkit.merge.fold import KeptMeanFold, _in_memory
from negkit.pool import Pool

__all__ = ["dare", "drop_mask"]


def drop_mask(shape: torch.Size, p: float, *, seed: int, member: int, key: str) -> torch.Tensor:
    """The keep-mask of member ``member`` on tensor ``key``: True with probability 1 − p, seeded."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + member * 7_919 + zlib.crc32(key.encode())) % 2**63)
    return torch.rand(shape, generator=g) >= p


class _DareFold(KeptMeanFold):
    def __init__(self, pool: Pool, p: float = 0.5, seed: int = 0, progress: bool = False) -> None:
        super().__init__(pool)
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dare: p (the drop rate) must be in [0, 1), got {p}")
        self.p, self.seed = float(p), int(seed)

    def kept(self, t: torch.Tensor, k: int) -> torch.Tensor:
        keep = drop_mask(t.shape, self.p, seed=self.seed, member=k, key=self.key).to(t.device)
        return t * keep / (1.0 - self.p)


@register("dare", fold=_DareFold)
def dare(task_vectors: Sequence[Mapping[str, torch.Tensor]], p: float = 0.5, *, seed: int = 0, strict: bool = True,
         names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """DARE: drop rate ``p``, survivors rescaled by 1/(1 − p), then the mean over the K members.

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        p: Drop rate in [0, 1) (0: the uniform merge exactly). Default 0.5, our choice for
            small fine-tunes; the paper drops up to 90–99 % of LLM fine-tuning deltas.
        seed: Seed of the masks (per member and tensor).
        strict, names, progress: As in :func:`negkit.merge.negmerge`.

    Raises:
        ValueError: ``p`` outside [0, 1); otherwise as :func:`negkit.merge.negmerge`.
    """
    return _in_memory(_DareFold, task_vectors, strict, names, progress, p=p, seed=seed)
