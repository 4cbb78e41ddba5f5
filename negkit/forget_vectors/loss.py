"""The forget-vector objective (Sun et al., 2024) and the configuration of its optimisation.

On a batch that mixes forget samples D_f and retain samples D_r, with the model frozen:

    ℓ(δ) = α · Σ_{(x,y)∈D_r} CE(f(x+δ), y)
         + β · Σ_{(x,y)∈D_f} max(z_y(x+δ) − max_{k≠y} z_k(x+δ), −τ)
         + λ · ‖δ‖₂,

each term divided by the batch size as in the authors' code. :class:`ForgetVectorConfig`
holds α, β, τ, λ and the SGD schedule that minimises ℓ (see ``learn.py``).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from negkit.config import check
from negkit.forget_vectors.vector import BOUNDS

__all__ = ["INITS", "ForgetVectorConfig", "margin_loss", "forget_vector_loss"]

INITS = ("zeros", "random")


@dataclasses.dataclass(frozen=True)
class ForgetVectorConfig:
    """How a forget vector (or an arithmetic weight vector) is learned.

    Defaults follow the authors' class-wise CIFAR-10 runs (τ=1, lr=0.2, α=1, λ=1,
    β between 3 and 10 per class — 5 here —, SGD momentum 0.9, weight decay 5e-4,
    ExponentialLR γ=0.9 per epoch, δ initialised at zero, no bound on δ, 256 images per
    step). They ran 60–190 epochs of CIFAR-10; ``epochs`` here is a budget choice.

    Attributes:
        alpha: Weight α of the retain cross-entropy.
        beta: Weight β of the forget margin loss.
        tau: Margin τ: a forget sample stops contributing once its true logit is
            τ below the best other logit.
        lam: Weight λ of ‖δ‖₂.
        lr: Initial SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay on δ (or on w for arithmetic), as in the paper's code.
        gamma: Exponential learning-rate decay per epoch.
        epochs: Number of epochs (an epoch is one pass over the retain set, or
            ``steps_per_epoch`` steps).
        steps_per_epoch: Fixed number of steps per epoch; None for one pass over retain.
        forget_batch_size: Forget samples in each mixed batch.
        retain_batch_size: Retain samples in each mixed batch.
        bound: ``"none"`` (paper), ``"linf"`` or ``"l2"``: project δ onto the ball of radius ``eps``.
        eps: Radius of the bound (ignored for ``"none"``).
        clip: Clamp x + δ to the valid pixel range [0, 1] (the paper does not).
        init: ``"zeros"`` (paper) or ``"random"`` (small Gaussian) start for δ.
        seed: Seed of batch order and random init.
    """

    alpha: float = 1.0
    beta: float = 5.0
    tau: float = 1.0
    lam: float = 1.0
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.9
    epochs: int = 10
    steps_per_epoch: int | None = None
    forget_batch_size: int = 32
    retain_batch_size: int = 224
    bound: str = "none"
    eps: float = 0.0
    clip: bool = False
    init: str = "zeros"
    seed: int = 0

    RANGES = {"alpha": ">= 0", "beta": ">= 0", "tau": ">= 0", "lam": ">= 0", "lr": ">= 0", "momentum": "[0, 1)",
              "weight_decay": ">= 0", "gamma": "(0, 1]", "epochs": ">= 1", "steps_per_epoch": ">= 1",
              "forget_batch_size": ">= 1", "retain_batch_size": ">= 1", "eps": ">= 0", "seed": ">= 0"}

    def __post_init__(self) -> None:
        check(self)  # types and RANGES (negkit.config)
        if self.bound not in BOUNDS:
            raise ValueError(f"unknown bound {self.bound!r}; valid bounds are {list(BOUNDS)}")
        if self.bound != "none" and not self.eps > 0:
            raise ValueError(f"bound={self.bound!r} needs eps > 0 (got {self.eps}); "
                             "set eps or use bound='none'")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; valid inits are {list(INITS)}")
        if self.epochs < 1 or self.forget_batch_size < 1 or self.retain_batch_size < 1:
            raise ValueError("epochs, forget_batch_size and retain_batch_size must be >= 1")


def margin_loss(logits: Tensor, targets: Tensor, tau: float) -> Tensor:
    """Per-sample forget loss max(z_y − max_{k≠y} z_k, −τ), shape (B,).

    Args:
        logits: (B, K) logits.
        targets: (B,) true labels.
        tau: Margin; the loss saturates at −τ once the true logit trails by τ.
    """
    if logits.shape[1] < 2:
        raise ValueError("the margin loss needs at least two classes")
    z_y = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(targets, logits.shape[1]).bool(), float("-inf"))
    return torch.clamp(z_y - others.max(dim=1).values, min=-tau)


def forget_vector_loss(logits_forget: Tensor, y_forget: Tensor, logits_retain: Tensor,
                       y_retain: Tensor, delta: Tensor, cfg: ForgetVectorConfig) -> dict[str, Tensor]:
    """The paper's objective on one mixed batch (all terms divided by the batch size B).

    Returns:
        ``{"loss": total, "retain": Σ CE / B, "forget": Σ margin / B, "norm": ‖δ‖₂ / B}``.
    """
    b = logits_forget.shape[0] + logits_retain.shape[0]
    retain = F.cross_entropy(logits_retain, y_retain, reduction="sum") / b
    forget = margin_loss(logits_forget, y_forget, cfg.tau).sum() / b
    norm = torch.linalg.vector_norm(delta.flatten()) / b
    return {"loss": cfg.alpha * retain + cfg.beta * forget + cfg.lam * norm,
            "retain": retain, "forget": forget, "norm": norm}
