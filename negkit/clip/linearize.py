"""Linearised ("tangent") fine-tuning: the model as its first-order Taylor expansion around θ_pre.

Ortiz-Jiménez, Favero & Frossard, *Task arithmetic in the tangent space* (NeurIPS 2023),
Eq. (4): the image encoder f is replaced by

    f_lin(x; θ) = f(x; θ₀) + J_θ f(x; θ₀) · (θ − θ₀),        θ₀ = θ_pre,

which is linear in θ. Fine-tuning trains θ (initialised at θ₀) through f_lin, so the
task vector τ = θ_ft − θ₀ lives in the tangent space at θ₀, and negating it gives
f_lin(x; θ₀ − λτ) = f(x; θ₀) − λ J τ: the negation is applied to the *linearised*
model, never to the non-linear encoder. The reference (``--finetuning-mode linear``
of the tangent_task_arithmetic code, which NegMerge's release also offers) computes
the Jacobian-vector product with forward-mode AD in one pass, ``torch.func.jvp``;
so does :class:`LinearizedModel`. It costs more than the plain model: measured on CPU
(ViT-B/32, batch 4, one thread, attention on the plain maths kernel that forward-mode AD
needs) a forward pass took 5.1× and a training step 4.9× as long.

:class:`LinearizedModel` keeps θ as the parameters of the wrapped module (same names,
so its ``module.state_dict()`` is an ordinary image-encoder checkpoint and task
vectors, pools and merges work unchanged) and θ₀ as non-persistent buffers.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["LinearizedModel", "FINETUNING_MODES", "check_finetuning_mode"]

#: ``"standard"``: fine-tune f itself; ``"linear"``: fine-tune f_lin (:class:`LinearizedModel`).
FINETUNING_MODES = ("standard", "linear")


def check_finetuning_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`FINETUNING_MODES`, else raise ``ValueError`` listing them."""
    if mode not in FINETUNING_MODES:
        raise ValueError(f"unknown finetuning_mode {mode!r}; valid modes are {list(FINETUNING_MODES)}")
    return mode


class _Point(nn.Module):
    """θ₀ as non-persistent buffers (they follow ``.to(device)`` but stay out of ``state_dict``)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = list(tensors)
        for i, t in enumerate(tensors.values()):
            self.register_buffer(f"t{i}", t.detach().clone(), persistent=False)

    def values(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f"t{i}") for i in range(len(self.names)))


class LinearizedModel(nn.Module):
    """f_lin(x; θ) = f(x; θ₀) + J_θ f(x; θ₀)·(θ − θ₀), with θ the parameters of ``module``.

    Args:
        module: The model f; its current parameters are θ (trained, negated, loaded).
        theta0: The expansion point θ₀ by parameter name (default: ``module``'s current
            parameters, i.e. θ = θ₀ and f_lin = f at creation).

    Raises:
        ValueError: ``theta0`` does not name exactly the module's parameters, or a shape differs.
    """

    def __init__(self, module: nn.Module, theta0: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.module = module
        params = dict(module.named_parameters())
        if theta0 is None:
            theta0 = params
        missing, extra = sorted(set(params) - set(theta0)), sorted(set(theta0) - set(params))
        if missing or extra:
            raise ValueError(f"theta0 must hold every parameter of the module: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}; pass the pretrained encoder's named_parameters()")
        for name, p in params.items():
            if tuple(theta0[name].shape) != tuple(p.shape):
                raise ValueError(f"theta0[{name!r}] has shape {tuple(theta0[name].shape)}, the module's parameter "
                                 f"{tuple(p.shape)}")
        self.theta0 = _Point({name: theta0[name].to(p.device, p.dtype) for name, p in params.items()})

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        names = self.theta0.names
        params = dict(self.module.named_parameters())
        theta0 = self.theta0.values()
        # Tangent (θ − θ₀); gradients reach θ through it (reverse mode over forward mode).
        delta = tuple(params[n] - t0 for n, t0 in zip(names, theta0))
        buffers = dict(self.module.named_buffers())

        def f(*theta: torch.Tensor) -> torch.Tensor:
            return functional_call(self.module, ({**dict(zip(names, theta)), **buffers}), args, kwargs)

        # Forward-mode AD has rules for the plain maths of attention only: not for nn.MultiheadAttention's
        # inference fast path (eval + no_grad), nor for the fused flash / memory-efficient SDPA kernels.
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with sdpa_kernel(SDPBackend.MATH):
                out, tangent = jvp(f, theta0, delta)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
        return out + tangent
