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

One module per rule, each registering itself here: ``negmerge``, ``mean``, ``sum``, ``magmax``,
``ties`` (the paper's and its baselines'), ``dare``, ``breadcrumbs``, ``consensus``, ``tsv``
(the merging toolkits'); :mod:`negkit.merge.fold` holds the fold machinery they share and
:mod:`negkit.merge.files` the streaming :func:`merge_files`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch

from negkit import __version__
from negkit.config import check_registration
from negkit.pool import kth_largest_abs
from negkit.taskvec import TaskVector

__all__ = [
    "register", "get", "list_methods", "merge", "negmerge", "mean", "sum", "ties", "magmax", "dare", "breadcrumbs",
    "consensus", "tsv", "merge_files", "kth_largest_abs",
]

Rule = Callable[..., dict]
_RULES: dict[str, Rule] = {}
_FOLDS: dict[str, type] = {}


# ----------------------------------------------------------------- registry
def register(name: str, *, fold: type | None = None) -> Callable[[Rule], Rule]:
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


def registered_fold(name: str) -> type | None:
    """The streaming fold class registered with rule ``name`` (None: the rule has none)."""
    get(name)  # unknown names fail with the list of valid ones
    return _FOLDS.get(name)


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


# The built-in rules, one module each; importing them registers them (after the registry above).
from negkit.merge.negmerge import negmerge  # noqa: E402
from negkit.merge.mean import mean  # noqa: E402
from negkit.merge.sum import sum  # noqa: E402,A004
from negkit.merge.magmax import magmax  # noqa: E402
from negkit.merge.ties import ties  # noqa: E402
from negkit.merge.dare import dare  # noqa: E402
from negkit.merge.breadcrumbs import breadcrumbs  # noqa: E402
from negkit.merge.consensus import consensus  # noqa: E402
from negkit.merge.tsv import tsv  # noqa: E402
from negkit.merge.files import merge_files  # noqa: E402
