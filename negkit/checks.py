"""One validation mechanism for every config class: types, ranges, options, registry names.

Every config class of the kit is checked the same way, before any work starts:

* **types** come from the class's type hints: ``"10"`` for an ``int`` field, a
  string where a tuple is expected (``scenarios="class_3"``), NaN or infinity in
  a ``float`` field are refused;
* **ranges** come from a ``RANGES`` class attribute mapping field names to a
  short spec, e.g. ``RANGES = {"epochs": ">= 1", "label_smoothing": "[0, 1)"}``
  (see :func:`parse_range`); for tuple fields every element is checked;
* **repeats** in a tuple field are refused (``merge_methods=("mean", "mean")``)
  unless the class lists the field in ``REPEATABLE`` (:func:`check_distinct`);
* **keyword options** of a registered function (a merge rule, say) are checked
  against its signature with :func:`check_options`, and every registry checks the
  names it is given with :func:`check_registration`.

A config class opts in by calling :func:`check` first thing in ``__post_init__``;
:func:`negkit.config.from_dict` calls :func:`check_values` before the class is even
built, so a class's own cross-field checks only ever see well-typed values. Every
problem is listed in one :class:`ConfigError`. :mod:`negkit.config` (configs from
dicts and back) re-exports this module's checks, so ``negkit.config.check`` is the same function.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import numbers
import re
import sys
import types
import typing
from typing import Any, Callable, Iterable, Mapping, TypeVar

__all__ = ["ConfigError", "check", "check_values", "check_options", "check_distinct", "check_registration",
           "parse_range", "field_hints", "wants_tuple", "describe"]


class ConfigError(ValueError):
    """A configuration value has the wrong type, is out of range, or is not an option of its function."""


# ------------------------------------------------------------------ ranges
_NUM = r"[-+]?(?:inf|\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)"


@dataclasses.dataclass(frozen=True)
class _Range:
    spec: str
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    finite: bool = True
    nan: bool = False

    def problem(self, x: float) -> str | None:
        if math.isnan(x):
            return None if self.nan else "is NaN; give a finite number"
        if self.finite and math.isinf(x):
            return "is infinite; give a finite number"
        below = x <= self.lo if self.lo_open else x < self.lo
        above = x >= self.hi if self.hi_open else x > self.hi
        return f"must be {self.spec}" if below or above else None


@functools.lru_cache(maxsize=None)
def parse_range(spec: str) -> _Range:
    """Parse a range spec of a ``RANGES`` declaration.

    Accepted forms: a comparison (``">= 1"``, ``"> 0"``, ``"<= 1"``, ``"< 1"``), an
    interval (``"[0, 1)"``, ``"(0, 1]"``, ``"[0, inf)"``), or ``"finite"``; any of
    them followed by ``" or nan"`` also admits NaN (a "not applicable" marker), and
    ``"any"`` admits every number including infinities. Without ``"any"``, values
    must be finite.

    Raises:
        ValueError: The spec is not one of these forms.
    """
    text = spec.strip().lower()
    nan = text.endswith(" or nan")
    core = text[: -len(" or nan")].strip() if nan else text
    if core == "any":
        return _Range(spec, finite=False, nan=True)
    if core == "finite":
        return _Range(spec, nan=nan)
    m = re.fullmatch(rf"(>=|>|<=|<)\s*({_NUM})", core)
    if m:
        op, v = m.group(1), float(m.group(2))
        if op.startswith(">"):
            return _Range(spec, lo=v, lo_open=op == ">", nan=nan)
        return _Range(spec, hi=v, hi_open=op == "<", nan=nan)
    m = re.fullmatch(rf"([\[(])\s*({_NUM})\s*,\s*({_NUM})\s*([\])])", core)
    if m:
        return _Range(spec, lo=float(m.group(2)), hi=float(m.group(3)), lo_open=m.group(1) == "(",
                      hi_open=m.group(4) == ")", nan=nan)
    raise ValueError(f"range spec {spec!r} is not understood; write e.g. '>= 1', '> 0', '[0, 1)', "
                     "'finite', 'any', optionally followed by ' or nan'")


_FINITE = _Range("finite")


# ------------------------------------------------------------------- types
def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if hint is Any:
        return "anything"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_type_name(args[0])}"
        return f"a tuple ({', '.join(_type_name(a) for a in args)})"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint`` (None when it does). Unknown hints are accepted."""
    if hint is Any or isinstance(hint, (str, typing.ForwardRef, TypeVar)):
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a) for a in args]
        if any(p is None for p in problems):
            return None
        # A single non-None arm explains best (an element of a tuple, say).
        real = [p for a, p in zip(args, problems) if a is not type(None)]
        return real[0] if len(real) == 1 else f"is {describe(value)}, expected {_type_name(hint)}"
    if hint is type(None):
        return None if value is None else f"is {describe(value)}, expected None"
    if origin is typing.Literal:
        return None if value in args else f"is {value!r}, expected one of {list(args)}"
    if hint is bool:
        return None if isinstance(value, (bool, _np_bool())) else f"is {describe(value)}, expected True or False"
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, _np_bool())):
            return None
        hint_fix = f" (write {value.strip()}, not {value!r})" if isinstance(value, str) and \
            re.fullmatch(r"\s*[-+]?\d+\s*", value) else ""
        if isinstance(value, float) and value.is_integer():
            hint_fix = f" (write {int(value)})"
        return f"is {describe(value)}, expected an int{hint_fix}"
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, _np_bool())):
            return None
        fix = ""
        if isinstance(value, str):
            with contextlib.suppress(ValueError, TypeError):
                fix = f" (write {float(value)!r}, not {value!r})"
        return f"is {describe(value)}, expected a number{fix}"
    if hint is str:
        return None if isinstance(value, str) else f"is {describe(value)}, expected a str"
    if origin is tuple or hint is tuple:
        if isinstance(value, str):
            inner = _type_name(args[0]) if args else "values"
            return (f"is the string {value!r}, expected a tuple of {inner}; "
                    f"write ({value!r},) for a single one")
        if not isinstance(value, (tuple, list)):
            return f"is {describe(value)}, expected {_type_name(hint)}"
        if not args:
            return None
        if len(args) == 2 and args[1] is Ellipsis:
            elems = [(i, v, args[0]) for i, v in enumerate(value)]
        elif len(args) != len(value):
            return f"has {len(value)} entries, expected {_type_name(hint)}"
        else:
            elems = [(i, v, a) for i, (v, a) in enumerate(zip(value, args))]
        for i, v, a in elems:
            p = _type_problem(v, a)
            if p is not None:
                return f"[{i}] {p}"
        return None
    if origin in (list, typing.List) or hint is list:
        if not isinstance(value, list):
            return f"is {describe(value)}, expected a list"
        return next((f"[{i}] {p}" for i, v in enumerate(value)
                     if args and (p := _type_problem(v, args[0])) is not None), None)
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping) or \
            (origin is not None and isinstance(origin, type) and issubclass(origin, Mapping)):
        if not isinstance(value, Mapping):
            return f"is {describe(value)}, expected a dict"
        if len(args) == 2:
            for k, v in value.items():
                p = _type_problem(k, args[0])
                if p is not None:
                    return f"key {k!r} {p}"
                p = _type_problem(v, args[1])
                if p is not None:
                    return f"[{k!r}] {p}"
        return None
    if isinstance(hint, type):
        return None if isinstance(value, hint) else f"is {describe(value)}, expected {_type_name(hint)}"
    return None


def describe(value: Any) -> str:
    """A value for an error message: its repr, cut to 40 characters, and its type."""
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} (a {type(value).__name__})"


def _np_bool() -> type:
    np = sys.modules.get("numpy")
    return np.bool_ if np is not None else bool


def _numbers_in(value: Any) -> Iterable[float]:
    """The real numbers a field holds (itself, or the elements of a tuple/list), for range checks."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [float(x) for x in items if isinstance(x, numbers.Real) and not isinstance(x, (bool, _np_bool()))]


@functools.lru_cache(maxsize=None)
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass's fields; a field whose hint cannot be resolved gets ``Any``."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: resolve field by field, skipping the bad ones
        module = sys.modules.get(cls.__module__)
        ns = dict(vars(module)) if module else {}
        out = {}
        for f in dataclasses.fields(cls):
            try:
                out[f.name] = eval(f.type, ns) if isinstance(f.type, str) else f.type  # noqa: S307
            except Exception:
                out[f.name] = Any
        return out


def wants_tuple(hint: Any) -> bool:
    """Whether a field with type hint ``hint`` holds a tuple (lists given for it become tuples)."""
    if hint is tuple or typing.get_origin(hint) is tuple:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and \
        any(wants_tuple(a) for a in typing.get_args(hint))


def _ranges(cls: type) -> dict[str, _Range]:
    declared = getattr(cls, "RANGES", None) or {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(declared) - names)
    if unknown:
        raise TypeError(f"{cls.__name__}.RANGES names {unknown}, which are not fields of {cls.__name__}")
    return {k: parse_range(v) for k, v in declared.items()}


def _problems(cls: type, values: Mapping[str, Any]) -> list[str]:
    hints = field_hints(cls)
    ranges = _ranges(cls)
    out = []
    for name, value in values.items():
        hint = hints.get(name, Any)
        p = _type_problem(value, hint)
        if p is not None:
            out.append(f"{name}={_short(value)} {p}")
            continue
        rng = ranges.get(name)
        if rng is None and not _holds_floats(hint):
            continue
        for x in _numbers_in(value):
            p = (rng or _FINITE).problem(x)
            if p is not None:
                out.append(f"{name}={_short(value)} {p}")
                break
    return out


def _holds_floats(hint: Any) -> bool:
    if hint is float:
        return True
    return any(_holds_floats(a) for a in typing.get_args(hint) if a is not Ellipsis)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_values(cls: type, values: Mapping[str, Any]) -> None:
    """Check field values (a subset of ``cls``'s fields) against its type hints and ``RANGES``.

    Raises:
        ConfigError: Listing every offending field, its value and what it should be.
    """
    problems = _problems(cls, values)
    if problems:
        raise ConfigError(f"invalid {cls.__name__}: " + "; ".join(problems))


def check(cfg: Any) -> None:
    """Validate a config instance (call it first in ``__post_init__``).

    Lists given for tuple fields are converted to tuples (frozen configs stay
    hashable); then every field is checked as in :func:`check_values`.

    Raises:
        ConfigError: Listing every offending field.
    """
    cls = type(cfg)
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):
        v = getattr(cfg, f.name)
        if isinstance(v, list) and wants_tuple(hints.get(f.name)):
            object.__setattr__(cfg, f.name, tuple(v))
    check_values(cls, {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})
    for f in dataclasses.fields(cls):  # a list-valued key names a set of things: a repeat is a mistake
        v = getattr(cfg, f.name)
        if isinstance(v, tuple) and wants_tuple(hints.get(f.name)) and f.name not in getattr(cls, "REPEATABLE", ()):
            check_distinct(v, f"{cls.__name__}.{f.name}")


def check_distinct(values: Any, where: str) -> None:
    """Refuse repeated entries in a list-valued config key (``merge_methods: [mean, mean]``).

    Raises:
        ConfigError: Naming the key and the repeated entries.
    """
    seen, repeated = set(), []
    for x in values:
        try:
            if x in seen and x not in repeated:
                repeated.append(x)
            seen.add(x)
        except TypeError:  # unhashable entries: nothing to compare cheaply
            return
    if repeated:
        raise ConfigError(f"{where} repeats {repeated}: each entry may appear once; remove the duplicates")


_NO_FN = object()


def check_registration(kind: str, name: Any, fn: Any = _NO_FN) -> None:
    """The checks every registry of the kit makes on ``register(name)(fn)``.

    Args:
        kind: What is registered, for the message (``"merge rule"``, ``"dataset"``).
        name: Must be a non-empty identifier str (it becomes a config value and a CLI choice).
        fn: The decorated object, when known (omit it to check the name alone); must be callable.

    Raises:
        TypeError: ``name`` is not a str or ``fn`` is not callable.
        ValueError: ``name`` is empty or not an identifier.
    """
    if not isinstance(name, str):
        raise TypeError(f"a {kind}'s name must be a str, got {type(name).__name__} {name!r:.60}; "
                        f"use it as a decorator: @register('my_name')")
    if not name.isidentifier():
        raise ValueError(f"a {kind}'s name must be a non-empty identifier such as 'my_name', got {name!r}")
    if fn is not _NO_FN and not callable(fn):
        raise TypeError(f"{kind} {name!r} must be registered on a callable, got {type(fn).__name__} {fn!r:.60}")



def check_options(func: Callable[..., Any], options: Any, where: str, *, positional: int = 1) -> None:
    """Check keyword options meant for ``func`` against its signature, before calling it.

    Used for per-rule options such as ``merge_options={"ties": {"density": 0.2}}``:
    each name must be a keyword parameter of the rule and each value must fit the
    parameter's annotation (NaN/infinite floats are refused).

    Args:
        func: The function the options will be passed to.
        options: A mapping ``name -> value``.
        where: How the options are named in the error, e.g. ``"merge_options['ties']"``.
        positional: Leading parameters the caller fills itself (the task vectors), not options.

    Raises:
        ConfigError: ``options`` is not a mapping, names an unknown option (the
            message lists the valid ones), or a value has the wrong type.
    """
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where} is {describe(options)}; expected a dict of keyword options")
    sig = inspect.signature(func)
    params = list(sig.parameters.values())[positional:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(str(k) for k in options if k not in valid)
    name = getattr(func, "__name__", repr(func))
    if unknown:
        raise ConfigError(f"{where}: {name} takes no option(s) {unknown}; its options are {valid or 'none'}")
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = {}
    problems = []
    for k, v in options.items():
        hint = hints.get(k, Any)
        p = _type_problem(v, hint)
        if p is None and _holds_floats(hint):
            p = next((q for x in _numbers_in(v) if (q := _FINITE.problem(x))), None)
        if p is not None:
            problems.append(f"{k}={_short(v)} {p}")
    if problems:
        raise ConfigError(f"{where} for {name}: " + "; ".join(problems))
