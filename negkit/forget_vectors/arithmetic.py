"""Forget-vector arithmetic: new unlearning tasks from class-wise vectors.

From class-wise vectors {δ_c} (``learn.learn_classwise``), a new task — forget a union
of classes, or random data inside some classes (:func:`split_within_classes`) — gets

    δ(w) = Σ_c w_c δ_c,

either with hand-set weights (:func:`combine`) or with only the K weights w learned by
the objective of δ (:func:`learn_arithmetic`), the class-wise vectors staying fixed. As in
the authors' code the norm term then regularises the weights, λ‖w‖₂ (not divided by the
batch size); ``arithmetic_penalty="delta"`` keeps λ‖δ(w)‖₂ / B as an option.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from negkit.config import from_dict
from negkit.data import labels_of
from negkit.data.splits import class_mask, subset
from negkit.evaluate import resolve_device
from negkit.forget_vectors.learn import _image_shape, _optimise
from negkit.forget_vectors.loss import ForgetVectorConfig
from negkit.forget_vectors.vector import ForgetVector, project

__all__ = ["split_within_classes", "combine", "learn_arithmetic"]


def split_within_classes(dataset: Dataset, classes: Sequence[int], fraction: float,
                         seed: int = 0) -> tuple[Subset, Subset]:
    """Forget a random ``fraction`` of the images of ``classes``; retain all other images.

    The arithmetic task "forget random data within a subset of classes" of the paper.

    Returns:
        ``(forget, retain)`` subsets of ``dataset``.

    Raises:
        ValueError: ``fraction`` outside (0, 1], or no image of ``classes``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = labels_of(dataset)
    pool = np.flatnonzero(class_mask(labels, classes))
    if len(pool) == 0:
        raise ValueError(f"no image of class(es) {list(classes)}; classes present are {sorted(set(labels.tolist()))}")
    picked = np.random.default_rng(seed).permutation(pool)[:max(1, round(fraction * len(pool)))]
    is_forget = np.zeros(len(labels), dtype=bool)
    is_forget[picked] = True
    return subset(dataset, np.flatnonzero(is_forget)), subset(dataset, np.flatnonzero(~is_forget))


def _stack(vectors: Mapping[int, ForgetVector]) -> tuple[list[int], Tensor]:
    if not vectors:
        raise ValueError("no forget vectors given; learn class-wise vectors first (learn_classwise)")
    keys = list(vectors)
    shapes = {vectors[k].shape for k in keys}
    if len(shapes) != 1:
        raise ValueError(f"forget vectors have different shapes {sorted(shapes)}; they must share one input shape")
    return keys, torch.stack([vectors[k].delta for k in keys])  # (K, C, H, W)


def _weight_tensor(weights: Mapping[int, float] | Sequence[float] | Tensor, keys: list[int]) -> Tensor:
    if isinstance(weights, Mapping):
        unknown = sorted(set(int(k) for k in weights) - set(keys))
        if unknown:
            raise ValueError(f"weights name class(es) {unknown} without a forget vector; "
                             f"vectors exist for classes {keys}")
        return torch.tensor([float(weights.get(k, 0.0)) for k in keys])
    w = torch.as_tensor(weights, dtype=torch.float32).flatten()
    if w.numel() != len(keys):
        raise ValueError(f"{w.numel()} weights for {len(keys)} forget vectors (classes {keys}); "
                         "pass one weight per vector, in the order of the mapping, or a {class: weight} dict")
    return w


def combine(vectors: Mapping[int, ForgetVector],
            weights: Mapping[int, float] | Sequence[float] | Tensor) -> ForgetVector:
    """Forget-vector arithmetic δ(w) = Σ_c w_c δ_c.

    Args:
        vectors: ``{class: ForgetVector}`` (e.g. from :func:`learn_classwise`).
        weights: One weight per vector, in the mapping's order, or ``{class: weight}``
            (classes left out get weight 0).

    Raises:
        ValueError: Wrong number of weights, a class without a vector, or vectors of different shapes.
    """
    keys, stack = _stack(vectors)
    w = _weight_tensor(weights, keys).to(stack)
    delta = torch.einsum("k,kchw->chw", w, stack)
    clip = any(v.clip for v in vectors.values())
    meta = {"method": "forget_vector_arithmetic", "classes": ",".join(map(str, keys)),
            "weights": ",".join(repr(float(x)) for x in w.tolist())}
    return ForgetVector(delta, clip=clip, meta=meta)


def learn_arithmetic(model: nn.Module, vectors: Mapping[int, ForgetVector], forget: Dataset, retain: Dataset,
                     cfg: ForgetVectorConfig | Mapping[str, Any] | None = None, *,
                     init: str | Sequence[float] = "zeros", device: str | torch.device | None = None,
                     progress: bool = False, meta: Mapping[str, Any] | None = None) -> ForgetVector:
    """Learn the K weights of δ(w) = Σ_c w_c δ_c for a new task with the loss of δ.

    Only w (K numbers) is optimised; the class-wise vectors stay fixed. The norm term is
    λ‖w‖₂ (reference; ``cfg.arithmetic_penalty="delta"`` for λ‖δ(w)‖₂ / B). With a bound
    in ``cfg``, δ(w) is projected onto it inside the forward pass.

    Args:
        model: Frozen classifier taking raw pixels.
        vectors: ``{class: ForgetVector}`` to combine.
        forget: Forget set of the new task (e.g. a union of classes).
        retain: Retain set of the new task.
        cfg: Learning configuration (``init`` of the config is ignored here).
        init: ``"zeros"`` (paper), ``"ones"`` or explicit starting weights (one per vector).
        device: None for cuda if available, else cpu.
        progress: Show a tqdm bar over epochs.
        meta: Extra metadata strings.

    Returns:
        The combined :class:`ForgetVector`; its ``meta["weights"]`` holds the learned w.

    Raises:
        ValueError: Wrong number of initial weights, or vectors that do not match the images.
    """
    cfg = from_dict(ForgetVectorConfig, cfg)
    keys, stack = _stack(vectors)
    shape = _image_shape(forget, "forget")
    if tuple(stack.shape[1:]) != shape:
        raise ValueError(f"forget vectors have shape {tuple(stack.shape[1:])} but the images have shape {shape}; "
                         "learn the class-wise vectors at this model's input resolution")
    if isinstance(init, str):
        if init not in ("zeros", "ones"):
            raise ValueError(f"unknown init {init!r}; use 'zeros', 'ones' or a list of {len(keys)} weights")
        w0 = torch.zeros(len(keys)) if init == "zeros" else torch.ones(len(keys))
    else:
        w0 = _weight_tensor(init, keys)
    device = resolve_device(device)
    model.to(device)
    stack = stack.to(device)
    w = w0.to(device).requires_grad_(True)

    def make_delta() -> Tensor:
        return project(torch.einsum("k,kchw->chw", w, stack), cfg.bound, cfg.eps)

    history = _optimise(model, forget, retain, w, make_delta, cfg, device, progress,
                        desc="forget-vector weights", arithmetic=True)
    fv = combine({k: vectors[k] for k in keys}, w.detach().cpu())
    if cfg.bound != "none":
        fv = ForgetVector(project(fv.delta, cfg.bound, cfg.eps), clip=fv.clip, meta=fv.meta)
    fv.clip = fv.clip or cfg.clip
    fv.meta.update({str(k): str(v) for k, v in (meta or {}).items()})
    fv.history = history
    return fv
