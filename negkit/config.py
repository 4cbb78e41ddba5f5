"""Frozen configuration dataclasses, built from plain dicts at the boundary.

Every concern of the kit has its own frozen dataclass (``TrainConfig``,
``PoolConfig``, ...). Notebooks and the CLI hold plain dicts; they enter the
library through :func:`from_dict`, which refuses keys the dataclass does not
know, so a typo in a notebook's ``parameters`` cell fails loudly instead of
being silently ignored. :func:`to_dict` is what gets saved beside every
artefact a config produced.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

__all__ = ["from_dict", "to_dict", "replace"]


def from_dict(cls: type[T], values: Mapping[str, Any] | T | None = None, **overrides: Any) -> T:
    """Build the frozen dataclass ``cls`` from a mapping, refusing unknown keys.

    Args:
        cls: A dataclass type.
        values: A mapping of field values, an instance of ``cls`` (returned with
            ``overrides`` applied), or None for all defaults.
        **overrides: Field values that take precedence over ``values``.

    Returns:
        An instance of ``cls``.

    Raises:
        ValueError: A key is not a field of ``cls``; the message lists the valid ones.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if isinstance(values, cls):
        return dataclasses.replace(values, **overrides) if overrides else values
    merged = {**dict(values or {}), **overrides}
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(merged) - set(names))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} key(s) {unknown}; valid keys are {names}. "
            "Check the spelling in your config or notebook parameters."
        )
    # JSON round trips turn tuples into lists; frozen configs keep tuples so they stay hashable.
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
    return cls(**fixed)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict (JSON-ready) form of a config dataclass; tuples become lists."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that names the culprit when a field does not exist."""
    return from_dict(type(cfg), to_dict(cfg), **changes)
