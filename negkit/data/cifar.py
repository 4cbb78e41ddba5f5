"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (never downloaded here).

The data must already sit under a folder the user gives (``root``), in the
layout ``torchvision.datasets.CIFAR10/100`` expects (the extracted official
python tarballs). A missing folder raises a :class:`FileNotFoundError` that says
what to download and where to extract it; nothing downloads silently.

Splits: the official 10,000-image test set is ``test``; a seeded random
``val_size`` images (5,000 by default) of the official 50,000-image training set
are held out as ``val`` and the remaining 45,000 form ``train``. Images are kept
in memory as uint8 (150 MB for the training set) and returned as float [0, 1].
Training augmentation (random crop with 4-pixel padding + horizontal flip) is
off by default because forget/retain sets are *subsets of train* and must be
evaluated on clean images; pass ``augment=True`` for a separate training view.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from negkit.data import DatasetBundle, TensorImageDataset, register_dataset

__all__ = ["cifar10", "cifar100", "random_crop_flip", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR100_MEAN", "CIFAR100_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_SOURCES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz"),
}


def random_crop_flip(img: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on one (C, H, W) image: padded random crop, random h-flip.

    Uses the global torch RNG, which :func:`negkit.train.train` seeds and checkpoints.
    """
    c, h, w = img.shape
    padded = F.pad(img, (padding,) * 4)
    top, left = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,)))
    out = padded[:, top:top + h, left:left + w]
    return out.flip(-1) if bool(torch.rand(()) < 0.5) else out


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


def _bundle(name: str, tv_cls: type, root: str | os.PathLike | None, mean: tuple, std: tuple,
            val_size: int, seed: int, augment: bool) -> DatasetBundle:
    train_tv, test_tv = _load(name, tv_cls, root)
    images = torch.from_numpy(np.ascontiguousarray(train_tv.data)).permute(0, 3, 1, 2)  # (N, 3, 32, 32) uint8
    labels = np.asarray(train_tv.targets, dtype=np.int64)
    n = len(labels)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    test_images = torch.from_numpy(np.ascontiguousarray(test_tv.data)).permute(0, 3, 1, 2)

    def part(ix: np.ndarray, transform=None) -> TensorImageDataset:
        return TensorImageDataset(images[torch.from_numpy(ix)].contiguous(), labels[ix], transform=transform)

    return DatasetBundle(
        name=name,
        train=part(train_idx, random_crop_flip if augment else None),
        val=part(val_idx),
        test=TensorImageDataset(test_images.contiguous(), np.asarray(test_tv.targets, dtype=np.int64)),
        classnames=tuple(train_tv.classes), mean=mean, std=std,
        meta={
            "source": f"torchvision.datasets.{tv_cls.__name__}", "root": str(root), "seed": seed,
            "split": f"seeded random {val_size} of the official training set held out as val",
            "augment": augment,
            "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_tv.targets)},
        },
    )


@register_dataset("cifar10")
def cifar10(root: str | os.PathLike | None = None, *, val_size: int = 5000, seed: int = 0,
            augment: bool = False) -> DatasetBundle:
    """CIFAR-10 (45,000 / 5,000 / 10,000 train / val / test by default).

    Args:
        root: Folder holding ``cifar-10-batches-py/`` (the extracted official tarball).
        val_size: Training images held out as validation (seeded random choice).
        seed: Seed of that choice.
        augment: Random crop + flip on ``train`` items (keep False when evaluating subsets of train).

    Raises:
        FileNotFoundError: The data is not under ``root``; the message says how to get it.
    """
    from torchvision.datasets import CIFAR10

    return _bundle("cifar10", CIFAR10, root, CIFAR10_MEAN, CIFAR10_STD, val_size, seed, augment)


@register_dataset("cifar100")
def cifar100(root: str | os.PathLike | None = None, *, val_size: int = 5000, seed: int = 0,
             augment: bool = False) -> DatasetBundle:
    """CIFAR-100 with its 100 fine labels; arguments as :func:`cifar10`.

    Args:
        root: Folder holding ``cifar-100-python/`` (the extracted official tarball).
        val_size: Training images held out as validation (seeded random choice).
        seed: Seed of that choice.
        augment: Random crop + flip on ``train`` items.

    Raises:
        FileNotFoundError: The data is not under ``root``; the message says how to get it.
    """
    from torchvision.datasets import CIFAR100

    return _bundle("cifar100", CIFAR100, root, CIFAR100_MEAN, CIFAR100_STD, val_size, seed, augment)
