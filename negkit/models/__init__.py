"""Model registry. Every model takes raw [0, 1] pixels: its first layer is :class:`Normalize`.

``negkit.models.get(name, num_classes, **kw)`` builds a registered architecture;
built in are ``small_resnet`` (a few-second model for the digits benchmark) and
``resnet18`` (torchvision's, with the CIFAR stem), see :mod:`negkit.models.resnet`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from negkit.config import check_registration

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


def get(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs.

    Args:
        name: Registry name, see :func:`list_models`.
        num_classes: Size of the classification head.
        **kwargs: Builder options, e.g. ``in_channels``, ``mean``, ``std``.

    Raises:
        ValueError: Unknown name; the message lists the registered ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models are {list_models()}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


from negkit.models import resnet  # noqa: E402,F401  (registers the built-in models)
