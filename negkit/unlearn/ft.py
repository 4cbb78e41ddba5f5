"""FT: fine-tune on the retain set D_r with cross-entropy (the forget set is unused)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn
from torch.utils.data import Dataset

from negkit.unlearn.base import UnlearnConfig, prepare, run_stage

__all__ = ["ft", "DEFAULTS"]

#: Digits-scaled defaults (the reference's CIFAR-10 run: 10 epochs at lr 0.01).
DEFAULTS: dict[str, Any] = dict(epochs=5, lr=0.02)


def ft(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Fine-tune on D_r (D_f unused). Returns an unlearned copy of ``model``."""
    model, cfg = prepare(model, cfg, "ft", UnlearnConfig, DEFAULTS, out_dir)
    return run_stage(model, retain, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="ft", progress=progress)
