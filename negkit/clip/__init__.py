"""CLIP task negation (NegMerge's main setting) on open_clip.

* :mod:`~negkit.clip.model`: open_clip backbones, the Normalize -> image encoder ->
  L2 -> frozen head classifier, local safetensors checkpoints.
* :mod:`~negkit.clip.heads`: zero-shot heads from ``open_clip.build_zero_shot_classifier``, cached.
* :mod:`~negkit.clip.prompts`: CLIP-paper templates and class names (data).
* :mod:`~negkit.clip.datasets`: the nine datasets, registered into :mod:`negkit.data`.
* :mod:`~negkit.clip.transforms`: the image transforms (evaluation, open_clip and timm training).
* :mod:`~negkit.clip.finetune`: the fine-tuning pool (:class:`PoolConfig`).
* :mod:`~negkit.clip.linearize`: linearised (tangent-space) fine-tuning, :class:`LinearizedModel`.
* :mod:`~negkit.clip.negation`: task vectors of the image encoder, merging, λ search, records.

Importing this package registers the datasets (``negkit.data.get("cars", ...)``).
"""
from negkit.clip import datasets, heads, linearize, prompts, transforms  # noqa: F401  (datasets registers on import)
from negkit.clip.datasets import CLIP_DATASETS, write_digits_imagefolder
from negkit.clip.heads import ClassificationHead, build_head, get_head
from negkit.clip.model import (
    TINY_MODEL, ClipBackbone, ImageClassifier, load_clip, register_model_config, register_tiny_model,
)

__all__ = [
    "CLIP_DATASETS", "write_digits_imagefolder", "ClassificationHead", "build_head", "get_head",
    "TINY_MODEL", "ClipBackbone", "ImageClassifier", "load_clip", "register_model_config", "register_tiny_model",
]
