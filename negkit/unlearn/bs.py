"""BS: boundary shrink (Chen et al., CVPR 2023).

Each forget image x is relabelled to the class the *original* model gives its FGSM
neighbour,

    x' = clip(x + ε·sign(∇_x CE(f_o(x), y)), 0, 1) rounded to 1/255,   y' = argmax f_o(x'),

the nearest class across the decision boundary when the attack succeeds (y' = y when it
does not, as in the reference), and the model is fine-tuned on D_f with these labels.
The labels are recomputed for every batch (so under augmentation they follow the view).
Pixels are raw [0, 1] values (the kit's models normalise inside), as in SalUn's code.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from negkit.evaluate import resolve_device
from negkit.unlearn.base import UnlearnConfig, frozen, prepare, run_stage

__all__ = ["BSConfig", "bs", "boundary_labels", "DEFAULTS", "GRID"]


@dataclasses.dataclass(frozen=True)
class BSConfig(UnlearnConfig):
    """:class:`UnlearnConfig` plus the attack's radius.

    Attributes:
        eps: L∞ radius ε of the FGSM step, in [0, 1] pixel units.
    """

    eps: float = 0.1

    RANGES = {**UnlearnConfig.RANGES, "eps": "[0, 1]"}


#: The reference's bound ε = 0.1 ("hard coding in the paper") and 10 epochs over D_f; SalUn's
#: default unlearning rate (0.01) in place of its CIFAR-10 scripts' 5e-6.
DEFAULTS: dict[str, Any] = dict(epochs=10, lr=0.01, eps=0.1)

#: Validation candidates: the step size.
GRID: dict[str, tuple] = {"lr": (1e-3, 1e-2, 5e-2)}


def boundary_labels(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """argmax f(x') for the FGSM neighbour x' of every image (``model`` used as is: put it in eval mode)."""
    with torch.enable_grad():
        xa = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
    x_adv = torch.round(torch.clamp(x + eps * grad.sign(), 0.0, 1.0) * 255) / 255
    with torch.no_grad():
        return model(x_adv).argmax(dim=1)


def _shrink_loss(original: nn.Module, eps: float) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        return F.cross_entropy(model(x), boundary_labels(original, x, y, eps))
    return loss_fn


def bs(model: nn.Module, forget: Dataset, retain: Dataset, cfg: BSConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Boundary shrink: fine-tune on D_f relabelled to its nearest other class. Returns an unlearned copy.

    Raises:
        ValueError: An empty forget set.
    """
    model, cfg = prepare(model, cfg, "bs", BSConfig, DEFAULTS, out_dir)
    if len(forget) == 0:
        raise ValueError("bs got an empty forget set")
    original = frozen(model, resolve_device(device))
    return run_stage(model, forget, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="bs",
                     progress=progress, loss_fn=_shrink_loss(original, cfg.eps))
