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
results are bit-identical, and streaming memory does not grow with K.

Shared options of every rule: ``strict`` (default True: keys, shapes and dtypes
must agree; False merges the keys all vectors share with equal shape and dtype),
``names`` (labels used in error messages) and ``progress`` (tqdm over tensors).
"""
from __future__ import annotations

import builtins
import contextlib
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from negkit import __version__, io
from negkit.taskvec import TaskVector, difference, is_bn_stat

__all__ = [
    "register", "get", "list_methods", "negmerge", "mean", "sum", "ties", "magmax",
    "merge_files", "kth_largest_abs",
]

log = logging.getLogger(__name__)

Rule = Callable[..., dict]
_RULES: dict[str, Rule] = {}
_FOLDS: dict[str, type["_Fold"]] = {}
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_FIX = "pass strict=False to merge the shared keys"


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


# ------------------------------------------------------------------ sources
class _Source:
    """K task vectors behind one validated interface: common keys, ``get(k, key)``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.keys: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self._checked: set[tuple[int, str]] = set()

    def label(self, i: int) -> str:
        return f"tv[{i}] ({self.names[i]})" if self.names[i] else f"tv[{i}]"

    @property
    def K(self) -> int:  # noqa: N802 - K is the paper's symbol for the pool size
        return len(self.names)

    def _validate(self, keys: list[list[str]], spec: Callable[[int, str], tuple[tuple[int, ...], torch.dtype]],
                  strict: bool) -> None:
        if not keys:
            raise ValueError("no task vectors to merge (K = 0); pass at least one")
        present = [set(ks) for ks in keys]
        for i in range(1, len(keys)):
            for k in keys[0]:
                if k not in present[i] and strict:
                    raise ValueError(f"task vectors disagree on keys: {k!r} missing in {self.label(i)}; {_FIX}")
            for k in keys[i]:
                if k not in present[0] and strict:
                    raise ValueError(f"task vectors disagree on keys: {k!r} is in {self.label(i)} but missing "
                                     f"in {self.label(0)}; {_FIX}")
        shared, skipped = [], []
        for k in keys[0]:
            if not all(k in p for p in present):
                skipped.append(k)
                continue
            shape0, dtype0 = spec(0, k)
            if not dtype0.is_floating_point:
                raise ValueError(f"{k!r} in {self.label(0)} is {dtype0}; task vectors hold floating-point tensors "
                                 "only (build them with TaskVector.from_state_dicts, which skips integer buffers)")
            bad = next(((i, s, d) for i in range(1, len(keys)) for s, d in [spec(i, k)]
                        if (s, d) != (shape0, dtype0)), None)
            if bad is not None:
                if strict:
                    i, s, d = bad
                    raise ValueError(f"task vectors disagree on {k!r}: shape {shape0}, {dtype0} in {self.label(0)} "
                                     f"but {s}, {d} in {self.label(i)}; {_FIX}")
                skipped.append(k)
                continue
            shared.append(k)
            self.shapes[k], self.dtypes[k] = shape0, dtype0
        if skipped:
            warnings.warn(f"strict=False: merging {len(shared)} shared keys, skipping {len(skipped)} "
                          f"(first: {skipped[0]!r})", stacklevel=4)
        if not shared:
            raise ValueError("the task vectors share no key with equal shape and dtype; nothing to merge")
        self.keys = shared

    def _read(self, k: int, key: str) -> torch.Tensor:
        raise NotImplementedError

    def get(self, k: int, key: str) -> torch.Tensor:
        """Slice ``key`` of vector ``k``; checked for NaN/Inf the first time it is read."""
        t = self._read(k, key)
        if (k, key) not in self._checked:
            # A sum is far cheaper than isfinite(t).all() and is NaN/Inf whenever t holds
            # one; only an overflowing sum of finite values needs the exact check.
            if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{key!r} in {self.label(k)} contains NaN or Inf; fix the fine-tuning run "
                                 "(diverged?) or drop this vector from the pool")
            self._checked.add((k, key))
        return t

    def mappings(self) -> list[Mapping[str, torch.Tensor]]:
        """Lazy read-only mappings, one per vector, over the validated keys."""
        return [_LazyVector(self, k) for k in range(self.K)]


class _LazyVector(Mapping):
    def __init__(self, source: _Source, k: int) -> None:
        self.source, self.k = source, k

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.source.shapes:  # the validated keys
            raise KeyError(key)
        return self.source.get(self.k, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.source.keys)

    def __len__(self) -> int:
        return len(self.source.keys)


class _MemorySource(_Source):
    def __init__(self, tvs: Sequence[Mapping[str, torch.Tensor]], strict: bool, names: Sequence[str] | None) -> None:
        super().__init__()
        if isinstance(tvs, (Mapping, str, os.PathLike, torch.Tensor)):
            raise TypeError(f"pass a sequence (list) of task vectors, got a single {type(tvs).__name__}")
        self.tvs = list(tvs)
        self.names = [str(n) for n in names] if names is not None else [""] * len(self.tvs)
        if len(self.names) != len(self.tvs):
            raise ValueError(f"got {len(self.names)} names for {len(self.tvs)} task vectors")
        for i, tv in enumerate(self.tvs):
            if not isinstance(tv, Mapping):
                raise TypeError(f"tv[{i}] is a {type(tv).__name__}; expected a TaskVector or a dict of tensors")

        def spec(i: int, key: str) -> tuple[tuple[int, ...], torch.dtype]:
            t = self.tvs[i][key]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{key!r} in {self.label(i)} is a {type(t).__name__}, not a tensor")
            return tuple(t.shape), t.dtype

        self._validate([list(tv.keys()) for tv in self.tvs], spec, strict)

    def _read(self, k: int, key: str) -> torch.Tensor:
        return self.tvs[k][key].detach()


class _FileSource(_Source, contextlib.ExitStack):
    """K safetensors files, memory-mapped; with ``pretrained`` τ is formed tensor by tensor."""

    def __init__(self, paths: Sequence[io.PathLike], pretrained: io.PathLike | Mapping[str, torch.Tensor] | None,
                 strict: bool, include_bn_stats: bool) -> None:
        _Source.__init__(self)
        contextlib.ExitStack.__init__(self)
        try:
            self._setup([Path(p) for p in paths], pretrained, strict, include_bn_stats)
        except BaseException:
            self.close()  # release the files opened so far; __exit__ will not run
            raise

    def _setup(self, paths: list[Path], pretrained: io.PathLike | Mapping[str, torch.Tensor] | None,
               strict: bool, include_bn_stats: bool) -> None:
        self.names = [p.name for p in paths]
        self.handles = [self._open(p) for p in paths]
        self.pre: Any = None
        if pretrained is not None:
            self.pre = pretrained if isinstance(pretrained, Mapping) else self._open(Path(pretrained))
        self._pre_cache: tuple[str, torch.Tensor] | None = None

        def dtype_of(h: Any, key: str) -> torch.dtype:
            code = h.get_slice(key).get_dtype()
            return _ST_DTYPES.get(code, torch.int64)  # integer/bool codes only matter as "not floating"

        def spec(i: int, key: str) -> tuple[tuple[int, ...], torch.dtype]:
            if self.pre is None:
                return tuple(self.handles[i].get_slice(key).get_shape()), dtype_of(self.handles[i], key)
            shape = tuple(self.handles[i].get_slice(key).get_shape())
            pre_shape, pre_dtype = self._pre_spec(key, dtype_of)
            if shape != pre_shape:
                raise ValueError(f"shape mismatch for {key!r}: {shape} in {self.label(i)} but {pre_shape} in the "
                                 "pretrained checkpoint; were they made from the same architecture?")
            return shape, pre_dtype  # τ = ft − pre takes pre's dtype (negkit.taskvec.difference)

        keys = [list(h.keys()) for h in self.handles]
        if self.pre is not None:
            pre_keys = set(self.pre.keys())
            for i, ks in enumerate(keys):
                missing = [k for k in ks if k not in pre_keys]
                if missing and strict:
                    raise ValueError(f"{missing[0]!r} of {self.label(i)} is not in the pretrained checkpoint; "
                                     f"{_FIX}")
                keys[i] = [k for k in ks if k in pre_keys and self._pre_spec(k, dtype_of)[1].is_floating_point
                           and (include_bn_stats or not is_bn_stat(k))]
        self._validate(keys, spec, strict)

    def _open(self, path: Path) -> Any:
        if not path.is_file():
            raise FileNotFoundError(f"task vector file {path} does not exist")
        if not io.is_safetensors(path):
            raise ValueError(f"{path} is not a safetensors file; merge_files streams safetensors only. Convert it "
                             "once with negkit.io.save_state_dict(negkit.io.load_state_dict(path), new_path)")
        return self.enter_context(safe_open(str(path), framework="pt", device="cpu"))

    def _pre_spec(self, key: str, dtype_of: Callable) -> tuple[tuple[int, ...], torch.dtype]:
        if isinstance(self.pre, Mapping):
            return tuple(self.pre[key].shape), self.pre[key].dtype
        return tuple(self.pre.get_slice(key).get_shape()), dtype_of(self.pre, key)

    def _read(self, k: int, key: str) -> torch.Tensor:
        ft = self.handles[k].get_tensor(key)
        if self.pre is None:
            return ft
        if self._pre_cache is None or self._pre_cache[0] != key:  # keep one pretrained tensor, not the model
            pre = self.pre[key] if isinstance(self.pre, Mapping) else self.pre.get_tensor(key)
            self._pre_cache = (key, pre)
        return difference(self._pre_cache[1], ft)


# -------------------------------------------------------------------- folds
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision running sums lose digits after a few additions; accumulate in fp32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Fold:
    """Folds the K slices of one key into the merged tensor, one slice at a time."""

    def __init__(self, source: _Source, progress: bool = False) -> None:
        self.K = source.K

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


def _abs_bits(t: torch.Tensor, width: int) -> torch.Tensor:
    """Integer keys ordered like |t|: IEEE-754 bit patterns with the sign bit cleared.

    For non-negative floats the bit pattern read as an integer is monotone in the
    value, so comparing keys compares magnitudes exactly (NaN excluded upstream).
    """
    if width == 64:
        return t.detach().to(torch.float64).view(torch.int64) & 0x7FFF_FFFF_FFFF_FFFF
    return t.detach().to(torch.float32).view(torch.int32) & 0x7FFF_FFFF


def kth_largest_abs(source: Sequence[Mapping[str, torch.Tensor]] | _Source, ranks: Sequence[int], *,
                    progress: bool = False) -> list[int]:
    """Exact k-th largest |value| of each vector, as a bit key, without concatenating a vector.

    Radix selection over the IEEE-754 bit patterns of |τ|: each pass reads every
    tensor once and histograms the next 16 bits of the elements that still match
    the prefix found so far (2 passes for float32/16, 4 if any tensor is float64).
    Memory is one tensor's temporaries plus a 65,536-bin histogram per vector.

    Args:
        source: K task vectors (mappings), or an internal pool (in-memory or files).
        ranks: 1-based rank r_k per vector (r-th largest |value|).

    Returns:
        Per vector, the bit key (see ``_abs_bits``) of its r-th largest |value|:
        the IEEE-754 pattern of the value as float32 (float64 if any tensor is float64).
    """
    if not isinstance(source, _Source):
        source = _MemorySource(source, True, None)
    width = _key_width(source)
    prefix, remaining = [0] * source.K, list(ranks)
    for shift in range(width - 16, -1, -16):
        hist = [torch.zeros(65536, dtype=torch.int64) for _ in range(source.K)]
        for key in tqdm(source.keys, desc=f"TIES threshold (bits {shift}+)", disable=not progress):
            for k in range(source.K):
                bits = _abs_bits(source.get(k, key), width).flatten()
                if shift + 16 < width:
                    bits = bits[(bits >> (shift + 16)) == prefix[k]]
                digits = bits >> shift if shift == width - 16 else (bits >> shift) & 0xFFFF
                hist[k] += torch.bincount(digits, minlength=65536).cpu()
        for k in range(source.K):
            from_top = hist[k].flip(0).cumsum(0)  # from_top[j]: count of digits >= 65535 - j
            j = int(torch.searchsorted(from_top, remaining[k]))
            digit = 65535 - j
            remaining[k] -= int(from_top[j] - hist[k][digit])
            prefix[k] = (prefix[k] << 16) | digit
    return prefix


def _key_width(source: _Source) -> int:
    return 64 if any(d == torch.float64 for d in source.dtypes.values()) else 32


class _TiesFold(_Fold):
    # TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean.
    def __init__(self, source: _Source, density: float = 0.2, progress: bool = False) -> None:
        super().__init__(source)
        if not 0 < float(density) <= 1:
            raise ValueError(f"ties density must be in (0, 1], got {density}")
        n = builtins.sum(math.prod(source.shapes[key]) for key in source.keys)
        n_keep = min(n, max(1, int(float(density) * n + 0.5)))  # round half up
        self.width = _key_width(source)
        self.bounds = [max(1, key) for key in kth_largest_abs(source, [n_keep] * source.K, progress=progress)]

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
        trimmed = t.to(self.pos_sum.dtype) * (_abs_bits(t, self.width) >= self.bounds[k])
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


def _run(fold_cls: type[_Fold], source: _Source, options: dict[str, Any], progress: bool,
         sink: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, torch.Tensor]:
    """Drive a fold over every key; merged tensors go to ``sink`` if given, else into the returned dict."""
    fold = fold_cls(source, progress=progress, **options)
    out: dict[str, torch.Tensor] = {}
    for key in tqdm(source.keys, desc=fold_cls.__name__.strip("_").replace("Fold", "").lower(),
                    disable=not progress):
        fold.start(key)
        for k in range(source.K):
            fold.add(source.get(k, key), k)
        if sink is None:
            out[key] = fold.finish()
        else:
            sink(key, fold.finish())
    return out


def _in_memory(fold_cls: type[_Fold], task_vectors: Sequence[Mapping[str, torch.Tensor]], strict: bool,
               names: Sequence[str] | None, progress: bool, **options: Any) -> dict[str, torch.Tensor]:
    return _run(fold_cls, _MemorySource(task_vectors, strict, names), options, progress)


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
    paths = list(paths)
    if not paths:
        raise ValueError("no task vector files to merge (K = 0); pass at least one path")
    meta = {"format": "negkit.TaskVector", "negkit_version": __version__, "merge_method": method,
            "merge_options": json.dumps(options, sort_keys=True, default=str),
            "merged_files": json.dumps([Path(p).name for p in paths])}
    if pretrained is not None and not isinstance(pretrained, Mapping):
        meta["pretrained_file"] = Path(pretrained).name
    with _FileSource(paths, pretrained, strict, include_bn_stats) as source:
        log.debug("merge_files: %s over K=%d files, %d tensors", method, source.K, len(source.keys))
        if method not in _FOLDS:
            merged = {k: v.clone() for k, v in rule(source.mappings(), **options).items()}
            return merged if out_path is None else TaskVector(merged).save(out_path, metadata=meta)
        if out_path is None:
            return _run(_FOLDS[method], source, options, progress)
        # Each merged tensor is written as soon as it is folded: the merged vector is
        # never in memory as a whole.
        specs = {k: (source.shapes[k], source.dtypes[k]) for k in source.keys}
        with io.safetensors_writer(out_path, specs, metadata=meta) as write:
            _run(_FOLDS[method], source, options, progress, sink=write)
    return Path(out_path)
