"""The built-in offline dataset: scikit-learn's handwritten digits.

1,797 grey 8x8 images of the digits 0-9 (UCI optical recognition data shipped
inside scikit-learn, so nothing is downloaded). Pixel values 0..16 are divided
by 16 to give raw [0, 1] pixels.

Split: a fixed, seeded, stratified 60 / 10 / 30 split into train / val / test
(1,077 / 180 / 540 images with the default fractions), so every run of the kit
sees the same data for a given ``seed``. ``size`` upsamples bilinearly (e.g. 16
or 32, to give convolutional models some room) and ``channels=3`` repeats the
grey channel for models that expect RGB. ``mean``/``std`` are computed on the
training split after resizing.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from negkit.data import DatasetBundle, TensorImageDataset, register_dataset

__all__ = ["digits"]

CLASSNAMES = tuple(str(i) for i in range(10))


@register_dataset("digits")
def digits(root: str | os.PathLike | None = None, *, size: int = 8, channels: int = 1,
           val_fraction: float = 0.1, test_fraction: float = 0.3, seed: int = 0) -> DatasetBundle:
    """scikit-learn digits as a :class:`~negkit.data.DatasetBundle`.

    Args:
        root: Ignored (the data ships with scikit-learn); accepted for a uniform registry.
        size: Side length of the images; 8 is native, larger values upsample bilinearly.
        channels: 1 (grey) or 3 (grey repeated, for RGB models).
        val_fraction: Fraction of all images held out for validation.
        test_fraction: Fraction of all images held out for testing.
        seed: Seed of the stratified split.

    Returns:
        The bundle; its splits are :class:`~negkit.data.TensorImageDataset`.

    Raises:
        ValueError: Bad ``size``, ``channels`` or fractions.
    """
    del root
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if int(size) < 1:
        raise ValueError(f"size must be a positive image side length, got {size}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
            "and sum to less than 1"
        )
    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    labels = raw.target.astype(np.int64)
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0)
    if channels == 3:
        images = images.repeat(1, 3, 1, 1)

    idx = np.arange(len(labels))
    rest, test_idx = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    train_idx, val_idx = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest], random_state=seed
    )
    train_idx, val_idx, test_idx = np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)

    def part(ix: np.ndarray) -> TensorImageDataset:
        t = torch.from_numpy(ix)
        return TensorImageDataset(images[t].contiguous(), labels[ix])

    train_images = images[torch.from_numpy(train_idx)]
    mean = tuple(float(m) for m in train_images.mean(dim=(0, 2, 3)))
    std = tuple(float(s) for s in train_images.std(dim=(0, 2, 3)))
    return DatasetBundle(
        name="digits",
        train=part(train_idx), val=part(val_idx), test=part(test_idx),
        classnames=CLASSNAMES, mean=mean, std=std,
        meta={
            "source": "sklearn.datasets.load_digits", "seed": seed, "size": size,
            "channels": channels, "val_fraction": val_fraction, "test_fraction": test_fraction,
            "split": "seeded stratified train/val/test",
            "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        },
    )
