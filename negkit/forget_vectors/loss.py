"""The forget-vector objective (Sun et al., 2024) and the configuration of its optimisation.

On a batch of B images drawn from D_f ∪ D_r, with the model frozen:

    ℓ(δ) = α · Σ_{(x,y)∈D_r} CE(f(x+δ), y)
         + β · Σ_{(x,y)∈D_f} max(z_y(x+δ) − max_{k≠y} z_k(x+δ), −τ)
         + λ · ‖δ‖₂,

each term divided by B as in the authors' code. For forget-vector arithmetic,
δ(w) = Σ_c w_c δ_c, the reference code regularises the K weights instead, λ · ‖w‖₂, not
divided by B. :class:`ForgetVectorConfig` holds α, β, τ, λ, the batching, the augmentation
and the SGD schedule that minimises ℓ (see ``learn.py``).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from negkit.config import check
from negkit.forget_vectors.vector import BOUNDS

__all__ = ["INITS", "BATCHINGS", "AUGMENTS", "ARITHMETIC_PENALTIES", "ForgetVectorConfig", "margin_loss",
           "forget_vector_loss"]

INITS = ("zeros", "random")
#: How a step's images are drawn: one shuffle of D_f ∪ D_r (reference), or a fixed forget/retain mix.
BATCHINGS = ("joint", "mixed")
#: Views δ is learned on: padded random crop + horizontal flip (reference), crop only, or clean images.
AUGMENTS = ("crop_flip", "crop", "none")
#: What the norm term of forget-vector arithmetic penalises: λ‖w‖₂ (reference) or λ‖Σ w_c δ_c‖₂ / B.
ARITHMETIC_PENALTIES = ("weights", "delta")


@dataclasses.dataclass(frozen=True)
class ForgetVectorConfig:
    """How a forget vector (or an arithmetic weight vector) is learned.

    The defaults reproduce the authors' reference code and its released class-wise CIFAR-10
    runs: τ = 1, lr = 0.2, α = λ = 1, SGD momentum 0.9, weight decay 5e-4, ExponentialLR
    γ = 0.9 per epoch, δ initialised at zero and unbounded; each step takes 256 images from
    one shuffle of D_f ∪ D_r, as padded-random-crop + horizontal-flip views; arithmetic
    penalises λ‖w‖₂. The released runs chose β in 3–10 and 60–190 epochs per class; β = 5
    and 60 epochs are single defaults, and :func:`negkit.forget_vectors.select_classwise`
    picks both per class on validation.

    Deviations kept as options (negkit's earlier behaviour): ``batching="mixed"`` takes a
    fixed ``forget_batch_size`` forget + ``retain_batch_size`` retain images per step, which
    oversamples a small forget set (32 of 256 against, e.g., 10 % of CIFAR-10's class-wise
    D_f ∪ D_r); ``augment="none"`` learns on clean images, the right choice when the model
    was trained without augmentation (flipped digits are other symbols);
    ``arithmetic_penalty="delta"`` penalises ‖Σ w_c δ_c‖₂ / B, which shrinks w about 15×
    less on CIFAR-10; ``bound``, ``clip`` and ``init="random"`` are not in the paper.

    Attributes:
        alpha: Weight α of the retain cross-entropy.
        beta: Weight β of the forget margin loss.
        tau: Margin τ: a forget sample stops contributing once its true logit is
            τ below the best other logit.
        lam: Weight λ of ‖δ‖₂ (of ‖w‖₂ for arithmetic, see ``arithmetic_penalty``).
        lr: Initial SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay on δ (or on w for arithmetic), as in the paper's code.
        gamma: Exponential learning-rate decay per epoch.
        epochs: Number of epochs (an epoch is one pass over the images a step draws from,
            or ``steps_per_epoch`` steps).
        steps_per_epoch: Fixed number of steps per epoch; None for one pass.
        batching: ``"joint"`` (reference): shuffle D_f ∪ D_r together, ``batch_size`` per step,
            an epoch is one pass over both; ``"mixed"``: ``forget_batch_size`` +
            ``retain_batch_size`` per step, an epoch is one pass over D_r.
        batch_size: Images per step with ``batching="joint"``.
        forget_batch_size: Forget images per step with ``batching="mixed"``.
        retain_batch_size: Retain images per step with ``batching="mixed"``.
        augment: ``"crop_flip"`` (reference), ``"crop"`` or ``"none"``: the views of the
            training images δ is learned on (see :func:`negkit.forget_vectors.crop_flip`).
        crop_padding: Zero padding of the random crop (4 for 32×32 CIFAR in the reference).
        arithmetic_penalty: ``"weights"`` (reference): λ‖w‖₂, not divided by the batch size;
            ``"delta"``: λ‖Σ w_c δ_c‖₂ / B, the class-wise norm term applied to δ(w).
        bound: ``"none"`` (paper), ``"linf"`` or ``"l2"``: project δ onto the ball of radius ``eps``.
        eps: Radius of the bound (ignored for ``"none"``).
        clip: Clamp x + δ to the valid pixel range [0, 1] (the paper does not).
        init: ``"zeros"`` (paper) or ``"random"`` (small Gaussian) start for δ.
        seed: Seed of batch order, augmentation and random init.
    """

    alpha: float = 1.0
    beta: float = 5.0
    tau: float = 1.0
    lam: float = 1.0
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.9
    epochs: int = 60
    steps_per_epoch: int | None = None
    batching: str = "joint"
    batch_size: int = 256
    forget_batch_size: int = 32
    retain_batch_size: int = 224
    augment: str = "crop_flip"
    crop_padding: int = 4
    arithmetic_penalty: str = "weights"
    bound: str = "none"
    eps: float = 0.0
    clip: bool = False
    init: str = "zeros"
    seed: int = 0

    RANGES = {"alpha": ">= 0", "beta": ">= 0", "tau": ">= 0", "lam": ">= 0", "lr": ">= 0", "momentum": "[0, 1)",
              "weight_decay": ">= 0", "gamma": "(0, 1]", "epochs": ">= 1", "steps_per_epoch": ">= 1",
              "forget_batch_size": ">= 1", "retain_batch_size": ">= 1", "crop_padding": ">= 0",
              "eps": ">= 0", "seed": ">= 0"}

    def __post_init__(self) -> None:
        check(self)  # types and RANGES (negkit.config)
        for name, valid in (("bound", BOUNDS), ("init", INITS), ("batching", BATCHINGS), ("augment", AUGMENTS),
                            ("arithmetic_penalty", ARITHMETIC_PENALTIES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid values are {list(valid)}")
        if self.bound != "none" and not self.eps > 0:
            raise ValueError(f"bound={self.bound!r} needs eps > 0 (got {self.eps}); "
                             "set eps or use bound='none'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")


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
                       y_retain: Tensor, delta: Tensor, cfg: ForgetVectorConfig, *,
                       weights: Tensor | None = None) -> dict[str, Tensor]:
    """The paper's objective on one batch of B = forget + retain images.

    Args:
        logits_forget: (B_f, K) logits of the batch's forget images (B_f may be 0).
        y_forget: (B_f,) their labels.
        logits_retain: (B_r, K) logits of the batch's retain images (B_r may be 0).
        y_retain: (B_r,) their labels.
        delta: The δ (C, H, W) the logits were computed with.
        cfg: α, β, τ, λ and ``arithmetic_penalty``.
        weights: For arithmetic, the (K,) weights w of δ = Σ_c w_c δ_c. With
            ``cfg.arithmetic_penalty == "weights"`` (reference) the norm term is ‖w‖₂,
            not divided by B; with ``"delta"`` it stays ‖δ‖₂ / B.

    Returns:
        ``{"loss": total, "retain": Σ CE / B, "forget": Σ margin / B, "norm": the norm term
        before λ}``.
    """
    b = logits_forget.shape[0] + logits_retain.shape[0]
    if b == 0:
        raise ValueError("empty batch: forget_vector_loss needs at least one forget or retain image")
    retain = F.cross_entropy(logits_retain, y_retain, reduction="sum") / b  # a sum over no image is 0
    forget = margin_loss(logits_forget, y_forget, cfg.tau).sum() / b
    if weights is not None and cfg.arithmetic_penalty == "weights":
        norm = torch.linalg.vector_norm(weights.flatten())
    else:
        norm = torch.linalg.vector_norm(delta.flatten()) / b
    return {"loss": cfg.alpha * retain + cfg.beta * forget + cfg.lam * norm,
            "retain": retain, "forget": forget, "norm": norm}
