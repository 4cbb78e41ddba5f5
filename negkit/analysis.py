"""Sign-consensus analysis of a pool of task vectors (NegMerge, Kim et al., ICML 2025, §3).

NegMerge keeps an element of the merged task vector only where every fine-tune of
the pool moves it in the same direction: element ``j`` survives iff
``sign(τ_1[j]) = … = sign(τ_K[j]) ≠ 0``. This module measures how often that
happens — per tensor, per layer group and as a function of the pool size K — and
how much of the vector each registered merge rule keeps, and returns tidy pandas
DataFrames that :mod:`negkit.plotting` draws. How the pool's members differ pair
by pair (sign agreement, cosine, distance) is :mod:`negkit.diversity`, whose
functions are re-exported here.

Every function accepts the pool either in memory (a sequence of
``Mapping[str, Tensor]``, e.g. :class:`negkit.taskvec.TaskVector` or plain dicts
of floating-point tensors) or as a list of safetensors paths, which are
memory-mapped and read tensor by tensor (and, for large tensors, in row chunks),
so memory stays bounded by about ``K × chunk_size`` elements. The pool is read
and validated by :class:`negkit.pool.Pool`, as for :mod:`negkit.merge`. Both
forms give identical DataFrames: rows follow the *natural* key order (digits
compared as numbers, ``resblocks.2`` before ``resblocks.10``) because safetensors
files do not keep insertion order.
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from negkit import merge
from negkit.pool import Pool, Source, open_pool

if TYPE_CHECKING:  # re-exported lazily at the end of this module
    from negkit.diversity import distinct_members, pairwise_agreement, pool_diversity

__all__ = [
    "layer_group", "sign_consensus", "by_layer", "consensus_vs_k", "consensus_by_layer_vs_k",
    "pairwise_agreement", "pool_diversity", "distinct_members", "kept_fraction", "ALL",
]

#: Group label of the rows of :func:`consensus_vs_k` that cover the whole vector.
ALL = "all"

#: Default grouping patterns, tried in order; the first match (group 1 of the
#: regex, or the whole match) is the layer group of a key.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"(?:^|\.)((?:res)?blocks\.\d+)(?:\.|$)",  # CLIP / timm ViT blocks: resblocks.3, blocks.3
    r"(?:^|\.)(layer\d+\.\d+)(?:\.|$)",        # torchvision/timm/CLIP ResNet: layer2.1
    r"(?:^|\.)((?:layers|stages)\.\d+)(?:\.|$)",  # negkit small_resnet layers.2, timm stages.1
)
_PREFIXES = ("module.", "model.", "backbone.", "visual.")
TensorSource = Source
Grouping = Union[None, Callable[[str], str], Mapping[str, str]]

_CHUNK = 1 << 20  # elements per task vector held at once (K × 4 MiB in float32)


def layer_group(key: str, patterns: Sequence[str] = DEFAULT_PATTERNS) -> str:
    """Map a parameter name to its layer group.

    ``visual.transformer.resblocks.3.attn.in_proj_weight`` → ``resblocks.3``;
    ``layer2.1.conv1.weight`` → ``layer2.1``; ``layers.2.conv1.weight`` → ``layers.2``;
    anything else → its first component after stripping ``module.``/``model.``/
    ``backbone.``/``visual.`` (``visual.conv1.weight`` → ``conv1``,
    ``backbone.fc.bias`` → ``fc``). The kit's CLIP task vectors cover the image
    encoder only (keys like ``transformer.resblocks.3...``); if you analyse both
    CLIP towers, pass a grouping that tells them apart.

    Args:
        key: State-dict key.
        patterns: Regexes tried in order; the first that matches gives the group
            (its capture group 1, else the whole match). Pass your own for custom
            grouping, or pass a callable as ``groups=`` to the analysis functions.

    Returns:
        The group name.
    """
    for pat in patterns:
        m = re.search(pat, key)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    stripped = key
    while stripped.startswith(_PREFIXES) and "." in stripped:
        stripped = stripped.split(".", 1)[1]
    return stripped.split(".", 1)[0]


def _natural(key: str) -> list:
    # re.split with a capture group alternates str, digits, str, ... so positions compare alike.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _group_fn(groups: Grouping) -> Callable[[str], str]:
    if groups is None:
        return layer_group
    if callable(groups):
        return groups
    if isinstance(groups, Mapping):
        return lambda k: groups.get(k, layer_group(k))
    raise TypeError(f"groups must be None, a callable key -> group or a mapping, got {type(groups).__name__}")


@contextlib.contextmanager
def _analysed(tvs: Sequence[TensorSource], names: Sequence[str] | None,
              strict: bool) -> Iterator[tuple[Pool, list[str]]]:
    """The open pool and its analysed keys: natural order, empty tensors dropped (they carry no signs)."""
    with open_pool(tvs, names=names, strict=strict) as pool:
        yield pool, sorted((k for k in pool.keys if math.prod(pool.shapes[k]) > 0), key=_natural)


def _resolve_methods(methods: Sequence[str] | Mapping[str, Any]) -> dict[str, Callable[..., dict]]:
    items = methods.items() if isinstance(methods, Mapping) else ((m, m) for m in methods)
    rules = {}
    for label, rule in items:
        if isinstance(rule, str):
            rule = merge.get(rule)
        rules[str(label)] = rule
    return rules


def _with_names(rule: Callable[..., dict], opts: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    # Registered rules take ``names`` for their error messages; hand ours over when a rule accepts it.
    try:
        params = inspect.signature(rule).parameters
    except (TypeError, ValueError):
        return dict(opts)
    takes = "names" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {"names": names, **opts} if takes else dict(opts)


def sign_consensus(
    tvs: Sequence[TensorSource],
    *,
    groups: Grouping = None,
    methods: Sequence[str] | Mapping[str, Any] = ("negmerge",),
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    names: Sequence[str] | None = None,
    strict: bool = True,
    chunk_size: int = _CHUNK,
    progress: bool = False,
) -> pd.DataFrame:
    """Per-tensor sign consensus of a pool of K task vectors.

    Args:
        tvs: K task vectors (mappings of tensors) or safetensors paths.
        groups: Layer grouping: None for :func:`layer_group`, a callable
            ``key -> group``, or a mapping (keys it lacks fall back to :func:`layer_group`).
        methods: Merge rules whose kept fraction is reported, as registry names
            of :mod:`negkit.merge` or a mapping ``label -> name or rule callable``.
            Each rule runs once on the whole pool (its global statistics, e.g.
            TIES' top-k, stay intact); files are handed over as lazy mappings.
        method_options: Extra keyword options per method label.
        names: Names of the task vectors (only used in error messages here).
        strict: If False, analyse the keys shared by all vectors instead of failing.
        chunk_size: Elements per vector read at once when streaming.
        progress: Show a tqdm bar over tensors.

    Returns:
        One row per tensor: ``key, group, numel, frac_consistent`` (fraction of
        elements whose K signs are equal and non-zero), ``mean_abs`` (mean |τ|
        over the K vectors and the elements), and ``frac_kept_<method>`` (fraction
        of the tensor's elements that the merged vector leaves non-zero). For
        ``negmerge`` this equals ``frac_consistent`` by definition; computing it
        through the registered rule keeps the two tied.
    """
    group_of = _group_fn(groups)
    rules = _resolve_methods(methods)
    options = dict(method_options or {})
    with _analysed(tvs, names, strict) as (pool, keys):
        merged = {label: rule(pool.mappings(), **_with_names(rule, options.get(label, {}), pool.names))
                  for label, rule in rules.items()}
        rows = []
        for key in tqdm(keys, desc="sign consensus", disable=not progress):
            numel = math.prod(pool.shapes[key])
            n_cons, abs_sum = 0, 0.0
            for block in pool.blocks(key, chunk_size):  # (K, m)
                s = torch.sign(block)
                n_cons += int(((s[0] != 0) & (s == s[0]).all(dim=0)).sum())
                abs_sum += float(block.abs().sum(dtype=torch.float64))
            row = {"key": key, "group": group_of(key), "numel": numel,
                   "frac_consistent": n_cons / numel, "mean_abs": abs_sum / (pool.K * numel)}
            for label, out in merged.items():
                t = out.get(key) if isinstance(out, Mapping) else None
                row[f"frac_kept_{label}"] = (float(torch.count_nonzero(t)) / numel) if t is not None else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def by_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a :func:`sign_consensus` table per layer group, weighting tensors by numel.

    Returns:
        One row per group, in order of first appearance: ``group, n_tensors,
        numel`` and the numel-weighted mean of every ``frac_*`` and ``mean_abs`` column.
    """
    value_cols = [c for c in df.columns if c.startswith("frac_") or c == "mean_abs"]
    rows = []
    for group, part in df.groupby("group", sort=False):
        w = part["numel"].to_numpy(dtype=float)
        row = {"group": group, "n_tensors": len(part), "numel": int(w.sum())}
        row.update({c: float(np.average(part[c].to_numpy(dtype=float), weights=w)) for c in value_cols})
        rows.append(row)
    return pd.DataFrame(rows, columns=["group", "n_tensors", "numel", *value_cols])


def _subsets(k_total: int, ks: Sequence[int], draws: int, seed: int) -> list[tuple[int, int, tuple[int, ...]]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in ks:
        if not 1 <= k <= k_total:
            raise ValueError(f"subset size k={k} is outside 1..{k_total} (the pool has {k_total} vectors)")
        if math.comb(k_total, k) <= draws:  # few distinct subsets: take them all, once each
            chosen = list(itertools.combinations(range(k_total), k))
        else:
            seen: set[tuple[int, ...]] = set()
            chosen = []
            while len(chosen) < draws:
                sub = tuple(sorted(rng.choice(k_total, size=k, replace=False).tolist()))
                if sub not in seen:
                    seen.add(sub)
                    chosen.append(sub)
        out.extend((k, d, sub) for d, sub in enumerate(chosen))
    return out


def kept_fraction(tvs: Sequence[TensorSource], methods: Sequence[str] | None = None, **options: Any) -> pd.DataFrame:
    """Fraction of all elements each merge rule leaves non-zero, one line per rule (whole vector).

    The element-weighted mean of :func:`sign_consensus`'s ``frac_kept_<method>`` columns:
    NegMerge's line is its sign-consensus rate, and every registered rule (TIES, DARE,
    Breadcrumbs, consensus masks, TSV-M...) gets its own line beside it.

    Args:
        tvs: K task vectors or safetensors paths.
        methods: Registry names (None: every registered rule).
        **options: Passed to :func:`sign_consensus` (``method_options``, ``strict``...).

    Returns:
        Columns ``method, kept`` (fraction in [0, 1]) and ``K``.
    """
    from negkit import merge

    methods = list(merge.list_methods() if methods is None else methods)
    df = sign_consensus(tvs, methods=methods, **options)
    total = float(df.numel.sum())
    k = len(tvs)
    return pd.DataFrame([{"method": m, "kept": float((df[f"frac_kept_{m}"] * df.numel).sum()) / total, "K": k}
                         for m in methods])


def consensus_vs_k(
    tvs: Sequence[TensorSource],
    ks: Sequence[int] | None = None,
    draws: int = 5,
    seed: int = 0,
    *,
    by_group: bool = False,
    groups: Grouping = None,
    names: Sequence[str] | None = None,
    strict: bool = True,
    chunk_size: int = _CHUNK,
    progress: bool = False,
) -> pd.DataFrame:
    """Consensus rate of random sub-pools of size k, several draws each.

    Shows how fast the fraction of sign-consistent elements (what NegMerge keeps)
    shrinks as fine-tunes are added. When ``C(K, k) <= draws`` every subset is
    used once instead (so ``k = K`` gives a single row); otherwise ``draws``
    distinct subsets are drawn with ``numpy.random.default_rng(seed)``. All
    subsets are evaluated in one pass over the data.

    Args:
        tvs: K task vectors or safetensors paths.
        ks: Subset sizes (default ``1..K``; k = 1 gives the non-zero fraction).
        draws: Random subsets per k.
        seed: Seed of the subset draws.
        by_group: Also report every layer group.
        groups, names, strict, chunk_size, progress: As in :func:`sign_consensus`.

    Returns:
        Long table ``k, draw, members`` ("+"-joined names), ``group`` (:data:`ALL`
        for the whole vector), ``numel, frac_consistent``.
    """
    group_of = _group_fn(groups)
    with _analysed(tvs, names, strict) as (pool, keys):
        subsets = _subsets(pool.K, list(ks) if ks is not None else range(1, pool.K + 1), draws, seed)
        # Sign patterns as bit masks (bit i = vector i): a subset S is consistent on an element
        # iff all its bits are set in the positive mask (or all in the negative one), which costs
        # two integer ops per subset instead of |S| comparisons. int64 holds up to 63 vectors.
        bits = torch.tensor([1 << i for i in range(pool.K)], dtype=torch.int64)[:, None] if pool.K < 64 else None
        masks = [torch.tensor(sum(1 << i for i in sub)) for _, _, sub in subsets] if bits is not None else []
        index = [list(sub) for _, _, sub in subsets]
        counts: dict[str, np.ndarray] = {}
        sizes: dict[str, int] = {}
        for key in tqdm(keys, desc="consensus vs K", disable=not progress):
            g = group_of(key) if by_group else ALL
            c = counts.setdefault(g, np.zeros(len(subsets), dtype=np.int64))
            sizes[g] = sizes.get(g, 0) + math.prod(pool.shapes[key])
            for block in pool.blocks(key, chunk_size):
                pos, neg = block > 0, block < 0  # (K, m)
                if bits is not None:
                    pos, neg = (pos * bits).sum(0), (neg * bits).sum(0)  # (m,) int64 bit masks
                    for j, mask in enumerate(masks):
                        c[j] += int(((pos & mask) == mask).logical_or_((neg & mask) == mask).sum())
                else:
                    for j, idx in enumerate(index):
                        c[j] += int((pos[idx].all(dim=0) | neg[idx].all(dim=0)).sum())
        names_ = pool.names
    if by_group:
        counts = {ALL: sum(counts.values()), **counts}
        sizes = {ALL: sum(sizes.values()), **sizes}
    rows = [{"k": k, "draw": d, "members": "+".join(names_[i] for i in sub), "group": g,
             "numel": sizes[g], "frac_consistent": counts[g][j] / sizes[g]}
            for g in counts for j, (k, d, sub) in enumerate(subsets)]
    return pd.DataFrame(rows)


def consensus_by_layer_vs_k(
    tvs: Sequence[TensorSource],
    ks: Sequence[int] | None = None,
    draws: int = 5,
    seed: int = 0,
    **kw: Any,
) -> pd.DataFrame:
    """Layer group × k table of the mean consensus rate over draws (input of
    :func:`negkit.plotting.consensus_heatmap`).

    Args:
        tvs, ks, draws, seed: As in :func:`consensus_vs_k`.
        **kw: Forwarded to :func:`consensus_vs_k` (``groups``, ``names``, ...).

    Returns:
        Wide DataFrame: index ``group`` (in order of first appearance), columns ``k``.
    """
    long = consensus_vs_k(tvs, ks, draws, seed, by_group=True, **kw)
    long = long[long["group"] != ALL]
    order = list(dict.fromkeys(long["group"]))
    table = long.groupby(["group", "k"])["frac_consistent"].mean().unstack("k")
    return table.loc[order]


# negkit.diversity reads its pools with this module's helpers, so importing it here would be
# circular; its functions are re-exported on first access instead (PEP 562), which keeps
# ``from negkit.analysis import pool_diversity`` and ``analysis.pool_diversity`` working.
_DIVERSITY = ("pairwise_agreement", "pool_diversity", "distinct_members")


def __getattr__(name: str) -> Any:
    if name in _DIVERSITY:
        from negkit import diversity
        return getattr(diversity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_DIVERSITY})
