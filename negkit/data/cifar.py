"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (never downloaded here).

The data must already sit under a folder the user gives (``root``), in the
layout ``torchvision.datasets.CIFAR10/100`` expects (the extracted official
python tarballs). A missing folder raises a :class:`FileNotFoundError` that says
what to download and where to extract it; nothing downloads silently.

Splits, as SalUn's data code: the official 10,000-image test set is ``test``;
``val`` is class-stratified, ⌊10 %⌋ of each class of the official 50,000-image
training set (500 per class for CIFAR-10, 50 for CIFAR-100), drawn class by class
with ``np.random.RandomState(seed).choice(class_indices, n, replace=False)``; the
rest (45,000) form ``train``. The seed defaults to 1, SalUn's: its data code draws the split
the Original trains and validates on with ``cifar10_dataloaders``' default ``seed=1``. Images are kept in memory as uint8 (150 MB for the
training set) and returned as float [0, 1].

Augmentation: ``augment=True`` names random crop (4-pixel zero padding) + horizontal
flip as the bundle's training augmentation (``meta["train_augmentation"]``) while
every split stays clean, because D_f and D_r are subsets of ``train`` that must be
evaluated on clean images; training code asks for the augmented view with
:func:`negkit.data.augment.training_view` (the benchmark does so for Original and
Retrain, as SalUn trains them).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from negkit.data import DatasetBundle, TensorImageDataset, register_dataset
from negkit.data.augment import random_crop_flip

__all__ = ["cifar10", "cifar100", "random_crop_flip", "stratified_val_split", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_SOURCES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz"),
}


def _expected_files(tv_cls: type) -> list[str]:
    names = [f for f, _ in tv_cls.train_list] + [f for f, _ in tv_cls.test_list] + [tv_cls.meta["filename"]]
    return [f"{tv_cls.base_folder}/{n}" for n in names]


def _load(name: str, tv_cls: type, root: str | os.PathLike | None) -> tuple:
    """Load torchvision's CIFAR train and test objects, or explain how to get the data."""
    url, tarball = _SOURCES[name]
    expected = _expected_files(tv_cls)
    how = (
        f"Download {url} and extract it into the root folder (`tar xzf {tarball} -C <root>`), which "
        f"creates <root>/{tv_cls.base_folder}/ holding {', '.join(p.split('/')[1] for p in expected)}; "
        f"or run torchvision.datasets.{tv_cls.__name__}('<root>', download=True) once yourself."
    )
    if root is None:
        raise FileNotFoundError(f"{name} needs root=<folder holding {tv_cls.base_folder}/>. {how}")
    missing = [f for f in expected if not (Path(root) / f).is_file()]
    if missing:
        what = f"no {tv_cls.base_folder}/" if len(missing) == len(expected) else f"missing {missing}"
        raise FileNotFoundError(f"{name} not found under {Path(root).resolve()}: {what}. {how}")
    try:
        train = tv_cls(str(root), train=True, download=False)
        test = tv_cls(str(root), train=False, download=False)
    except RuntimeError as err:  # torchvision's checksum check failed
        raise FileNotFoundError(f"{name} under {root} is corrupted or incomplete ({err}). {how}") from err
    return train, test


def stratified_val_split(labels: np.ndarray, per_class: int | None = None, seed: int = 1
                         ) -> tuple[np.ndarray, np.ndarray]:
    """SalUn's class-stratified validation split: ``(train_idx, val_idx)``, both sorted.

    For each class c = 0, 1, … in turn, ``np.random.RandomState(seed).choice`` (one
    generator for all classes) draws ``per_class`` indices of class c without
    replacement (None: ⌊10 %⌋ of that class's images).

    Raises:
        ValueError: ``per_class`` is not smaller than some class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    val = []
    for c in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == c)
        n = int(0.1 * len(idx)) if per_class is None else per_class
        if not 0 <= n < len(idx):
            raise ValueError(f"class {c} has {len(idx)} images; cannot hold out {n} of them for validation")
        val.append(rng.choice(idx, n, replace=False))
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def _bundle(name: str, tv_cls: type, root: str | os.PathLike | None, mean: tuple, std: tuple,
            val_size: int | None, seed: int, augment: bool) -> DatasetBundle:
    train_tv, test_tv = _load(name, tv_cls, root)
    images = torch.from_numpy(np.ascontiguousarray(train_tv.data)).permute(0, 3, 1, 2)  # (N, 3, 32, 32) uint8
    labels = np.asarray(train_tv.targets, dtype=np.int64)
    n_classes = len(train_tv.classes)
    if val_size is not None and (val_size <= 0 or val_size % n_classes):
        raise ValueError(f"val_size must be a positive multiple of the {n_classes} classes (the split is "
                         f"stratified), got {val_size}; None holds out 10 % of each class")
    train_idx, val_idx = stratified_val_split(labels, None if val_size is None else val_size // n_classes, seed)
    test_images = torch.from_numpy(np.ascontiguousarray(test_tv.data)).permute(0, 3, 1, 2)

    def part(ix: np.ndarray) -> TensorImageDataset:
        return TensorImageDataset(images[torch.from_numpy(ix)].contiguous(), labels[ix])

    meta = {
        "source": f"torchvision.datasets.{tv_cls.__name__}", "root": str(root), "seed": seed,
        "split": f"class-stratified: {len(val_idx) // n_classes} per class of the official training set held out "
                 "as val (np.random.RandomState(seed), class by class, as SalUn's data code)",
        "augment": augment,
        "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_tv.targets)},
    }
    if augment:
        meta["train_augmentation"] = "random_crop_flip"
    return DatasetBundle(
        name=name, train=part(train_idx), val=part(val_idx),
        test=TensorImageDataset(test_images.contiguous(), np.asarray(test_tv.targets, dtype=np.int64)),
        classnames=tuple(train_tv.classes), mean=mean, std=std, meta=meta,
    )


@register_dataset("cifar10")
def cifar10(root: str | os.PathLike | None = None, *, val_size: int | None = None, seed: int = 1,
            augment: bool = False) -> DatasetBundle:
    """CIFAR-10 (45,000 / 5,000 / 10,000 train / val / test by default).

    Args:
        root: Folder holding ``cifar-10-batches-py/`` (the extracted official tarball).
        val_size: Training images held out as validation, a multiple of 10 split evenly
            over the classes (None: 10 % of each class, 500).
        seed: Seed of that choice (1: SalUn's split).
        augment: Name random crop + flip as the training augmentation
            (:func:`negkit.data.augment.training_view`); the splits themselves stay clean.

    Raises:
        FileNotFoundError: The data is not under ``root``; the message says how to get it.
        ValueError: A ``val_size`` that is not a positive multiple of 10.
    """
    from torchvision.datasets import CIFAR10

    return _bundle("cifar10", CIFAR10, root, CIFAR10_MEAN, CIFAR10_STD, val_size, seed, augment)


@register_dataset("cifar100")
def cifar100(root: str | os.PathLike | None = None, *, val_size: int | None = None, seed: int = 1,
             augment: bool = False) -> DatasetBundle:
    """CIFAR-100 with its 100 fine labels; arguments as :func:`cifar10` (default val: 50 per class).

    Args:
        root: Folder holding ``cifar-100-python/`` (the extracted official tarball).
        val_size: Training images held out as validation, a multiple of 100.
        seed: Seed of that choice (1: SalUn's split).
        augment: Name random crop + flip as the training augmentation.

    Raises:
        FileNotFoundError: The data is not under ``root``; the message says how to get it.
        ValueError: A ``val_size`` that is not a positive multiple of 100.
    """
    from torchvision.datasets import CIFAR100

    return _bundle("cifar100", CIFAR100, root, CIFAR100_MEAN, CIFAR100_STD, val_size, seed, augment)
