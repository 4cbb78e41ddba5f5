"""Learning δ with the classifier frozen: one forget set, or one vector per class.

:func:`learn_forget_vector` minimises the objective of ``loss.py`` over δ with SGD
(momentum, exponential learning-rate decay per epoch), on batches that mix forget and
retain samples, inside :func:`frozen` so the model's state dict is bitwise unchanged.
:func:`learn_classwise` learns δ_c for each class c (forget c, keep the rest), the
building blocks of forget-vector arithmetic (``arithmetic.py``). Learned vectors can be
cached on disk; a cached file is reused only if it was learned with the same config.
"""
from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from negkit.config import from_dict, replace, to_dict
from negkit.data import labels_of
from negkit.data.splits import make_forget_split, subset
from negkit.evaluate import resolve_device
from negkit.forget_vectors.loss import ForgetVectorConfig, forget_vector_loss
from negkit.forget_vectors.vector import ForgetVector, _add, project

log = logging.getLogger(__name__)

__all__ = ["frozen", "learn_forget_vector", "learn_classwise"]


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


def _batches(dataset: Dataset, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled batches (reshuffled every pass, reproducible from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, generator=gen)
    while True:
        yield from loader


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
              project_param: bool) -> list[dict[str, float]]:
    """Minimise :func:`forget_vector_loss` over ``param`` with the model frozen.

    ``make_delta()`` builds δ (C, H, W) from ``param`` (δ itself, or Σ w_c δ_c).
    """
    opt = torch.optim.SGD([param], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)
    steps = cfg.steps_per_epoch or math.ceil(len(retain) / cfg.retain_batch_size)
    f_iter = _batches(forget, cfg.forget_batch_size, cfg.seed)
    r_iter = _batches(retain, cfg.retain_batch_size, cfg.seed + 1)
    history = []
    with frozen(model):
        for epoch in tqdm(range(cfg.epochs), desc=desc, disable=not progress):
            sums = {"loss": 0.0, "retain": 0.0, "forget": 0.0, "norm": 0.0}
            for _ in range(steps):
                xf, yf = next(f_iter)
                xr, yr = next(r_iter)
                x = torch.cat([xf, xr]).to(device)
                y = torch.cat([yf, yr]).to(device).long()
                delta = make_delta()
                logits = model(_add(x, delta, cfg.clip))  # (B, K); δ enters before the model's Normalize
                n = xf.shape[0]
                terms = forget_vector_loss(logits[:n], y[:n], logits[n:], y[n:], delta, cfg)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                if project_param and cfg.bound != "none":
                    with torch.no_grad():  # projected gradient descent onto the δ ball
                        param.copy_(project(param, cfg.bound, cfg.eps))
                for k in sums:
                    sums[k] += float(terms[k].detach()) / steps
            sched.step()
            history.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"], **sums})
            log.debug("%s epoch %d: %s", desc, epoch, sums)
    return history


def learn_forget_vector(model: nn.Module, forget: Dataset, retain: Dataset,
                        cfg: ForgetVectorConfig | Mapping[str, Any] | None = None, *,
                        device: str | torch.device | None = None, progress: bool = False,
                        meta: Mapping[str, Any] | None = None) -> ForgetVector:
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
                        desc="forget vector", project_param=True)
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


def _cached(path: Path | None, cfg: ForgetVectorConfig, learn,
            vectors: Mapping[int, ForgetVector] | None = None) -> ForgetVector:
    """Load the vector at ``path`` if it was learned with ``cfg`` (and ``vectors``); else learn and save it."""
    inputs: dict[str, Any] = to_dict(cfg)
    if vectors is not None:  # arithmetic: the cached δ(w) is only valid for the same class-wise vectors
        inputs["vectors"] = {str(c): repr(float(v.delta.double().sum())) for c, v in vectors.items()}
    key = json.dumps(inputs, sort_keys=True)
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
