"""ℓ1-sparse: fine-tune on D_r with CE + α_e·‖θ‖₁ (Jia et al., NeurIPS 2023).

α_e = α·(1 − e/E) for epoch e = 0 … E−1, stepped per epoch as the reference code does.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from negkit.unlearn.base import UnlearnConfig, prepare, run_stage

__all__ = ["L1SparseConfig", "l1_sparse", "l1_loss", "DEFAULTS"]


@dataclasses.dataclass(frozen=True)
class L1SparseConfig(UnlearnConfig):
    """:class:`UnlearnConfig` plus the ℓ1 strength.

    Attributes:
        l1_gamma: ℓ1 strength α; epoch e uses α·(1 − e/E).
    """

    l1_gamma: float = 0.0

    RANGES = {**UnlearnConfig.RANGES, "l1_gamma": ">= 0"}


#: Digits-scaled defaults (the reference's CIFAR-10 run: 10 epochs, lr 0.01, α 1e-4 … 5e-4).
DEFAULTS: dict[str, Any] = dict(epochs=5, lr=0.02, l1_gamma=5e-4)


def l1_loss(alpha: float, epochs: int) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    """CE + α(1 − e/E)·‖θ‖₁ at the epoch e that ``progress_frac`` falls in."""
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        # progress_frac = (e·n_batches + b) / (E·n_batches), so ⌊E·progress_frac⌋ = e
        # (the small offset only absorbs rounding at b = 0).
        epoch = math.floor(progress_frac * epochs + 1e-9)
        strength = alpha * (1.0 - epoch / epochs)
        ce = F.cross_entropy(model(x), y)
        if strength == 0.0:
            return ce
        l1 = sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
        return ce + strength * l1
    return loss_fn


def l1_sparse(model: nn.Module, forget: Dataset, retain: Dataset, cfg: L1SparseConfig | Mapping | None = None,
              *, device: str | None = None, out_dir: str | Path | None = None,
              progress: bool = True) -> nn.Module:
    """FT on D_r with CE + α(1 − e/E)‖θ‖₁ (ℓ1 decaying per epoch). Returns an unlearned copy of ``model``."""
    model, cfg = prepare(model, cfg, "l1_sparse", L1SparseConfig, DEFAULTS, out_dir)
    return run_stage(model, retain, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="l1_sparse",
                     progress=progress, loss_fn=l1_loss(cfg.l1_gamma, cfg.epochs))
