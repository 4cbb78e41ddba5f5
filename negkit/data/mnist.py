"""MNIST-format datasets read from the official IDX files: ``fashion_mnist`` and ``kmnist``.

All three ship as the same four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, gzipped or not): 60,000 training and
10,000 test images, grey, 28×28, ten classes. They are found under ``root`` in torchvision's
layout (``<root>/FashionMNIST/raw/``, ``<root>/MNIST/raw/``, ``<root>/KMNIST/raw/``) or directly in
``root``. With ``root=None``, Fashion-MNIST is read from the folder Debian's package
``dataset-fashion-mnist`` installs (``/usr/share/datasets/fashion-mnist``).

Split: the official training set is split, class-stratified and seeded, into 55,000 train and
5,000 validation images (``val_size``); the official 10,000 test images are the test split.
``train_size`` keeps a stratified, seeded subset of the 55,000 (a CPU-sized benchmark);
``size`` resizes (e.g. 14 for a 4× cheaper model); ``channels=3`` repeats the grey channel.

MNIST itself reads through the same code (:func:`idx_bundle` with ``"mnist"``); the registry
name ``mnist`` belongs to the CLIP task suite (:mod:`negkit.clip.datasets`).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from negkit.data import DatasetBundle, TensorImageDataset, register_dataset

__all__ = ["read_idx", "find_idx_files", "idx_bundle", "fashion_mnist", "kmnist", "DEBIAN_FASHION_MNIST"]

#: Where ``apt-get install dataset-fashion-mnist`` puts the four ``.gz`` files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_VARIANTS = {
    "fashion_mnist": {
        "folder": "FashionMNIST", "torchvision": "torchvision.datasets.FashionMNIST",
        "default_root": DEBIAN_FASHION_MNIST, "apt": "dataset-fashion-mnist",
        "classnames": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot"),
    },
    "mnist": {
        "folder": "MNIST", "torchvision": "torchvision.datasets.MNIST", "default_root": None, "apt": None,
        "classnames": tuple(str(i) for i in range(10)),
    },
    "kmnist": {
        "folder": "KMNIST", "torchvision": "torchvision.datasets.KMNIST", "default_root": None, "apt": None,
        "classnames": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    },
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped if its name ends in ``.gz``) into a numpy array.

    Raises:
        ValueError: The file is not IDX (bad magic number) or its size disagrees with its header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'}); "
                         "expected the official MNIST-format files")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes of data) but the file holds "
                         f"{len(raw) - offset}; the file is truncated or corrupt, fetch it again")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _missing_message(name: str, root: Path, searched: list[Path]) -> str:
    v = _VARIANTS[name]
    ways = []
    if v["apt"]:
        ways.append(f"`apt-get install {v['apt']}` (installs them in {v['default_root']}, the default root)")
    ways.append(f"torchvision's download: `{v['torchvision']}(root='{root}', download=True)` "
                f"(writes {root}/{v['folder']}/raw/)")
    return (f"{name}: IDX files not found under {root} (looked in {', '.join(str(s) for s in searched)}). "
            f"Get them with " + " or ".join(ways) + ", or pass root= to the folder holding "
            f"{', '.join(FILES.values())} (.gz or not)")


def find_idx_files(name: str, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Paths of the four IDX files of ``name`` under ``root`` (torchvision layout or flat).

    Raises:
        FileNotFoundError: A file is missing; the message says how to get the files.
    """
    v = _VARIANTS[name]
    if root is None:
        if v["default_root"] is None:
            raise FileNotFoundError(
                f"{name}: pass root= (a folder for torchvision's download, e.g. `{v['torchvision']}"
                f"(root='data', download=True)` then root='data')")
        root = v["default_root"]
    root = Path(root).expanduser()
    folders = [root / v["folder"] / "raw", root / v["folder"], root]
    found: dict[str, Path] = {}
    for key, stem in FILES.items():
        for folder in folders:
            hits = [folder / f"{stem}{ext}" for ext in ("", ".gz") if (folder / f"{stem}{ext}").is_file()]
            if hits:
                found[key] = hits[0]
                break
        else:
            raise FileNotFoundError(_missing_message(name, root, folders))
    return found


def idx_bundle(name: str, root: str | os.PathLike | None = None, *, size: int = 28, channels: int = 1,
               val_size: int = 5000, train_size: int | None = None, seed: int = 0) -> DatasetBundle:
    """A bundle of ``name`` (``"fashion_mnist"``, ``"mnist"``, ``"kmnist"``); options as :func:`fashion_mnist`."""
    if name not in _VARIANTS:
        raise ValueError(f"unknown IDX dataset {name!r}; valid names are {sorted(_VARIANTS)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if int(size) < 1:
        raise ValueError(f"size must be a positive image side length, got {size}")
    paths = find_idx_files(name, root)
    arrays = {k: read_idx(p) for k, p in paths.items()}
    images = {s: arrays[f"{s}_images"] for s in ("train", "test")}
    labels = {s: arrays[f"{s}_labels"].astype(np.int64) for s in ("train", "test")}
    for s in ("train", "test"):
        if images[s].ndim != 3 or images[s].shape[0] != labels[s].shape[0]:
            raise ValueError(f"{name}: {paths[f'{s}_images']} holds {images[s].shape} images but "
                             f"{paths[f'{s}_labels']} {labels[s].shape[0]} labels")
    n = len(labels["train"])
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}) (the official training set), got {val_size}")
    idx = np.arange(n)
    train_idx, val_idx = train_test_split(idx, test_size=val_size, stratify=labels["train"], random_state=seed)
    if train_size is not None:
        if not 0 < train_size <= len(train_idx):
            raise ValueError(f"train_size must be in (0, {len(train_idx)}] or None (all), got {train_size}")
        if train_size < len(train_idx):
            train_idx, _ = train_test_split(train_idx, train_size=train_size, stratify=labels["train"][train_idx],
                                            random_state=seed)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)

    def part(x: np.ndarray, y: np.ndarray) -> TensorImageDataset:
        t = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)  # (N, 1, 28, 28) uint8
        if size != t.shape[-1]:
            t = F.interpolate(t.float(), size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True).round_().clamp_(0, 255).to(torch.uint8)
        if channels == 3:
            t = t.repeat(1, 3, 1, 1)
        return TensorImageDataset(t.contiguous(), y)

    train = part(images["train"][train_idx], labels["train"][train_idx])
    val = part(images["train"][val_idx], labels["train"][val_idx])
    test = part(images["test"], labels["test"])
    pixels = train.tensors[0].float().div_(255.0)
    mean = tuple(float(m) for m in pixels.mean(dim=(0, 2, 3)))
    std = tuple(float(s) for s in pixels.std(dim=(0, 2, 3)))
    return DatasetBundle(
        name=name, train=train, val=val, test=test, classnames=_VARIANTS[name]["classnames"], mean=mean, std=std,
        meta={"source": str(paths["train_images"].parent), "seed": seed, "size": size, "channels": channels,
              "split": "official test; seeded stratified train/val from the official training set",
              "sizes": {"train": len(train), "val": len(val), "test": len(test)}, "train_size": train_size},
    )


@register_dataset("fashion_mnist")
def fashion_mnist(root: str | os.PathLike | None = None, *, size: int = 28, channels: int = 1,
                  val_size: int = 5000, train_size: int | None = None, seed: int = 0) -> DatasetBundle:
    """Fashion-MNIST (Xiao et al. 2017) as a :class:`~negkit.data.DatasetBundle`.

    Args:
        root: Folder with the IDX files (torchvision layout or flat); None: Debian's
            ``/usr/share/datasets/fashion-mnist``.
        size: Image side; 28 is native, other values resize bilinearly (antialiased).
        channels: 1 (grey) or 3 (grey repeated).
        val_size: Validation images held out (stratified) from the 60,000 training images.
        train_size: Keep a stratified subset of this many training images (None: all 55,000).
        seed: Seed of the train/val split and of the subset.

    Raises:
        FileNotFoundError: The IDX files are missing (the message names ``apt-get install
            dataset-fashion-mnist`` and torchvision's download).
        ValueError: Bad options or malformed files.
    """
    return idx_bundle("fashion_mnist", root, size=size, channels=channels, val_size=val_size,
                  train_size=train_size, seed=seed)


@register_dataset("kmnist")
def kmnist(root: str | os.PathLike | None = None, *, size: int = 28, channels: int = 1, val_size: int = 5000,
           train_size: int | None = None, seed: int = 0) -> DatasetBundle:
    """Kuzushiji-MNIST (Clanuwat et al. 2018) from its IDX files under ``root`` (no default folder);
    options as :func:`fashion_mnist`."""
    return idx_bundle("kmnist", root, size=size, channels=channels, val_size=val_size, train_size=train_size, seed=seed)
