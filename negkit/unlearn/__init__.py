"""Machine-unlearning methods for image classifiers, one module per method, behind a registry.

Every method is a function ``(model, forget, retain, cfg=None, *, device=None, out_dir=None,
progress=True) -> nn.Module`` registered under its name (``negkit.unlearn.get("salun")``,
:func:`list_methods`). It returns an unlearned *copy* of ``model`` (the argument is never
modified); trained methods run only through the kit's one loop, :func:`negkit.train.train`
(:mod:`negkit.unlearn.base`). With ``out_dir`` a run checkpoints under that folder, so a rerun
skips finished work and an interrupted run resumes.

Built in (``negkit/unlearn/<name>.py``):

- ``ft``, ``ga``, ``rl``, ``l1_sparse``, ``salun``: the classic baselines as SalUn's CIFAR-10
  code runs them (Fan et al., ICLR 2024): SGD with momentum and weight decay 5e-4 at a constant
  learning rate, no gradient clipping.
- ``iu``: influence unlearning, one WoodFisher-preconditioned step (Jia et al., NeurIPS 2023).
- ``be``, ``bs``: boundary expanding and boundary shrink (Chen et al., CVPR 2023).
- ``neggrad_plus``: β·CE(D_r) − (1 − β)·CE(D_f) per step (Kurmanji et al., NeurIPS 2023).
- ``scrub``: teacher–student max/min steps on D_f and D_r (Kurmanji et al., NeurIPS 2023).
- ``ssd``: selective synaptic dampening, training-free (Foster et al., AAAI 2024).

Hyperparameters: a frozen :class:`UnlearnConfig` (or the method's subclass of it, e.g.
:class:`~negkit.unlearn.scrub.SCRUBConfig`), with per-method defaults from
:func:`default_config`. The classic baselines' defaults are scaled to the built-in digits
benchmark; the others keep their reference code's constants (each module says where from).
:data:`GRIDS` holds small candidate sets for tuning on validation.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping

from torch import nn

from negkit.config import from_dict
from negkit.unlearn.base import ForgetThenRetain, UnlearnConfig
from negkit.unlearn.gradients import saliency_mask

__all__ = ["UnlearnConfig", "default_config", "register", "get", "list_methods", "config_class", "GRIDS",
           "saliency_mask", "ForgetThenRetain"]

UnlearnFn = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class _Entry:
    fn: UnlearnFn
    config: type[UnlearnConfig]
    defaults: Mapping[str, Any]


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, config: type[UnlearnConfig] = UnlearnConfig,
             defaults: Mapping[str, Any] | None = None) -> Callable[[UnlearnFn], UnlearnFn]:
    """Decorator registering an unlearning method under ``name``.

    Args:
        name: Registry name: a non-empty identifier (``"neggrad_plus"``).
        config: The method's config class, :class:`UnlearnConfig` or a subclass.
        defaults: Field values of :func:`default_config` for this method.

    Raises:
        TypeError: ``name`` is not a str, ``config`` not an :class:`UnlearnConfig` class, or the
            decorated object is not callable.
        ValueError: ``name`` is empty, not an identifier or already registered; ``defaults`` are
            not valid fields of ``config``.
    """
    if not isinstance(name, str):
        raise TypeError(f"an unlearning method's name must be a str, got {type(name).__name__} {name!r}")
    if not name.isidentifier():
        raise ValueError(f"an unlearning method's name must be a non-empty identifier such as 'my_method', "
                         f"got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"unlearning method {name!r} is already registered; pick another name")
    if not (isinstance(config, type) and issubclass(config, UnlearnConfig)):
        raise TypeError(f"config of unlearning method {name!r} must be UnlearnConfig or a subclass, got {config!r}")
    defaults = dict(defaults or {})
    from_dict(config, defaults)  # unknown fields and bad values fail at registration

    def deco(fn: UnlearnFn) -> UnlearnFn:
        if not callable(fn):
            raise TypeError(f"unlearning method {name!r} must be registered on a callable, got "
                            f"{type(fn).__name__} {fn!r:.60}")
        if name in _REGISTRY:
            raise ValueError(f"unlearning method {name!r} is already registered; pick another name")
        _REGISTRY[name] = _Entry(fn, config, defaults)
        return fn
    return deco


def list_methods() -> list[str]:
    """Names of the registered unlearning methods, in registration order."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown unlearning method {name!r}; valid methods are {list_methods()}{hint}")
    return _REGISTRY[name]


def get(name: str) -> UnlearnFn:
    """The unlearning function registered as ``name``.

    Raises:
        ValueError: Unknown name; the message lists the valid ones and the closest spelling.
    """
    return _entry(name).fn


def config_class(name: str) -> type[UnlearnConfig]:
    """The config class of method ``name`` (:class:`UnlearnConfig` or its subclass)."""
    return _entry(name).config


def default_config(method: str, **overrides: Any) -> UnlearnConfig:
    """The default config of ``method`` with ``overrides``, validated (unknown fields fail).

    Raises:
        ValueError: Unknown method; unknown field or bad value (:class:`negkit.config.ConfigError`).
    """
    entry = _entry(method)
    return from_dict(entry.config, {**entry.defaults, **overrides})


# Built-in methods, one module each (imported after the registry they are entered in).
from negkit.unlearn import be, bs, ft, ga, iu, l1_sparse, neggrad_plus, rl, salun, scrub, ssd  # noqa: E402

register("ft", defaults=ft.DEFAULTS)(ft.ft)
register("ga", defaults=ga.DEFAULTS)(ga.ga)
register("rl", defaults=rl.DEFAULTS)(rl.rl)
register("l1_sparse", config=l1_sparse.L1SparseConfig, defaults=l1_sparse.DEFAULTS)(l1_sparse.l1_sparse)
register("salun", config=salun.SalUnConfig, defaults=salun.DEFAULTS)(salun.salun)
register("iu", config=iu.IUConfig, defaults=iu.DEFAULTS)(iu.iu)
register("be", defaults=be.DEFAULTS)(be.be)
register("bs", config=bs.BSConfig, defaults=bs.DEFAULTS)(bs.bs)
register("neggrad_plus", config=neggrad_plus.NegGradPlusConfig, defaults=neggrad_plus.DEFAULTS)(
    neggrad_plus.neggrad_plus)
register("scrub", config=scrub.SCRUBConfig, defaults=scrub.DEFAULTS)(scrub.scrub)
register("ssd", config=ssd.SSDConfig, defaults=ssd.DEFAULTS)(ssd.ssd)

#: Small candidate sets (2–4 values a field) for tuning the newer methods on validation,
#: in the form of ``BenchmarkConfig.baseline_grid``; every combination is a valid config.
GRIDS: dict[str, dict[str, tuple]] = {
    "iu": iu.GRID, "be": be.GRID, "bs": bs.GRID, "neggrad_plus": neggrad_plus.GRID, "scrub": scrub.GRID,
    "ssd": ssd.GRID,
}
