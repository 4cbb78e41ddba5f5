"""Learning δ with the classifier frozen: one forget set, or one vector per class.

:func:`learn_forget_vector` minimises the objective of ``loss.py`` over δ with SGD
(momentum, exponential learning-rate decay per epoch), inside :func:`frozen` so the
model's state dict is bitwise unchanged. Each step draws a batch with
:func:`iterate_batches` — by default one shuffle of D_f ∪ D_r, as in the authors' code —
and learns on :func:`crop_flip` views of it. :func:`learn_classwise` learns δ_c for each
class c (forget c, keep the rest), the building blocks of forget-vector arithmetic
(``arithmetic.py``). Learned vectors can be cached on disk; a cached file is reused only
if it was learned with the same config.
"""
from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from negkit.config import from_dict, replace, to_dict
from negkit.data import labels_of
from negkit.data.splits import make_forget_split, subset
from negkit.evaluate import resolve_device
from negkit.forget_vectors.loss import ForgetVectorConfig, forget_vector_loss
from negkit.forget_vectors.vector import ForgetVector, _add, project

log = logging.getLogger(__name__)

__all__ = ["frozen", "crop_flip", "iterate_batches", "learn_forget_vector", "learn_classwise"]


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


def crop_flip(x: Tensor, *, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random views of a batch: zero-pad by ``padding``, crop back to (H, W), mirror half of them.

    The CIFAR training views of the reference code (RandomCrop(32, padding=4) and
    RandomHorizontalFlip), drawn independently per image from ``generator``.

    Args:
        x: Images (B, C, H, W).
        padding: Zero padding on every side; each crop is shifted by (i − padding, j − padding)
            with i, j uniform in {0, ..., 2·padding}.
        flip: Mirror each image left-right with probability 1/2 (after the crop).
        generator: Source of the offsets and flips.

    Returns:
        (B, C, H, W) views; ``x`` itself when ``padding == 0`` and not ``flip``.
    """
    b, c, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
        top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (top[:, None] + torch.arange(h))[:, None, :, None].to(x.device)   # (B, 1, H, 1)
        cols = (left[:, None] + torch.arange(w))[:, None, None, :].to(x.device)  # (B, 1, 1, W)
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mirror = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x


class _Tagged(Dataset):
    """(image, label, is_forget) items of one set."""

    def __init__(self, dataset: Dataset, is_forget: bool):
        self.dataset, self.is_forget = dataset, is_forget

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int, bool]:
        x, y = self.dataset[i][:2]
        return x, y, self.is_forget


def _endless(loader: DataLoader) -> Iterator:
    while True:  # a new pass reshuffles (the loader's generator moves on)
        yield from loader


def iterate_batches(forget: Dataset, retain: Dataset,
                    cfg: ForgetVectorConfig) -> tuple[int, Iterator[tuple[Tensor, Tensor, Tensor]]]:
    """The training batches of a forget vector, endless, reproducible from ``cfg.seed``.

    ``batching="joint"`` (reference): D_f ∪ D_r shuffled together, ``cfg.batch_size`` images
    per step, so a batch holds forget images in their share of the data; an epoch is one
    pass. ``batching="mixed"``: ``cfg.forget_batch_size`` forget images (cycling through
    D_f) then ``cfg.retain_batch_size`` retain images per step; an epoch is one pass over D_r.

    Returns:
        ``(steps_per_epoch, batches)``; each batch is ``(x (B, C, H, W), y (B,), is_forget (B,) bool)``
        of clean images (augmentation happens in the learning loop).
    """
    if cfg.batching == "joint":
        both = ConcatDataset([_Tagged(forget, True), _Tagged(retain, False)])
        gen = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(both, batch_size=min(cfg.batch_size, len(both)), shuffle=True, generator=gen)
        steps = cfg.steps_per_epoch or math.ceil(len(both) / cfg.batch_size)
        return steps, ((x, y, f.bool()) for x, y, f in _endless(loader))

    def mixed() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        f_iter, r_iter = (_endless(DataLoader(ds, batch_size=min(bs, len(ds)), shuffle=True,
                                              generator=torch.Generator().manual_seed(seed)))
                          for ds, bs, seed in ((forget, cfg.forget_batch_size, cfg.seed),
                                               (retain, cfg.retain_batch_size, cfg.seed + 1)))
        for (xf, yf), (xr, yr) in zip(f_iter, r_iter):
            is_forget = torch.cat([torch.ones(len(yf), dtype=torch.bool), torch.zeros(len(yr), dtype=torch.bool)])
            yield torch.cat([xf, xr]), torch.cat([yf, yr]), is_forget

    return cfg.steps_per_epoch or math.ceil(len(retain) / cfg.retain_batch_size), mixed()


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
              arithmetic: bool, on_epoch: Callable[[int, Tensor], None] | None = None) -> list[dict[str, float]]:
    """Minimise :func:`forget_vector_loss` over ``param`` with the model frozen.

    ``make_delta()`` builds δ (C, H, W) from ``param``: δ itself (projected onto ``cfg.bound``
    after each step), or, with ``arithmetic``, Σ w_c δ_c from the weights w = ``param``.
    ``on_epoch(epoch, param)``, if given, sees a copy of ``param`` after every epoch (1-based);
    the schedule does not depend on ``cfg.epochs``, so the copy after epoch e is exactly what
    a run of e epochs returns.
    """
    opt = torch.optim.SGD([param], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)
    steps, batches = iterate_batches(forget, retain, cfg)
    views = torch.Generator().manual_seed(cfg.seed + 2)
    history = []
    with frozen(model):
        for epoch in tqdm(range(cfg.epochs), desc=desc, disable=not progress):
            sums = {"loss": 0.0, "retain": 0.0, "forget": 0.0, "norm": 0.0}
            for _ in range(steps):
                x, y, is_forget = next(batches)
                if cfg.augment != "none":
                    x = crop_flip(x, padding=cfg.crop_padding, flip=cfg.augment == "crop_flip", generator=views)
                x, y, is_forget = x.to(device), y.to(device).long(), is_forget.to(device)
                delta = make_delta()
                logits = model(_add(x, delta, cfg.clip))  # (B, K); δ enters before the model's Normalize
                terms = forget_vector_loss(logits[is_forget], y[is_forget], logits[~is_forget], y[~is_forget],
                                           delta, cfg, weights=param if arithmetic else None)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                if not arithmetic and cfg.bound != "none":
                    with torch.no_grad():  # projected gradient descent onto the δ ball
                        param.copy_(project(param, cfg.bound, cfg.eps))
                for k in sums:
                    sums[k] += float(terms[k].detach()) / steps
            sched.step()
            history.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"], **sums})
            log.debug("%s epoch %d: %s", desc, epoch, sums)
            if on_epoch is not None:
                on_epoch(epoch + 1, param.detach().clone())
    return history


def learn_forget_vector(model: nn.Module, forget: Dataset, retain: Dataset,
                        cfg: ForgetVectorConfig | Mapping[str, Any] | None = None, *,
                        device: str | torch.device | None = None, progress: bool = False,
                        meta: Mapping[str, Any] | None = None,
                        on_epoch: Callable[[int, Tensor], None] | None = None) -> ForgetVector:
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
        on_epoch: Optional ``on_epoch(epoch, delta)`` called with a copy of δ after every
            epoch (1-based); δ after epoch e equals what ``epochs=e`` returns.

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
                        desc="forget vector", arithmetic=False, on_epoch=on_epoch)
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


def _cache_key(cfg: ForgetVectorConfig, vectors: Mapping[int, ForgetVector] | None = None,
               extra: Mapping[str, Any] | None = None) -> str:
    """JSON of what a cached vector depends on: the config (its effective fields), the
    class-wise vectors of arithmetic, and ``extra`` (e.g. a selection grid)."""
    inputs: dict[str, Any] = to_dict(cfg)
    # Fields a setting ignores are left out; so are settings at negkit's earlier behaviour
    # (mixed batches, clean images, the δ penalty), so vectors cached before these options
    # existed are still found, and only by configs that learn them the same way.
    drop = ["batching", "batch_size"] if cfg.batching == "mixed" else ["forget_batch_size", "retain_batch_size"]
    drop += ["augment", "crop_padding"] if cfg.augment == "none" else []
    drop += ["arithmetic_penalty"] if cfg.arithmetic_penalty == "delta" else []
    for k in drop:
        inputs.pop(k)
    if vectors is not None:  # arithmetic: the cached δ(w) is only valid for the same class-wise vectors
        inputs["vectors"] = {str(c): repr(float(v.delta.double().sum())) for c, v in vectors.items()}
    inputs.update(extra or {})
    return json.dumps(inputs, sort_keys=True)


def _cached(path: Path | None, cfg: ForgetVectorConfig, learn,
            vectors: Mapping[int, ForgetVector] | None = None, extra: Mapping[str, Any] | None = None) -> ForgetVector:
    """Load the vector at ``path`` if it was learned with ``cfg`` (and ``vectors``, ``extra``); else learn, save it."""
    key = _cache_key(cfg, vectors, extra)
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
