"""NegGrad+: descend on D_r while ascending on D_f in every step (Kurmanji et al., NeurIPS 2023).

Each step joins a D_r batch and a D_f batch and minimises

    L = β·CE(f(x_r), y_r) − (1 − β)·CE(f(x_f), y_f),

the two batches through separate forward passes, as in the SCRUB repository's
``train_negrad``: one epoch is one pass over D_r, D_f cycled beside it
(``zip(retain, cycle(forget))``, see :class:`~negkit.unlearn.base.PairedSampler`).
With β = 1 the D_f rows are not even forwarded and the run is exactly FT on D_r.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

from negkit.unlearn.base import Marked, PairedSampler, UnlearnConfig, prepare, run_stage, split_marked

__all__ = ["NegGradPlusConfig", "neggrad_plus", "neggrad_plus_loss", "DEFAULTS", "GRID"]


@dataclasses.dataclass(frozen=True)
class NegGradPlusConfig(UnlearnConfig):
    """:class:`UnlearnConfig` plus NegGrad+'s trade-off.

    Attributes:
        beta: Weight β of the retain loss; the forget loss gets −(1 − β).
        forget_batch_size: D_f images per step (None: ``batch_size``).
    """

    beta: float = 0.999
    forget_batch_size: int | None = None

    RANGES = {**UnlearnConfig.RANGES, "beta": "[0, 1]", "forget_batch_size": ">= 1"}


#: SCRUB repository's ``negative_grad``: SGD at lr 0.01 without weight decay; its epochs (10)
#: scaled to digits like FT's. β: the kit's choice inside the paper's tuned range (close to 1).
DEFAULTS: dict[str, Any] = dict(epochs=5, lr=0.01, weight_decay=0.0, beta=0.999)

#: Validation candidates: how hard to push D_f, and the step size.
GRID: dict[str, tuple] = {"beta": (0.95, 0.99, 0.999), "lr": (0.01, 0.05)}


def neggrad_plus_loss(beta: float) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    """β·CE on the batch's D_r rows − (1 − β)·CE on its D_f rows (marked by :class:`Marked`)."""
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        forget, labels = split_marked(y)
        keep = ~forget
        loss = beta * F.cross_entropy(model(x[keep]), labels[keep])
        if beta < 1.0 and bool(forget.any()):
            loss = loss - (1.0 - beta) * F.cross_entropy(model(x[forget]), labels[forget])
        return loss
    return loss_fn


def neggrad_plus(model: nn.Module, forget: Dataset, retain: Dataset,
                 cfg: NegGradPlusConfig | Mapping | None = None, *, device: str | None = None,
                 out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """NegGrad+ for ``cfg.epochs`` passes over D_r. Returns an unlearned copy of ``model``.

    Raises:
        ValueError: An empty forget or retain set.
    """
    model, cfg = prepare(model, cfg, "neggrad_plus", NegGradPlusConfig, DEFAULTS, out_dir)
    if len(forget) == 0:
        raise ValueError("neggrad_plus got an empty forget set")
    fbs = cfg.forget_batch_size or cfg.batch_size
    data = ConcatDataset([retain, Marked(forget)])
    return run_stage(model, data, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="neggrad_plus",
                     progress=progress, loss_fn=neggrad_plus_loss(cfg.beta),
                     batch_sampler=lambda gen: PairedSampler(len(retain), len(forget), cfg.batch_size, fbs, gen))
