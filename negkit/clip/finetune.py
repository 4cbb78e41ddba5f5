"""Fine-tuning CLIP's image encoder on one task, and NegMerge's pool of fine-tunes.

Settings of the task-vector papers' code (task_vectors, Ilharco et al. 2023; the
NegMerge release, Kim et al. 2025), which the defaults reproduce:

* AdamW, lr 1e-5, weight decay 0.1, batch 128, 500 warm-up steps then cosine,
  gradient clipping at 1.0, the zero-shot head frozen;
* **fp32** training (``precision="bf16"`` autocasts on CUDA instead, faster but not the reference);
* **attention frozen in standard mode**: every attention Q/K/V and output projection of
  the image encoder keeps ``requires_grad=False``, as in the reference, so those
  task-vector entries are exactly zero; linear (tangent) mode trains every parameter,
  attention included, as the release does (``train_attention=True``/``False`` forces
  either in both modes);
* NegMerge's pool: 30 fine-tunes per dataset differing only in RandAugment
  (magnitude 1–10 × number of ops 1–3, magnitude std 0.5) inside timm's ImageNet
  training transform: RandomResizedCrop (scale 0.08–1, random bilinear / bicubic),
  horizontal flip 0.5, RandAugment (:func:`negkit.clip.transforms.timm_train_transform`).

:class:`PoolConfig` is one member; :func:`paper_pool` builds the paper's list, any
list of ``PoolConfig`` (other lr, weight decay, label smoothing, epochs) is a pool
too, and :func:`seed_pool` repeats members under several seeds. ``finetuning_mode=
"linear"`` fine-tunes the encoder's first-order Taylor expansion instead
(:mod:`negkit.clip.linearize`).

Training itself is :func:`negkit.train.train` (the kit's one loop) with only the
``visual.*`` parameters trainable. Each member's folder keeps the loop's
checkpoints (resume) and, when done, ``visual.safetensors``: the image encoder
alone (θ, also in linear mode), the tensors task vectors are made of.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torchvision import transforms as T

import negkit.data
from negkit import io as nkio
from negkit.clip.transforms import clip_train_transform, randaugment_transform, timm_train_transform
from negkit.clip.heads import get_head
from negkit.clip.linearize import FINETUNING_MODES
from negkit.clip.model import ClipBackbone, ImageClassifier, attention_parameter_names
from negkit.config import check, from_dict, to_dict
from negkit.evaluate import resolve_device
from negkit.lock import locks_run_dir
from negkit.train import TrainConfig, train

__all__ = ["PoolConfig", "EPOCHS", "EPOCHS_RANDAUG", "PRECISIONS", "AUGMENTATIONS", "paper_pool", "smoke_pool",
           "seed_pool", "resolve_pool", "finetune", "finetune_pool", "trainable_names", "VISUAL_FILE"]

log = logging.getLogger(__name__)

VISUAL_FILE = "visual.safetensors"
#: ``"fp32"`` (the reference) or ``"bf16"`` (autocast on CUDA; CPU runs stay fp32).
PRECISIONS = ("fp32", "bf16")
#: ``"timm"``: the reference's crop + flip + RandAugment; ``"center"``: centre crop then RandAugment only.
AUGMENTATIONS = ("timm", "center")
#: Epochs per dataset without augmentation (task_vectors / NegMerge code).
EPOCHS = {"cars": 35, "dtd": 76, "eurosat": 12, "gtsrb": 11, "mnist": 5, "resisc45": 15, "sun397": 14, "svhn": 4}
#: Epochs per dataset with RandAugment (NegMerge's pool).
EPOCHS_RANDAUG = {"cars": 70, "dtd": 100, "eurosat": 40, "gtsrb": 40, "mnist": 30, "resisc45": 40, "sun397": 40,
                  "svhn": 30}


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """One fine-tune of the pool.

    Attributes:
        name: Identifier of the member (folder name, ``pool_config`` of result rows).
        epochs: Passes over the training split.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        label_smoothing: Of the cross-entropy loss.
        batch_size: Images per optimiser step (``batch_size / grad_accum`` per forward pass).
        grad_accum: Gradient accumulation when the batch does not fit in memory.
        warmup_steps: Linear warm-up steps before the cosine schedule.
        grad_clip: Max global gradient norm (None: no clipping).
        rand_m: RandAugment magnitude (None: no augmentation).
        rand_n: RandAugment number of ops.
        rand_mstd: RandAugment magnitude std.
        augment: With RandAugment: ``"timm"``, the reference's timm training transform
            (random resized crop, flip, RandAugment), or ``"center"``, the evaluation
            resize + centre crop followed by RandAugment (no crop, no flip).
        seed: Seed of the data order and of the augmentation draws (the weights start
            from the pretrained encoder whatever the seed).
        precision: ``"fp32"`` (the reference) or ``"bf16"`` autocast on CUDA.
        train_attention: None (the reference): attention projections stay frozen in
            standard mode and train in linear mode, as the release does; True or False
            trains or freezes them in either mode.
        finetuning_mode: ``"standard"`` or ``"linear"`` (tangent-space fine-tuning).
        fused: Fused AdamW on CUDA.
        compile: ``torch.compile`` the forward pass.
    """

    name: str = "finetune"
    epochs: int = 10
    lr: float = 1e-5
    weight_decay: float = 0.1
    label_smoothing: float = 0.0
    batch_size: int = 128
    grad_accum: int = 1
    warmup_steps: int = 500
    grad_clip: float | None = 1.0
    rand_m: int | None = None
    rand_n: int | None = None
    rand_mstd: float = 0.5
    augment: str = "timm"
    seed: int = 0
    precision: str = "fp32"
    train_attention: bool | None = None
    finetuning_mode: str = "standard"
    fused: bool = True
    compile: bool = False

    RANGES = {"epochs": ">= 1", "lr": ">= 0", "weight_decay": ">= 0", "label_smoothing": "[0, 1)",
              "batch_size": ">= 1", "grad_accum": ">= 1", "warmup_steps": ">= 0", "grad_clip": "> 0",
              "rand_m": ">= 0", "rand_n": ">= 1", "rand_mstd": ">= 0", "seed": ">= 0"}

    def __post_init__(self) -> None:
        check(self)  # types and RANGES (negkit.config)
        if (self.rand_m is None) != (self.rand_n is None):
            raise ValueError(f"PoolConfig {self.name!r}: set both rand_m and rand_n, or neither (no RandAugment)")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"PoolConfig {self.name!r}: batch_size {self.batch_size} is not a multiple of "
                             f"grad_accum {self.grad_accum}")
        if not self.name or "/" in self.name:
            raise ValueError(f"PoolConfig name {self.name!r} must be a non-empty folder name")
        if self.precision not in PRECISIONS:
            raise ValueError(f"PoolConfig {self.name!r}: unknown precision {self.precision!r}; valid precisions are "
                             f"{list(PRECISIONS)}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"PoolConfig {self.name!r}: unknown augment {self.augment!r}; valid values are "
                             f"{list(AUGMENTATIONS)}")
        if self.finetuning_mode not in FINETUNING_MODES:
            raise ValueError(f"PoolConfig {self.name!r}: unknown finetuning_mode {self.finetuning_mode!r}; valid "
                             f"modes are {list(FINETUNING_MODES)}")

    def train_config(self) -> TrainConfig:
        """The :class:`~negkit.train.TrainConfig` of this member."""
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size // self.grad_accum, grad_accum=self.grad_accum,
            lr=self.lr, optimizer="adamw", weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
            schedule="cosine", warmup_steps=self.warmup_steps, grad_clip=self.grad_clip,
            amp=self.precision == "bf16", seed=self.seed, fused=self.fused, compile=self.compile,
        )

    def train_transform(self, backbone: ClipBackbone) -> T.Compose:
        """This member's training transform (PIL -> [0, 1] tensor; the model normalises).

        Without RandAugment: the backbone's open_clip training preprocessing
        (``create_model_and_transforms``' train transform, RandomResizedCrop scale 0.9–1;
        :func:`~negkit.clip.transforms.clip_train_transform`), as the release's plain members.
        With it: :func:`~negkit.clip.transforms.timm_train_transform` at the backbone's image size (``augment="timm"``), or the evaluation preprocessing plus
        RandAugment (``augment="center"``).
        """
        if self.rand_m is None:
            return clip_train_transform(backbone.image_size, backbone.train_preprocess)
        if self.augment == "center":
            return randaugment_transform(backbone.preprocess, self.rand_m, self.rand_n, self.rand_mstd)
        return timm_train_transform(backbone.image_size, self.rand_m, self.rand_n, self.rand_mstd, mean=backbone.mean)


def paper_pool(dataset: str, *, augment: bool = True, **overrides: Any) -> list[PoolConfig]:
    """NegMerge's pool for ``dataset``: RandAugment m ∈ 1..10 × n ∈ 1..3 (30 members).

    Args:
        dataset: One of :data:`EPOCHS`.
        augment: False gives the single no-augmentation fine-tune of task_vectors.
        **overrides: PoolConfig fields applied to every member (e.g. ``epochs=1``, ``lr=3e-5``).

    Raises:
        ValueError: Unknown dataset or PoolConfig field.
    """
    if dataset not in EPOCHS:
        raise ValueError(f"no paper epochs for dataset {dataset!r}; valid datasets are {sorted(EPOCHS)} "
                         "(build PoolConfig(...) members yourself for others)")
    if not augment:
        return [from_dict(PoolConfig, {"name": f"{dataset}_noaug", "epochs": EPOCHS[dataset], **overrides})]
    return [from_dict(PoolConfig, {"name": f"{dataset}_m{m}_n{n}", "epochs": EPOCHS_RANDAUG[dataset],
                                   "rand_m": m, "rand_n": n, **overrides})
            for m in range(1, 11) for n in range(1, 4)]


def smoke_pool(k: int = 3) -> list[PoolConfig]:
    """A tiny pool for offline smoke runs: k one-epoch members differing in RandAugment."""
    return [PoolConfig(name=f"m{i % 10 + 1}_n{i % 3 + 1}", epochs=1, lr=2e-3, batch_size=16, warmup_steps=1,
                       rand_m=i % 10 + 1, rand_n=i % 3 + 1, fused=False) for i in range(k)]


def seed_pool(members: Sequence[PoolConfig | Mapping[str, Any]], seeds: Sequence[int]) -> list[PoolConfig]:
    """Every member repeated under every seed: same hyperparameters, other data order and augmentation draws.

    A seed-varied pool (e.g. ``seed_pool(paper_pool("mnist", augment=False), range(5))``:
    five no-augmentation fine-tunes) separates what merging gains from diversity of the
    recipe from what it gains from plain run-to-run noise.

    Returns:
        Members named ``<name>_s<seed>`` with ``seed`` set, member-major.

    Raises:
        ValueError: No seed, or a seed given twice.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    return [dataclasses.replace(m, name=f"{m.name}_s{s}", seed=s)
            for m in (from_dict(PoolConfig, c) for c in members) for s in seeds]


def resolve_pool(pool: str | Sequence[PoolConfig | Mapping[str, Any]], dataset: str, *,
                 seeds: Sequence[int] | None = None, **overrides: Any) -> list[PoolConfig]:
    """A pool from a notebook parameter.

    Args:
        pool: ``"paper"`` (30 RandAugment members, :func:`paper_pool`), ``"paper-noaug"``
            (the single task_vectors fine-tune), ``"smoke"`` (:func:`smoke_pool`, three one-epoch
            members for offline smoke runs) or a list of PoolConfig / dicts of its fields.
        dataset: Dataset the pool fine-tunes on (for the paper's epochs).
        seeds: If given, every member under each of these seeds (:func:`seed_pool`);
            ``"paper-noaug"`` with ``seeds=range(K)`` is a pool of K seeds of one recipe.
        **overrides: PoolConfig fields applied to every member.
    """
    if pool == "smoke":
        pool = smoke_pool(3)
    if isinstance(pool, str):
        if pool not in ("paper", "paper-noaug"):
            raise ValueError(f"unknown pool {pool!r}; use 'paper', 'paper-noaug', 'smoke' "
                             "or a list of PoolConfig dicts")
        members = paper_pool(dataset, augment=pool == "paper", **overrides)
    else:
        members = [from_dict(PoolConfig, p, **overrides) for p in pool]
    return members if seeds is None else seed_pool(members, seeds)


def trainable_names(model: ImageClassifier, cfg: PoolConfig) -> list[str]:
    """Names of the classifier's parameters a member trains: the image encoder's, attention projections
    included where ``cfg.train_attention`` says so, or by default (None) in linear mode only (the reference
    keeps every attention projection frozen in standard fine-tuning and trains all of them in linear mode)."""
    train_all = cfg.finetuning_mode == "linear" if cfg.train_attention is None else cfg.train_attention
    frozen = set() if train_all else {f"visual.{n}" for n in attention_parameter_names(model.visual)}
    return [n for n, _ in model.named_parameters() if n.startswith("visual.") and n not in frozen]


def finetune(
    backbone: ClipBackbone,
    dataset: str,
    cfg: PoolConfig | Mapping[str, Any],
    *,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    data_kw: Mapping[str, Any] | None = None,
    head_cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Fine-tune the image encoder on ``dataset`` under its frozen zero-shot head.

    Args:
        backbone: Pretrained CLIP (left unchanged; its image encoder is copied).
        dataset: Registry name (``negkit.data.get(dataset, root=data_root, **data_kw)``).
        cfg: The member's :class:`PoolConfig` (or a dict of its fields).
        out_dir: The member's folder (checkpoints, ``visual.safetensors``, ``pool_config.json``).
        data_root: Data folder.
        data_kw: More dataset options (``source``, ``hf_id``...).
        head_cache: Folder of cached zero-shot heads.
        device: None: cuda if available.
        num_workers: DataLoader workers decoding images (a runtime setting: a run may
            resume with another value).
        progress: tqdm bar.

    Returns:
        Path of the fine-tuned image encoder (``out_dir/visual.safetensors``); an
        existing one is returned without training. Its metadata and ``pool_config.json``
        record the member's fields (``precision``, ``finetuning_mode``, ...) and
        ``autocast``, the precision the run actually used (bf16 autocast acts on CUDA only).
    """
    cfg = from_dict(PoolConfig, cfg)
    out = Path(out_dir)
    final = out / VISUAL_FILE
    if final.exists():
        log.info("finetune: %s exists, skipping", final)
        return final
    device = resolve_device(device)
    bundle = negkit.data.get(dataset, root=data_root, transform=backbone.preprocess,
                             train_transform=cfg.train_transform(backbone), **dict(data_kw or {}))
    head = get_head(backbone, dataset, cache_dir=head_cache, classnames=bundle.classnames, device=device)
    model = ImageClassifier.from_backbone(backbone, head, finetuning_mode=cfg.finetuning_mode)
    train_cfg = dataclasses.replace(cfg.train_config(), num_workers=num_workers)
    train(model, bundle.train, train_cfg, device=device, out_dir=out / "train",
          trainable=trainable_names(model, cfg), progress=progress)
    autocast = "bf16" if train_cfg.amp and device.type == "cuda" else "fp32"
    meta = {"model": backbone.name, "dataset": dataset, "pool_config": cfg.name,
            "finetuning_mode": cfg.finetuning_mode, "autocast": autocast}
    # In linear mode this is θ of f_lin (the module inside the wrapper): same keys as a standard encoder.
    nkio.save_state_dict(model.encoder.state_dict(), final, metadata=meta)
    nkio.save_json({**to_dict(cfg), **meta}, out / "pool_config.json")
    # The loop's full-classifier copy duplicates visual.safetensors (+ the fixed head): 30 members of
    # ViT-B/32 would store ~10 GB twice. Finished members are recognised by visual.safetensors.
    (out / "train" / "model.safetensors").unlink(missing_ok=True)
    return final


@locks_run_dir("out_dir")
def finetune_pool(
    backbone: ClipBackbone,
    dataset: str,
    pool: Sequence[PoolConfig | Mapping[str, Any]],
    *,
    out_dir: str | os.PathLike,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, Path]:
    """Fine-tune every member of ``pool`` into ``out_dir/<member name>/`` (finished members are skipped).

    Returns:
        Member name -> path of its ``visual.safetensors``.
    """
    cfgs = [from_dict(PoolConfig, c) for c in pool]
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ValueError(f"pool member names must be unique, got {names}")
    return {c.name: finetune(backbone, dataset, c, out_dir=Path(out_dir) / c.name, progress=progress, **kwargs)
            for c in cfgs}
