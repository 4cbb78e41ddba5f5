"""Dataset registry: every dataset of the kit is a :class:`DatasetBundle`.

A builder registered with :func:`register_dataset` returns train / val / test
splits whose items are ``(image, label)`` with ``image`` a float tensor of raw
pixels in [0, 1], shape (C, H, W), and ``label`` an ``int``. Normalisation is
*not* applied here: the bundle carries ``mean``/``std`` and the model applies
them in its first layer (:class:`negkit.models.Normalize`), so that forget
vectors act on raw pixels (docs/architecture.md).

Built in: ``digits`` (sklearn, offline, :mod:`negkit.data.digits`),
``cifar10`` / ``cifar100`` (torchvision's on-disk format, :mod:`negkit.data.cifar`) and
``fashion_mnist`` / ``mnist`` / ``kmnist`` (official IDX files, :mod:`negkit.data.mnist`).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from negkit.config import check_registration

__all__ = [
    "DatasetBundle", "TensorImageDataset", "register_dataset", "get", "list_datasets", "labels_of",
]

logger = logging.getLogger(__name__)

Builder = Callable[..., "DatasetBundle"]
_REGISTRY: dict[str, Builder] = {}


@dataclasses.dataclass(frozen=True)
class DatasetBundle:
    """Train / val / test splits of one dataset plus what a model needs to know about it.

    Attributes:
        name: Registry name (``"digits"``, ``"cifar10"``, ...).
        train: Training split; items ``(float image in [0, 1] (C, H, W), int label)``.
        val: Validation split (held out from the original training data).
        test: Test split.
        classnames: Human-readable class names, index = label.
        mean: Per-channel mean the model's :class:`~negkit.models.Normalize` layer subtracts.
        std: Per-channel standard deviation it divides by.
        meta: Free-form provenance: source, seed, split sizes, variant...
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    classnames: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classnames)``)."""
        return len(self.classnames)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape (C, H, W) of one image, read from the first training item."""
        return tuple(self.train[0][0].shape)


class TensorImageDataset(Dataset):
    """In-memory images with integer labels, like ``torch.utils.data.TensorDataset``.

    Images are stored either as float tensors in [0, 1] or as ``uint8`` (converted
    to float / 255 on access, which keeps CIFAR-sized data at a quarter of the memory).

    Args:
        images: Tensor of shape (N, C, H, W), float in [0, 1] or uint8.
        targets: Integer labels, length N.
        transform: Optional callable applied to each float image (e.g. augmentation).

    Attributes:
        tensors: ``(images, targets)`` as stored.
        targets: Labels as a LongTensor (what :func:`labels_of` reads).
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int] | np.ndarray | torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        if images.ndim != 4 or images.shape[0] != targets.shape[0]:
            raise ValueError(
                f"images must be (N, C, H, W) with one label each; got images {tuple(images.shape)} "
                f"and {targets.shape[0]} labels"
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
        self.tensors = (images, targets)
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.tensors[0][i]
        img = img.float().div_(255.0) if img.dtype == torch.uint8 else img
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder ``(root=None, **kw) -> DatasetBundle`` under ``name``.

    Raises:
        TypeError: ``name`` is not a str, or the decorated object is not callable.
        ValueError: ``name`` is empty, not an identifier, or registered by another builder.
    """
    check_registration("dataset", name)

    def deco(fn: Builder) -> Builder:
        check_registration("dataset", name, fn)
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"dataset {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn

    return deco


# Modules that register more datasets when imported. They are imported on first need rather
# than here, because they import this module (and open_clip, which is slow to import).
_PLUGINS = ("negkit.clip.datasets",)


def _load_plugins() -> None:
    for module in _PLUGINS:
        importlib.import_module(module)


def list_datasets() -> list[str]:
    """Names of all registered datasets (built-in and CLIP tasks), sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def get(name: str, root: str | os.PathLike | None = None, **kwargs: Any) -> DatasetBundle:
    """Build the dataset registered as ``name``.

    Args:
        name: Registry name, see :func:`list_datasets`.
        root: Folder holding the data on disk (ignored by built-in offline datasets).
        **kwargs: Builder-specific options (e.g. ``size=16`` for ``digits``).

    Raises:
        ValueError: Unknown name; the message lists the registered ones.
    """
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; registered datasets are {list_datasets()}")
    return _REGISTRY[name](root=root, **kwargs)


def labels_of(dataset: Dataset) -> np.ndarray:
    """Labels of ``dataset`` as an int64 array, without loading images where possible.

    Reads a ``targets`` or ``labels`` attribute, follows ``Subset`` indices and
    concatenates ``ConcatDataset`` parts; only as a last resort iterates the items.
    """
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([labels_of(d) for d in dataset.datasets]).astype(np.int64)
    for attr in ("targets", "labels"):
        lab = getattr(dataset, attr, None)
        if lab is not None and not callable(lab):
            lab = lab.numpy() if isinstance(lab, torch.Tensor) else lab
            return np.asarray(lab, dtype=np.int64)
    logger.info("labels_of: %s has no targets/labels attribute; iterating its items",
                type(dataset).__name__)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


# Built-in datasets register themselves on import.
from negkit.data import cifar, digits, mnist  # noqa: E402,F401
