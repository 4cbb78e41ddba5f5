"""BE: boundary expanding (Chen et al., CVPR 2023).

The classifier head (the model's last ``nn.Linear``, C outputs) gains one *shadow* output;
every forget image is relabelled to it and the widened model is fine-tuned on D_f alone
with cross-entropy, which pulls D_f's features towards the shadow class; then the shadow
neuron is dropped and the first C outputs are kept. The existing rows are copied, the
new one takes ``nn.Linear``'s default initialisation drawn with ``seed``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from negkit.unlearn.base import UnlearnConfig, num_classes_of, prepare, run_stage

__all__ = ["be", "head_of", "widen_head", "narrow_head", "DEFAULTS", "GRID"]

#: The reference's 10 epochs over D_f; SalUn's default unlearning rate (0.01) in place of its
#: CIFAR-10 scripts' 5e-6 (tens of steps per epoch here, not hundreds).
DEFAULTS: dict[str, Any] = dict(epochs=10, lr=0.01)

#: Validation candidates: the step size.
GRID: dict[str, tuple] = {"lr": (1e-3, 1e-2, 5e-2)}


def head_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the model's last ``nn.Linear`` (its classifier head).

    Raises:
        ValueError: The model has no ``nn.Linear``.
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head; boundary expanding widens the last one")
    return found[-1]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def widen_head(model: nn.Module, extra: int = 1, *, seed: int = 0) -> None:
    """Give the head ``extra`` more outputs (in place): old rows copied, new rows freshly initialised."""
    name, head = head_of(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wide = nn.Linear(head.in_features, head.out_features + extra, bias=head.bias is not None)
    wide = wide.to(head.weight.device, head.weight.dtype)
    with torch.no_grad():
        wide.weight[:head.out_features] = head.weight
        if head.bias is not None:
            wide.bias[:head.out_features] = head.bias
    _set_module(model, name, wide)


def narrow_head(model: nn.Module, outputs: int) -> None:
    """Keep the head's first ``outputs`` outputs (in place), dropping the rest."""
    name, head = head_of(model)
    narrow = nn.Linear(head.in_features, outputs, bias=head.bias is not None).to(head.weight.device, head.weight.dtype)
    with torch.no_grad():
        narrow.weight.copy_(head.weight[:outputs])
        if head.bias is not None:
            narrow.bias.copy_(head.bias[:outputs])
    _set_module(model, name, narrow)


def _shadow_loss(shadow: int) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        return F.cross_entropy(model(x), torch.full_like(y, shadow))
    return loss_fn


def be(model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig | Mapping | None = None,
       *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Boundary expanding: fine-tune on D_f labelled as a shadow class, then drop it. Returns an unlearned copy.

    Raises:
        ValueError: An empty forget set, or a head whose width is not the model's output width.
    """
    model, cfg = prepare(model, cfg, "be", UnlearnConfig, DEFAULTS, out_dir)
    if len(forget) == 0:
        raise ValueError("be got an empty forget set")
    classes = num_classes_of(model, forget)
    name, head = head_of(model)
    if head.out_features != classes:
        raise ValueError(f"the last nn.Linear ({name!r}, {head.out_features} outputs) is not the classifier of "
                         f"this {classes}-class model; boundary expanding needs the head last")
    widen_head(model, 1, seed=cfg.seed)
    model = run_stage(model, forget, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="be",
                      progress=progress, loss_fn=_shadow_loss(classes))
    narrow_head(model, classes)
    return model
