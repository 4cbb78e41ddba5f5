"""Image transforms of the CLIP task-negation pipeline (PIL image -> [0, 1] tensor, no Normalize).

The evaluation preprocessing (:func:`clip_transform`), open_clip's training preprocessing
(:func:`clip_train_transform`), the reference's timm augmentation (:func:`timm_train_transform`)
and its centre-crop RandAugment alternative (:func:`randaugment_transform`); every training
transform starts with :class:`ToRGB`. The datasets they are applied to live in
:mod:`negkit.clip.datasets`; normalisation happens inside the model
(:class:`negkit.models.Normalize`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import open_clip
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from negkit.clip.model import strip_normalize

__all__ = ["ToRGB", "clip_transform", "clip_train_transform", "timm_train_transform", "randaugment_transform"]

_TO_TENSOR = (T.ToTensor, open_clip.transform.MaybeToTensor)


class ToRGB:
    """PIL image -> 3-channel RGB; a single-channel image (MNIST's ``"L"``) is also resized first.

    The NegMerge release feeds single-channel datasets to its training transform as
    ``Grayscale(3)`` images resized to 224 (timm's RandAugment needs RGB fill colours and
    fails on ``"L"`` images); every training transform of the kit starts with this step.
    A class, not a lambda, so DataLoader workers can pickle it.
    """

    SINGLE = ("1", "L", "I", "I;16", "F", "LA")  # a palette ("P") image may hold colours: converted as RGB

    def __init__(self, image_size: int = 224) -> None:
        self.image_size = int(image_size)

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image) or img.mode == "RGB":
            return img
        if img.mode in self.SINGLE:
            img = T.Resize(self.image_size)(img.convert("L"))
        return img.convert("RGB")

    def __repr__(self) -> str:
        return f"ToRGB(image_size={self.image_size})"


def clip_train_transform(image_size: int = 224, preprocess: Callable | None = None) -> T.Compose:
    """open_clip's *training* preprocessing without Normalize (PIL -> [0, 1] tensor), after :class:`ToRGB`.

    What the release's members without RandAugment train on: the model's train transform
    from ``open_clip.create_model_and_transforms`` (RandomResizedCrop scale 0.9–1, RGB
    conversion, ToTensor).

    Args:
        image_size: Model input size, used when ``preprocess`` is None.
        preprocess: The model's own train transform (``ClipBackbone.train_preprocess``); None
            builds open_clip's default one at ``image_size`` (``open_clip.image_transform(is_train=True)``,
            which ``create_model_and_transforms`` returns for models without a preprocess config).
    """
    train_tf = strip_normalize(preprocess if preprocess is not None
                               else open_clip.image_transform(image_size, is_train=True))
    size = _crop_size(train_tf, image_size)
    return T.Compose([ToRGB(size), *train_tf.transforms])


def _crop_size(transform: T.Compose, default: int) -> int:
    """The output side of a transform's (random-resized or centre) crop, or ``default``."""
    for t in transform.transforms:
        size = getattr(t, "size", None)
        if isinstance(t, (T.RandomResizedCrop, T.CenterCrop)) and size is not None:
            return int(min(size) if isinstance(size, (tuple, list)) else size)
    return int(default)


def clip_transform(image_size: int = 224) -> T.Compose:
    """open_clip's evaluation preprocessing at ``image_size`` without Normalize (PIL -> [0, 1] tensor)."""
    return strip_normalize(open_clip.image_transform(image_size, is_train=False))


def timm_train_transform(image_size: int, magnitude: int, num_ops: int, mstd: float = 0.5,
                         mean: Sequence[float] = tuple(open_clip.OPENAI_DATASET_MEAN)) -> T.Compose:
    """The reference's training augmentation, built by timm's own factory (PIL -> [0, 1] tensor).

    NegMerge's pool fine-tunes on ``timm.data.create_transform(is_training=True, ...)``:
    RandomResizedCrop(image_size, scale 0.08–1, ratio 3/4–4/3, bilinear or bicubic at
    random), horizontal flip p = 0.5, RandAugment ``rand-m{m}-n{n}-mstd{mstd}`` (no colour
    jitter: timm drops it under RandAugment), then normalisation. Here timm is asked for
    ``normalize=False`` and the uint8 tensor it ends with is scaled to [0, 1]: the kit's
    models normalise as their first layer, so the result equals the reference's input
    after that layer. ``mean`` still matters before that: timm fills the pixels that
    rotations and translations uncover with it.
    """
    from timm.data import auto_augment, create_transform  # timm is slow to import; only here

    tf = create_transform(int(image_size), is_training=True, scale=(0.08, 1.0), hflip=0.5,
                          auto_augment=f"rand-m{int(magnitude)}-n{int(num_ops)}-mstd{mstd}", interpolation="random",
                          mean=tuple(mean), normalize=False)
    for step in tf.transforms:
        for op in getattr(step, "ops", ()):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = _posterize
    return T.Compose([ToRGB(image_size), *tf.transforms, T.ConvertImageDtype(torch.float32)])


def randaugment_transform(preprocess: T.Compose, magnitude: int, num_ops: int, mstd: float = 0.5) -> T.Compose:
    """``preprocess`` with timm's RandAugment ``rand-m{m}-n{n}-mstd{mstd}`` before the tensor conversion.

    An alternative to the reference's :func:`timm_train_transform`: the images are resized
    and centre-cropped as for evaluation, then RandAugmented, with no random crop and no
    flip (a less diverse pool; ``PoolConfig(augment="center")``).
    """
    steps = list(preprocess.transforms)
    size = next((getattr(t, "size") for t in steps if isinstance(t, T.CenterCrop)), (224, 224))
    hparams = {"translate_const": int(min(size) * 0.45), "img_mean": (124, 116, 104)}
    from timm.data import auto_augment  # timm is slow to import; only here

    ra = auto_augment.rand_augment_transform(f"rand-m{int(magnitude)}-n{int(num_ops)}-mstd{mstd}", hparams)
    for op in ra.ops:
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = _posterize
    # RandAugment works on PIL images: insert before the first step that makes a tensor.
    at = next((i for i, t in enumerate(steps) if isinstance(t, _TO_TENSOR)), len(steps))
    return T.Compose([ToRGB(min(size) if isinstance(size, (tuple, list)) else size)] + steps[:at] + [ra] + steps[at:])


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's Posterize op for Pillow >= 12, which refuses ``bits=0``.

    timm's RandAugment asks for 0 bits at magnitudes below 2.5; older Pillow then
    returned a black image (every bit masked), which is what the paper's pools saw.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)
