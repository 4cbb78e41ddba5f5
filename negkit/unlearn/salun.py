"""SalUn: weight saliency, then random labelling on the salient weights only (Fan et al., ICLR 2024).

The saliency mask m (:func:`negkit.unlearn.gradients.saliency_mask`) is taken at the
original model θ_o; RL then updates only the salient weights, θ_u = m ⊙ θ_RL + (1 − m) ⊙ θ_o
(SalUn Eq. 7). ``train``'s ``param_mask`` zeroes the gradients of non-salient weights and
restores their values after every step, so weight decay and momentum cannot move them —
as the reference code does (its RL loop masks the gradients and restores the masked
weights after each optimiser step). BatchNorm running statistics are buffers and still update.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from torch import nn
from torch.utils.data import Dataset

from negkit.unlearn.base import UnlearnConfig, prepare, random_label_unlearning
from negkit.unlearn.gradients import saliency_mask

__all__ = ["SalUnConfig", "salun", "DEFAULTS"]


@dataclasses.dataclass(frozen=True)
class SalUnConfig(UnlearnConfig):
    """:class:`UnlearnConfig` plus the salient fraction.

    Attributes:
        saliency_fraction: Fraction of weights marked salient (top |gradient|).
    """

    saliency_fraction: float = 0.5

    RANGES = {**UnlearnConfig.RANGES, "saliency_fraction": "(0, 1]"}


#: Digits-scaled defaults (the reference's CIFAR-10 run: 10 epochs at lr 0.013, half the weights).
DEFAULTS: dict[str, Any] = dict(epochs=5, lr=0.02, saliency_fraction=0.5)


def salun(model: nn.Module, forget: Dataset, retain: Dataset, cfg: SalUnConfig | Mapping | None = None,
          *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """SalUn: saliency mask at the original model, then RL on the salient weights only.

    Returns an unlearned copy whose non-salient parameters equal the original's bitwise.
    """
    model, cfg = prepare(model, cfg, "salun", SalUnConfig, DEFAULTS, out_dir)
    mask = saliency_mask(model, forget, cfg.saliency_fraction, batch_size=cfg.batch_size, device=device,
                         seed=cfg.seed)
    return random_label_unlearning(model, forget, retain, cfg, device=device, out_dir=out_dir,
                                   progress=progress, param_mask=mask)
