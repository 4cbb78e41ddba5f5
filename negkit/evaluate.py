"""Evaluation shared by training, pipelines, notebooks and tests.

* :func:`predict` / :func:`evaluate`: logits and accuracy of a model on a dataset,
  optionally through an ``input_transform`` applied to raw pixels (forget vectors
  add their perturbation δ there: f(x + δ)).
* :func:`coef_grid`, :func:`select_coef`, :func:`sweep_coefs`, :func:`search_coef`,
  :func:`negation_evaluator`: the choice of the negation coefficient λ
  (:mod:`negkit.coefs`, re-exported here).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from negkit.io import as_device

__all__ = ["resolve_device", "predict", "evaluate", "true_class_confidence", "InputTransform"]

InputTransform = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; None means ``"cuda"`` when available, else ``"cpu"``.

    Raises:
        ValueError: ``device`` is not a torch device (the message lists valid ones), or names a
            CUDA device this machine does not have (checked here, before any work).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = as_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} asks for a GPU, but torch.cuda.is_available() is False on this "
                             "machine (no GPU, no driver, or a CPU-only torch); pass device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return dev


@torch.no_grad()
def predict(model: nn.Module, data: Dataset | DataLoader, *, device: str | torch.device | None = None,
            batch_size: int = 256, input_transform: InputTransform | None = None,
            num_workers: int = 0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``model`` on every item of ``data``, in order.

    The model is put in eval mode for the pass and its previous mode restored.

    Args:
        model: Classifier taking raw [0, 1] pixels.
        data: A dataset of ``(image, label)`` items or a DataLoader yielding such batches.
        device: Where to run (None: cuda if available). The model is moved there.
        batch_size: Batch size when ``data`` is a dataset.
        input_transform: Callable applied to each raw image batch (on ``device``) before the model.
        num_workers: DataLoader workers when ``data`` is a dataset.
        progress: Show a tqdm bar.

    Returns:
        ``(logits, labels)``: float32 (N, num_classes) and int64 (N,), on the CPU.
    """
    device = resolve_device(device)
    loader = data if isinstance(data, DataLoader) else DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda")
    was_training = model.training
    model.to(device).eval()
    logits, labels = [], []
    try:
        for images, targets in tqdm(loader, desc="predict", disable=not progress, leave=False):
            images = images.to(device, non_blocking=True)
            if input_transform is not None:
                images = input_transform(images)
            logits.append(model(images).float().cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.long).cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("predict: the dataset is empty")
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, data: Dataset | DataLoader, **kwargs) -> dict[str, float]:
    """Accuracy (%) and mean cross-entropy of ``model`` on ``data``.

    Args:
        model: Classifier taking raw [0, 1] pixels.
        data: Dataset or DataLoader.
        **kwargs: Passed to :func:`predict` (``device``, ``batch_size``, ``input_transform``, ...).

    Returns:
        ``{"acc": accuracy in %, "loss": mean cross-entropy, "n": number of items}``.
    """
    logits, labels = predict(model, data, **kwargs)
    return {
        "acc": 100.0 * int((logits.argmax(1) == labels).sum()) / labels.numel(),
        "loss": F.cross_entropy(logits, labels).item(),
        "n": int(labels.numel()),
    }


def true_class_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the true class, shape (N,) — the membership-inference feature."""
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits must be (N, C) matching N labels; got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    return logits.float().softmax(1).gather(1, labels.long().view(-1, 1)).squeeze(1)


#: The λ-search names :mod:`negkit.coefs` defines, still importable from here.
_COEFS = ("MAX_GRID", "RULES", "CoefSearch", "check_threshold", "coef_grid", "negation_evaluator", "search_coef",
          "select_coef", "sweep_coefs")


def __getattr__(name: str):
    if name in _COEFS:  # imported on first use: negkit.coefs itself builds on predict/evaluate here
        from negkit import coefs

        return getattr(coefs, name)
    raise AttributeError(f"module 'negkit.evaluate' has no attribute {name!r}")
