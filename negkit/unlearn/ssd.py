"""SSD: selective synaptic dampening, training-free (Foster et al., AAAI 2024).

With diagonal Fisher importances (:func:`~negkit.unlearn.gradients.diagonal_fisher`)
I_f on D_f and I_D on the training data D = D_f ∪ D_r (the reference; D_r optional),
every parameter element θ_i with I_{f,i} > α·I_{D,i} is dampened:

    θ_i ← min(λ·I_{D,i} / I_{f,i}, 1) · θ_i,

the others stay as they are (bitwise). With α = ∞ nothing is selected.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

from negkit.evaluate import resolve_device
from negkit.unlearn.base import UnlearnConfig, load_result, prepare, save_result
from negkit.unlearn.gradients import diagonal_fisher, trainable

__all__ = ["SSDConfig", "ssd", "dampen", "DEFAULTS", "GRID"]


@dataclasses.dataclass(frozen=True)
class SSDConfig(UnlearnConfig):
    """:class:`UnlearnConfig` plus SSD's constants (``epochs``, ``lr``, ``momentum``, ``weight_decay`` unused).

    Attributes:
        alpha: Selection weighting α (``inf``: select nothing).
        dampening: Dampening constant λ.
        importance_data: ``"train"`` (D_f ∪ D_r, the reference) or ``"retain"`` for I_D.
    """

    alpha: float = 10.0
    dampening: float = 1.0
    importance_data: str = "train"

    # α = inf is meaningful (select nothing), so it is checked by hand below.
    RANGES = {**UnlearnConfig.RANGES, "alpha": "any", "dampening": ">= 0"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if math.isnan(self.alpha) or self.alpha < 0:
            raise ValueError(f"SSDConfig.alpha must be >= 0 (inf allowed: select nothing), got {self.alpha}")
        if self.importance_data not in ("train", "retain"):
            raise ValueError(f"SSDConfig.importance_data must be 'train' or 'retain', got {self.importance_data!r}")


#: The reference's settings for ResNet18 (random and class forgetting): α = 10, λ = 1,
#: importance passes in batches of 128.
DEFAULTS: dict[str, Any] = dict(alpha=10.0, dampening=1.0, batch_size=128)

#: Validation candidates: the selection threshold (how specific to D_f a weight must be).
GRID: dict[str, tuple] = {"alpha": (1.0, 10.0, 50.0), "dampening": (0.5, 1.0)}


def dampen(param: Tensor, imp_forget: Tensor, imp_data: Tensor, alpha: float, dampening: float) -> Tensor:
    """The dampened copy of ``param``: elements with imp_f > α·imp_D times min(λ·imp_D/imp_f, 1)."""
    with torch.no_grad():
        threshold = imp_data * alpha if alpha != float("inf") else torch.full_like(imp_data, float("inf"))
        selected = imp_forget > threshold
        out = param.detach().clone()
        factor = (dampening * imp_data[selected] / imp_forget[selected]).clamp(max=1.0)
        out[selected] = out[selected] * factor.to(out.dtype)
    return out


def ssd(model: nn.Module, forget: Dataset, retain: Dataset, cfg: SSDConfig | Mapping | None = None,
        *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Dampen the parameters specific to D_f (no training). Returns an unlearned copy of ``model``.

    Raises:
        ValueError: An empty forget set.
    """
    model, cfg = prepare(model, cfg, "ssd", SSDConfig, DEFAULTS, out_dir)
    if len(forget) == 0:
        raise ValueError("ssd got an empty forget set")
    model.to(resolve_device(device))
    if load_result(out_dir, "ssd", model, cfg):
        return model
    data = ConcatDataset([forget, retain]) if cfg.importance_data == "train" else retain
    imp_f = diagonal_fisher(model, forget, batch_size=cfg.batch_size, device=device)
    imp_d = diagonal_fisher(model, data, batch_size=cfg.batch_size, device=device)
    changed = 0
    with torch.no_grad():
        for name, p in trainable(model).items():
            new = dampen(p, imp_f[name].to(p.device), imp_d[name].to(p.device), cfg.alpha, cfg.dampening)
            changed += int((new != p).sum())
            p.copy_(new)
    save_result(out_dir, "ssd", model, cfg, {"dampened": changed})
    return model
