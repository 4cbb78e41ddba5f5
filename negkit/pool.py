"""A pool of K task vectors, in memory or on disk, read tensor by tensor.

NegMerge (Kim, Han & Choe, ICML 2025) and its analyses look at a *pool*: K
fine-tunes of one model, τ_1 … τ_K. A :class:`Pool` puts K task vectors behind
one validated reader, whatever they are stored as:

* mappings ``name -> Tensor`` (:class:`negkit.taskvec.TaskVector`, plain dicts);
* ``.safetensors`` files, memory-mapped and read one tensor (or a few rows of
  one tensor) at a time, so memory does not grow with the size of the model;
* fine-tuned checkpoints plus ``pretrained``: τ_k = θ_k − θ_pre is then formed
  tensor by tensor (:func:`negkit.taskvec.difference`, bit-identical to
  ``TaskVector.from_state_dicts``) over the floating-point keys of θ_pre that are
  not BatchNorm running statistics (unless ``include_bn_stats``).

::

    with negkit.pool.open_pool(paths) as pool:
        for key in pool.keys:
            slices = [pool.get(k, key) for k in range(pool.K)]

Validation happens once, when the pool is opened, from shapes and dtypes only
(files are not read): keys, shapes and dtypes must agree across the K vectors
(``strict=False`` keeps the keys they all share with equal shape and dtype, with
a warning); every tensor must be floating-point. Each slice is checked for
NaN/Inf when first read. Errors name the key, the vector index and its file.
:mod:`negkit.merge` and :mod:`negkit.analysis` both read their pools here;
:func:`kth_largest_abs` finds exact per-vector |τ| thresholds (TIES) in a few
streaming passes.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from negkit import io
from negkit.taskvec import difference, is_bn_stat

__all__ = ["Pool", "open_pool", "Source", "kth_largest_abs", "abs_bits", "bits_width"]

#: One member of a pool: a mapping of tensors, or a path to a ``.safetensors`` file.
Source = Union[Mapping[str, torch.Tensor], str, os.PathLike]
Spec = tuple[tuple[int, ...], torch.dtype]

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
#: Dtypes a pool computes in; fp8 is refused by name (its arithmetic is not implemented on CPU).
_FLOATS = frozenset(_ST_DTYPES.values())
_FP8 = {code: getattr(torch, name) for code, name in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"))
        if hasattr(torch, name)}
_FIX = "pass strict=False to use only the keys all vectors share with equal shape and dtype"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def open_pool(sources: Sequence[Source], **kwargs: Any) -> "Pool":
    """Open K task vectors as a :class:`Pool`; use it as a context manager to close its files.

    Args:
        sources: K mappings ``name -> Tensor`` and/or paths to ``.safetensors`` files.
        **kwargs: ``names``, ``strict``, ``pretrained``, ``include_bn_stats``,
            ``files``; see :class:`Pool`.
    """
    return Pool(sources, **kwargs)


class Pool(contextlib.ExitStack):
    """K task vectors behind one validated, tensor-by-tensor reader.

    Args:
        sources: K mappings ``name -> Tensor`` (objects with a ``.vector``
            mapping are unwrapped) and/or paths to ``.safetensors`` files; any
            iterable, but not a single mapping or path.
        names: Labels of the vectors, used in error messages and as
            :attr:`names` (default: file stem, ``.name`` attribute, or ``tv{i}``).
        strict: Require equal keys, shapes and dtypes (False: keep the shared
            keys with equal shape and dtype, warning about the others).
        pretrained: θ_pre (mapping or safetensors path). The sources are then
            fine-tuned checkpoints and the pool yields τ_k = θ_k − θ_pre, in θ_pre's dtype.
        include_bn_stats: With ``pretrained``, keep BatchNorm running statistics.
        files: Accept paths among the sources. Pure in-memory callers (the merge
            rules, which do no I/O) pass False.

    Attributes:
        keys: The validated keys, in the order of the first vector.
        shapes, dtypes: ``key -> shape`` and ``key -> dtype`` of those keys.
        names: Display names of the K vectors, made unique with ``#i`` if needed.

    Raises:
        TypeError: ``sources`` is a single mapping or path, or holds something else.
        ValueError: K = 0, keys/shapes/dtypes disagree (strict), a non-floating
            tensor, a file that is not safetensors.
        FileNotFoundError: A path does not exist.
    """

    def __init__(self, sources: Sequence[Source], *, names: Sequence[str] | None = None, strict: bool = True,
                 pretrained: Source | None = None, include_bn_stats: bool = False, files: bool = True) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self._checked: set[tuple[int, str]] = set()
        self._pre_cache: tuple[str, torch.Tensor] | None = None
        try:
            self._setup(sources, names, strict, pretrained, include_bn_stats, files)
        except BaseException:
            self.close()  # release the files opened so far; __exit__ will not run
            raise

    # ---------------------------------------------------------------- opening
    def _setup(self, sources: Sequence[Source], names: Sequence[str] | None, strict: bool,
               pretrained: Source | None, include_bn_stats: bool, files: bool) -> None:
        kinds = "task vectors or safetensors paths" if files else "task vectors"
        if isinstance(sources, (Mapping, str, os.PathLike, torch.Tensor)):
            raise TypeError(f"pass a sequence (list) of {kinds}, got a single {type(sources).__name__}")
        sources = list(sources)
        if not sources:
            raise ValueError(f"no task vectors (K = 0); pass a non-empty list of {kinds}")
        self._src: list[Any] = []  # a mapping, or an open safetensors handle
        self._paths: list[Path | None] = []
        default_names = []
        for i, tv in enumerate(sources):
            if isinstance(tv, (str, os.PathLike)):
                if not files:
                    raise TypeError(f"tv[{i}] is a path ({tv}); this function takes task vectors in memory. "
                                    "Load it with TaskVector.load, or stream files with negkit.merge.merge_files")
                path = Path(tv)
                self._src.append(self._open(path))
                self._paths.append(path)
                default_names.append(path.stem)
                continue
            vec = tv if isinstance(tv, Mapping) else getattr(tv, "vector", tv)
            if not (hasattr(vec, "keys") and hasattr(vec, "__getitem__")):
                raise TypeError(f"tv[{i}] is a {type(tv).__name__}; expected a Mapping[str, Tensor] such as a "
                                "TaskVector" + (" or a path to a .safetensors file" if files else ""))
            self._src.append(vec)
            self._paths.append(None)
            default_names.append(str(getattr(tv, "name", None) or f"tv{i}"))
        self._given = [str(n) for n in names] if names is not None else None
        if self._given is not None and len(self._given) != len(sources):
            raise ValueError(f"got {len(self._given)} names for {len(sources)} task vectors")
        shown = self._given or default_names
        self.names = shown if len(set(shown)) == len(shown) else [f"{n}#{i}" for i, n in enumerate(shown)]
        self._pre: Any = None
        if pretrained is not None:
            self._pre = pretrained if isinstance(pretrained, Mapping) else self._open(Path(pretrained))
        keys = [list(s.keys()) for s in self._src]
        if self._pre is not None:
            pre_keys = set(self._pre.keys())
            for i, ks in enumerate(keys):
                missing = [k for k in ks if k not in pre_keys]
                if missing and strict:
                    raise ValueError(f"{missing[0]!r} of {self.label(i)} is not in the pretrained checkpoint; {_FIX}")
                keys[i] = [k for k in ks if k in pre_keys and self._pre_spec(k)[1].is_floating_point
                           and (include_bn_stats or not is_bn_stat(k))]
        self._validate(keys, strict)

    def _open(self, path: Path) -> Any:
        if not path.is_file():
            raise FileNotFoundError(f"task vector file {path} does not exist")
        if not io.is_safetensors(path):
            raise ValueError(f"{path} is not a safetensors file; task vector pools stream safetensors only. Convert "
                             "it once with negkit.io.save_state_dict(negkit.io.load_state_dict(path), new_path)")
        return self.enter_context(safe_open(str(path), framework="pt", device="cpu"))

    def _raw_spec(self, src: Any, key: str, i: int | None) -> Spec:
        """Shape and dtype of ``src[key]`` without reading a file's data."""
        if isinstance(src, _PoolVector):  # a view of another pool: already validated there
            return src.pool.shapes[key], src.pool.dtypes[key]
        if isinstance(src, Mapping) or not hasattr(src, "get_slice"):
            t = src[key]
            if not isinstance(t, torch.Tensor):
                where = self.label(i) if i is not None else "the pretrained checkpoint"
                raise TypeError(f"{key!r} in {where} is a {type(t).__name__}, not a tensor")
            return tuple(t.shape), t.dtype
        sl = src.get_slice(key)
        # integer/bool codes only matter as "not floating"
        code = sl.get_dtype()
        return tuple(sl.get_shape()), _ST_DTYPES.get(code) or _FP8.get(code) or torch.int64

    def _pre_spec(self, key: str) -> Spec:
        return self._raw_spec(self._pre, key, None)

    def _spec(self, i: int, key: str) -> Spec:
        shape, dtype = self._raw_spec(self._src[i], key, i)
        if self._pre is None:
            return shape, dtype
        pre_shape, pre_dtype = self._pre_spec(key)
        if shape != pre_shape:
            raise ValueError(f"shape mismatch for {key!r}: {shape} in {self.label(i)} but {pre_shape} in the "
                             "pretrained checkpoint; were they made from the same architecture?")
        return shape, pre_dtype  # τ = ft − pre takes pre's dtype (negkit.taskvec.difference)

    def _validate(self, keys: list[list[str]], strict: bool) -> None:
        present = [set(ks) for ks in keys]
        if strict:
            for i in range(1, len(keys)):
                missing = next((k for k in keys[0] if k not in present[i]), None)
                if missing is not None:
                    raise ValueError(f"task vectors disagree on keys: {missing!r} missing in {self.label(i)}; {_FIX}")
                extra = next((k for k in keys[i] if k not in present[0]), None)
                if extra is not None:
                    raise ValueError(f"task vectors disagree on keys: {extra!r} is in {self.label(i)} but missing "
                                     f"in {self.label(0)}; {_FIX}")
        skipped = []
        for k in keys[0]:
            if not all(k in p for p in present):
                skipped.append(k)
                continue
            shape0, dtype0 = self._spec(0, k)
            if dtype0.is_floating_point and dtype0 not in _FLOATS:
                raise ValueError(f"{k!r} in {self.label(0)} is {dtype0}; pools compute in float64/32/16 or "
                                 "bfloat16: convert the vector first (e.g. {k: t.float() for k, t in tv.items()})")
            if not dtype0.is_floating_point:
                raise ValueError(f"{k!r} in {self.label(0)} is {dtype0}; task vectors hold floating-point tensors "
                                 "only (build them with TaskVector.from_state_dicts, which skips integer buffers)")
            bad = next(((i, *s) for i in range(1, len(keys)) if (s := self._spec(i, k)) != (shape0, dtype0)), None)
            if bad is not None:
                if strict:
                    i, s, d = bad
                    raise ValueError(f"task vectors disagree on {k!r}: shape {shape0}, {dtype0} in {self.label(0)} "
                                     f"but {s}, {d} in {self.label(i)}; {_FIX}")
                skipped.append(k)
                continue
            self.keys.append(k)
            self.shapes[k], self.dtypes[k] = shape0, dtype0
        if skipped:
            warnings.warn(f"strict=False: using the {len(self.keys)} keys shared by all task vectors with equal "
                          f"shape and dtype, skipping {len(skipped)} (first: {skipped[0]!r})",
                          stacklevel=_caller_level())
        if not self.keys:
            raise ValueError("the task vectors share no key with equal shape and dtype; nothing to read")

    # ---------------------------------------------------------------- reading
    @property
    def K(self) -> int:  # noqa: N802 - K is the paper's symbol for the pool size
        """Number of task vectors in the pool."""
        return len(self._src)

    def label(self, i: int) -> str:
        """``tv[i] (name)`` for messages: the given name, else the file name, else just ``tv[i]``."""
        name = self._given[i] if self._given is not None else (self._paths[i].name if self._paths[i] else "")
        return f"tv[{i}] ({name})" if name else f"tv[{i}]"

    def get(self, k: int, key: str, rows: slice | None = None) -> torch.Tensor:
        """Tensor ``key`` of vector ``k`` (rows ``rows`` of its first dimension if given).

        Every slice is checked for NaN/Inf (a whole tensor only the first time it is read).

        Raises:
            ValueError: The slice holds NaN or Inf.
        """
        t = self._read(k, key, rows)
        if rows is not None or (k, key) not in self._checked:
            # A sum is far cheaper than isfinite(t).all() and is NaN/Inf whenever t holds
            # one; only an overflowing sum of finite values needs the exact check.
            if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{key!r} in {self.label(k)} contains NaN or Inf; fix the fine-tuning run "
                                 "(diverged?) or drop this vector from the pool")
            if rows is None:
                self._checked.add((k, key))
        return t

    def _read(self, k: int, key: str, rows: slice | None) -> torch.Tensor:
        src = self._src[k]
        if hasattr(src, "get_slice") and not isinstance(src, Mapping):  # safetensors handle
            ft = src.get_tensor(key) if rows is None else src.get_slice(key)[rows.start:rows.stop]
        else:
            ft = src[key].detach() if rows is None else src[key][rows].detach()
        if self._pre is None:
            return ft
        if self._pre_cache is None or self._pre_cache[0] != key:  # keep one pretrained tensor, not the model
            pre = self._pre[key] if isinstance(self._pre, Mapping) else self._pre.get_tensor(key)
            self._pre_cache = (key, pre)
        pre = self._pre_cache[1]
        return difference(pre if rows is None else pre[rows], ft)

    def blocks(self, key: str, size: int, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """Yield ``(K, m)`` blocks of the flattened tensor ``key``, on the CPU in ``dtype``.

        A tensor of at most ``size`` elements comes whole; a larger one in slices of
        whole rows (``m ≲ size``, read through safetensors' ``get_slice``), so
        memory stays at about ``K × size`` elements.
        """
        shape = self.shapes[key]
        numel = math.prod(shape)
        if not shape or numel <= size:
            yield torch.stack([self.get(k, key).reshape(-1).to("cpu", dtype) for k in range(self.K)])
            return
        step = max(1, size // max(1, numel // shape[0]))  # whole rows per block
        for a in range(0, shape[0], step):
            rows = slice(a, a + step)
            yield torch.stack([self.get(k, key, rows).reshape(-1).to("cpu", dtype) for k in range(self.K)])

    def mappings(self) -> list[Mapping[str, torch.Tensor]]:
        """Lazy read-only mappings, one per vector, over the validated keys (read through :meth:`get`)."""
        return [_PoolVector(self, k) for k in range(self.K)]


class _PoolVector(Mapping):
    """Vector ``k`` of a pool as a read-only mapping; tensors are read on access."""

    def __init__(self, pool: Pool, k: int) -> None:
        self.pool, self.k = pool, k

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.pool.shapes:  # the validated keys
            raise KeyError(key)
        return self.pool.get(self.k, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.pool.keys)

    def __len__(self) -> int:
        return len(self.pool.keys)


# ---------------------------------------------------------- order statistics
# Exact order statistics of |τ| over whole vectors, streamed tensor by tensor: the
# global trim threshold of TIES (negkit.merge.ties) without concatenating a vector.
def abs_bits(t: torch.Tensor, width: int) -> torch.Tensor:
    """Integer keys ordered like |t|: IEEE-754 bit patterns with the sign bit cleared.

    For non-negative floats the bit pattern read as an integer is monotone in the
    value, so comparing keys compares magnitudes exactly (NaN excluded upstream).
    """
    if width == 64:
        return t.detach().to(torch.float64).view(torch.int64) & 0x7FFF_FFFF_FFFF_FFFF
    return t.detach().to(torch.float32).view(torch.int32) & 0x7FFF_FFFF


def bits_width(pool: Pool) -> int:
    """Width of the :func:`abs_bits` keys of a pool: 64 if any tensor is float64, else 32."""
    return 64 if any(d == torch.float64 for d in pool.dtypes.values()) else 32


def kth_largest_abs(source: Sequence[Mapping[str, torch.Tensor]] | Pool, ranks: Sequence[int], *,
                    progress: bool = False) -> list[int]:
    """Exact k-th largest |value| of each vector, as a bit key, without concatenating a vector.

    Radix selection over the IEEE-754 bit patterns of |τ|: each pass reads every
    tensor once and histograms the next 16 bits of the elements that still match
    the prefix found so far (2 passes for float32/16, 4 if any tensor is float64).
    Memory is one tensor's temporaries plus a 65,536-bin histogram per vector.

    Args:
        source: K task vectors (mappings), or an open :class:`Pool`.
        ranks: 1-based rank r_k per vector (r-th largest |value|).

    Returns:
        Per vector, the bit key (see :func:`abs_bits`) of its r-th largest |value|:
        the IEEE-754 pattern of the value as float32 (float64 if any tensor is float64).
    """
    if not isinstance(source, Pool):
        with open_pool(source, files=False) as pool:
            return kth_largest_abs(pool, ranks, progress=progress)
    pool = source
    width = bits_width(pool)
    prefix, remaining = [0] * pool.K, list(ranks)
    for shift in range(width - 16, -1, -16):
        hist = [torch.zeros(65536, dtype=torch.int64) for _ in range(pool.K)]
        for key in tqdm(pool.keys, desc=f"k-th largest |τ| (bits {shift}+)", disable=not progress):
            for k in range(pool.K):
                bits = abs_bits(pool.get(k, key), width).flatten()
                if shift + 16 < width:
                    bits = bits[(bits >> (shift + 16)) == prefix[k]]
                digits = bits >> shift if shift == width - 16 else (bits >> shift) & 0xFFFF
                hist[k] += torch.bincount(digits, minlength=65536).cpu()
        for k in range(pool.K):
            from_top = hist[k].flip(0).cumsum(0)  # from_top[j]: count of digits >= 65535 - j
            j = int(torch.searchsorted(from_top, remaining[k]))
            digit = 65535 - j
            remaining[k] -= int(from_top[j] - hist[k][digit])
            prefix[k] = (prefix[k] << 16) | digit
    return prefix


def _caller_level() -> int:
    """``stacklevel`` that points a warning at the first frame outside negkit."""
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
