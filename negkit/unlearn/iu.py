"""IU: influence unlearning with a WoodFisher inverse Hessian (Jia et al., NeurIPS 2023; SalUn's ``wfisher``).

One Newton-like step away from D_f, no training:

    θ_u = θ_o + α · F⁻¹ v,   v = (1/n) [Σ_{i ∈ D_f} ∇ℓ_i − (n_f / n_r) Σ_{j ∈ D_r} ∇ℓ_j],

with n = n_f + n_r and ℓ the cross-entropy at θ_o (eval mode) — the influence of
removing D_f as the reference code forms it. The Hessian is replaced by WoodFisher's
damped empirical Fisher over m per-sample gradients g_k of D_r (Singh & Alistarh 2020),

    F = I + (1/m) Σ_k g_k g_kᵀ = I + (1/m) GᵀG,   G ∈ R^{m×P},

whose inverse applies exactly through the Woodbury identity,

    F⁻¹ v = v − Gᵀ (m I + G Gᵀ)⁻¹ G v,

an m×m solve (float64). The reference builds F⁻¹v with a one-pass recursion over its
first ~1,000 retain images (damping 1, scale 1/1000); here the same estimate is inverted
exactly, over ``samples`` retain images drawn with ``seed``. Memory: m·P floats.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from negkit.evaluate import resolve_device
from negkit.unlearn.base import UnlearnConfig, load_result, prepare, save_result
from negkit.unlearn.gradients import sample_gradients, summed_gradient, trainable, unflatten

__all__ = ["IUConfig", "iu", "woodfisher_solve", "influence_direction", "DEFAULTS", "GRID"]


@dataclasses.dataclass(frozen=True)
class IUConfig(UnlearnConfig):
    """:class:`UnlearnConfig` plus IU's step (``epochs``, ``lr``, ``momentum`` and ``weight_decay`` are unused).

    Attributes:
        alpha: Step size α of θ_o + α·F⁻¹v.
        samples: Per-sample gradients m of D_r in the Fisher estimate (at most |D_r|).
    """

    alpha: float = 0.2
    samples: int = 1000

    RANGES = {**UnlearnConfig.RANGES, "alpha": ">= 0", "samples": ">= 1"}


#: SalUn's ``--alpha`` default (0.2) and its WoodFisher sample count (N = 1000); gradient
#: passes in batches of 128.
DEFAULTS: dict[str, Any] = dict(alpha=0.2, samples=1000, batch_size=128)

#: Validation candidates: the reference's default and the larger steps its scripts use (10 on CIFAR-10).
GRID: dict[str, tuple] = {"alpha": (0.2, 1.0, 5.0, 10.0)}


def woodfisher_solve(grads: Tensor, v: Tensor) -> Tensor:
    """F⁻¹ v for F = I + (1/m) GᵀG, G = ``grads`` (m × P), by the Woodbury identity (float64)."""
    g, v = grads.double(), v.double()
    m = g.shape[0]
    gram = g @ g.T  # (m, m)
    gram.diagonal().add_(m)
    return v - g.T @ torch.linalg.solve(gram, g @ v)


def influence_direction(model: nn.Module, forget: Dataset, retain: Dataset, cfg: IUConfig, *,
                        device: Any = None) -> Tensor:
    """F⁻¹ v at ``model`` (flat, float64, over the trainable parameters; see the module docstring)."""
    device = resolve_device(device)
    n_f, n_r = len(forget), len(retain)
    n = n_f + n_r
    v = summed_gradient(model, forget, batch_size=cfg.batch_size, device=device) / n
    v -= summed_gradient(model, retain, batch_size=cfg.batch_size, device=device) * (n_f / (n * n_r))
    m = min(cfg.samples, n_r)
    pick = torch.randperm(n_r, generator=torch.Generator().manual_seed(cfg.seed))[:m].tolist()
    grads = sample_gradients(model, Subset(retain, pick), device=device)
    return woodfisher_solve(grads, v)


def iu(model: nn.Module, forget: Dataset, retain: Dataset, cfg: IUConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """θ_o + α·F⁻¹v (no training). Returns an unlearned copy of ``model`` (buffers unchanged).

    Raises:
        ValueError: An empty forget or retain set.
    """
    model, cfg = prepare(model, cfg, "iu", IUConfig, DEFAULTS, out_dir)
    if len(forget) == 0 or len(retain) == 0:
        raise ValueError(f"iu needs a non-empty forget and retain set, got {len(forget)} and {len(retain)} items")
    model.to(resolve_device(device))
    if load_result(out_dir, "iu", model, cfg):
        return model
    step = unflatten(model, cfg.alpha * influence_direction(model, forget, retain, cfg, device=device))
    with torch.no_grad():
        for name, p in trainable(model).items():
            p.add_(step[name].to(p.dtype))
    save_result(out_dir, "iu", model, cfg, {"step_norm": float(_norm(step))})
    return model


def _norm(parts: Mapping[str, Tensor]) -> Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in parts.values()))
