"""Evaluation shared by training, pipelines, notebooks and tests.

* :func:`predict` / :func:`evaluate`: logits and accuracy of a model on a dataset,
  optionally through an ``input_transform`` applied to raw pixels (forget vectors
  add their perturbation δ there: f(x + δ)).
* :func:`coef_grid`, :func:`select_coef`, :func:`sweep_coefs`: the search over the
  negation coefficient λ of θ = θ_ori − λ τ. NegMerge (Kim et al., 2025, Sec. 4)
  and task arithmetic pick, among the λ that keep the control accuracy at least
  ``threshold`` x its reference (95 % of the original model's), the one with the
  lowest forget accuracy.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

__all__ = ["resolve_device", "predict", "evaluate", "true_class_confidence", "coef_grid", "select_coef",
           "sweep_coefs"]

InputTransform = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; None means ``"cuda"`` when available, else ``"cpu"``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def coef_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.05) -> list[float]:
    """Evenly spaced coefficients from ``start`` to ``stop`` inclusive, rounded to 6 decimals.

    Raises:
        ValueError: ``step`` not positive or ``stop < start``.
    """
    if step <= 0 or stop < start:
        raise ValueError(f"need step > 0 and stop >= start; got start={start}, stop={stop}, step={step}")
    n = int(math.floor((stop - start) / step + 1e-9))
    return [round(start + i * step, 6) for i in range(n + 1)]


def select_coef(coefs: Sequence[float], forget_acc: Sequence[float], control_acc: Sequence[float],
                control_reference: float, threshold: float = 0.95) -> float | None:
    """The λ with the lowest forget accuracy among those that keep control accuracy.

    A coefficient qualifies when ``control_acc >= threshold * control_reference``.
    Ties in forget accuracy go to the smaller coefficient (the gentler edit).

    Args:
        coefs: Candidate coefficients.
        forget_acc: Forget (target-task) accuracy at each coefficient.
        control_acc: Control accuracy at each coefficient.
        control_reference: Control accuracy of the reference (original) model.
        threshold: Fraction of the reference control accuracy to keep.

    Returns:
        The selected coefficient, or None when none qualifies.

    Raises:
        ValueError: The three sequences differ in length.
    """
    if not len(coefs) == len(forget_acc) == len(control_acc):
        raise ValueError(f"coefs, forget_acc and control_acc must have equal lengths; got "
                         f"{len(coefs)}, {len(forget_acc)}, {len(control_acc)}")
    best = None
    for c, f, k in zip(coefs, forget_acc, control_acc):
        if not (k >= threshold * control_reference) or math.isnan(f):
            continue
        if best is None or f < best[1] or (f == best[1] and c < best[0]):
            best = (float(c), float(f))
    return None if best is None else best[0]


def sweep_coefs(build_model: Callable[[float], nn.Module], coefs: Sequence[float],
                eval_sets: Mapping[str, Dataset | DataLoader], *, device: str | torch.device | None = None,
                batch_size: int = 256, input_transform: InputTransform | None = None,
                progress: bool = True) -> pd.DataFrame:
    """Accuracy of ``build_model(coef)`` on every evaluation set, for every coefficient.

    Args:
        build_model: Returns the model edited with coefficient λ (e.g. θ_ori − λ τ loaded in a model).
        coefs: Coefficients to try (see :func:`coef_grid`).
        eval_sets: Split name -> dataset, e.g. ``{"val_forget": ..., "val_control": ...}``.
        device: Where to evaluate.
        batch_size: Evaluation batch size.
        input_transform: Passed to :func:`predict`.
        progress: Show a tqdm bar over coefficients.

    Returns:
        A tidy DataFrame with columns ``coef``, ``split``, ``acc`` (%).
    """
    rows = []
    for coef in tqdm(list(coefs), desc="λ sweep", disable=not progress):
        model = build_model(float(coef))
        for split, data in eval_sets.items():
            res = evaluate(model, data, device=device, batch_size=batch_size, input_transform=input_transform)
            rows.append({"coef": float(coef), "split": split, "acc": res["acc"]})
    return pd.DataFrame(rows, columns=["coef", "split", "acc"])
