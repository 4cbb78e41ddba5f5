"""Merge rules for K task vectors, in memory or streamed from safetensors files.

Every rule is a pure function ``(task_vectors, **options) -> dict[str, Tensor]``
(no I/O, no printing, no device moves) found through a registry::

    merged = negkit.merge.get("negmerge")(tvs)
    negkit.merge.list_methods()  # ['magmax', 'mean', 'negmerge', 'sum', 'ties']

Task vectors are mappings ``name -> Tensor`` (:class:`negkit.taskvec.TaskVector`
or plain dicts). Each built-in rule is written once as a *fold*: per tensor key it
sees the K slices one after another and keeps running statistics (sums, sign
counts, the running maximum), never a stack of K tensors. The in-memory rules and
the streaming :func:`merge_files` drive the same folds in the same order, so their
results are bit-identical, and streaming memory does not grow with K. Both read
the K vectors through one :class:`negkit.pool.Pool`, which validates them.

Shared options of every rule: ``strict`` (default True: keys, shapes and dtypes
must agree; False merges the keys all vectors share with equal shape and dtype),
``names`` (labels used in error messages) and ``progress`` (tqdm over tensors).
"""
from __future__ import annotations

import builtins
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from negkit import __version__, io
from negkit.pool import Pool, abs_bits, bits_width, kth_largest_abs, open_pool
from negkit.taskvec import TaskVector

__all__ = [
    "register", "get", "list_methods", "negmerge", "mean", "sum", "ties", "magmax",
    "merge_files", "kth_largest_abs",
]

log = logging.getLogger(__name__)

Rule = Callable[..., dict]
_RULES: dict[str, Rule] = {}
_FOLDS: dict[str, type["_Fold"]] = {}


# ----------------------------------------------------------------- registry
def register(name: str, *, fold: type["_Fold"] | None = None) -> Callable[[Rule], Rule]:
    """Decorator adding a merge rule to the registry.

    Args:
        name: Registry name.
        fold: Optional streaming implementation used by :func:`merge_files`. Rules
            without one are handed lazy file-backed mappings instead (correct, but
            their memory use is whatever the rule itself needs).

    Raises:
        ValueError: ``name`` is already registered.
    """
    def deco(fn: Rule) -> Rule:
        if name in _RULES:
            raise ValueError(f"merge rule {name!r} is already registered; pick another name")
        _RULES[name] = fn
        if fold is not None:
            _FOLDS[name] = fold
        return fn
    return deco


def get(name: str) -> Rule:
    """The merge rule registered as ``name``.

    Raises:
        ValueError: Unknown name; the message lists the registered ones.
    """
    try:
        return _RULES[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; choose one of {list_methods()}") from None


def list_methods() -> list[str]:
    """Names of the registered merge rules, sorted."""
    return sorted(_RULES)


# -------------------------------------------------------------------- folds
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision running sums lose digits after a few additions; accumulate in fp32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Fold:
    """Folds the K slices of one key into the merged tensor, one slice at a time."""

    def __init__(self, pool: Pool, progress: bool = False) -> None:
        self.K = pool.K

    def start(self, key: str) -> None:
        self.first = True

    def add(self, t: torch.Tensor, k: int) -> None:
        raise NotImplementedError

    def finish(self) -> torch.Tensor:
        raise NotImplementedError


class _SumFold(_Fold):
    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            self.dtype, self.s, self.first = t.dtype, t.to(_acc_dtype(t.dtype), copy=True), False
        else:
            self.s += t

    def finish(self) -> torch.Tensor:
        return self.s.to(self.dtype)


class _MeanFold(_SumFold):
    def finish(self) -> torch.Tensor:
        return (self.s / self.K).to(self.dtype)


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


class _MagMaxFold(_Fold):
    # The element of largest |τ| is either the running maximum or the running
    # minimum over the K vectors, so two cheap running reductions replace an
    # arg-max. When |max| = |min| (+a vs −a) the positive value wins, so the
    # result does not depend on the order of the vectors.
    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            self.hi, self.lo, self.first = t.clone(), t.clone(), False
        else:
            torch.maximum(self.hi, t, out=self.hi)
            torch.minimum(self.lo, t, out=self.lo)

    def finish(self) -> torch.Tensor:
        take_hi = self.hi >= -self.lo
        # masked sum instead of where(): exact (one term is ±0) and several times faster on CPU
        return self.hi * take_hi + self.lo * ~take_hi


class _TiesFold(_Fold):
    # TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean.
    def __init__(self, pool: Pool, density: float = 0.2, progress: bool = False) -> None:
        super().__init__(pool)
        if not 0 < float(density) <= 1:
            raise ValueError(f"ties density must be in (0, 1], got {density}")
        n = builtins.sum(math.prod(pool.shapes[key]) for key in pool.keys)
        n_keep = min(n, max(1, int(float(density) * n + 0.5)))  # round half up
        self.width = bits_width(pool)
        self.bounds = [max(1, key) for key in kth_largest_abs(pool, [n_keep] * pool.K, progress=progress)]

    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            acc = _acc_dtype(t.dtype)
            count = torch.int16 if self.K < 2**15 else torch.int32
            self.dtype, self.first = t.dtype, False
            self.pos_sum = torch.zeros(t.shape, dtype=acc, device=t.device)
            self.neg_sum = torch.zeros_like(self.pos_sum)
            self.pos_cnt = torch.zeros(t.shape, dtype=count, device=t.device)
            self.neg_cnt = torch.zeros_like(self.pos_cnt)
        # Trim: keep |τ| >= the vector's threshold (ties at the threshold all kept;
        # the bound is at least the smallest positive key, so zeros never are).
        # Multiplying by the mask is exact (x·1 = x, x·0 = ±0) and much faster than where().
        trimmed = t.to(self.pos_sum.dtype) * (abs_bits(t, self.width) >= self.bounds[k])
        self.pos_sum += trimmed.clamp(min=0)
        self.neg_sum += trimmed.clamp(max=0)
        self.pos_cnt += trimmed > 0
        self.neg_cnt += trimmed < 0

    def finish(self) -> torch.Tensor:
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


def _run(fold_cls: type[_Fold], pool: Pool, options: dict[str, Any], progress: bool,
         sink: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, torch.Tensor]:
    """Drive a fold over every key; merged tensors go to ``sink`` if given, else into the returned dict."""
    fold = fold_cls(pool, progress=progress, **options)
    out: dict[str, torch.Tensor] = {}
    for key in tqdm(pool.keys, desc=fold_cls.__name__.strip("_").replace("Fold", "").lower(),
                    disable=not progress):
        fold.start(key)
        for k in range(pool.K):
            fold.add(pool.get(k, key), k)
        if sink is None:
            out[key] = fold.finish()
        else:
            sink(key, fold.finish())
    return out


def _in_memory(fold_cls: type[_Fold], task_vectors: Sequence[Mapping[str, torch.Tensor]], strict: bool,
               names: Sequence[str] | None, progress: bool, **options: Any) -> dict[str, torch.Tensor]:
    with open_pool(task_vectors, names=names, strict=strict, files=False) as pool:
        return _run(fold_cls, pool, options, progress)


# -------------------------------------------------------------------- rules
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


@register("mean", fold=_MeanFold)
def mean(task_vectors: Sequence[Mapping[str, torch.Tensor]], *, strict: bool = True,
         names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """Uniform merge (model soup of task vectors): ``(1/K) Σ_k τ_k``.

    Options and errors as in :func:`negmerge`. Half-precision inputs are summed in fp32.
    """
    return _in_memory(_MeanFold, task_vectors, strict, names, progress)


@register("sum", fold=_SumFold)
def sum(task_vectors: Sequence[Mapping[str, torch.Tensor]], *, strict: bool = True,  # noqa: A001
        names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """Task-arithmetic sum ``Σ_k τ_k`` (Ilharco et al., 2023). Options and errors as in :func:`negmerge`."""
    return _in_memory(_SumFold, task_vectors, strict, names, progress)


@register("magmax", fold=_MagMaxFold)
def magmax(task_vectors: Sequence[Mapping[str, torch.Tensor]], *, strict: bool = True,
           names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """MagMax (Marczak et al., 2024): per element the value of largest magnitude.

    Tie handling: among values of equal largest |value| the largest value wins,
    i.e. +a beats −a, so the result does not depend on the vectors' order.
    Options and errors as in :func:`negmerge`.
    """
    return _in_memory(_MagMaxFold, task_vectors, strict, names, progress)


@register("ties", fold=_TiesFold)
def ties(task_vectors: Sequence[Mapping[str, torch.Tensor]], density: float = 0.2, *, strict: bool = True,
         names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint mean.

    1. Trim: each vector keeps its ``n_keep = max(1, ⌊density · N + ½⌋)`` entries
       of largest |value|, N being all elements of all its tensors (one global
       threshold per vector, not one per tensor). Entries equal to the threshold
       are all kept; zeros are never kept.
    2. Elect: ``γ = sign(Σ_k trimmed τ_k)``; where that sum is exactly 0, γ is the
       majority sign of the trimmed non-zero entries; if their counts tie too (or
       nothing survived trimming), γ = 0 and the element is 0.
    3. Disjoint mean over the trimmed entries whose sign equals γ (0 where none).

    With K = 1 the result is the trimmed vector.

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        density: Fraction of each vector kept by trimming, in (0, 1].
        strict, names, progress: As in :func:`negmerge`.
    """
    return _in_memory(_TiesFold, task_vectors, strict, names, progress, density=density)


# ---------------------------------------------------------------- streaming
def merge_files(
    paths: Sequence[io.PathLike],
    method: str = "negmerge",
    *,
    pretrained: io.PathLike | Mapping[str, torch.Tensor] | None = None,
    strict: bool = True,
    out_path: io.PathLike | None = None,
    progress: bool = False,
    include_bn_stats: bool = False,
    **options: Any,
) -> dict[str, torch.Tensor] | Path:
    """Merge K task vectors stored as safetensors files, streaming tensor by tensor.

    Files are memory-mapped (``safetensors.safe_open``); for each tensor key the K
    slices are read one at a time and folded into running statistics, so memory
    is the merged result (nothing with ``out_path``) plus a few copies of the
    largest single tensor, flat in K. TIES first runs two (four for float64) radix-selection passes over all
    files for its exact global thresholds (:func:`kth_largest_abs`), then the
    merge pass.

    The result is **bit-identical** to the in-memory rule (``get(method)``) on the
    same vectors: both drive the same fold in the same summation order. With
    ``pretrained`` it equals the rule applied to
    ``TaskVector.from_state_dicts(pretrained, finetuned_k)`` for every k.

    Rules registered without a fold receive lazy file-backed mappings instead.

    Args:
        paths: K ``.safetensors`` files: task vectors, or fine-tuned checkpoints
            when ``pretrained`` is given.
        method: Registry name (:func:`list_methods`).
        pretrained: θ_pre (safetensors path or state dict); then τ_k = θ_k − θ_pre
            is formed on the fly over floating-point, non-BatchNorm-statistics keys.
        strict: Require equal keys/shapes/dtypes (False: merge the shared keys).
        out_path: If given, write the merged vector there (atomic safetensors with
            metadata, readable by ``TaskVector.load``) tensor by tensor as it is
            merged, and return the path instead of the dict; memory then stays at
            a few copies of the largest tensor.
        progress: Show tqdm bars.
        include_bn_stats: With ``pretrained``, also merge BatchNorm running statistics.
        **options: Rule options, e.g. ``density`` for ``ties``.

    Returns:
        The merged ``{key: tensor}`` (CPU), or ``out_path``.

    Raises:
        ValueError: Unknown method, non-safetensors file, K = 0, disagreeing keys,
            shapes or dtypes (strict), NaN/Inf.
        FileNotFoundError: A path does not exist.
    """
    rule = get(method)
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError("merge_files takes a sequence of paths; wrap a single path in a list")
    paths = list(paths)  # K = 0 and missing or non-safetensors files: the pool says so
    meta = {"format": "negkit.TaskVector", "negkit_version": __version__, "merge_method": method,
            "merge_options": json.dumps(options, sort_keys=True, default=str),
            "merged_files": json.dumps([Path(p).name for p in paths])}
    if pretrained is not None and not isinstance(pretrained, Mapping):
        meta["pretrained_file"] = Path(pretrained).name
    with open_pool(paths, pretrained=pretrained, strict=strict, include_bn_stats=include_bn_stats) as pool:
        log.debug("merge_files: %s over K=%d files, %d tensors", method, pool.K, len(pool.keys))
        if method not in _FOLDS:
            merged = {k: v.clone() for k, v in rule(pool.mappings(), **options).items()}
            return merged if out_path is None else TaskVector(merged).save(out_path, metadata=meta)
        if out_path is None:
            return _run(_FOLDS[method], pool, options, progress)
        # Each merged tensor is written as soon as it is folded: the merged vector is
        # never in memory as a whole.
        specs = {k: (pool.shapes[k], pool.dtypes[k]) for k in pool.keys}
        with io.safetensors_writer(out_path, specs, metadata=meta) as write:
            _run(_FOLDS[method], pool, options, progress, sink=write)
    return Path(out_path)
