"""GA: gradient ascent on the forget set, i.e. minimise −CE(f(x), y) on D_f."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from negkit.unlearn.base import UnlearnConfig, prepare, run_stage

__all__ = ["ga", "DEFAULTS"]

#: Digits' forget set is tiny (~100 images), so the rate sits at the top of SalUn's range.
DEFAULTS: dict[str, Any] = dict(epochs=3, lr=1e-3)


def neg_ce(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
    """−CE: minimising it maximises the forget loss."""
    return -F.cross_entropy(model(x), y)


def ga(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Gradient ascent on D_f: minimise −CE on D_f. Returns an unlearned copy of ``model``."""
    model, cfg = prepare(model, cfg, "ga", UnlearnConfig, DEFAULTS, out_dir)
    return run_stage(model, forget, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="ga",
                     progress=progress, loss_fn=neg_ce)
