"""open_clip backbones wrapped as image classifiers over raw [0, 1] pixels.

The classifier of the task-vector papers (Ilharco et al. 2023, NegMerge) is

    logits = s · normalize(f_θ(normalize_pix(x))) · Wᵀ

where f_θ is CLIP's image encoder (the only part that is fine-tuned, turned into
a task vector and negated), W the frozen zero-shot head built from the text
tower and s = exp(logit_scale). :class:`ImageClassifier` is exactly that, with
the pixel normalisation as its first layer (kit convention).

Any open_clip architecture + pretrained tag works; ``pretrained=None`` gives a
random initialisation (used with the tiny config of :func:`register_tiny_model`
for offline tests); a local checkpoint is read through :mod:`negkit.io`
(safetensors, never unpickled).
"""
from __future__ import annotations

import copy as copy_module
import dataclasses
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from negkit import io as nkio
from negkit.clip.linearize import LinearizedModel, check_finetuning_mode
from negkit.evaluate import resolve_device
from negkit.models import Normalize

__all__ = [
    "ClipBackbone",
    "ImageClassifier",
    "TINY_MODEL",
    "TINY_MODEL_CONFIG",
    "register_model_config",
    "register_tiny_model",
    "load_clip",
    "load_checkpoint_into",
    "strip_normalize",
    "attention_parameter_names",
]

log = logging.getLogger(__name__)

#: Name of the tiny random-init config used by tests and smoke notebooks.
TINY_MODEL = "negkit-tiny-ViT"
#: ViT width 64, 2 layers, 32×32 images (patch 8); text width 64, 2 layers.
TINY_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_model_config(name: str, config: Mapping[str, Any], config_dir: str | os.PathLike | None = None) -> str:
    """Make an architecture config known to open_clip (``open_clip.add_model_config``).

    Args:
        name: Model name to register (``open_clip.list_models()`` will list it).
        config: open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``).
        config_dir: Folder where the JSON file is written; a fresh temporary
            folder when None.

    Returns:
        ``name``.

    Raises:
        TypeError: ``name`` is not a str or ``config`` not a mapping.
        ValueError: ``name`` is empty or holds a path separator (it becomes a file name).
    """
    if not isinstance(name, str):
        raise TypeError(f"register_model_config: name must be a str, got {type(name).__name__} {name!r:.60}")
    if not name or name.strip() != name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ValueError(f"register_model_config: name must be a non-empty file-name-safe string such as "
                         f"'ViT-Tiny-16', got {name!r}")
    if not isinstance(config, Mapping):
        raise TypeError(f"register_model_config: config of {name!r} must be a mapping (embed_dim, vision_cfg, "
                        f"text_cfg), got {type(config).__name__}")
    if name in open_clip.list_models():
        return name
    folder = Path(config_dir) if config_dir is not None else Path(tempfile.mkdtemp(prefix="negkit_openclip_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    nkio.save_json(dict(config), path)
    open_clip.add_model_config(path)
    return name


def register_tiny_model() -> str:
    """Register :data:`TINY_MODEL` with open_clip (idempotent) and return its name."""
    return register_model_config(TINY_MODEL, TINY_MODEL_CONFIG)


def attention_parameter_names(module: nn.Module) -> list[str]:
    """Names (within ``module``) of every attention projection: Q/K/V ``in_proj_*`` and ``out_proj.*``.

    These are the parameters the reference fine-tuning never trains (task_vectors /
    NegMerge: they keep ``requires_grad=False``, 28.3 M of ViT-B/32's 87.8 M image-encoder
    parameters, so their task vectors are exactly zero). Covers ``nn.MultiheadAttention``
    and open_clip's own ``Attention``.
    """
    kinds = (nn.MultiheadAttention, open_clip.transformer.Attention)
    return [f"{prefix}.{name}" if prefix else name
            for prefix, m in module.named_modules() if isinstance(m, kinds)
            for name, _ in m.named_parameters()]


def strip_normalize(preprocess: Callable) -> T.Compose:
    """open_clip's preprocessing without its final ``Normalize`` (pixels stay in [0, 1])."""
    steps = getattr(preprocess, "transforms", None)
    if steps is None:
        raise TypeError(f"expected a torchvision Compose, got {type(preprocess).__name__}")
    return T.Compose([t for t in steps if not isinstance(t, T.Normalize)])


@dataclasses.dataclass
class ClipBackbone:
    """An open_clip model with what the kit needs around it.

    Attributes:
        model: The open_clip CLIP model (both towers).
        tokenizer: Its tokenizer.
        preprocess: Evaluation transform PIL -> [0, 1] tensor (no Normalize).
        train_preprocess: open_clip's training transform for this model, as
            ``open_clip.create_model_and_transforms`` builds it (RandomResizedCrop scale
            0.9–1 at the model's size and interpolation), without Normalize; what the
            reference's members without augmentation train on.
        mean: Per-channel mean the classifier's Normalize layer applies.
        std: Per-channel std.
        model_name: open_clip architecture name.
        pretrained: Pretrained tag, checkpoint file stem, or ``"random"``.
        weights_id: Identifies the weights in cache keys: the tag, or for a local
            checkpoint its stem plus a digest of its path, size and mtime (two files
            with the same name never share cached heads).
    """

    model: nn.Module
    tokenizer: Callable
    preprocess: T.Compose
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_name: str
    pretrained: str
    weights_id: str = ""
    train_preprocess: T.Compose | None = None

    @property
    def name(self) -> str:
        """``"ViT-B-32/openai"``-style identifier used in result records and cache keys."""
        return f"{self.model_name}/{self.pretrained}"

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def visual_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copy of the image encoder's weights (the tensors task vectors cover)."""
        return {k: v.detach().clone() for k, v in self.model.visual.state_dict().items()}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers (False at once when HF_HUB_OFFLINE is set)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _require_weights_or_network(model_name: str, pretrained: str, cache_dir: str | os.PathLike | None) -> None:
    """Fail in seconds, saying where the weights go, when they are neither cached nor downloadable.

    Without this, open_clip spends most of a minute in Hub retries offline and ends in a raw error.
    """
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    if not cfg or "file" in cfg:
        return
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    repo, filename = os.path.split(hub) if hub else ("", "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for name in names:
                hit = try_to_load_from_cache(repo, name, cache_dir=None if cache_dir is None else str(cache_dir))
                if isinstance(hit, str):
                    return
    if url and (Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)).is_file():
        return
    if _hub_reachable():
        return
    fetch = (f"`huggingface-cli download {repo} {names[0]}` on a machine with internet, then copy its Hugging "
             f"Face cache (~/.cache/huggingface/hub, or pass cache_dir=) here" if repo else f"{url} into {cache_dir}")
    raise FileNotFoundError(
        f"open_clip weights {model_name}/{pretrained} are not on this machine and the Hugging Face Hub cannot be "
        f"reached (offline). Fetch them with {fetch}; or save the weights as one safetensors file and pass "
        f"load_clip({model_name!r}, pretrained=None, checkpoint='path/to/weights.safetensors').")


def load_clip(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ClipBackbone:
    """Create an open_clip model, optionally from pretrained weights or a local checkpoint.

    Args:
        model_name: open_clip architecture (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``,
            or a name registered with :func:`register_model_config`).
        pretrained: open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``...),
            or None for random initialisation.
        checkpoint: A local safetensors file with the full CLIP state dict or the
            image encoder alone (keys with or without the ``visual.`` prefix);
            loaded after creation.
        device: Torch device (None: cuda if available, else cpu).
        cache_dir: Where open_clip caches downloaded weights.

    Returns:
        A :class:`ClipBackbone` in eval mode on ``device``.

    Raises:
        ValueError: Unknown architecture or tag (the message lists the valid ones),
            or a checkpoint that does not fit the architecture.
        FileNotFoundError: Pretrained weights neither cached nor downloadable (offline); the
            message says where to put them, in seconds rather than after the Hub's retries.
    """
    if model_name == TINY_MODEL:
        register_tiny_model()
    models = open_clip.list_models()
    if model_name not in models:
        raise ValueError(
            f"unknown open_clip model {model_name!r}; valid models are {models} "
            f"(or register a config with negkit.clip.register_model_config)"
        )
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(
                f"unknown pretrained tag {pretrained!r} for {model_name!r}; valid tags are {tags}. "
                "Use pretrained=None with checkpoint=<file.safetensors> for local weights."
            )
        _require_weights_or_network(model_name, pretrained, cache_dir)
    device = resolve_device(device)
    model, train_preprocess, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device, cache_dir=None if cache_dir is None else str(cache_dir)
    )
    label = weights_id = pretrained or "random"
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint)
        label, stat = Path(checkpoint).stem, Path(checkpoint).stat()
        ident = f"{Path(checkpoint).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        weights_id = f"{label}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(float(m) for m in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(s) for s in cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return ClipBackbone(model, tokenizer, strip_normalize(preprocess), mean, std, model_name, label, weights_id,
                        train_preprocess=strip_normalize(train_preprocess))


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors checkpoint into an open_clip model, checking every key.

    The file may hold the whole CLIP state dict or only the image encoder (keys
    with or without ``visual.``).

    Raises:
        ValueError: Names the first key that is missing, unexpected or of the wrong shape.
    """
    sd = nkio.load_state_dict(path, device="cpu")
    full = model.state_dict()
    if not any(k.startswith("visual.") for k in sd):  # image encoder alone, saved from model.visual
        sd = {f"visual.{k}": v for k, v in sd.items()}
    visual_only = all(k.startswith("visual.") for k in sd)
    expected = {k: v for k, v in full.items() if k.startswith("visual.")} if visual_only else full
    for key in sorted(expected):
        if key not in sd:
            raise ValueError(
                f"checkpoint {path} does not fit {type(model).__name__}: key {key!r} is missing "
                f"(it has {len(sd)} tensors); was it saved from another architecture?"
            )
        if tuple(sd[key].shape) != tuple(expected[key].shape):
            raise ValueError(
                f"checkpoint {path} does not fit the architecture: {key!r} has shape "
                f"{tuple(sd[key].shape)}, the model expects {tuple(expected[key].shape)}"
            )
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise ValueError(f"checkpoint {path} has key {extra[0]!r} that the model does not have ({len(extra)} extra keys)")
    model.load_state_dict(sd, strict=not visual_only)


class ImageClassifier(nn.Module):
    """Normalize -> CLIP image encoder -> L2 normalisation -> frozen zero-shot head.

    Args:
        visual: open_clip image encoder (``clip_model.visual``); trainable.
        head: Frozen linear head whose weight is ``logit_scale * text_embeddings``
            (see :func:`negkit.clip.heads.build_head`).
        mean: Pixel mean for the Normalize layer.
        std: Pixel std.
    """

    def __init__(self, visual: nn.Module, head: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.visual = visual
        self.head = head
        for p in self.head.parameters():
            p.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings, (B, D), of raw [0, 1] pixels (B, 3, H, W)."""
        return F.normalize(self.visual(self.normalize(x)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def encoder(self) -> nn.Module:
        """The image encoder whose weights θ are trained and negated (inside a linearised wrapper, if any)."""
        return getattr(self.visual, "module", self.visual)

    @classmethod
    def from_backbone(cls, backbone: ClipBackbone, head: nn.Module, *, copy: bool = True,
                      finetuning_mode: str = "standard") -> "ImageClassifier":
        """Classifier over ``backbone``'s image encoder (deep-copied unless ``copy=False``).

        Args:
            backbone: The pretrained CLIP.
            head: Frozen zero-shot head.
            copy: Deep-copy the encoder (the backbone stays unchanged).
            finetuning_mode: ``"standard"``, or ``"linear"`` for the encoder's first-order
                Taylor expansion around its current weights
                (:class:`negkit.clip.linearize.LinearizedModel`).
        """
        visual = copy_module.deepcopy(backbone.model.visual) if copy else backbone.model.visual
        if check_finetuning_mode(finetuning_mode) == "linear":
            visual = LinearizedModel(visual)
        return cls(visual, head, backbone.mean, backbone.std)
