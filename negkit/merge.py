"""Merge rules for K task vectors, in memory or streamed from safetensors files.

Every rule is a pure function ``(task_vectors, **options) -> dict[str, Tensor]``
(no I/O, no printing, no device moves) found through a registry::

    merged = negkit.merge.get("negmerge")(tvs)           # dict[str, Tensor]
    tau = negkit.merge.merge("negmerge", tvs)           # the same, as a TaskVector: -tau works
    negkit.merge.list_methods()  # ['breadcrumbs', 'consensus', 'dare', 'magmax', 'mean', 'negmerge', 'sum', 'ties', 'tsv']

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
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from negkit import __version__, io
from negkit.config import check_registration
from negkit.pool import Pool, abs_bits, bits_width, kth_largest_abs, open_pool
from negkit.taskvec import TaskVector

__all__ = [
    "register", "get", "list_methods", "merge", "negmerge", "mean", "sum", "ties", "magmax",
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
        TypeError: ``name`` is not a str, or the decorated object is not callable.
        ValueError: ``name`` is empty, not an identifier, or already registered.
    """
    check_registration("merge rule", name)

    def deco(fn: Rule) -> Rule:
        check_registration("merge rule", name, fn)
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
    # tie="last" (the reference): one running value, replaced wherever the next
    # slice's |τ| is at least as large, so on an exact +a/−a tie the later vector wins.
    # tie="positive": the element of largest |τ| is either the running maximum or
    # the running minimum, and on |max| = |min| the positive value wins, so the
    # result does not depend on the order of the vectors.
    def __init__(self, pool: Pool, tie: str = "last", progress: bool = False) -> None:
        super().__init__(pool)
        self.tie = _choice("magmax", "tie", tie, ("last", "positive"))

    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            self.hi, self.first = t.clone(), False
            if self.tie == "positive":
                self.lo = t.clone()
        elif self.tie == "last":
            torch.where(t.abs() >= self.hi.abs(), t, self.hi, out=self.hi)
        else:
            torch.maximum(self.hi, t, out=self.hi)
            torch.minimum(self.lo, t, out=self.lo)

    def finish(self) -> torch.Tensor:
        if self.tie == "last":
            return self.hi
        take_hi = self.hi >= -self.lo
        # masked sum instead of where(): exact (one term is ±0) and several times faster on CPU
        return self.hi * take_hi + self.lo * ~take_hi


def _choice(rule: str, option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{rule}: {option}={value!r} is not one of {list(choices)}")
    return value


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
def magmax(task_vectors: Sequence[Mapping[str, torch.Tensor]], *, tie: str = "last", strict: bool = True,
           names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """MagMax (Marczak et al., 2024): per element the value of largest magnitude.

    Args:
        task_vectors: K mappings ``name -> Tensor``.
        tie: Which value wins among values of equal largest |value| (+a and −a):
            ``"last"`` (default, as the reference code, which replaces the running
            value wherever ``|τ_k| >= |running|``): the later vector in the list;
            ``"positive"``: the positive one, so the result does not depend on the
            order of the vectors.
        strict, names, progress: As in :func:`negmerge`.

    Raises:
        ValueError: An unknown ``tie``; otherwise as :func:`negmerge`.
    """
    return _in_memory(_MagMaxFold, task_vectors, strict, names, progress, tie=tie)


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


def merge(method: str, task_vectors: Sequence[Mapping[str, torch.Tensor]], **options: Any) -> TaskVector:
    """Merge with the rule registered as ``method`` and return a :class:`~negkit.taskvec.TaskVector`.

    The rules themselves return plain dicts; this wraps the result so that the
    task-vector arithmetic applies at once::

        merged = negkit.merge.merge("negmerge", tvs)
        model_sd = (-merged).apply_to(original_sd, coef=0.5)

    The metadata records ``merge_method`` and ``merge_options`` (JSON), and the
    merged vectors' ``names`` when given.

    Args:
        method: Registry name (:func:`list_methods`).
        task_vectors: K mappings ``name -> Tensor``.
        **options: Options of the rule, e.g. ``density`` for ``ties``, ``strict``, ``names``.

    Raises:
        ValueError: Unknown method; otherwise as the rule.
        TypeError: An option the rule does not take.
    """
    merged = get(method)(task_vectors, **options)
    rule_options = {k: v for k, v in options.items() if k not in ("names", "progress")}
    meta = _provenance(method, rule_options)
    if options.get("names") is not None:
        meta["merged_names"] = json.dumps([str(n) for n in options["names"]])
    return TaskVector(merged, metadata=meta)


def _provenance(method: str, options: Mapping[str, Any]) -> dict[str, str]:
    """The metadata every merged vector carries (what :func:`merge` and :func:`merge_files` save)."""
    return {"format": "negkit.TaskVector", "negkit_version": __version__, "merge_method": method,
            "merge_options": json.dumps(dict(options), sort_keys=True, default=str)}


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
        ValueError: Unknown method, non-safetensors or damaged file (named), K = 0,
            disagreeing keys, shapes or dtypes (strict), NaN/Inf, ``out_path`` equal
            to one of the input files.
        FileNotFoundError: A path does not exist.
    """
    rule = get(method)
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError("merge_files takes a sequence of paths; wrap a single path in a list")
    paths = list(paths)  # K = 0 and missing or non-safetensors files: the pool says so
    if out_path is not None:
        _refuse_input_as_output(out_path, paths, pretrained)
    meta = {**_provenance(method, options), "merged_files": json.dumps([Path(p).name for p in paths])}
    if pretrained is not None and not isinstance(pretrained, Mapping):
        meta["pretrained_file"] = Path(pretrained).name
    try:
        return _merge_pool(rule, method, paths, pretrained, strict, include_bn_stats, out_path, progress, meta,
                           options)
    except SafetensorError as e:
        # safetensors' own error does not say which of the K files it is about.
        raise _damaged(paths, pretrained, e) from e


def _merge_pool(rule: Rule, method: str, paths: list, pretrained: Any, strict: bool, include_bn_stats: bool,
                out_path: io.PathLike | None, progress: bool, meta: dict[str, str],
                options: dict[str, Any]) -> dict[str, torch.Tensor] | Path:
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


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # also catches hard links
    return a.resolve() == b.resolve()


def _input_files(paths: Sequence[Any], pretrained: Any) -> list[tuple[str, Path]]:
    files = [(f"tv[{i}]", Path(p)) for i, p in enumerate(paths) if isinstance(p, (str, os.PathLike))]
    if isinstance(pretrained, (str, os.PathLike)):
        files.append(("pretrained", Path(pretrained)))
    return files


def _refuse_input_as_output(out_path: io.PathLike, paths: Sequence[Any], pretrained: Any) -> None:
    """Writing the merge over one of its inputs would replace a file that is still being read."""
    out = Path(out_path)
    for label, p in _input_files(paths, pretrained):
        if _same_file(out, p):
            raise ValueError(f"out_path {out} is the input {label} ({p.name}); the merge would overwrite it. "
                             "Write the merged vector to a new file, e.g. out_path='merged.safetensors'")


def _damaged(paths: Sequence[Any], pretrained: Any, error: Exception) -> Exception:
    """Name the file behind a bare ``SafetensorError`` by opening each input on its own."""
    for label, p in _input_files(paths, pretrained):
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                for key in f.keys():
                    f.get_slice(key)
        except SafetensorError as e:
            return ValueError(f"{label} ({p}) is a damaged safetensors file ({e}); was it truncated or overwritten "
                              "while being written? Re-create it, or leave it out of the pool")
        except OSError:
            continue  # missing or unreadable: not what safetensors complained about
    return error


# The rules of negkit.merge_rules (dare, breadcrumbs, consensus, tsv) register themselves here.
import negkit.merge_rules  # noqa: E402,F401
