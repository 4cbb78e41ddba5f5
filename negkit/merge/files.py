"""Merging K task vectors stored as safetensors files, streamed tensor by tensor (:func:`merge_files`)."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError, safe_open

from negkit import io
from negkit.merge import Rule, _provenance, get, registered_fold
from negkit.merge.fold import _run
from negkit.pool import open_pool
from negkit.taskvec import TaskVector

__all__ = ["merge_files"]

log = logging.getLogger(__name__)


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
        fold = registered_fold(method)
        if fold is None:
            merged = {k: v.clone() for k, v in rule(pool.mappings(), **options).items()}
            return merged if out_path is None else TaskVector(merged).save(out_path, metadata=meta)
        if out_path is None:
            return _run(fold, pool, options, progress)
        # Each merged tensor is written as soon as it is folded: the merged vector is
        # never in memory as a whole.
        specs = {k: (pool.shapes[k], pool.dtypes[k]) for k in pool.keys}
        with io.safetensors_writer(out_path, specs, metadata=meta) as write:
            _run(fold, pool, options, progress, sink=write)
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
