"""Pool diversity: how different the K task vectors of a pool are, pair by pair.

Merging K fine-tunes (NegMerge, Kim et al., ICML 2025) gains only as much as the
fine-tunes differ. For every pair (τ_a, τ_b) this module measures their sign
agreement ``#{j : sign τ_a[j] = sign τ_b[j] ≠ 0} / numel`` (the consensus rate of
the pair, see :mod:`negkit.analysis`), their cosine similarity and their relative
distance ‖τ_a − τ_b‖ / ‖τ_a‖, and finds the members that are practically the same
vector, so the pool's effective size. The tables are tidy pandas DataFrames that
:mod:`negkit.plotting` draws.

Pools are read as in :mod:`negkit.analysis` (whose helpers this module uses): in
memory or as safetensors paths streamed in row chunks, keys in natural order, so
memory stays bounded by about ``K × chunk_size`` elements and both forms give
identical tables. The functions are re-exported by :mod:`negkit.analysis`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from negkit.analysis import _CHUNK, TensorSource, _analysed

__all__ = ["pairwise_agreement", "pool_diversity", "distinct_members"]


def pairwise_agreement(
    tvs: Sequence[TensorSource],
    names: Sequence[str] | None = None,
    *,
    form: str = "wide",
    strict: bool = True,
    chunk_size: int = _CHUNK,
    progress: bool = False,
) -> pd.DataFrame:
    """Fraction of elements on which two task vectors have the same non-zero sign.

    Entry (a, b) is the consensus rate of the pair {τ_a, τ_b}, i.e.
    ``#{j : sign τ_a[j] = sign τ_b[j] ≠ 0} / numel`` over all analysed elements,
    so the diagonal is the non-zero fraction of each vector. Counted blockwise as
    ``P Pᵀ + N Nᵀ`` with P, N the (K, m) indicator matrices of positive and
    negative entries; memory stays at about ``K × chunk_size`` elements.

    Args:
        tvs: K task vectors or safetensors paths.
        names: Labels (default: file stems, ``.name`` attributes, or ``tv{i}``).
        form: ``"wide"`` for a K × K DataFrame (index and columns are the names),
            ``"long"`` for rows ``a, b, agreement``.
        strict: If False, compare the keys shared by all vectors instead of failing.
        chunk_size: Elements per vector read at once when streaming.
        progress: Show a tqdm bar over tensors.

    Returns:
        The agreement matrix in the requested form.
    """
    if form not in ("wide", "long"):
        raise ValueError(f"form must be 'wide' or 'long', got {form!r}")
    chunk_size = min(chunk_size, 1 << 23)  # keeps the float32 counts below exact-integer range
    with _analysed(tvs, names, strict) as (pool, keys):
        agree = torch.zeros(pool.K, pool.K, dtype=torch.float64)
        total = 0
        for key in tqdm(keys, desc="pairwise agreement", disable=not progress):
            total += math.prod(pool.shapes[key])
            for block in pool.blocks(key, chunk_size):
                pos, neg = (block > 0).float(), (block < 0).float()
                # Each entry counts at most one block's m (< 2**24) elements: exact in float32.
                agree += (pos @ pos.T + neg @ neg.T).double()
        labels = pool.names
    wide = pd.DataFrame((agree / total).numpy(), index=pd.Index(labels, name="a"),
                        columns=pd.Index(labels, name="b"))
    if form == "wide":
        return wide
    return wide.stack().rename("agreement").reset_index()


def pool_diversity(
    tvs: Sequence[TensorSource],
    names: Sequence[str] | None = None,
    *,
    strict: bool = True,
    chunk_size: int = _CHUNK,
) -> pd.DataFrame:
    """How different the pool's task vectors are, pair by pair (a diagnostic of what merging gains).

    For every ordered pair (a, b): the cosine similarity ⟨τ_a, τ_b⟩ / (‖τ_a‖ ‖τ_b‖), the
    sign agreement of :func:`pairwise_agreement`, and the relative distance
    ‖τ_a − τ_b‖ / ‖τ_a‖. Members whose relative distance is tiny (say 1e-3) are
    practically the same vector: a pool of them is smaller than it looks
    (:func:`distinct_members`). Accumulated blockwise as in :func:`pairwise_agreement`.

    Args:
        tvs: K task vectors or safetensors paths.
        names: Labels (default: file stems, ``.name`` attributes, or ``tv{i}``).
        strict, chunk_size: As in :func:`pairwise_agreement`.

    Returns:
        Long table ``a, b, cosine, agreement, rel_distance, norm_a`` (K² rows).
    """
    with _analysed(tvs, names, strict) as (pool, keys):
        gram = torch.zeros(pool.K, pool.K, dtype=torch.float64)
        agree = torch.zeros(pool.K, pool.K, dtype=torch.float64)
        dist2 = torch.zeros(pool.K, pool.K, dtype=torch.float64)
        total = 0
        for key in keys:
            total += math.prod(pool.shapes[key])
            for block in pool.blocks(key, min(chunk_size, 1 << 23), dtype=torch.float64):
                gram += block @ block.T
                # Distances summed directly, not from the Gram matrix: near-duplicates would cancel.
                dist2 += torch.cdist(block, block, compute_mode="donot_use_mm_for_euclid_dist") ** 2
                pos, neg = (block > 0).double(), (block < 0).double()
                agree += pos @ pos.T + neg @ neg.T
        labels = pool.names
    norms = gram.diagonal().sqrt()
    denom = torch.outer(norms, norms)
    cosine = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.full_like(gram, math.nan))
    rel = torch.where(norms[:, None] > 0, dist2.sqrt() / norms[:, None].clamp_min(1e-300),
                      torch.full_like(gram, math.nan))
    rows = [{"a": labels[i], "b": labels[j], "cosine": float(cosine[i, j]), "agreement": float(agree[i, j] / total),
             "rel_distance": float(rel[i, j]), "norm_a": float(norms[i])}
            for i in range(len(labels)) for j in range(len(labels))]
    return pd.DataFrame(rows)


def distinct_members(diversity: pd.DataFrame, tol: float = 1e-3) -> list[list[str]]:
    """Groups of practically identical task vectors: relative distance below ``tol`` (either way).

    Args:
        diversity: Output of :func:`pool_diversity`.
        tol: Relative distance under which two members count as the same vector.

    Returns:
        The groups (connected components), each a list of names in pool order; their
        number is the pool's effective size.
    """
    names = list(dict.fromkeys(diversity["a"]))
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    close = diversity[(diversity["a"] != diversity["b"]) & (diversity["rel_distance"] < tol)]
    for a, b in zip(close["a"], close["b"]):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb, key=names.index)] = min(ra, rb, key=names.index)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())
