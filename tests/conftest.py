"""Fixtures shared by several test modules."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest


@pytest.fixture()
def write_fake_cifar10(monkeypatch) -> Callable[..., dict]:
    """A writer of torchvision's CIFAR-10 on-disk layout under ``root`` (random pixels, labels 0..9 in turn).

    ``write(root, n_train=20, n_test=20)`` writes five training batches of ``n_train`` images and a test
    batch of ``n_test``, points torchvision's checksums at them, and returns the batches' contents by file name.
    """
    from torchvision.datasets import CIFAR10

    def write(root: Path, n_train: int = 20, n_test: int = 20) -> dict:
        folder = Path(root) / CIFAR10.base_folder
        folder.mkdir()
        rng = np.random.default_rng(0)
        sizes = {**{f"data_batch_{i}": n_train for i in range(1, 6)}, "test_batch": n_test}
        files = {name: {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                        "labels": list(range(10)) * (n // 10)}
                 for name, n in sizes.items()}
        files["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)]}
        md5 = {}
        for name, obj in files.items():
            (folder / name).write_bytes(pickle.dumps(obj))
            md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
        # torchvision verifies the official checksums; point it at the fake files' checksums instead.
        monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
        return files

    return write


@pytest.fixture(scope="session")
def quadrant_forget_retain():
    """A tiny 4-class image task (8x8, class c lights up quadrant c, plus noise): (D_f of 16, D_r of 64)."""
    import torch

    from negkit.data import TensorImageDataset

    g = torch.Generator().manual_seed(0)
    n = 80
    y = torch.arange(n) % 4
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 0.8
    return TensorImageDataset(x[:16], y[:16]), TensorImageDataset(x[16:], y[16:])
