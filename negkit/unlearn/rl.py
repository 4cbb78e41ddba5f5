"""RL: random labelling. Each epoch is one pass over D_f with random labels, then one over D_r.

Both passes come in shuffled batches (SalUn's CIFAR-10 code). The random labels are
drawn uniformly from *all* C classes (so y' = y is possible) for every forget batch,
afresh each time the batch is seen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn
from torch.utils.data import Dataset

from negkit.unlearn.base import UnlearnConfig, prepare, random_label_unlearning

__all__ = ["rl", "DEFAULTS"]

#: Digits-scaled defaults (the reference's CIFAR-10 run: 10 epochs at lr 0.013).
DEFAULTS: dict[str, Any] = dict(epochs=5, lr=0.02)


def rl(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Per epoch: D_f with fresh random labels, then D_r. Returns an unlearned copy of ``model``."""
    model, cfg = prepare(model, cfg, "rl", UnlearnConfig, DEFAULTS, out_dir)
    return random_label_unlearning(model, forget, retain, cfg, device=device, out_dir=out_dir,
                                   progress=progress, param_mask=None)
