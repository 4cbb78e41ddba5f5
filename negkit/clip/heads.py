"""Frozen zero-shot classification heads built from CLIP's text tower, cached on disk.

For class c with templates t_1..t_K, open_clip's ``build_zero_shot_classifier``
gives w_c = normalize(mean_k normalize(g(t_k(c)))), g the text encoder. The head
is the linear map z ↦ s · W z with W = [w_1 … w_C]ᵀ and s = exp(logit_scale), as
in the task-vector papers. Heads never change during fine-tuning or negation, so
they are computed once per (model, pretrained, dataset, class names+templates)
and stored as safetensors; evaluating many λ never rebuilds them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from torch import nn

from negkit import io as nkio
from negkit.clip import prompts
from negkit.clip.model import ClipBackbone
from negkit.evaluate import resolve_device

__all__ = ["ClassificationHead", "build_head", "get_head", "head_key", "classnames_and_templates"]

log = logging.getLogger(__name__)


class ClassificationHead(nn.Linear):
    """Bias-free linear head ``logits = z @ weightᵀ``, frozen.

    Args:
        weight: (C, D) rows = logit_scale × unit text embeddings.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        num_classes, dim = weight.shape
        super().__init__(dim, num_classes, bias=False)
        with torch.no_grad():
            self.weight.copy_(weight)
        self.weight.requires_grad_(False)


def classnames_and_templates(
    dataset: str, classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Class names and templates for ``dataset``, filling in the kit's defaults.

    Args:
        dataset: Registry name (``cars``, ``imagenet``...).
        classnames: Class names (e.g. ``bundle.classnames``); defaults from
            :mod:`negkit.clip.prompts` / open_clip for ImageNet.
        templates: ``str.format`` templates with a ``{}`` placeholder; defaults to the CLIP-paper ones.

    Raises:
        ValueError: Names the dataset and how to supply what is missing.
    """
    if dataset == "imagenet":
        classnames = classnames or open_clip.IMAGENET_CLASSNAMES
        templates = templates or tuple(t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES)
    classnames = classnames or prompts.CLASSNAMES.get(dataset)
    templates = templates or prompts.TEMPLATES.get(dataset)
    if not classnames:
        raise ValueError(
            f"no class names for dataset {dataset!r}: pass classnames=bundle.classnames "
            f"(known defaults: {sorted(prompts.CLASSNAMES) + ['imagenet']})"
        )
    if not templates:
        raise ValueError(
            f"no prompt templates for dataset {dataset!r}: pass templates=['a photo of a {{}}.', ...] "
            f"(known datasets: {sorted(prompts.TEMPLATES) + ['imagenet']})"
        )
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"template {bad[0]!r} has no '{{}}' placeholder for the class name")
    return tuple(classnames), tuple(templates)


@torch.no_grad()
def build_head(
    backbone: ClipBackbone,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ClassificationHead:
    """Zero-shot head from open_clip's ``build_zero_shot_classifier``, scaled by exp(logit_scale).

    Returns:
        A frozen :class:`ClassificationHead` of shape (C, D) on CPU.
    """
    device = resolve_device(device)
    model = backbone.model.to(device)
    weights = open_clip.build_zero_shot_classifier(
        model, backbone.tokenizer, list(classnames), list(templates), device=device, use_tqdm=progress
    )  # (D, C), unit columns
    scale = model.logit_scale.exp().to(weights.dtype)
    return ClassificationHead((scale * weights).T.contiguous().float().cpu())


def head_key(backbone: ClipBackbone, dataset: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """File stem ``{model}__{pretrained}__{dataset}__{hash}`` identifying a cached head."""
    digest = hashlib.sha1(json.dumps([list(classnames), list(templates)]).encode()).hexdigest()[:12]
    safe = lambda s: "".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in s)  # noqa: E731
    weights = backbone.weights_id or backbone.pretrained
    return f"{safe(backbone.model_name)}__{safe(weights)}__{safe(dataset)}__{digest}"


def get_head(
    backbone: ClipBackbone,
    dataset: str,
    *,
    cache_dir: str | os.PathLike | None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ClassificationHead:
    """The zero-shot head for ``dataset``, read from ``cache_dir`` or built and saved there.

    Args:
        backbone: The CLIP model whose text tower builds the head.
        dataset: Registry name of the dataset.
        cache_dir: Folder of cached heads; None builds without caching.
        classnames: Class names (default: see :func:`classnames_and_templates`).
        templates: Prompt templates (default: the CLIP paper's for ``dataset``).
        device: Device for the text tower.
        progress: tqdm bar over class batches.
    """
    classnames, templates = classnames_and_templates(dataset, classnames, templates)
    if cache_dir is None:
        return build_head(backbone, classnames, templates, device=device, progress=progress)
    path = Path(cache_dir) / f"{head_key(backbone, dataset, classnames, templates)}.safetensors"
    if path.exists():
        weight = nkio.load_state_dict(path)["weight"]
        if weight.shape[0] != len(classnames):
            raise ValueError(f"cached head {path} has {weight.shape[0]} classes, expected {len(classnames)}; delete it")
        return ClassificationHead(weight)
    head = build_head(backbone, classnames, templates, device=device, progress=progress)
    meta = {"model": backbone.name, "dataset": dataset, "num_classes": str(len(classnames)),
            "templates": json.dumps(list(templates))}
    nkio.save_state_dict({"weight": head.weight.detach()}, path, metadata=meta)
    log.info("cached zero-shot head %s", path)
    return head
