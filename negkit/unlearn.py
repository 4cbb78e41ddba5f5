"""Classic machine-unlearning baselines: FT, GA, RL, ℓ1-sparse and SalUn.

Every baseline is a function ``(model, forget, retain, cfg=None, *, device=None,
out_dir=None, progress=True) -> nn.Module`` registered under its name
(``negkit.unlearn.get("salun")``, ``list_methods()``). It returns an unlearned
*copy* of ``model`` (the argument is never modified) and trains only through the
kit's one loop, :func:`negkit.train.train`, using its hooks: ``loss_fn`` for the
objective and ``param_mask`` for SalUn's weight saliency. With ``out_dir`` every
stage checkpoints under that folder, so a rerun skips finished work and an
interrupted run resumes.

The baselines, as in the SalUn paper's comparison (Fan et al., ICLR 2024):

- ``ft``: fine-tune on the retain set D_r with cross-entropy (catastrophic
  forgetting of D_f).
- ``ga``: gradient ascent on the forget set, i.e. minimise −CE(f(x), y) on D_f.
- ``rl``: random labelling. Our reading: each forget sample gets one random label
  y' ≠ y, drawn once with the seed (y' = (y + u) mod C, u ~ U{1..C−1}); the model is
  trained with CE on these relabelled forget samples for ``epochs``, then for
  ``retain_epochs`` on D_r to repair the collateral damage. (SalUn's code instead
  trains once on the union of relabelled D_f and D_r; the two-stage form keeps the
  stages separately resumable and is the brief's reading.)
- ``l1_sparse``: FT with an ℓ1 penalty whose strength decays linearly to zero over
  training, L = CE + γ·(1 − t)·‖θ‖₁ with t the fraction of training done (Jia et al.,
  NeurIPS 2023, "Model sparsity can simplify machine unlearning", linear decay).
- ``salun``: weight saliency m = 1[|∇_θ CE(θ_o; D_f)| ≥ top fraction] computed once at
  the original model θ_o over all parameters with one global threshold (SalUn, Eq. 6;
  the paper keeps the top 50 %), then RL updating only salient weights:
  θ ← m ⊙ θ_RL + (1 − m) ⊙ θ_o. The frozen elements are restored exactly after every
  optimiser step by ``train``'s ``param_mask``, so neither momentum nor weight decay
  moves them (BatchNorm running statistics are buffers, not weights, and still update).

Hyperparameters: :class:`UnlearnConfig` (one frozen dataclass, per-method defaults
from :func:`default_config`). Source values on CIFAR-10/ResNet-18 reported in the
SalUn paper's appendix (searched ranges): FT 10 epochs, lr 0.01–0.1; GA 5 epochs,
lr 1e-5–1e-3; RL 10 epochs, lr 0.01–0.1; ℓ1-sparse 10 epochs, lr 0.01–0.1, γ of
order 1e-4; SalUn 10 epochs, sparsity 50 %. The defaults here are scaled to the
built-in digits benchmark (~1,000 training images, a ~80k-weight model, a few seconds
per run on CPU); see :func:`default_config`. They were set once, not tuned on results.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from negkit.config import check, from_dict
from negkit.data import labels_of
from negkit.evaluate import resolve_device
from negkit.train import TrainConfig, train

log = logging.getLogger(__name__)

__all__ = [
    "UnlearnConfig", "default_config", "register", "get", "list_methods",
    "saliency_mask", "RandomLabels", "ft", "ga", "rl", "l1_sparse", "salun",
]

UnlearnFn = Callable[..., nn.Module]
_REGISTRY: dict[str, UnlearnFn] = {}


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
    """Hyperparameters of one baseline run.

    Attributes:
        epochs: Epochs of the main stage (on D_r for ft/l1_sparse, on D_f for ga/rl/salun).
        lr: SGD learning rate (cosine schedule).
        batch_size: Mini-batch size.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        l1_gamma: Initial ℓ1 strength γ of ``l1_sparse`` (decays linearly to 0).
        saliency_fraction: Fraction of weights SalUn marks salient (top |gradient|).
        retain_epochs: Epochs of the repair pass on D_r after the forget stage
            (``rl`` and ``salun``; 0 skips it).
        grad_clip: Gradient-norm clip (None for no clipping); GA needs it to stay finite.
        seed: Seed for data order and random labels.
    """

    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    l1_gamma: float = 0.0
    saliency_fraction: float = 0.5
    retain_epochs: int = 1
    grad_clip: float | None = None
    seed: int = 0

    RANGES = {"epochs": ">= 1", "lr": ">= 0", "batch_size": ">= 1", "momentum": "[0, 1)", "weight_decay": ">= 0",
              "l1_gamma": ">= 0", "saliency_fraction": "(0, 1]", "retain_epochs": ">= 0", "grad_clip": "> 0",
              "seed": ">= 0"}

    def __post_init__(self) -> None:
        check(self)  # types and RANGES (negkit.config)
        if self.epochs < 1:
            raise ValueError(f"UnlearnConfig.epochs must be >= 1, got {self.epochs}")
        if not 0.0 < self.saliency_fraction <= 1.0:
            raise ValueError(
                f"UnlearnConfig.saliency_fraction must be in (0, 1], got {self.saliency_fraction}"
            )
        if self.retain_epochs < 0:
            raise ValueError(f"UnlearnConfig.retain_epochs must be >= 0, got {self.retain_epochs}")


#: Digits-scaled defaults. Digits' train split has ~1,000 images and the forget set
#: ~100, so an epoch is a handful of steps: epochs are kept near the papers' values
#: while GA's learning rate sits at the top of SalUn's range (its forget set is tiny).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "ft": dict(epochs=5, lr=0.02),
    "ga": dict(epochs=3, lr=1e-3, grad_clip=1.0, weight_decay=0.0),
    "rl": dict(epochs=5, lr=0.02, retain_epochs=1),
    "l1_sparse": dict(epochs=5, lr=0.02, l1_gamma=5e-4),
    "salun": dict(epochs=5, lr=0.02, retain_epochs=1, saliency_fraction=0.5),
}


def default_config(method: str, **overrides: Any) -> UnlearnConfig:
    """Default (digits-scaled) :class:`UnlearnConfig` of ``method``, with overrides."""
    _check_name(method)
    return from_dict(UnlearnConfig, {**_DEFAULTS.get(method, {}), **overrides})


def register(name: str) -> Callable[[UnlearnFn], UnlearnFn]:
    """Decorator registering an unlearning method under ``name``."""
    def deco(fn: UnlearnFn) -> UnlearnFn:
        if name in _REGISTRY:
            raise ValueError(f"unlearning method {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return deco


def list_methods() -> list[str]:
    """Names of the registered unlearning methods."""
    return list(_REGISTRY)


def get(name: str) -> UnlearnFn:
    """The unlearning function registered as ``name``.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    _check_name(name)
    return _REGISTRY[name]


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown unlearning method {name!r}; valid methods are {list_methods()}")


# --------------------------------------------------------------------------- helpers
class RandomLabels(Dataset):
    """``dataset`` with every label replaced by a fixed random *wrong* label.

    y' = (y + u) mod C with u drawn uniformly from {1, …, C−1} once per sample from
    ``seed``, so y' ≠ y always and reruns see the same labels.
    """

    def __init__(self, dataset: Dataset, num_classes: int, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"random labels need at least 2 classes, got num_classes={num_classes}")
        self.dataset = dataset
        labels = np.asarray(labels_of(dataset), dtype=np.int64)
        shift = np.random.default_rng(seed).integers(1, num_classes, size=len(labels))
        self.targets = (labels + shift) % num_classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, _ = self.dataset[i]
        return x, int(self.targets[i])


def _num_classes(model: nn.Module, dataset: Dataset) -> int:
    x, _ = dataset[0]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x.unsqueeze(0).to(param.device))
    model.train(was_training)
    return int(out.shape[-1])


def saliency_mask(
    model: nn.Module,
    forget: Dataset,
    fraction: float = 0.5,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """SalUn's weight saliency mask at ``model`` (SalUn, Eq. 6).

    Accumulates g = ∇_θ Σ_{(x,y)∈D_f} CE(f_θ(x), y) over the forget set with the model in
    eval mode (BatchNorm statistics untouched), then keeps the ``fraction`` of all
    parameter elements with the largest |g| under one global threshold. Exactly
    ``round(fraction · n)`` elements are marked (ties broken by ``torch.topk``).

    Args:
        model: The original model θ_o (not modified).
        forget: The forget set D_f.
        fraction: Fraction of weights to mark salient, in (0, 1].
        batch_size: Batch size of the gradient pass.
        device: Device for the pass (None: cuda if available, else cpu).

    Returns:
        ``{parameter name: bool tensor of its shape}`` for every parameter, on cpu.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"saliency fraction must be in (0, 1], got {fraction}")
    if len(forget) == 0:
        raise ValueError("saliency_mask got an empty forget set")
    device = resolve_device(device)
    model = copy.deepcopy(model).to(device).eval()
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    for x, y in DataLoader(forget, batch_size=batch_size, shuffle=False):
        loss = F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum")
        loss.backward()
    names = list(params)
    grads = [params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]) for n in names]
    flat = torch.cat([g.detach().abs().flatten().float().cpu() for g in grads])
    k = int(round(fraction * flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    masks, start = {}, 0
    for n in names:
        numel = params[n].numel()
        masks[n] = keep[start:start + numel].view(params[n].shape).clone()
        start += numel
    return masks


def _train_cfg(cfg: UnlearnConfig, epochs: int) -> TrainConfig:
    return from_dict(TrainConfig, dict(
        epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer="sgd",
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, label_smoothing=0.0,
        schedule="cosine", grad_clip=cfg.grad_clip, seed=cfg.seed,
    ))


def _stage(
    model: nn.Module, dataset: Dataset, cfg: UnlearnConfig, epochs: int, *, device: Any,
    out_dir: Path | None, stage: str, progress: bool, loss_fn: Callable | None = None,
    param_mask: Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """One call of the kit's training loop; returns the trained model."""
    if len(dataset) == 0:
        raise ValueError(f"unlearning stage {stage!r} got an empty dataset")
    sub = None if out_dir is None else Path(out_dir) / stage
    result = train(
        model, dataset, _train_cfg(cfg, epochs), device=device, out_dir=sub,
        loss_fn=loss_fn, param_mask=param_mask, progress=progress,
    )
    return result.model


def _prepare(model: nn.Module, cfg: UnlearnConfig | Mapping[str, Any] | None, method: str
             ) -> tuple[nn.Module, UnlearnConfig]:
    cfg = default_config(method) if cfg is None else from_dict(UnlearnConfig, cfg)
    return copy.deepcopy(model), cfg


def _neg_ce(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
    # Gradient ascent: minimising −CE maximises the forget loss.
    return -F.cross_entropy(model(x), y)


def _l1_loss(gamma: float) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        strength = gamma * max(0.0, 1.0 - progress_frac)  # linear decay to 0 (Jia et al. 2023)
        ce = F.cross_entropy(model(x), y)
        if strength == 0.0:
            return ce
        l1 = sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
        return ce + strength * l1
    return loss_fn


# --------------------------------------------------------------------------- methods
@register("ft")
def ft(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Fine-tune on the retain set (forget set unused). Returns an unlearned copy."""
    model, cfg = _prepare(model, cfg, "ft")
    return _stage(model, retain, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="ft",
                  progress=progress)


@register("ga")
def ga(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Gradient ascent on the forget set: minimise −CE on D_f. Returns an unlearned copy."""
    model, cfg = _prepare(model, cfg, "ga")
    return _stage(model, forget, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="ga",
                  progress=progress, loss_fn=_neg_ce)


@register("rl")
def rl(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Random labels y' ≠ y on D_f, then a repair pass on D_r. Returns an unlearned copy."""
    model, cfg = _prepare(model, cfg, "rl")
    return _random_label_unlearning(model, forget, retain, cfg, device=device, out_dir=out_dir,
                                    progress=progress, param_mask=None)


@register("l1_sparse")
def l1_sparse(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
              *, device: str | None = None, out_dir: str | Path | None = None,
              progress: bool = True) -> nn.Module:
    """FT on D_r with CE + γ(1 − t)‖θ‖₁ (linearly decaying ℓ1). Returns an unlearned copy."""
    model, cfg = _prepare(model, cfg, "l1_sparse")
    return _stage(model, retain, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="l1_sparse",
                  progress=progress, loss_fn=_l1_loss(cfg.l1_gamma))


@register("salun")
def salun(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
          *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """SalUn: saliency mask at the original model, then RL on the salient weights only.

    Returns an unlearned copy whose non-salient parameters equal the original's bitwise.
    """
    model, cfg = _prepare(model, cfg, "salun")
    mask = saliency_mask(model, forget, cfg.saliency_fraction, batch_size=max(cfg.batch_size, 128),
                         device=device)
    return _random_label_unlearning(model, forget, retain, cfg, device=device, out_dir=out_dir,
                                    progress=progress, param_mask=mask)


def _random_label_unlearning(
    model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig, *, device: Any,
    out_dir: str | Path | None, progress: bool, param_mask: Mapping[str, Tensor] | None,
) -> nn.Module:
    if len(forget) == 0:
        raise ValueError("random-label unlearning got an empty forget set")
    relabelled = RandomLabels(forget, _num_classes(model, forget), seed=cfg.seed)
    out = None if out_dir is None else Path(out_dir)
    model = _stage(model, relabelled, cfg, cfg.epochs, device=device, out_dir=out, stage="forget",
                   progress=progress, param_mask=param_mask)
    if cfg.retain_epochs > 0:
        model = _stage(model, retain, cfg, cfg.retain_epochs, device=device, out_dir=out,
                       stage="retain", progress=progress, param_mask=param_mask)
    return model
