"""The forget vector δ itself: an input perturbation of one image's shape, and its bounds.

A :class:`ForgetVector` holds δ (C, H, W) and is an ``input_transform`` callable,
x ↦ x + δ on raw [0, 1] pixels (clamped to [0, 1] with ``clip``), so
``negkit.evaluate.predict`` and ``negkit.metrics.unlearning_metrics`` evaluate the
frozen model with δ applied. It supports the arithmetic of the paper
(``0.5 * fv_a + fv_b``, ``-fv``, ``sum(fvs)``) and saves to / loads from safetensors.
:func:`project` maps δ onto an ℓ∞ or ℓ2 ball (optional; the paper leaves δ unbounded).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from negkit import io

__all__ = ["BOUNDS", "ForgetVector", "project"]

BOUNDS = ("none", "linf", "l2")


class ForgetVector:
    """A universal input perturbation δ of shape (C, H, W), added to raw [0, 1] pixels.

    Args:
        delta: The perturbation, shape (C, H, W).
        clip: Clamp x + δ to [0, 1] when applied.
        meta: Free-form string metadata (task, classes, dataset...), saved with δ.
    """

    def __init__(self, delta: Tensor, *, clip: bool = False, meta: Mapping[str, Any] | None = None):
        if delta.dim() != 3:
            raise ValueError(f"a forget vector has the shape of one image (C, H, W); got shape "
                             f"{tuple(delta.shape)}. Drop the batch dimension (delta[0]) if it has one.")
        self.delta = delta.detach().clone()
        self.clip = bool(clip)
        self.meta = {str(k): str(v) for k, v in (meta or {}).items()}
        self.history: list[dict[str, float]] = []  # per-epoch loss terms of learning (not saved)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this vector applies to."""
        return tuple(self.delta.shape)  # type: ignore[return-value]

    def norm(self, p: float = 2) -> float:
        """‖δ‖_p (p=2 or p=float('inf'))."""
        return float(torch.linalg.vector_norm(self.delta.flatten(), ord=p))

    def apply(self, x: Tensor) -> Tensor:
        """x + δ (clamped to [0, 1] if ``clip``), for x of shape (B, C, H, W) or (C, H, W)."""
        return _add(x, self.delta, self.clip)

    __call__ = apply

    def to(self, device: str | torch.device) -> "ForgetVector":
        """A copy with δ on ``device``."""
        out = ForgetVector(self.delta.to(device), clip=self.clip, meta=self.meta)
        out.history = list(self.history)
        return out

    # Maths-shaped arithmetic: 0.5 * fv_a + fv_b, -fv.
    def __add__(self, other: "ForgetVector") -> "ForgetVector":
        if not isinstance(other, ForgetVector):
            return NotImplemented
        if other.shape != self.shape:
            raise ValueError(f"cannot add forget vectors of shapes {self.shape} and {other.shape}")
        return ForgetVector(self.delta + other.delta.to(self.delta), clip=self.clip or other.clip)

    def __radd__(self, other: Any) -> "ForgetVector":
        if isinstance(other, (int, float)) and other == 0:  # lets sum([...]) work
            return self
        return NotImplemented

    def __mul__(self, coef: float) -> "ForgetVector":
        if not isinstance(coef, (int, float)):
            return NotImplemented
        return ForgetVector(self.delta * coef, clip=self.clip, meta=self.meta)

    __rmul__ = __mul__

    def __neg__(self) -> "ForgetVector":
        return self * -1.0

    def save(self, path: str | Path) -> None:
        """Write δ and its metadata to a safetensors file (atomically)."""
        meta = {**self.meta, "clip": str(self.clip), "kind": "forget_vector"}
        io.save_state_dict({"delta": self.delta.detach().cpu().contiguous()}, path, metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "ForgetVector":
        """Read a forget vector written by :meth:`save`."""
        sd = io.load_state_dict(path, device=device)
        if set(sd) != {"delta"}:
            raise ValueError(f"{path} is not a forget vector file (keys {sorted(sd)}, expected ['delta'])")
        meta = dict(io.read_metadata(path) or {})
        clip = meta.pop("clip", "False") == "True"
        meta.pop("kind", None)
        return cls(sd["delta"], clip=clip, meta=meta)

    def __repr__(self) -> str:
        return f"ForgetVector(shape={self.shape}, l2={self.norm():.3f}, clip={self.clip}, meta={self.meta})"


def _add(x: Tensor, delta: Tensor, clip: bool) -> Tensor:
    if tuple(x.shape[-3:]) != tuple(delta.shape):
        raise ValueError(
            f"forget vector of shape {tuple(delta.shape)} does not match images of shape "
            f"{tuple(x.shape[-3:])}; learn δ at the model's input resolution (after resizing)."
        )
    out = x + delta.to(device=x.device, dtype=x.dtype)
    return out.clamp(0.0, 1.0) if clip else out


def project(delta: Tensor, bound: str, eps: float) -> Tensor:
    """Project δ onto the ℓ∞ or ℓ2 ball of radius ``eps`` (differentiable; identity for ``"none"``)."""
    if bound == "none":
        return delta
    if bound == "linf":
        return delta.clamp(-eps, eps)
    if bound == "l2":
        norm = torch.linalg.vector_norm(delta.flatten())
        return delta * torch.clamp(eps / (norm + 1e-12), max=1.0)
    raise ValueError(f"unknown bound {bound!r}; valid bounds are {list(BOUNDS)}")
