"""Model registry. Every model takes raw [0, 1] pixels: its first layer is :class:`Normalize`.

``negkit.models.get(name, num_classes, **kw)`` builds a registered architecture, and
``negkit.models.get(name, dataset=bundle)`` takes the classes, input channels and
normalisation from a :class:`~negkit.data.DatasetBundle`; built in are ``small_resnet`` (a few-second model for the digits benchmark) and
``resnet18`` (torchvision's, with the CIFAR stem), see :mod:`negkit.models.resnet`.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from negkit.config import check_registration

if TYPE_CHECKING:
    from negkit.data import DatasetBundle

__all__ = ["Normalize", "register_model", "get", "list_models"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a layer, so models consume raw [0, 1] pixels.

    ``mean`` and ``std`` are buffers: they move with the model and are saved in
    its state dict (a checkpoint always carries the normalisation it was trained with).

    Args:
        mean: Per-channel means (length C).
        std: Per-channel standard deviations (length C), all positive.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean has {mean_t.numel()} channels but std has {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (B, C, H, W) batch."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``(num_classes, **kw) -> nn.Module`` under ``name``.

    Raises:
        TypeError: ``name`` is not a str, or the decorated object is not callable.
        ValueError: ``name`` is empty, not an identifier, or registered by another builder.
    """
    check_registration("model", name)

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        check_registration("model", name, fn)
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether the builder ``fn`` takes a keyword ``name`` (by name or through ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def get(name: str, num_classes: int | None = None, *, dataset: DatasetBundle | None = None,
        **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs.

    With ``dataset``, what the model must agree with comes from the data: the number of
    classes, the input channels (from the first training image) and the normalisation
    (``mean``/``std``), each passed only if the builder takes it. A value given explicitly
    that contradicts the data is refused, so a 3-channel model is never built for 1-channel
    images by default.

    Args:
        name: Registry name, see :func:`list_models`.
        num_classes: Size of the classification head (default with ``dataset``: its classes).
        dataset: A :class:`~negkit.data.DatasetBundle` to size the model for.
        **kwargs: Builder options, e.g. ``in_channels``, ``mean``, ``std``, ``widths``.

    Raises:
        ValueError: Unknown name (the message lists the registered ones), no ``num_classes``
            and no ``dataset``, or an explicit value that contradicts ``dataset``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models are {list_models()}")
    builder = _REGISTRY[name]
    if dataset is not None:
        from_data = {"num_classes": dataset.num_classes, "in_channels": int(dataset.input_shape[0]),
                     "mean": tuple(dataset.mean), "std": tuple(dataset.std)}
        given = {"num_classes": num_classes, **kwargs}
        for key, value in from_data.items():
            mine = given.get(key)
            if mine is not None and (tuple(mine) if isinstance(mine, (list, tuple)) else mine) != value:
                raise ValueError(f"model {name!r}: {key}={mine!r} contradicts dataset {dataset.name!r} "
                                 f"({key} {value!r}); drop {key} to take it from the data")
        num_classes = dataset.num_classes
        for key in ("in_channels", "mean", "std"):
            if _accepts(builder, key):
                kwargs.setdefault(key, from_data[key])
    if num_classes is None:
        raise ValueError(f"model {name!r} needs num_classes, or dataset=<a DatasetBundle> to take it from")
    return builder(num_classes=num_classes, **kwargs)


from negkit.models import resnet  # noqa: E402,F401  (registers the built-in models)
