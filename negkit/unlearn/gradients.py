"""Gradient statistics at a fixed model: SalUn's saliency, summed and per-sample gradients, diagonal Fisher.

Every pass here runs a copy of the model in eval mode (BatchNorm uses its running
statistics and is not updated), so a per-sample quantity does not depend on which
images share its batch. Flat vectors follow the order of ``model.named_parameters()``
restricted to parameters that require gradients (:func:`trainable`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from negkit.evaluate import resolve_device

__all__ = ["trainable", "saliency_mask", "summed_gradient", "sample_gradients", "diagonal_fisher", "unflatten"]


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that require gradients, by name, in ``named_parameters`` order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def unflatten(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Split a flat vector over :func:`trainable` parameters into tensors of their shapes."""
    out, start = {}, 0
    for n, p in trainable(model).items():
        out[n] = flat[start:start + p.numel()].view_as(p)
        start += p.numel()
    if start != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} elements, the model's trainable parameters {start}")
    return out


def _eval_copy(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device).eval()


def saliency_mask(
    model: nn.Module,
    forget: Dataset,
    fraction: float = 0.5,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """SalUn's weight saliency mask at ``model`` (SalUn, Eq. 6), as its reference code computes it.

    g = Σ_batches ∇_θ mean_{(x,y) ∈ batch} (−CE(f_θ(x), y)) over D_f in batches of
    ``batch_size``, shuffled with ``seed`` as the reference's forget loader is, with the
    model in eval mode (BatchNorm statistics untouched). Because each batch contributes
    its *mean* gradient, the images of a short last batch weigh more than the others,
    exactly as in the reference. Then the ``⌊fraction · N⌋`` parameter elements of
    largest |g| over all N parameter elements (one global ranking; ties at the boundary
    broken by ``torch.topk``) are marked salient.

    Args:
        model: The original model θ_o (not modified).
        forget: The forget set D_f.
        fraction: Fraction of weights to mark salient, in (0, 1].
        batch_size: Batch size of the gradient pass (the reference uses the unlearning batch size).
        device: Device for the pass (None: cuda if available, else cpu).
        seed: Seed of the batch order (which images share a short last batch).

    Returns:
        ``{parameter name: bool tensor of its shape}`` for every parameter, on cpu.

    Raises:
        ValueError: ``fraction`` outside (0, 1], or an empty forget set.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"saliency fraction must be in (0, 1], got {fraction}")
    if len(forget) == 0:
        raise ValueError("saliency_mask got an empty forget set")
    device = resolve_device(device)
    model = _eval_copy(model, device)
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    order = torch.Generator().manual_seed(seed)
    for x, y in DataLoader(forget, batch_size=batch_size, shuffle=True, generator=order):
        # backward() adds each batch's mean gradient to .grad: the sum over batches
        (-F.cross_entropy(model(x.to(device)), y.to(device))).backward()
    names = list(params)
    grads = [params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]) for n in names]
    flat = torch.cat([g.detach().abs().flatten().float().cpu() for g in grads])
    k = int(fraction * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    masks, start = {}, 0
    for n in names:
        numel = params[n].numel()
        masks[n] = keep[start:start + numel].view(params[n].shape).clone()
        start += numel
    return masks


def _flat_grad(params: dict[str, nn.Parameter]) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params.values()])


def summed_gradient(model: nn.Module, dataset: Dataset, *, batch_size: int = 128,
                    device: str | torch.device | None = None) -> Tensor:
    """Σ_i ∇_θ CE(f_θ(x_i), y_i) over ``dataset`` (eval mode), a flat float64 vector on ``device``.

    Raises:
        ValueError: An empty dataset.
    """
    if len(dataset) == 0:
        raise ValueError("summed_gradient got an empty dataset")
    device = resolve_device(device)
    model = _eval_copy(model, device)
    params = trainable(model)
    total = torch.zeros(sum(p.numel() for p in params.values()), dtype=torch.float64, device=device)
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").backward()
        total += _flat_grad(params).double()
    return total


def sample_gradients(model: nn.Module, dataset: Dataset, *, device: str | torch.device | None = None) -> Tensor:
    """Per-sample gradients ∇_θ CE(f_θ(x_i), y_i), one row per item of ``dataset`` (eval mode).

    Returns:
        A float64 tensor of shape (len(dataset), number of trainable parameter elements) on ``device``.
    """
    device = resolve_device(device)
    model = _eval_copy(model, device)
    params = trainable(model)
    rows = []
    for x, y in DataLoader(dataset, batch_size=1, shuffle=False):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        rows.append(_flat_grad(params).double())
    if not rows:
        raise ValueError("sample_gradients got an empty dataset")
    return torch.stack(rows)


def diagonal_fisher(model: nn.Module, dataset: Dataset, *, batch_size: int = 128,
                    device: str | torch.device | None = None) -> dict[str, Tensor]:
    """SSD's importances: the mean over mini-batches of the squared batch-mean gradient, per parameter.

    I_D = (1/B) Σ_b (∇_θ mean_{i ∈ b} CE(f_θ(x_i), y_i))², batches of ``batch_size`` in
    dataset order (eval mode) — the diagonal of the empirical Fisher as SSD's reference
    code estimates it (Foster et al. 2024, Sec. 3).

    Returns:
        ``{parameter name: importance tensor of its shape}`` on ``device``.

    Raises:
        ValueError: An empty dataset.
    """
    if len(dataset) == 0:
        raise ValueError("diagonal_fisher got an empty dataset")
    device = resolve_device(device)
    model = _eval_copy(model, device)
    params = trainable(model)
    imp = {n: torch.zeros_like(p) for n, p in params.items()}
    batches = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        for n, p in params.items():
            if p.grad is not None:
                imp[n] += p.grad.detach() ** 2
        batches += 1
    return {n: v / batches for n, v in imp.items()}
