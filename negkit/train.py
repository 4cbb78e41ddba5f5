"""The one training loop of the kit.

Pre-training, Retrain, the fine-tunes of a NegMerge pool, the classic unlearning
baselines (FT, GA, RL, ℓ1-sparse, SalUn) and CLIP fine-tuning all call
:func:`train`; they differ only through its hooks:

* ``loss_fn(model, images, labels, progress_frac)`` replaces the default
  cross-entropy with label smoothing (GA negates it, ℓ1-sparse adds a decaying
  ℓ1 term, ...). It may return the loss or ``(loss, logits)``.
* ``param_mask`` restricts updates to masked elements (SalUn's weight saliency):
  unmasked elements are restored *exactly* after every optimiser step, so neither
  momentum nor weight decay can move them.
* ``trainable`` optimises only the named parameters (CLIP: image encoder, frozen head).
* ``batch_sampler`` replaces the shuffled batches (RL's forget-then-retain epochs).

With ``out_dir`` a run is restartable: each epoch ends with an atomic checkpoint
(model, optimiser, schedule position, RNG states — safetensors + JSON, no
pickle), an interrupted run resumes from its last epoch with bitwise the same
result on CPU, and a finished run (``model.safetensors`` + ``done.json``) is
loaded instead of retrained. The run folder's files and their format belong to
:mod:`negkit.checkpoint`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from negkit import checkpoint
from negkit.checkpoint import CHECKPOINT
from negkit.config import check, from_dict, to_dict
from negkit.evaluate import resolve_device

__all__ = ["TrainConfig", "TrainResult", "train", "lr_factor", "SCHEDULES"]

#: Learning-rate schedules of :class:`TrainConfig`.
SCHEDULES = ("cosine", "constant", "multistep")

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], Any]
# Fields that change how a run executes but not what it computes; a resumed run may differ in them.
_RUNTIME_FIELDS = ("num_workers",)
# Fields that only act on CUDA; a run on another device may differ in them (amp was on by default once).
_CUDA_ONLY_FIELDS = ("amp", "fused")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Attributes:
        epochs: Passes over the dataset.
        batch_size: Images per forward pass.
        lr: Peak learning rate.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"``.
        momentum: SGD momentum.
        weight_decay: Decoupled for AdamW, L2 for SGD; applied to every trained parameter.
        label_smoothing: Of the default cross-entropy loss.
        schedule: ``"cosine"`` (to 0 at the last step), ``"constant"``, or ``"multistep"`` (×``gamma``
            at each epoch of ``milestones``, as torch's MultiStepLR stepped per epoch: SalUn's CIFAR-10
            recipe, milestones 91 and 136 of 182 epochs), after warm-up.
        milestones: Epochs (0-based starts) at which ``"multistep"`` multiplies the rate by ``gamma``.
        gamma: Factor of ``"multistep"``.
        warmup_steps: Optimiser steps of linear warm-up from ``lr / warmup_steps``.
        grad_clip: Max global gradient norm, or None.
        grad_accum: Batches whose gradients are accumulated per optimiser step.
        amp: bfloat16 autocast (only on CUDA; ignored on CPU). Off by default: the reference
            code trains in fp32 (``benchmarks/bench_finetune.py`` measures what bf16 saves).
        seed: Seeds the global torch, numpy and python RNGs and the data order (epoch ``e``
            uses ``(seed, e)``).
        num_workers: DataLoader workers.
        drop_last: Drop the last incomplete batch. Off, as in the reference code: a last
            batch of one image is kept too. BatchNorm2d trains on it (its statistics run over
            the H×W positions, as in the reference's ResNets); a layer with one value per
            channel (BatchNorm1d) cannot, and training stops saying to set this.
        fused: Fused optimiser kernels (CUDA only).
        compile: ``torch.compile`` the forward pass.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = None
    grad_accum: int = 1
    amp: bool = False
    seed: int = 0
    num_workers: int = 0
    drop_last: bool = False
    fused: bool = False
    compile: bool = False

    RANGES = {"epochs": ">= 1", "batch_size": ">= 1", "grad_accum": ">= 1", "lr": ">= 0",
              "momentum": "[0, 1)", "weight_decay": ">= 0", "label_smoothing": "[0, 1)", "warmup_steps": ">= 0",
              "grad_clip": "> 0", "seed": ">= 0", "num_workers": ">= 0", "milestones": ">= 1", "gamma": "(0, 1]"}

    def __post_init__(self) -> None:
        check(self)  # types and RANGES (negkit.config), before the checks below
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid optimizers are ['sgd', 'adamw']")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid schedules are {list(SCHEDULES)}")
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("schedule='multistep' needs milestones (epochs), e.g. milestones=(91, 136)")
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be increasing and distinct, got {list(self.milestones)}")


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: The trained model (on the training device).
        metrics: Final metrics: ``train_loss``, ``train_acc`` (default loss only), ``epochs``,
            ``steps``, ``seconds`` and the last ``eval_fn`` values.
        history: One dict per epoch (``epoch``, ``train_loss``, ``lr``, ... and ``eval_fn`` values).
    """

    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0, *,
              milestones: Sequence[int] = (), gamma: float = 0.1, steps_per_epoch: int = 1) -> float:
    """Multiplier of the peak learning rate before optimiser step ``step`` (0-based).

    ``"multistep"``: γ^(number of milestones ≤ the step's epoch), the epoch being
    ``step // steps_per_epoch`` (torch's MultiStepLR stepped once per epoch).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return gamma ** sum(epoch >= m for m in milestones)
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))


def _select_params(model: nn.Module,
                   trainable: Iterable[str] | Callable[[str], bool] | None) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    if trainable is None:
        chosen = [n for n, p in named.items() if p.requires_grad]
    elif callable(trainable):
        chosen = [n for n, p in named.items() if p.requires_grad and trainable(n)]
    else:
        wanted = list(trainable)
        unknown = [n for n in wanted if n not in named]
        if unknown:
            raise ValueError(f"trainable names {unknown[:5]} are not parameters of the model; "
                             f"valid names start with {list(named)[:5]}")
        chosen = [n for n in wanted if named[n].requires_grad]
    if not chosen:
        raise ValueError("no parameter to train: `trainable` selected none (or all are requires_grad=False)")
    return {n: named[n] for n in chosen}


def _check_mask(param_mask: Mapping[str, torch.Tensor], params: Mapping[str, nn.Parameter]) -> dict:
    masks = {}
    for name, m in param_mask.items():
        if name not in params:
            raise ValueError(f"param_mask names {name!r}, which is not a trained parameter of the model")
        if m.dtype != torch.bool or m.shape != params[name].shape:
            raise ValueError(f"param_mask[{name!r}] must be a bool tensor of shape {tuple(params[name].shape)}, "
                             f"got {m.dtype} {tuple(m.shape)}")
        masks[name] = m.to(params[name].device)
    return masks


def _default_loss(cfg: TrainConfig) -> LossFn:
    def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, progress_frac: float):
        logits = model(images)
        return F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing), logits

    return loss


def train(model: nn.Module, dataset: Dataset, cfg: TrainConfig | Mapping[str, Any], *,
          device: str | torch.device | None = None, out_dir: str | os.PathLike | None = None,
          loss_fn: LossFn | None = None, param_mask: Mapping[str, torch.Tensor] | None = None,
          trainable: Iterable[str] | Callable[[str], bool] | None = None, progress: bool = True,
          eval_fn: Callable[[nn.Module], Mapping[str, float] | None] | None = None,
          batch_sampler: Callable[[torch.Generator], Sampler[list[int]]] | None = None) -> TrainResult:
    """Train ``model`` on ``dataset`` in place.

    Args:
        model: Classifier taking raw [0, 1] pixels; moved to ``device``.
        dataset: Items ``(image, label)``.
        cfg: A :class:`TrainConfig` or a dict of its fields (unknown keys fail).
        device: None means cuda when available, else cpu.
        out_dir: Folder making the run restartable (see module docstring); None trains in memory.
        loss_fn: ``(model, images, labels, progress_frac) -> loss`` or ``(loss, logits)``;
            ``progress_frac`` in [0, 1) is the fraction of training batches done.
            Default: cross-entropy with ``cfg.label_smoothing``.
        param_mask: Parameter name -> bool tensor of its shape; only True elements are
            updated. Parameters absent from the mask train freely.
        trainable: Names (or a predicate on names) of the parameters to optimise; the
            rest stay fixed (BatchNorm running statistics still update in train mode).
            Default: every parameter with ``requires_grad``.
        progress: Show a tqdm bar.
        eval_fn: Called with the model (in eval mode) after each epoch; the dict it
            returns is added to that epoch's history entry.
        batch_sampler: Replaces the shuffled batches of ``cfg.batch_size``: called once
            with the loop's generator (re-seeded from ``(seed, epoch)`` before every
            epoch) and returns a sampler of index lists with a ``len`` (e.g. the
            forget-then-retain epochs of :mod:`negkit.unlearn`'s RL and SalUn).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: Bad config, mask or ``trainable``; ``out_dir`` holding a different config.
        FloatingPointError: The loss became NaN or infinite.
    """
    cfg = from_dict(TrainConfig, cfg)
    device = resolve_device(device)
    # bf16 autocast and fused kernels act on CUDA only: on another device they change nothing computed.
    runtime = _RUNTIME_FIELDS + (() if device.type == "cuda" else _CUDA_ONLY_FIELDS)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and checkpoint.is_finished(out):
        metrics, history = checkpoint.load_finished(out, model, to_dict(cfg), ignore=runtime,
                                                    defaults=to_dict(TrainConfig()))
        logger.info("train: %s is finished; loaded its weights instead of retraining", out)
        return TrainResult(model=model.to(device), metrics=metrics, history=history)

    # Seed every global RNG a dataset transform may draw from (timm's RandAugment uses `random`).
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model.to(device)
    params = _select_params(model, trainable)
    masks = _check_mask(param_mask or {}, params)
    use_cuda = device.type == "cuda"
    fused = {"fused": True} if (cfg.fused and use_cuda) else {}
    plist = list(params.values())
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(plist, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    else:
        opt = torch.optim.AdamW(plist, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)

    gen = torch.Generator()
    drop_last = cfg.drop_last
    if batch_sampler is None:
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=drop_last,
                            num_workers=cfg.num_workers, pin_memory=use_cuda)
    else:
        loader = DataLoader(dataset, batch_sampler=batch_sampler(gen), num_workers=cfg.num_workers,
                            pin_memory=use_cuda)
    n_batches = len(loader)
    if n_batches == 0:
        raise ValueError(f"dataset of {len(dataset)} items gives no batch of size {cfg.batch_size}")
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    loss_fn = loss_fn or _default_loss(cfg)
    forward_model = torch.compile(model) if cfg.compile else model
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (cfg.amp and use_cuda) else nullcontext

    start_epoch, step, history, seconds = 0, 0, [], 0.0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if (out / CHECKPOINT).exists():  # the config is checked before the model is touched
            state = checkpoint.load_training_state(out / CHECKPOINT, model, opt, config=to_dict(cfg),
                                                   ignore=runtime, steps_per_epoch=steps_per_epoch,
                                                   defaults=to_dict(TrainConfig()))
            start_epoch, step, history, seconds = state.epoch, state.step, state.history, state.seconds
            logger.info("train: resuming %s after epoch %d", out, start_epoch)
    kept = {n: params[n].detach().clone() for n in masks}  # exact values of the masked-out elements

    # Remember requires_grad so that freezing for `trainable` is undone afterwards.
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    bar = tqdm(total=cfg.epochs * n_batches, initial=start_epoch * n_batches, desc="train",
               disable=not progress, leave=False)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            gen.manual_seed(cfg.seed * 1_000_003 + epoch)  # data order depends on (seed, epoch) only
            model.train()
            tot_loss, tot_correct, tot_n, have_acc = 0.0, 0, 0, True
            opt.zero_grad(set_to_none=True)
            for bi, (images, labels) in enumerate(loader):
                images = images.to(device, non_blocking=True)
                labels = torch.as_tensor(labels).to(device, non_blocking=True)
                frac = (epoch * n_batches + bi) / (cfg.epochs * n_batches)
                try:
                    with autocast():
                        res = loss_fn(forward_model, images, labels, frac)
                except ValueError as err:
                    if images.shape[0] == 1 and "more than 1 value per channel" in str(err):
                        raise ValueError(
                            f"the last batch of epoch {epoch + 1} holds one image ({len(dataset)} images, batch_size "
                            f"{cfg.batch_size}) and a BatchNorm layer of the model cannot normalise one value per "
                            "channel in train mode; pass drop_last=True or another batch_size") from err
                    raise
                loss, logits = res if isinstance(res, tuple) else (res, None)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss is {loss.item()} at epoch {epoch + 1}, batch {bi + 1}; lower the learning "
                        f"rate (lr={cfg.lr}) or set grad_clip")
                (loss / cfg.grad_accum).backward()
                nb = images.shape[0]
                tot_loss += loss.item() * nb
                tot_n += nb
                if logits is None:
                    have_acc = False
                else:
                    tot_correct += int((logits.argmax(1) == labels).sum())
                if (bi + 1) % cfg.grad_accum == 0 or bi + 1 == n_batches:
                    _optimizer_step(opt, plist, params, masks, kept, cfg, step, total_steps, steps_per_epoch)
                    step += 1
                bar.update(1)
            entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": tot_loss / tot_n,
                                     "lr": opt.param_groups[0]["lr"]}
            if have_acc:
                entry["train_acc"] = 100.0 * tot_correct / tot_n
            if eval_fn is not None:
                model.eval()
                entry.update(eval_fn(model) or {})
                model.train()
            seconds += time.perf_counter() - t0
            entry["seconds"] = seconds
            history.append(entry)
            bar.set_postfix(loss=f"{entry['train_loss']:.3f}")
            if out is not None:
                checkpoint.save_training_state(out / CHECKPOINT, model, opt, checkpoint.TrainingState(
                    epoch=epoch + 1, step=step, history=history, seconds=seconds, config=to_dict(cfg)))
    finally:
        bar.close()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])

    metrics = {k: v for k, v in history[-1].items() if k != "epoch"}
    metrics.update(epochs=cfg.epochs, steps=step)
    if out is not None:
        checkpoint.save_finished(out, model, to_dict(cfg), metrics, history)
    return TrainResult(model=model, metrics=metrics, history=history)


def _optimizer_step(opt: torch.optim.Optimizer, plist: list[nn.Parameter], params: Mapping[str, nn.Parameter],
                    masks: Mapping[str, torch.Tensor], kept: Mapping[str, torch.Tensor], cfg: TrainConfig,
                    step: int, total_steps: int, steps_per_epoch: int = 1) -> None:
    """Masked, clipped, scheduled optimiser step, then exact restoration of masked-out elements."""
    for name, m in masks.items():
        g = params[name].grad
        if g is not None:
            g.mul_(m)  # SalUn: gradients only flow to salient weights
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(plist, cfg.grad_clip)
    lr = cfg.lr * lr_factor(step, total_steps, cfg.schedule, cfg.warmup_steps, milestones=cfg.milestones,
                            gamma=cfg.gamma, steps_per_epoch=steps_per_epoch)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, m in masks.items():
            p = params[name]
            p.copy_(torch.where(m, p, kept[name]))  # momentum / weight decay must not move them

