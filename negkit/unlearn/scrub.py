"""SCRUB: a student that stays close to its teacher on D_r and moves away on D_f (Kurmanji et al., NeurIPS 2023).

The teacher is the frozen original model, the student starts as a copy of it. With
d(x) = KL(p_T(x) ‖ p_S(x)) between their softmaxes at temperature T (scaled by T², the
distillation loss of the reference code), each epoch e = 1 … E is

* a *max-step* pass over D_f minimising −d (only while e ≤ msteps), then
* a *min-step* pass over D_r minimising α·d + γ·CE(f_S(x), y),

each pass in shuffled batches, one SGD optimiser throughout (the reference's
``train_distill`` loop). The whole schedule is one ``train`` epoch (the passes are the
batches of :class:`~negkit.unlearn.base.PassSampler`), so its checkpoint is the finished
run. The reference's step decay at epochs 3, 5, 9 is not reached at its 3 epochs; the
learning rate is constant (``schedule="cosine"`` spans the whole schedule).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

from negkit.evaluate import resolve_device
from negkit.unlearn.base import Marked, PassSampler, UnlearnConfig, frozen, prepare, run_stage, split_marked

__all__ = ["SCRUBConfig", "scrub", "distill_kl", "scrub_loss", "scrub_plan", "DEFAULTS", "GRID"]


@dataclasses.dataclass(frozen=True)
class SCRUBConfig(UnlearnConfig):
    """:class:`UnlearnConfig` plus SCRUB's weights and schedule.

    Attributes:
        alpha: Weight α of the KL term of min-steps (on D_r).
        gamma: Weight γ of the cross-entropy of min-steps.
        temperature: Softmax temperature T of the KL terms.
        msteps: Epochs that begin with a max-step pass over D_f.
        forget_batch_size: D_f images per max-step batch (None: ``batch_size``).
    """

    alpha: float = 0.001
    gamma: float = 0.99
    temperature: float = 4.0
    msteps: int = 2
    forget_batch_size: int | None = None

    RANGES = {**UnlearnConfig.RANGES, "alpha": ">= 0", "gamma": ">= 0", "temperature": "> 0", "msteps": ">= 0",
              "forget_batch_size": ">= 1"}


#: The SCRUB repository's CIFAR settings: 3 epochs, 2 max-step epochs, SGD lr 5e-4 with momentum
#: 0.9 and weight decay 5e-4, α = 0.001, γ = 0.99, T = 4.
DEFAULTS: dict[str, Any] = dict(epochs=3, lr=5e-4, momentum=0.9, weight_decay=5e-4, alpha=0.001, gamma=0.99,
                                temperature=4.0, msteps=2)

#: Validation candidates: the step size (the reference's is tuned for 200 steps an epoch) and
#: how many epochs push D_f away.
GRID: dict[str, tuple] = {"lr": (5e-4, 5e-3, 2e-2), "msteps": (1, 2)}


def distill_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T²·mean over the batch of KL(softmax(teacher/T) ‖ softmax(student/T)) (Hinton's distillation loss)."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2


def scrub_loss(teacher: nn.Module, cfg: SCRUBConfig) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    """−d on a batch of D_f (marked rows), α·d + γ·CE on a batch of D_r."""
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        forget, labels = split_marked(y)
        logits = model(x)
        with torch.no_grad():
            target = teacher(x)
        kl = distill_kl(logits, target, cfg.temperature)
        if bool(forget.all()):
            return -kl  # max-step: push the student away from the teacher on D_f
        return cfg.gamma * F.cross_entropy(logits, labels) + cfg.alpha * kl
    return loss_fn


def scrub_plan(epochs: int, msteps: int) -> list[int]:
    """Passes of the schedule: 0 = max-step pass over D_f, 1 = min-step pass over D_r."""
    return [p for e in range(1, epochs + 1) for p in ([0, 1] if e <= msteps else [1])]


def scrub(model: nn.Module, forget: Dataset, retain: Dataset, cfg: SCRUBConfig | Mapping | None = None,
          *, device: str | None = None, out_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """SCRUB with the original model as teacher. Returns the unlearned student (a copy).

    Raises:
        ValueError: An empty forget set while max-steps are asked for, or an empty retain set.
    """
    model, cfg = prepare(model, cfg, "scrub", SCRUBConfig, DEFAULTS, out_dir)
    if len(forget) == 0 and cfg.msteps > 0:
        raise ValueError("scrub got an empty forget set")
    if len(retain) == 0:
        raise ValueError("scrub got an empty retain set")
    teacher = frozen(model, resolve_device(device))
    plan = scrub_plan(cfg.epochs, cfg.msteps)
    parts = [(0, len(forget)), (len(forget), len(retain))]
    sizes = [cfg.forget_batch_size or cfg.batch_size, cfg.batch_size]
    data = ConcatDataset([Marked(forget), retain])
    return run_stage(model, data, cfg, 1, device=device, out_dir=out_dir, stage="scrub", progress=progress,
                     loss_fn=scrub_loss(teacher, cfg),
                     batch_sampler=lambda gen: PassSampler(parts, plan, sizes, gen))
