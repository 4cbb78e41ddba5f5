"""Training-time augmentation that a dataset bundle names, applied only where a model trains.

SalUn's CIFAR-10 protocol trains the Original and Retrain models on randomly cropped
and flipped images, while every metric is computed on clean images, D_f and D_r
included, although both are subsets of the training split. A bundle therefore keeps
its ``train`` split clean and only *names* its augmentation in
``bundle.meta["train_augmentation"]``; the code that trains asks for the augmented
view with :func:`training_view` (``negkit.benchmark`` does so for Original and Retrain).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["AUGMENTATIONS", "Augmented", "random_crop_flip", "training_view"]


def random_crop_flip(img: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on one (C, H, W) image: zero-padded random crop, random h-flip (p = 0.5).

    Uses the global torch RNG, which :func:`negkit.train.train` seeds and checkpoints.
    """
    c, h, w = img.shape
    padded = F.pad(img, (padding,) * 4)
    top, left = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,)))
    out = padded[:, top:top + h, left:left + w]
    return out.flip(-1) if bool(torch.rand(()) < 0.5) else out


#: Augmentations a bundle may name, ``name -> (C, H, W) image -> (C, H, W) image``.
AUGMENTATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"random_crop_flip": random_crop_flip}


class Augmented(Dataset):
    """``dataset`` with ``transform`` applied to every image when it is read (labels unchanged)."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.dataset, self.transform = dataset, transform

    @property
    def targets(self) -> np.ndarray:
        from negkit.data import labels_of  # negkit.data imports its dataset modules, which import this one

        return labels_of(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        x, y = self.dataset[i]
        return self.transform(x), y


def training_view(bundle: Any, dataset: Dataset) -> Dataset:
    """``dataset`` (the bundle's ``train`` split or a subset of it) as a model should train on it.

    Returns ``dataset`` itself when the bundle names no augmentation.

    Raises:
        ValueError: The bundle names an augmentation that is not in :data:`AUGMENTATIONS`.
    """
    name = bundle.meta.get("train_augmentation")
    if name is None:
        return dataset
    if name not in AUGMENTATIONS:
        raise ValueError(f"{bundle.name} names the training augmentation {name!r}; known: {sorted(AUGMENTATIONS)}")
    return Augmented(dataset, AUGMENTATIONS[name])
