"""Frozen configuration dataclasses, built from plain dicts and turned back into them.

Every concern of the kit has its own frozen dataclass (``TrainConfig``,
``PoolConfig``, ...). Notebooks and the CLI hold plain dicts; they enter the
library through :func:`from_dict`, which refuses keys the dataclass does not
know, so a typo in a notebook's ``parameters`` cell fails loudly instead of
being silently ignored. :func:`to_dict` is what gets saved beside every
artefact a config produced, and :func:`replace` is ``dataclasses.replace`` with
the same checks.

The values are validated by the one mechanism of :mod:`negkit.checks` (types
from the class's type hints, ranges from its ``RANGES``, per-rule options
against the rule's signature); :func:`from_dict` runs those checks before the
class is even built. The validation API (:class:`ConfigError`, :func:`check`,
:func:`check_values`, :func:`check_options`, ...) is re-exported here, so
``from negkit.config import check, ConfigError`` keeps working.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping, TypeVar

from negkit.checks import (ConfigError, check, check_distinct, check_options, check_registration, check_values,
                           describe, field_hints, parse_range, wants_tuple)

T = TypeVar("T")

__all__ = ["ConfigError", "from_dict", "to_dict", "replace", "check", "check_values", "check_options",
           "check_distinct", "check_registration", "parse_range"]


def _nested_class(hint: Any) -> type | None:
    """The dataclass a field holds (``TrainConfig`` for ``original: TrainConfig``), else None."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def from_dict(cls: type[T], values: Mapping[str, Any] | T | None = None, **overrides: Any) -> T:
    """Build the frozen dataclass ``cls`` from a mapping, refusing unknown keys and bad values.

    Lists become tuples where the field is a tuple (JSON round trips turn tuples
    into lists), and a mapping given for a field that holds a dataclass builds that
    dataclass. Types and ranges are checked (see :mod:`negkit.checks`) before
    ``cls`` is constructed.

    Args:
        cls: A dataclass type.
        values: A mapping of field values, an instance of ``cls`` (``overrides``
            applied on top), or None for all defaults.
        **overrides: Field values that take precedence over ``values``.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: A key is not a field of ``cls`` (the message lists the valid
            ones), or a value has the wrong type or is out of range.
        TypeError: ``cls`` is not a dataclass.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass type")
    if isinstance(values, cls):
        if not overrides:
            return values
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(cls) if f.init}
    elif values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{cls.__name__} must be built from a dict of its fields, got {describe(values)}")
    merged = {**dict(values or {}), **overrides}
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    bad_keys = [k for k in merged if not isinstance(k, str)]
    unknown = sorted(map(str, set(merged) - set(names)))
    if unknown or bad_keys:
        close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        hint = "".join(f" Did you mean {c[0]!r} for {k!r}?" for k, c in close.items() if c)
        raise ConfigError(
            f"unknown {cls.__name__} key(s) {unknown}; valid keys are {names}.{hint} "
            "Check the spelling in your config or notebook parameters."
        )
    hints = field_hints(cls)
    fixed = {}
    for k, v in merged.items():
        hint = hints.get(k)
        nested = _nested_class(hint)
        if nested is not None and isinstance(v, Mapping):
            v = from_dict(nested, v)
        elif isinstance(v, list) and wants_tuple(hint):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        fixed[k] = v
    check_values(cls, fixed)
    return cls(**fixed)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict (JSON-ready) form of a config dataclass; tuples become lists.

    Raises:
        TypeError: ``cfg`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a config dataclass instance, got {describe(cfg)}")

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def replace(cfg: T, **changes: Any) -> T:
    """A copy of ``cfg`` with ``changes``, validated like :func:`from_dict`.

    Nested dataclasses stay dataclasses; a mapping given for such a field updates
    the nested config field by field (``replace(bench, original={"epochs": 3})``).

    Raises:
        ConfigError: A field does not exist (named with the valid ones) or a value is invalid.
    """
    hints = field_hints(type(cfg))
    fixed = {}
    for k, v in changes.items():
        current = getattr(cfg, k, None)
        if isinstance(v, Mapping) and _nested_class(hints.get(k)) is not None and dataclasses.is_dataclass(current):
            v = replace(current, **v)
        fixed[k] = v
    return from_dict(type(cfg), cfg, **fixed) if fixed else cfg
