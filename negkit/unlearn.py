"""Classic machine-unlearning baselines: FT, GA, RL, ℓ1-sparse and SalUn.

Every baseline is a function ``(model, forget, retain, cfg=None, *, device=None,
out_dir=None, progress=True) -> nn.Module`` registered under its name
(``negkit.unlearn.get("salun")``, ``list_methods()``). It returns an unlearned
*copy* of ``model`` (the argument is never modified) and trains only through the
kit's one loop, :func:`negkit.train.train`, using its hooks: ``loss_fn`` for the
objective, ``param_mask`` for SalUn's weight saliency and ``batch_sampler`` for
RL's epoch structure. With ``out_dir`` the run checkpoints under that folder, so
a rerun skips finished work and an interrupted run resumes.

The baselines follow the CIFAR-10 branch of SalUn's reference code (Fan et al.,
ICLR 2024): SGD with momentum and weight decay 5e-4 at a constant learning rate
(``schedule="cosine"`` is an option), no gradient clipping.

- ``ft``: fine-tune on the retain set D_r with cross-entropy.
- ``ga``: gradient ascent on the forget set, i.e. minimise −CE(f(x), y) on D_f.
- ``rl``: random labelling. Each epoch is one pass over D_f with random labels,
  then one pass over D_r with the true labels, both in shuffled batches. The random
  labels are drawn uniformly from *all* C classes (so y' = y is possible) for every
  forget batch, afresh each time the batch is seen.
- ``l1_sparse``: FT on D_r with CE + α_e·‖θ‖₁, where α_e = α·(1 − e/E) for epoch
  e = 0 … E−1 (stepped per epoch; Jia et al., NeurIPS 2023).
- ``salun``: weight saliency (:func:`saliency_mask`) at the original model θ_o,
  then RL updating only the salient weights, θ_u = m ⊙ θ_RL + (1 − m) ⊙ θ_o
  (SalUn Eq. 7): ``train``'s ``param_mask`` zeroes the gradients of non-salient weights
  and restores their values after every step, so weight decay and momentum cannot move
  them, as the reference code does (BatchNorm running statistics are buffers and still
  update).

Hyperparameters: :class:`UnlearnConfig` (one frozen dataclass, per-method defaults
from :func:`default_config`). The reference's CIFAR-10 example runs RL and SalUn
for 10 epochs at lr 0.013. The defaults here are scaled to the built-in digits
benchmark (~1,000 training images, a ~80k-weight model, a few seconds per run on
CPU); see :func:`default_config`. They were set once, not tuned on results.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from negkit.config import check, from_dict
from negkit.evaluate import resolve_device
from negkit.train import TrainConfig, train

log = logging.getLogger(__name__)

__all__ = [
    "UnlearnConfig", "default_config", "register", "get", "list_methods",
    "saliency_mask", "ForgetThenRetain", "ft", "ga", "rl", "l1_sparse", "salun",
]

UnlearnFn = Callable[..., nn.Module]
_REGISTRY: dict[str, UnlearnFn] = {}


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
    """Hyperparameters of one baseline run.

    Attributes:
        epochs: Epochs E (ft/l1_sparse: passes over D_r; ga: over D_f; rl/salun: each
            one pass over D_f with random labels, then one over D_r).
        lr: SGD learning rate.
        batch_size: Mini-batch size (also of SalUn's saliency pass).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        schedule: ``"constant"`` (the reference) or ``"cosine"`` learning rate.
        l1_gamma: ℓ1 strength α of ``l1_sparse``; epoch e uses α·(1 − e/E).
        saliency_fraction: Fraction of weights SalUn marks salient (top |gradient|).
        grad_clip: Gradient-norm clip (None, the reference: no clipping).
        seed: Seed for data order and random labels.
    """

    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    l1_gamma: float = 0.0
    saliency_fraction: float = 0.5
    grad_clip: float | None = None
    seed: int = 0

    RANGES = {"epochs": ">= 1", "lr": ">= 0", "batch_size": ">= 1", "momentum": "[0, 1)", "weight_decay": ">= 0",
              "l1_gamma": ">= 0", "saliency_fraction": "(0, 1]", "grad_clip": "> 0", "seed": ">= 0"}

    def __post_init__(self) -> None:
        check(self)  # types and RANGES (negkit.config)
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"UnlearnConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}")


#: Digits-scaled defaults. Digits' train split has ~1,000 images and the forget set
#: ~100, so an epoch is a handful of steps: epochs are kept near the papers' values
#: while GA's learning rate sits at the top of SalUn's range (its forget set is tiny).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "ft": dict(epochs=5, lr=0.02),
    "ga": dict(epochs=3, lr=1e-3),
    "rl": dict(epochs=5, lr=0.02),
    "l1_sparse": dict(epochs=5, lr=0.02, l1_gamma=5e-4),
    "salun": dict(epochs=5, lr=0.02, saliency_fraction=0.5),
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
class _Forget(Dataset):
    """D_f with every label replaced by the marker −1: "draw a random label here"."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.targets = np.full(len(dataset), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.dataset[i][0], -1


class ForgetThenRetain(Sampler[list[int]]):
    """Batches of one RL epoch over ``ConcatDataset([forget, retain])``: D_f, then D_r.

    Each part is shuffled with ``generator`` and cut into batches of ``batch_size``;
    every forget batch comes before every retain batch (SalUn's CIFAR-10 RL loop).
    A last batch of a single image is dropped, as :func:`negkit.train.train` does
    (BatchNorm cannot train on it), unless it is the part's only batch; any other
    short last batch is kept.

    Args:
        n_forget, n_retain: Sizes of the two parts (indices ``0..n_forget-1`` are D_f).
        batch_size: Images per batch.
        generator: Draws the order; ``train`` re-seeds it before every epoch.
    """

    def __init__(self, n_forget: int, n_retain: int, batch_size: int, generator: torch.Generator) -> None:
        self.parts = [(0, n_forget), (n_forget, n_retain)]
        self.batch_size, self.generator = batch_size, generator

    def _sizes(self, n: int) -> list[int]:
        sizes = [self.batch_size] * (n // self.batch_size) + ([n % self.batch_size] if n % self.batch_size else [])
        return sizes[:-1] if len(sizes) > 1 and sizes[-1] == 1 else sizes

    def __iter__(self) -> Iterator[list[int]]:
        for start, n in self.parts:
            order = (start + torch.randperm(n, generator=self.generator)).tolist()
            i = 0
            for size in self._sizes(n):
                yield order[i:i + size]
                i += size

    def __len__(self) -> int:
        return sum(len(self._sizes(n)) for _, n in self.parts)


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
    batch_size: int = 32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """SalUn's weight saliency mask at ``model`` (SalUn, Eq. 6), as its reference code computes it.

    g = Σ_batches ∇_θ mean_{(x,y) ∈ batch} (−CE(f_θ(x), y)) over D_f in batches of
    ``batch_size``, shuffled with ``seed`` as the reference's forget loader is, with the
    model in eval mode (BatchNorm statistics untouched). Because each batch contributes its *mean* gradient, the images of a
    short last batch weigh more than the others, exactly as in the reference. Then
    the ``⌊fraction · N⌋`` parameter elements of largest |g| over all N parameter
    elements (one global ranking; ties at the boundary broken by ``torch.topk``) are
    marked salient.

    Args:
        model: The original model θ_o (not modified).
        forget: The forget set D_f.
        fraction: Fraction of weights to mark salient, in (0, 1].
        batch_size: Batch size of the gradient pass (the reference uses the unlearning batch size).
        device: Device for the pass (None: cuda if available, else cpu).
        seed: Seed of the batch order (which images share a short last batch).

    Returns:
        ``{parameter name: bool tensor of its shape}`` for every parameter, on cpu.

    Raises:
        ValueError: ``fraction`` outside (0, 1], or an empty forget set.
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
    order = torch.Generator().manual_seed(seed)
    for x, y in DataLoader(forget, batch_size=batch_size, shuffle=True, generator=order):
        # backward() adds each batch's mean gradient to .grad: the sum over batches
        (-F.cross_entropy(model(x.to(device)), y.to(device))).backward()
    names = list(params)
    grads = [params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]) for n in names]
    flat = torch.cat([g.detach().abs().flatten().float().cpu() for g in grads])
    k = int(fraction * flat.numel())
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
        schedule=cfg.schedule, grad_clip=cfg.grad_clip, seed=cfg.seed,
    ))


def _stage(
    model: nn.Module, dataset: Dataset, cfg: UnlearnConfig, epochs: int, *, device: Any,
    out_dir: Path | None, stage: str, progress: bool, loss_fn: Callable | None = None,
    param_mask: Mapping[str, Tensor] | None = None,
    batch_sampler: Callable[[torch.Generator], Sampler[list[int]]] | None = None,
) -> nn.Module:
    """One call of the kit's training loop; returns the trained model."""
    if len(dataset) == 0:
        raise ValueError(f"unlearning stage {stage!r} got an empty dataset")
    sub = None if out_dir is None else Path(out_dir) / stage
    result = train(
        model, dataset, _train_cfg(cfg, epochs), device=device, out_dir=sub,
        loss_fn=loss_fn, param_mask=param_mask, progress=progress, batch_sampler=batch_sampler,
    )
    return result.model


def _prepare(model: nn.Module, cfg: UnlearnConfig | Mapping[str, Any] | None, method: str
             ) -> tuple[nn.Module, UnlearnConfig]:
    cfg = default_config(method) if cfg is None else from_dict(UnlearnConfig, cfg)
    return copy.deepcopy(model), cfg


def _neg_ce(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
    # Gradient ascent: minimising −CE maximises the forget loss.
    return -F.cross_entropy(model(x), y)


def _l1_loss(alpha: float, epochs: int) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        # progress_frac = (e·n_batches + b) / (E·n_batches), so ⌊E·progress_frac⌋ = e
        # (the small offset only absorbs rounding at b = 0).
        epoch = math.floor(progress_frac * epochs + 1e-9)
        strength = alpha * (1.0 - epoch / epochs)  # stepped per epoch (Jia et al. 2023)
        ce = F.cross_entropy(model(x), y)
        if strength == 0.0:
            return ce
        l1 = sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
        return ce + strength * l1
    return loss_fn


def _random_label_loss(num_classes: int) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        forget = y < 0  # the _Forget marker
        if bool(forget.any()):
            # Fresh labels, uniform over all classes, every time a forget batch is seen. The
            # global torch RNG is seeded by train() and restored on resume.
            drawn = torch.randint(0, num_classes, y.shape).to(y.device)
            y = torch.where(forget, drawn, y)
        return F.cross_entropy(model(x), y)
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
    """Per epoch: D_f with fresh random labels, then D_r. Returns an unlearned copy."""
    model, cfg = _prepare(model, cfg, "rl")
    return _random_label_unlearning(model, forget, retain, cfg, device=device, out_dir=out_dir,
                                    progress=progress, param_mask=None)


@register("l1_sparse")
def l1_sparse(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
              *, device: str | None = None, out_dir: str | Path | None = None,
              progress: bool = True) -> nn.Module:
    """FT on D_r with CE + α(1 − e/E)‖θ‖₁ (ℓ1 decaying per epoch). Returns an unlearned copy."""
    model, cfg = _prepare(model, cfg, "l1_sparse")
    return _stage(model, retain, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="l1_sparse",
                  progress=progress, loss_fn=_l1_loss(cfg.l1_gamma, cfg.epochs))


@register("salun")
def salun(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
          *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """SalUn: saliency mask at the original model, then RL on the salient weights only.

    Returns an unlearned copy whose non-salient parameters equal the original's bitwise.
    """
    model, cfg = _prepare(model, cfg, "salun")
    mask = saliency_mask(model, forget, cfg.saliency_fraction, batch_size=cfg.batch_size, device=device,
                         seed=cfg.seed)
    return _random_label_unlearning(model, forget, retain, cfg, device=device, out_dir=out_dir,
                                    progress=progress, param_mask=mask)


def _random_label_unlearning(
    model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig, *, device: Any,
    out_dir: str | Path | None, progress: bool, param_mask: Mapping[str, Tensor] | None,
) -> nn.Module:
    if len(forget) == 0:
        raise ValueError("random-label unlearning got an empty forget set")
    num_classes = _num_classes(model, forget)
    data = ConcatDataset([_Forget(forget), retain])
    return _stage(model, data, cfg, cfg.epochs, device=device, out_dir=None if out_dir is None else Path(out_dir),
                  stage="unlearn", progress=progress, loss_fn=_random_label_loss(num_classes),
                  param_mask=param_mask,
                  batch_sampler=lambda gen: ForgetThenRetain(len(forget), len(retain), cfg.batch_size, gen))
