"""Forget vectors: universal input perturbations that make a frozen classifier unlearn.

Sun et al. (2024), *Forget Vectors at Play: Universal Input Perturbations Driving
Machine Unlearning in Image Classification*. A forget vector δ has the shape of one
input image (C, H, W); it is added to the raw [0, 1] pixels of every image before
the model's own normalisation layer, and the model's weights never change:

    f_θ(x + δ)   with θ frozen.

δ is learned with the model frozen (eval mode, ``requires_grad`` off) by minimising,
on batches that mix forget samples D_f and retain samples D_r:

    ℓ(δ) = α · Σ_{(x,y)∈D_r} CE(f(x+δ), y)
         + β · Σ_{(x,y)∈D_f} max(z_y(x+δ) − max_{k≠y} z_k(x+δ), −τ)
         + λ · ‖δ‖₂,

each term divided by the batch size as in the authors' code. The margin term pushes
the true-class logit of forget samples below the runner-up by at least τ; the CE term
keeps the retain samples correct; the norm keeps δ small. The optimiser is SGD with
momentum and an exponential learning-rate decay per epoch.

Forget-vector arithmetic (the paper's compositional unlearning): from class-wise vectors {δ_c}, a new task
(forget a union of classes, or random data inside some classes) gets
δ(w) = Σ_c w_c δ_c, where only the K weights w are learned with the same loss.

A :class:`ForgetVector` is an ``input_transform`` callable, so ``negkit.evaluate.predict``
and ``negkit.metrics.unlearning_metrics`` evaluate the frozen model with δ applied.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from negkit import io
from negkit.config import from_dict, replace, to_dict
from negkit.data import labels_of
from negkit.data.splits import class_mask, make_forget_split, subset
from negkit.evaluate import predict, resolve_device
from negkit.metrics import unlearning_metrics

log = logging.getLogger(__name__)

__all__ = [
    "ForgetVectorConfig", "ForgetVector", "margin_loss", "forget_vector_loss",
    "learn_forget_vector", "learn_classwise", "split_within_classes", "combine", "learn_arithmetic",
    "frozen", "project", "per_class_accuracy", "classwise_report", "run_benchmark",
]

BOUNDS = ("none", "linf", "l2")
INITS = ("zeros", "random")


@dataclasses.dataclass(frozen=True)
class ForgetVectorConfig:
    """How a forget vector (or an arithmetic weight vector) is learned.

    Defaults follow the authors' class-wise CIFAR-10 runs (τ=1, lr=0.2, α=1, λ=1,
    β between 3 and 10 per class — 5 here —, SGD momentum 0.9, weight decay 5e-4,
    ExponentialLR γ=0.9 per epoch, δ initialised at zero, no bound on δ, 256 images per
    step). They ran 60–190 epochs of CIFAR-10; ``epochs`` here is a budget choice.

    Attributes:
        alpha: Weight α of the retain cross-entropy.
        beta: Weight β of the forget margin loss.
        tau: Margin τ: a forget sample stops contributing once its true logit is
            τ below the best other logit.
        lam: Weight λ of ‖δ‖₂.
        lr: Initial SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay on δ (or on w for arithmetic), as in the paper's code.
        gamma: Exponential learning-rate decay per epoch.
        epochs: Number of epochs (an epoch is one pass over the retain set, or
            ``steps_per_epoch`` steps).
        steps_per_epoch: Fixed number of steps per epoch; None for one pass over retain.
        forget_batch_size: Forget samples in each mixed batch.
        retain_batch_size: Retain samples in each mixed batch.
        bound: ``"none"`` (paper), ``"linf"`` or ``"l2"``: project δ onto the ball of radius ``eps``.
        eps: Radius of the bound (ignored for ``"none"``).
        clip: Clamp x + δ to the valid pixel range [0, 1] (the paper does not).
        init: ``"zeros"`` (paper) or ``"random"`` (small Gaussian) start for δ.
        seed: Seed of batch order and random init.
    """

    alpha: float = 1.0
    beta: float = 5.0
    tau: float = 1.0
    lam: float = 1.0
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.9
    epochs: int = 10
    steps_per_epoch: int | None = None
    forget_batch_size: int = 32
    retain_batch_size: int = 224
    bound: str = "none"
    eps: float = 0.0
    clip: bool = False
    init: str = "zeros"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bound not in BOUNDS:
            raise ValueError(f"unknown bound {self.bound!r}; valid bounds are {list(BOUNDS)}")
        if self.bound != "none" and not self.eps > 0:
            raise ValueError(f"bound={self.bound!r} needs eps > 0 (got {self.eps}); "
                             "set eps or use bound='none'")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; valid inits are {list(INITS)}")
        if self.epochs < 1 or self.forget_batch_size < 1 or self.retain_batch_size < 1:
            raise ValueError("epochs, forget_batch_size and retain_batch_size must be >= 1")


class ForgetVector:
    """A universal input perturbation δ of shape (C, H, W), added to raw [0, 1] pixels.

    Args:
        delta: The perturbation, shape (C, H, W).
        clip: Clamp x + δ to [0, 1] when applied.
        meta: Free-form string metadata (task, classes, dataset...), saved with δ.
    """

    def __init__(self, delta: Tensor, *, clip: bool = False, meta: Mapping[str, Any] | None = None):
        if delta.dim() != 3:
            raise ValueError(f"a forget vector has the shape of one image (C, H, W); got shape "
                             f"{tuple(delta.shape)}. Drop the batch dimension (delta[0]) if it has one.")
        self.delta = delta.detach().clone()
        self.clip = bool(clip)
        self.meta = {str(k): str(v) for k, v in (meta or {}).items()}
        self.history: list[dict[str, float]] = []  # per-epoch loss terms of learning (not saved)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this vector applies to."""
        return tuple(self.delta.shape)  # type: ignore[return-value]

    def norm(self, p: float = 2) -> float:
        """‖δ‖_p (p=2 or p=float('inf'))."""
        return float(torch.linalg.vector_norm(self.delta.flatten(), ord=p))

    def apply(self, x: Tensor) -> Tensor:
        """x + δ (clamped to [0, 1] if ``clip``), for x of shape (B, C, H, W) or (C, H, W)."""
        return _add(x, self.delta, self.clip)

    __call__ = apply

    def to(self, device: str | torch.device) -> "ForgetVector":
        """A copy with δ on ``device``."""
        out = ForgetVector(self.delta.to(device), clip=self.clip, meta=self.meta)
        out.history = list(self.history)
        return out

    # Maths-shaped arithmetic: 0.5 * fv_a + fv_b, -fv.
    def __add__(self, other: "ForgetVector") -> "ForgetVector":
        if not isinstance(other, ForgetVector):
            return NotImplemented
        if other.shape != self.shape:
            raise ValueError(f"cannot add forget vectors of shapes {self.shape} and {other.shape}")
        return ForgetVector(self.delta + other.delta.to(self.delta), clip=self.clip or other.clip)

    def __radd__(self, other: Any) -> "ForgetVector":
        if isinstance(other, (int, float)) and other == 0:  # lets sum([...]) work
            return self
        return NotImplemented

    def __mul__(self, coef: float) -> "ForgetVector":
        if not isinstance(coef, (int, float)):
            return NotImplemented
        return ForgetVector(self.delta * coef, clip=self.clip, meta=self.meta)

    __rmul__ = __mul__

    def __neg__(self) -> "ForgetVector":
        return self * -1.0

    def save(self, path: str | Path) -> None:
        """Write δ and its metadata to a safetensors file (atomically)."""
        meta = {**self.meta, "clip": str(self.clip), "kind": "forget_vector"}
        io.save_state_dict({"delta": self.delta.detach().cpu().contiguous()}, path, metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "ForgetVector":
        """Read a forget vector written by :meth:`save`."""
        sd = io.load_state_dict(path, device=device)
        if set(sd) != {"delta"}:
            raise ValueError(f"{path} is not a forget vector file (keys {sorted(sd)}, expected ['delta'])")
        meta = dict(io.read_metadata(path) or {})
        clip = meta.pop("clip", "False") == "True"
        meta.pop("kind", None)
        return cls(sd["delta"], clip=clip, meta=meta)

    def __repr__(self) -> str:
        return f"ForgetVector(shape={self.shape}, l2={self.norm():.3f}, clip={self.clip}, meta={self.meta})"


def _add(x: Tensor, delta: Tensor, clip: bool) -> Tensor:
    if tuple(x.shape[-3:]) != tuple(delta.shape):
        raise ValueError(
            f"forget vector of shape {tuple(delta.shape)} does not match images of shape "
            f"{tuple(x.shape[-3:])}; learn δ at the model's input resolution (after resizing)."
        )
    out = x + delta.to(device=x.device, dtype=x.dtype)
    return out.clamp(0.0, 1.0) if clip else out


def project(delta: Tensor, bound: str, eps: float) -> Tensor:
    """Project δ onto the ℓ∞ or ℓ2 ball of radius ``eps`` (differentiable; identity for ``"none"``)."""
    if bound == "none":
        return delta
    if bound == "linf":
        return delta.clamp(-eps, eps)
    if bound == "l2":
        norm = torch.linalg.vector_norm(delta.flatten())
        return delta * torch.clamp(eps / (norm + 1e-12), max=1.0)
    raise ValueError(f"unknown bound {bound!r}; valid bounds are {list(BOUNDS)}")


# ----------------------------------------------------------------------------- loss
def margin_loss(logits: Tensor, targets: Tensor, tau: float) -> Tensor:
    """Per-sample forget loss max(z_y − max_{k≠y} z_k, −τ), shape (B,).

    Args:
        logits: (B, K) logits.
        targets: (B,) true labels.
        tau: Margin; the loss saturates at −τ once the true logit trails by τ.
    """
    if logits.shape[1] < 2:
        raise ValueError("the margin loss needs at least two classes")
    z_y = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(targets, logits.shape[1]).bool(), float("-inf"))
    return torch.clamp(z_y - others.max(dim=1).values, min=-tau)


def forget_vector_loss(logits_forget: Tensor, y_forget: Tensor, logits_retain: Tensor,
                       y_retain: Tensor, delta: Tensor, cfg: ForgetVectorConfig) -> dict[str, Tensor]:
    """The paper's objective on one mixed batch (all terms divided by the batch size B).

    Returns:
        ``{"loss": total, "retain": Σ CE / B, "forget": Σ margin / B, "norm": ‖δ‖₂ / B}``.
    """
    b = logits_forget.shape[0] + logits_retain.shape[0]
    retain = F.cross_entropy(logits_retain, y_retain, reduction="sum") / b
    forget = margin_loss(logits_forget, y_forget, cfg.tau).sum() / b
    norm = torch.linalg.vector_norm(delta.flatten()) / b
    return {"loss": cfg.alpha * retain + cfg.beta * forget + cfg.lam * norm,
            "retain": retain, "forget": forget, "norm": norm}


# ----------------------------------------------------------------------------- learning
@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit.

    BatchNorm running statistics cannot move in eval mode and no parameter gets a
    gradient, so the state dict is bitwise unchanged by anything done inside.
    """
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _batches(dataset: Dataset, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled batches (reshuffled every pass, reproducible from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, generator=gen)
    while True:
        yield from loader


def _image_shape(dataset: Dataset, name: str) -> tuple[int, int, int]:
    if len(dataset) == 0:
        raise ValueError(f"the {name} set is empty; a forget vector needs forget and retain samples")
    x = dataset[0][0]
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{name} items must be (image (C, H, W) tensor in [0, 1], label); got "
                         f"{type(x).__name__} of shape {getattr(x, 'shape', None)}")
    return tuple(x.shape)  # type: ignore[return-value]


def _optimise(model: nn.Module, forget: Dataset, retain: Dataset, param: Tensor, make_delta,
              cfg: ForgetVectorConfig, device: torch.device, progress: bool, desc: str,
              project_param: bool) -> list[dict[str, float]]:
    """Minimise :func:`forget_vector_loss` over ``param`` with the model frozen.

    ``make_delta()`` builds δ (C, H, W) from ``param`` (δ itself, or Σ w_c δ_c).
    """
    opt = torch.optim.SGD([param], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)
    steps = cfg.steps_per_epoch or math.ceil(len(retain) / cfg.retain_batch_size)
    f_iter = _batches(forget, cfg.forget_batch_size, cfg.seed)
    r_iter = _batches(retain, cfg.retain_batch_size, cfg.seed + 1)
    history = []
    with frozen(model):
        for epoch in tqdm(range(cfg.epochs), desc=desc, disable=not progress):
            sums = {"loss": 0.0, "retain": 0.0, "forget": 0.0, "norm": 0.0}
            for _ in range(steps):
                xf, yf = next(f_iter)
                xr, yr = next(r_iter)
                x = torch.cat([xf, xr]).to(device)
                y = torch.cat([yf, yr]).to(device).long()
                delta = make_delta()
                logits = model(_add(x, delta, cfg.clip))  # (B, K); δ enters before the model's Normalize
                n = xf.shape[0]
                terms = forget_vector_loss(logits[:n], y[:n], logits[n:], y[n:], delta, cfg)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                if project_param and cfg.bound != "none":
                    with torch.no_grad():  # projected gradient descent onto the δ ball
                        param.copy_(project(param, cfg.bound, cfg.eps))
                for k in sums:
                    sums[k] += float(terms[k].detach()) / steps
            sched.step()
            history.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"], **sums})
            log.debug("%s epoch %d: %s", desc, epoch, sums)
    return history


def learn_forget_vector(model: nn.Module, forget: Dataset, retain: Dataset,
                        cfg: ForgetVectorConfig | Mapping[str, Any] | None = None, *,
                        device: str | torch.device | None = None, progress: bool = False,
                        meta: Mapping[str, Any] | None = None) -> ForgetVector:
    """Learn δ so that the frozen ``model`` forgets ``forget`` and keeps ``retain``.

    Args:
        model: Classifier taking raw [0, 1] pixels (normalisation inside); moved to
            ``device``; its weights and mode are left as they were.
        forget: Dataset of (image, label) to forget (a class, random samples...).
        retain: Dataset of (image, label) to keep.
        cfg: :class:`ForgetVectorConfig` or a dict of its fields.
        device: None for cuda if available, else cpu.
        progress: Show a tqdm bar over epochs.
        meta: Strings saved with the vector (e.g. ``{"task": "class_3"}``).

    Returns:
        The learned :class:`ForgetVector`, with per-epoch loss terms in ``.history``.

    Raises:
        ValueError: Empty sets, or forget and retain images of different shapes.
    """
    cfg = from_dict(ForgetVectorConfig, cfg)
    shape = _image_shape(forget, "forget")
    if _image_shape(retain, "retain") != shape:
        raise ValueError(f"forget images {shape} and retain images {_image_shape(retain, 'retain')} differ in shape")
    device = resolve_device(device)
    model.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    init = torch.zeros(shape) if cfg.init == "zeros" else 1e-3 * torch.randn(shape, generator=gen)
    delta = init.to(device).requires_grad_(True)
    history = _optimise(model, forget, retain, delta, lambda: delta, cfg, device, progress,
                        desc="forget vector", project_param=True)
    fv = ForgetVector(delta.detach(), clip=cfg.clip, meta={**(meta or {}), "method": "forget_vector"})
    fv.history = history
    return fv


def learn_classwise(model: nn.Module, data: Any, classes: Sequence[int],
                    cfg: ForgetVectorConfig | Mapping[str, Any] | None = None, *,
                    cache_dir: str | Path | None = None, device: str | torch.device | None = None,
                    progress: bool = False) -> dict[int, ForgetVector]:
    """One forget vector per class: δ_c forgets class c and keeps every other class.

    Args:
        model: Frozen classifier taking raw pixels.
        data: A ``DatasetBundle`` (its ``train`` split is used) or a Dataset of (image, label).
        classes: Classes to learn a vector for.
        cfg: Learning configuration (the seed is offset by the class for each vector).
        cache_dir: If given, each δ_c is saved there as ``class_<c>.safetensors`` and
            reused by later calls with the same ``cfg``.
        device: None for cuda if available, else cpu.
        progress: Show a tqdm bar over classes.

    Returns:
        ``{class: ForgetVector}``.

    Raises:
        ValueError: A class has no samples in ``data`` (unknown class), or a cached
            vector was learned with another config.
    """
    cfg = from_dict(ForgetVectorConfig, cfg)
    dataset = getattr(data, "train", data)
    labels = labels_of(dataset)
    splits = {int(c): make_forget_split(labels, "class", classes=(int(c),)) for c in classes}  # validates all first
    out: dict[int, ForgetVector] = {}
    for c, split in tqdm(splits.items(), desc="class-wise forget vectors", disable=not progress):
        forget, retain = subset(dataset, split.forget_idx), subset(dataset, split.retain_idx)
        path = Path(cache_dir) / f"class_{c}.safetensors" if cache_dir is not None else None
        out[c] = _cached(path, cfg, lambda: learn_forget_vector(
            model, forget, retain, replace(cfg, seed=cfg.seed + c), device=device,
            meta={"task": f"class_{c}", "classes": str(c)}))
    return out


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


# ----------------------------------------------------------------------------- arithmetic
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
    """Learn the K weights of δ(w) = Σ_c w_c δ_c for a new task with the same loss as δ.

    Only w (K numbers) is optimised; the class-wise vectors stay fixed. With a bound
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
                        desc="forget-vector weights", project_param=False)
    fv = combine({k: vectors[k] for k in keys}, w.detach().cpu())
    if cfg.bound != "none":
        fv = ForgetVector(project(fv.delta, cfg.bound, cfg.eps), clip=fv.clip, meta=fv.meta)
    fv.clip = fv.clip or cfg.clip
    fv.meta.update({str(k): str(v) for k, v in (meta or {}).items()})
    fv.history = history
    return fv


# ----------------------------------------------------------------------------- evaluation
def per_class_accuracy(model: nn.Module, data: Dataset, *, input_transform: Any = None,
                       num_classes: int | None = None, device: str | torch.device | None = None,
                       batch_size: int = 512) -> pd.Series:
    """Accuracy (%) of ``model`` on each class of ``data`` (NaN for a class without samples).

    Args:
        model: Classifier taking raw pixels.
        data: Dataset of (image, label).
        input_transform: E.g. a :class:`ForgetVector`; None for the plain model.
        num_classes: Number of classes (default: the number of logits).
        device: None for cuda if available, else cpu.
        batch_size: Evaluation batch size.

    Returns:
        A Series indexed by class.
    """
    logits, labels = predict(model, data, device=device, batch_size=batch_size, input_transform=input_transform)
    correct = logits.argmax(1) == labels
    k = num_classes or logits.shape[1]
    return pd.Series({c: 100.0 * float(correct[labels == c].float().mean()) if (labels == c).any() else math.nan
                      for c in range(k)}, name="acc")


def classwise_report(model: nn.Module, vectors: Mapping[int, ForgetVector], test: Dataset, *,
                     device: str | torch.device | None = None, batch_size: int = 512) -> pd.DataFrame:
    """How well each class-wise δ_c forgets class c on ``test`` and spares the others.

    Returns:
        One row per class c: ``acc_c_original`` / ``acc_c`` (accuracy on class c without / with δ_c),
        ``UA`` = 100 − ``acc_c``, ``TA_others_original`` / ``TA_others`` (accuracy on the other
        classes without / with δ_c), ``TA_drop`` = original − with δ, and ``l2`` = ‖δ_c‖₂.
    """
    kw = dict(device=device, batch_size=batch_size)
    logits0, labels = predict(model, test, **kw)
    ok0 = logits0.argmax(1) == labels
    rows = []
    for c, fv in vectors.items():
        ok = predict(model, test, input_transform=fv, **kw)[0].argmax(1) == labels
        mine = labels == c
        rows.append({"class": int(c), "acc_c_original": 100.0 * float(ok0[mine].float().mean()),
                     "acc_c": 100.0 * float(ok[mine].float().mean()),
                     "TA_others_original": 100.0 * float(ok0[~mine].float().mean()),
                     "TA_others": 100.0 * float(ok[~mine].float().mean()), "l2": fv.norm()})
    df = pd.DataFrame(rows)
    df["UA"] = 100.0 - df["acc_c"]
    df["TA_drop"] = df["TA_others_original"] - df["TA_others"]
    return df


# ----------------------------------------------------------------------------- benchmark glue
def _cached(path: Path | None, cfg: ForgetVectorConfig, learn,
            vectors: Mapping[int, ForgetVector] | None = None) -> ForgetVector:
    """Load the vector at ``path`` if it was learned with ``cfg`` (and ``vectors``); else learn and save it."""
    inputs: dict[str, Any] = to_dict(cfg)
    if vectors is not None:  # arithmetic: the cached δ(w) is only valid for the same class-wise vectors
        inputs["vectors"] = {str(c): repr(float(v.delta.double().sum())) for c, v in vectors.items()}
    key = json.dumps(inputs, sort_keys=True)
    if path is not None and path.exists():
        fv = ForgetVector.load(path)
        if fv.meta.get("config") == key:
            log.info("reusing %s", path)
            return fv
        raise ValueError(f"{path} was learned with another ForgetVectorConfig or other class-wise vectors "
                         f"({fv.meta.get('config')}); delete it or use another run_dir / cache_dir")
    fv = learn()
    fv.meta["config"] = key
    if path is not None:
        fv.save(path)
    return fv


def run_benchmark(setup: Any, cfg: ForgetVectorConfig | Mapping[str, Any] | None = None, *,
                  vectors: Mapping[int, ForgetVector] | None = None, device: str | torch.device | None = None,
                  progress: bool = False) -> tuple[ForgetVector, dict[str, float]]:
    """Forget a ``negkit.benchmark.Setup``'s forget set with δ and record the result.

    Learns δ on the Setup's forget / retain sets with its original model frozen (or,
    with ``vectors``, the weights of δ(w) = Σ w_c δ_c), evaluates UA, RA, TA, MIA with
    δ applied and appends them, with Avg. Gap to Retrain, to ``setup.log`` as method
    ``"forget_vector"`` (or ``"forget_vector_arithmetic"``) — next to the weight-based
    methods of the same run. δ is saved under ``<scenario>/forget_vectors/`` and reused
    on rerun; records already present are not written twice.

    Returns:
        ``(forget_vector, metrics)``.
    """
    cfg = from_dict(ForgetVectorConfig, cfg)
    method = "forget_vector" if vectors is None else "forget_vector_arithmetic"
    device = device if device is not None else setup.device
    meta = {"task": setup.scenario}
    if vectors is None:
        learn = lambda: learn_forget_vector(setup.original, setup.forget, setup.retain, cfg,  # noqa: E731
                                            device=device, progress=progress, meta=meta)
    else:
        learn = lambda: learn_arithmetic(setup.original, vectors, setup.forget, setup.retain, cfg,  # noqa: E731
                                         device=device, progress=progress, meta=meta)
    fv = _cached(Path(setup.scenario_dir) / "forget_vectors" / f"{method}.safetensors", cfg, learn, vectors)
    metrics = {k: float(v) for k, v in unlearning_metrics(
        setup.original, setup.forget, setup.retain, setup.test, device=device, input_transform=fv,
        seed=setup.cfg.seed).items()}
    if not setup.log.has(scenario=setup.scenario, method=method, metric="avg_gap"):
        from negkit.benchmark import record_method  # benchmark imports the whole pipeline; load it lazily

        note = f"||δ||₂={fv.norm():.3g}" + (f"; w={fv.meta['weights']}" if vectors is not None else "")
        record_method(setup.log, setup, method, metrics, note=note)
    return fv, metrics
