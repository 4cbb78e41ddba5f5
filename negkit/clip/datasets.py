"""The CLIP task-negation datasets, registered into :mod:`negkit.data`.

``cars, dtd, eurosat, gtsrb, mnist, resisc45, sun397, svhn, imagenet`` each load
from one of three sources (``source=``):

* ``"torchvision"``: the torchvision dataset class under ``root`` (never with
  ``download=True``; RESISC45 has no torchvision class);
* ``"imagefolder"``: ``root/train/<class>/*`` and ``root/test/<class>/*``
  (ImageNet: ``root/train`` and ``root/val``), or the same under ``root/<name>/``;
* ``"hf"``: a Hugging Face dataset id (``pip install datasets``), read from the
  local Hugging Face cache unless ``download=True``.

Splits follow the task-vector code (task_vectors, reused by NegMerge):
``{dataset}Val`` is :func:`negkit.data.splits.reference_val_split`, i.e.
``random_split(train, [n - v, v], generator=torch.Generator().manual_seed(0))`` with
v = min(⌊0.1·n⌋, 5000), the first part trains and the second validates (for
ImageNet: the 5,000 held-out training images of ImageNetVal); ``test`` is the
dataset's test split (ImageNet: its official validation set). Three datasets have
their own layout in the reference, reproduced here:

* EuroSAT (``source="imagefolder"``): ``root/EuroSAT_splits/{train,val,test}``;
  validation is the separate ``val`` folder and fine-tuning uses *all* of ``train``.
* DTD (``source="imagefolder"``): ``root/dtd/{train,val}``; the reference tests on
  ``dtd/val``. With ``source="torchvision"`` the test split is torchvision's ``test``
  (partition 1), which is what the reference falls back to without the folders.
* RESISC45 (default source): ``root/resisc45/NWPU-RESISC45/<class>/*.jpg`` with the
  fixed split files ``root/resisc45/resisc45-{train,test}.txt`` (18,900 / 6,300
  images; the 6,300 of ``resisc45-val.txt`` are not used, as in the reference).

Datasets without an official test split in torchvision (EuroSAT, SUN397) get a
seeded held-out test part, recorded in ``bundle.meta``. Images are open_clip's
preprocessing *without* Normalize, so pixels stay in [0, 1]; ``bundle.mean/std``
are CLIP's, applied inside the model (:class:`negkit.models.Normalize`).

Single-channel datasets (:data:`GREYSCALE`: MNIST) reach the transforms as ``"L"``
images whatever the source; every training transform (:mod:`negkit.clip.transforms`)
starts with :class:`~negkit.clip.transforms.ToRGB`, which turns them into 3-channel
images at the model's size first (the release's ``Grayscale(3)`` + resize), so timm's
RandAugment, which needs RGB, never sees one channel. The evaluation transform
converts to RGB itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import open_clip
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from negkit import io as nkio
from negkit.data import DatasetBundle, register_dataset
from negkit.data.splits import reference_val_split
from negkit.clip import prompts
from negkit.clip.transforms import clip_transform

__all__ = [
    "CLIP_DATASETS", "SOURCES", "HF_IDS", "GREYSCALE",
    "holdout_split", "write_digits_imagefolder", "write_smoke_data", "HFImageDataset",
]

log = logging.getLogger(__name__)

CLIP_DATASETS = ("cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn", "imagenet")
SOURCES = ("torchvision", "imagefolder", "hf")
#: Default Hugging Face ids (override with ``hf_id=``); (id, config or None, test split name).
HF_IDS: dict[str, tuple[str, str | None, str]] = {
    "cars": ("tanganke/stanford_cars", None, "test"),
    "dtd": ("tanganke/dtd", None, "test"),
    "eurosat": ("tanganke/eurosat", None, "test"),
    "gtsrb": ("tanganke/gtsrb", None, "test"),
    "mnist": ("ylecun/mnist", None, "test"),
    "resisc45": ("tanganke/resisc45", None, "test"),
    "sun397": ("tanganke/sun397", None, "test"),
    "svhn": ("ufldl-stanford/svhn", "cropped_digits", "test"),
    "imagenet": ("ILSVRC/imagenet-1k", None, "validation"),
}
_WHERE = {
    "cars": "Stanford Cars (torchvision StanfordCars layout: root/stanford_cars/...)",
    "dtd": "DTD (https://www.robots.ox.ac.uk/~vgg/data/dtd/; torchvision layout root/dtd/dtd/...)",
    "eurosat": "EuroSAT RGB (torchvision layout root/eurosat/2750/<class>/...)",
    "gtsrb": "GTSRB (torchvision layout root/gtsrb/GTSRB/...)",
    "mnist": "MNIST (torchvision layout root/MNIST/raw/...)",
    "resisc45": "NWPU-RESISC45 with the split files of task_vectors/torchgeo (root/resisc45/NWPU-RESISC45/"
                "<class>/*.jpg and root/resisc45/resisc45-{train,test}.txt)",
    "sun397": "SUN397 (torchvision layout root/SUN397/...)",
    "svhn": "SVHN cropped digits (torchvision layout root/train_32x32.mat, root/test_32x32.mat)",
    "imagenet": "ILSVRC-2012 (torchvision ImageNet layout: root/ILSVRC2012_devkit_t12.tar.gz + train/val tars)",
}
# Test fraction for torchvision datasets that ship no test split.
_TEST_FRACTION = {"eurosat": 0.1, "sun397": 0.5}
#: Single-channel datasets: every source hands their images over as ``"L"`` (torchvision's MNIST
#: class does; image folders and Hugging Face copies are converted), so they all meet
#: :class:`~negkit.clip.transforms.ToRGB`.
GREYSCALE = ("mnist",)
# ImageFolder layouts of the reference: folder of each split under the dataset folder, the dataset
# folder's name when it is not the registry name, and datasets validated on a folder of their own.
_FOLDERS = {"imagenet": {"test": "val"}, "dtd": {"test": "val"}, "eurosat": {"val": "val"}}
_BASE = {"eurosat": "EuroSAT_splits"}


def holdout_split(n: int, fraction: float, cap: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (rest, held-out) index arrays: ``min(round(fraction·n), cap)`` images held out."""
    k = int(round(fraction * n))
    k = min(k, cap) if cap is not None else k
    if not 0 < k < n:
        raise ValueError(f"cannot hold out {k} of {n} images (fraction={fraction}, cap={cap})")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


class HFImageDataset(Dataset):
    """A Hugging Face image-classification split as ``(transform(image), label)`` items.

    Images are converted to ``mode`` (``"RGB"``, or ``"L"`` for single-channel datasets) first.
    """

    def __init__(self, hf_split: Any, transform: Callable, image_key: str = "image", label_key: str = "label",
                 mode: str = "RGB") -> None:
        self.data, self.transform = hf_split, transform
        self.image_key, self.label_key, self.mode = image_key, label_key, mode
        self.targets = np.asarray(hf_split[label_key], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.data[int(i)]
        return self.transform(row[self.image_key].convert(self.mode)), int(row[self.label_key])


def _open_greyscale(path: str) -> Image.Image:
    """An image file as a single-channel ``"L"`` image (the ImageFolder loader of :data:`GREYSCALE` datasets)."""
    with open(path, "rb") as f:
        return Image.open(f).convert("L")


def _clean(name: str) -> str:
    return name.replace("_", " ").replace("/", " ").strip()


def _classnames(name: str, found: Sequence[str]) -> tuple[str, ...]:
    """CLIP-paper names where the kit has them for this many classes, else the data's own names."""
    known = prompts.CLASSNAMES.get(name)
    if name == "imagenet" and len(found) == len(open_clip.IMAGENET_CLASSNAMES):
        return tuple(open_clip.IMAGENET_CLASSNAMES)
    if known is not None and len(known) == len(found):
        return tuple(known)
    return tuple(_clean(str(c)) for c in found)


def _missing(name: str, source: str, root: Any, detail: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} not found at root={root} (source={source!r}): {detail}. Nothing is downloaded: fetch "
        f"{_WHERE[name]} and put it under that root, or pass source='imagefolder' "
        f"(root/train/<class>/*, root/test/<class>/*) or source='hf' (pip install datasets)."
    )


def _resisc45_split(root: Path, split: str, transform: Callable) -> tuple[Dataset, Sequence[str]]:
    """RESISC45 as the reference reads it: ImageFolder over ``NWPU-RESISC45`` keeping the split file's images."""
    base = root / "resisc45"
    listing = base / f"resisc45-{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"split file {listing} does not exist")
    keep = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
    ds = tvd.ImageFolder(str(base / "NWPU-RESISC45"), transform=transform,
                         is_valid_file=lambda path: os.path.basename(path) in keep)
    return ds, ds.classes


def _load_torchvision(name: str, root: Path, train: bool, transform: Callable) -> tuple[Dataset, Sequence[str]]:
    split = "train" if train else "test"
    if name == "resisc45":
        return _resisc45_split(root, split, transform)
    if name == "cars":
        ds = tvd.StanfordCars(root, split=split, transform=transform, download=False)
        return ds, ds.classes
    if name == "dtd":
        ds = tvd.DTD(root, split=split, transform=transform, download=False)
        return ds, ds.classes
    if name == "gtsrb":
        ds = tvd.GTSRB(root, split=split, transform=transform, download=False)
        return ds, [str(i) for i in range(43)]
    if name == "mnist":
        ds = tvd.MNIST(root, train=train, transform=transform, download=False)
        return ds, [str(i) for i in range(10)]
    if name == "svhn":
        ds = tvd.SVHN(root, split=split, transform=transform, download=False)
        return ds, [str(i) for i in range(10)]
    if name == "imagenet":
        ds = tvd.ImageNet(root, split="train" if train else "val", transform=transform)
        return ds, [c[0] for c in ds.classes]
    if name in ("eurosat", "sun397"):  # one pool of images; the test part is held out below
        cls = tvd.EuroSAT if name == "eurosat" else tvd.SUN397
        ds = cls(root, transform=transform, download=False)
        return ds, ds.classes
    raise ValueError(f"unknown dataset {name!r}; valid datasets are {list(CLIP_DATASETS)}")


@contextlib.contextmanager
def _hf_offline(hfd: Any) -> Iterator[None]:
    """Hugging Face offline mode for one call: only the local cache is read, no HTTP request is made."""
    import huggingface_hub.constants as hub

    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in
             [(hub, "HF_HUB_OFFLINE"), (hfd.config, "HF_HUB_OFFLINE"), (hfd.config, "HF_DATASETS_OFFLINE")]
             if hasattr(mod, attr)]
    try:
        for mod, attr, _ in saved:
            setattr(mod, attr, True)
        yield
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)


def _imagefolder_split(name: str, base: Path, split: str) -> Path:
    """The folder of ``split`` in an image-folder layout; SUN397's test images sit in ``test/`` or, in the
    reference's layout, ``val/`` (whichever exists; ``test/`` first)."""
    if name == "sun397" and split == "test":
        for sub in ("test", "val"):
            if (base / sub).is_dir():
                log.info("sun397: test images from %s", base / sub)
                return base / sub
    return base / _FOLDERS.get(name, {}).get(split, split)


def _load(name: str, source: str, root: Any, split: str, transform: Callable, hf_id: str | None,
          download: bool) -> tuple[Dataset, Sequence[str]]:
    """One split (``"train"``, ``"test"``, or for EuroSAT's folders ``"val"``) of ``name`` from ``source``."""
    train = split == "train"
    if source == "torchvision":
        if root is None:
            raise _missing(name, source, root, "no root given")
        try:
            return _load_torchvision(name, Path(root), train, transform)
        except (RuntimeError, FileNotFoundError, OSError) as err:
            raise _missing(name, source, root, str(err)) from err
    if source == "imagefolder":
        if root is None:
            raise _missing(name, source, root, "no root given")
        base = Path(root) if (Path(root) / "train").is_dir() else Path(root) / _BASE.get(name, name)
        folder = _imagefolder_split(name, base, split)
        if not folder.is_dir():
            raise _missing(name, source, root, f"folder {folder} does not exist")
        loader = _open_greyscale if name in GREYSCALE else tvd.folder.default_loader
        ds = tvd.ImageFolder(str(folder), transform=transform, loader=loader)
        return ds, ds.classes
    if source == "hf":
        try:
            import datasets as hfd
        except ImportError as err:
            raise ImportError(f"source='hf' for {name} needs the Hugging Face datasets package: pip install datasets") from err
        hid, config, test_split = HF_IDS[name]
        hid = hf_id or hid
        try:
            with contextlib.nullcontext() if download else _hf_offline(hfd):
                split = hfd.load_dataset(hid, config, split="train" if train else test_split,
                                         cache_dir=None if root is None else str(root))
        except Exception as err:  # the datasets package raises many types for a missing cache
            raise _missing(name, source, root, f"could not load {hid!r} ({err}); pass download=True to fetch it") from err
        names = split.features["label"].names
        return HFImageDataset(split, transform, mode="L" if name in GREYSCALE else "RGB"), names
    raise ValueError(f"unknown source {source!r} for {name}; valid sources are {list(SOURCES)}")


def _build(name: str, root: str | os.PathLike | None = None, *, source: str = "torchvision",
           transform: Callable | None = None, train_transform: Callable | None = None, image_size: int = 224,
           val_fraction: float = 0.1, val_cap: int = 5000, seed: int = 0, hf_id: str | None = None,
           download: bool = False) -> DatasetBundle:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r} for {name}; valid sources are {list(SOURCES)}")
    transform = transform or clip_transform(image_size)
    train_transform = train_transform or transform
    # Two views of the training images: augmented for training, plain for {dataset}Val. Without
    # augmentation they are one dataset, loaded once (for ImageNet, one scan of 1.28 M files instead of two).
    train_all, found = _load(name, source, root, "train", train_transform, hf_id, download)
    plain_all = train_all if train_transform is transform else _load(name, source, root, "train", transform, hf_id,
                                                                      download)[0]
    meta: dict[str, Any] = {"source": source, "root": None if root is None else str(root), "seed": seed,
                            "val": (f"reference random_split: min(floor({val_fraction:g}·n), {val_cap}) of train, "
                                    f"torch.Generator seed {seed}")}
    if source == "torchvision" and name in _TEST_FRACTION:
        pool_idx, test_idx = holdout_split(len(train_all), _TEST_FRACTION[name], None, seed)
        test = Subset(plain_all, test_idx.tolist())
        meta["test"] = f"seeded {_TEST_FRACTION[name]:.0%} of all images (torchvision has no test split)"
    else:
        pool_idx = np.arange(len(train_all))
        test, _ = _load(name, source, root, "test", transform, hf_id, download)
        meta["test"] = {"imagenet": "official validation set", "resisc45": "split file resisc45-test.txt"}.get(
            name, "official test split")
        if source == "imagefolder" and name == "dtd":
            meta["test"] = "the dtd/val folder (as the reference)"
        if source == "imagefolder" and name == "sun397":
            base = Path(root) if (Path(root) / "train").is_dir() else Path(root) / _BASE.get(name, name)
            meta["test"] = f"the sun397/{_imagefolder_split(name, base, 'test').name} folder"
    if source == "imagefolder" and "val" in _FOLDERS.get(name, {}):
        # EuroSAT in the reference: its own val folder, and fine-tuning on all of train.
        val_set, _ = _load(name, source, root, "val", transform, hf_id, download)
        train_set = train_all
        meta["val"] = "the separate val folder (as the reference); all of train fine-tunes"
    else:
        rest, val = reference_val_split(len(pool_idx), val_fraction, val_cap, seed)
        train_set, val_set = Subset(train_all, pool_idx[rest].tolist()), Subset(plain_all, pool_idx[val].tolist())
    if name == "imagenet":
        where = (hf_id or HF_IDS[name][0]) if source == "hf" else str(root)
        meta["variant"] = (f"ILSVRC-2012 (1,000 classes) via {source} from {where}; test = its official 50k "
                           "validation set, ImageNetVal = 5,000 held-out training images")
    meta["sizes"] = {"train": len(train_set), "val": len(val_set), "test": len(test)}
    return DatasetBundle(
        name=name, train=train_set, val=val_set, test=test,
        classnames=_classnames(name, found),
        mean=tuple(open_clip.OPENAI_DATASET_MEAN), std=tuple(open_clip.OPENAI_DATASET_STD), meta=meta,
    )


def _register(name: str) -> None:
    def builder(root: str | os.PathLike | None = None, **kw: Any) -> DatasetBundle:
        return _build(name, root, **kw)

    builder.__name__ = name
    builder.__doc__ = (
        f"{name} for CLIP task negation (see :mod:`negkit.clip.datasets`).\n\n"
        "Args:\n    root: Data folder.\n    **kw: source ('torchvision'|'imagefolder'|'hf'), transform, "
        "train_transform, image_size, val_fraction, val_cap, seed, hf_id, download."
    )
    register_dataset(name)(builder)


for _name in CLIP_DATASETS:
    _register(_name)


def write_digits_imagefolder(root: str | os.PathLike, *, name: str = "mnist", size: int = 32,
                             per_class: int | None = None, test_fraction: float = 0.3, invert: bool = False,
                             test_split: str = "test", seed: int = 0) -> Path:
    """Write scikit-learn's digits as an RGB ImageFolder ``root/name/{train,test}/<digit>/*.png``.

    Offline stand-in for the real datasets in tests and smoke runs. Class folders
    are ``"0"``..``"9"`` (the MNIST/SVHN class names). ``invert`` draws dark digits
    on a coloured background so that two written datasets differ.

    Returns:
        The dataset folder ``root/name``.
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    rng = np.random.default_rng(seed)
    out = Path(root) / name
    counts: dict[tuple[str, int], int] = {}
    for label in range(10):
        idx = np.flatnonzero(raw.target == label)
        idx = rng.permutation(idx)[: per_class or len(idx)]
        n_test = max(1, int(round(test_fraction * len(idx))))
        for j, i in enumerate(idx):
            split = test_split if j < n_test else "train"
            grey = (raw.images[i] / 16.0 * 255).astype(np.uint8)
            rgb = np.stack([grey, grey // 2, 255 - grey] if invert else [grey] * 3, axis=-1)
            img = Image.fromarray(rgb, "RGB").resize((size, size), Image.BILINEAR)
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            with nkio.atomic_write(folder / f"{i:04d}.png") as tmp:
                img.save(tmp, format="PNG")
            counts[(split, label)] = counts.get((split, label), 0) + 1
    log.info("wrote %d digit images to %s", sum(counts.values()), out)
    return out


def write_smoke_data(root: str | os.PathLike, *, size: int = 32, per_class: int = 12) -> Path:
    """Offline stand-ins for smoke runs: ``mnist``, ``svhn`` (inverted colours) and ``imagenet``
    (the control task, a differently drawn digit set with a ``val`` split) as ImageFolders.

    Existing folders are kept. Returns ``root`` (pass it as ``data_root`` with ``source="imagefolder"``).
    """
    root = Path(root)
    specs = {"mnist": dict(invert=False, seed=0), "svhn": dict(invert=True, seed=1),
             "imagenet": dict(invert=True, seed=2, test_split="val")}
    for name, kw in specs.items():
        if not (root / name).is_dir():
            write_digits_imagefolder(root, name=name, size=size, per_class=per_class, **kw)
    return root
