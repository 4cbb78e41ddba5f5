"""Output-level comparisons with Retrain, the stronger unlearning benchmarks' complement to UA/RA/TA/MIA.

* :func:`kl_to_retrain`, :func:`js_to_retrain` — mean divergence of the softmax outputs
  from Retrain's on a dataset (0: the same predictive distribution on every sample);
* :func:`zrf` — Zero Retrain Forgetting (Chundawat et al., AAAI 2023): 1 − mean JS
  divergence from a randomly initialised "incompetent teacher" on D_f;
* :func:`relearn_epochs` — relearn time: epochs of fine-tuning on D_f until the forget
  accuracy is back at the Original's (few epochs: the knowledge was hidden, not removed).

:mod:`negkit.metrics` re-exports every name here; :mod:`negkit.benchmark.extra` records them
under the names of :data:`RETRAIN_METRICS`.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from negkit.evaluate import InputTransform, evaluate, predict
from negkit.train import TrainConfig, train

__all__ = ["kl_divergence", "js_divergence", "kl_to_retrain", "js_to_retrain", "zrf", "relearn_epochs",
           "RETRAIN_METRICS"]

#: Record names of the output-level metrics (:mod:`negkit.benchmark.extra` writes them): divergence
#: from Retrain's softmax on D_f and on the test set, ZRF on D_f and the relearn time in epochs.
RETRAIN_METRICS = ("kl_retrain_forget", "js_retrain_forget", "kl_retrain_test", "js_retrain_test", "zrf",
                   "relearn_epochs")


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.as_tensor(logits).detach().cpu().double(), dim=1)


def _check_pair(p_logits: torch.Tensor, q_logits: torch.Tensor) -> None:
    if p_logits.ndim != 2 or p_logits.shape != q_logits.shape:
        raise ValueError(f"need two (N, C) logit tensors of the same shape; got {tuple(p_logits.shape)} and "
                         f"{tuple(q_logits.shape)}")


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p ‖ q) = Σ_i p_i (log p_i − log q_i) in nats, with p, q the softmax of the logits.

    Args:
        p_logits, q_logits: Logits of shape (N, C).

    Returns:
        Float64 tensor of shape (N,), ≥ 0.

    Raises:
        ValueError: Shapes differ or are not (N, C).
    """
    _check_pair(p_logits, q_logits)
    log_p, log_q = _log_probs(p_logits), _log_probs(q_logits)
    return (log_p.exp() * (log_p - log_q)).sum(1).clamp_min(0.0)


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Jensen–Shannon divergence ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q) / 2, in nats.

    Symmetric and bounded by ln 2 (two one-hot outputs on different classes).

    Raises:
        ValueError: Shapes differ or are not (N, C).
    """
    _check_pair(p_logits, q_logits)
    log_p, log_q = _log_probs(p_logits), _log_probs(q_logits)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * (log_p.exp() * (log_p - log_m)).sum(1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(1)
    return js.clamp(0.0, math.log(2.0))


def _mean_divergence(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: nn.Module,
                     other: nn.Module, dataset: Dataset, *, device: str | torch.device | None,
                     batch_size: int, input_transform: InputTransform | None) -> float:
    logits, labels = predict(model, dataset, device=device, batch_size=batch_size, input_transform=input_transform)
    other_logits, other_labels = predict(other, dataset, device=device, batch_size=batch_size)
    assert torch.equal(labels, other_labels)  # the same dataset, in order
    return float(fn(other_logits, logits).mean())


def kl_to_retrain(model: nn.Module, retrain: nn.Module, dataset: Dataset, *,
                  device: str | torch.device | None = None, batch_size: int = 256,
                  input_transform: InputTransform | None = None) -> float:
    """Mean KL(p_Retrain ‖ p_model) over ``dataset``, in nats (0: Retrain's outputs exactly).

    The direction asks how badly the unlearned model's softmax explains Retrain's: it is
    large where Retrain is confident and the model is not, or confident elsewhere.

    Args:
        model: The (unlearned) classifier.
        retrain: The model retrained without D_f.
        dataset: D_f or the test set.
        device: Where to evaluate (None: cuda if available).
        batch_size: Evaluation batch size.
        input_transform: Applied to raw batches before ``model`` only (forget vectors add δ);
            Retrain sees the clean images.
    """
    return _mean_divergence(kl_divergence, model, retrain, dataset, device=device, batch_size=batch_size,
                            input_transform=input_transform)


def js_to_retrain(model: nn.Module, retrain: nn.Module, dataset: Dataset, *,
                  device: str | torch.device | None = None, batch_size: int = 256,
                  input_transform: InputTransform | None = None) -> float:
    """Mean Jensen–Shannon divergence between the model's and Retrain's softmax over ``dataset``, in nats.

    Symmetric and in [0, ln 2]; arguments as :func:`kl_to_retrain`.
    """
    return _mean_divergence(js_divergence, model, retrain, dataset, device=device, batch_size=batch_size,
                            input_transform=input_transform)


def zrf(model: nn.Module, incompetent: nn.Module, forget: Dataset, *, device: str | torch.device | None = None,
        batch_size: int = 256, input_transform: InputTransform | None = None) -> float:
    """Zero Retrain Forgetting score, 1 − mean JS(model, incompetent teacher) over D_f (Chundawat et al. 2023).

    The incompetent teacher is a randomly initialised model of the same architecture: an
    unlearned model whose outputs on D_f are as uninformative as a random network's scores 1.
    JS is in nats as in :func:`js_divergence`, so ZRF lies in [1 − ln 2, 1].

    Args:
        model: The (unlearned) classifier.
        incompetent: A randomly initialised classifier (build it with a fixed seed).
        forget: D_f.
        device, batch_size, input_transform: As in :func:`kl_to_retrain` (the transform acts on ``model`` only).
    """
    return 1.0 - _mean_divergence(js_divergence, model, incompetent, forget, device=device, batch_size=batch_size,
                                  input_transform=input_transform)


# --------------------------------------------------------------------------- relearn time
class _Relearned(Exception):
    """Raised from the training loop's end-of-epoch hook to stop relearning once the target is reached."""


def relearn_epochs(model: nn.Module, forget: Dataset, reference_acc: float, *, lr: float = 0.01,
                   batch_size: int = 32, max_epochs: int = 20, seed: int = 0,
                   device: str | torch.device | None = None, momentum: float = 0.9, weight_decay: float = 0.0,
                   tolerance: float = 0.0, eval_batch_size: int = 256,
                   input_transform: InputTransform | None = None) -> int:
    """Relearn time: epochs of fine-tuning a copy of ``model`` on D_f until its forget accuracy is back.

    A copy is trained with :func:`negkit.train.train` (SGD, constant learning rate, so the
    count does not depend on ``max_epochs``) on ``forget`` with its true labels; after every
    epoch its accuracy on ``forget`` (eval mode) is compared with ``reference_acc``, the
    Original's. A model whose knowledge of D_f was only hidden relearns in fewer epochs than
    Retrain, which never saw D_f (Golatkar et al. 2020 call this the relearn time).

    Args:
        model: The (unlearned) classifier; not modified.
        forget: D_f (the images the accuracy is measured on, and trained on).
        reference_acc: Target forget accuracy in % (the Original's on the same set).
        lr, batch_size, momentum, weight_decay: Of the fine-tuning.
        max_epochs: Cap on the epochs trained.
        seed: Data order of the fine-tuning.
        device: None: cuda if available.
        tolerance: Percentage points below ``reference_acc`` that count as reached.
        eval_batch_size: Batch size of the accuracy passes.
        input_transform: Applied to every batch before the model, in training and evaluation
            (a forget vector's δ stays fixed while the weights relearn).

    Returns:
        0 if ``model`` is already at the reference; else the first epoch e ≤ ``max_epochs``
        after which it is; ``max_epochs + 1`` when the cap is reached first (a censored
        count: "more than ``max_epochs``").

    Raises:
        ValueError: ``max_epochs`` < 1, ``tolerance`` < 0 or ``reference_acc`` outside [0, 100].
    """
    if max_epochs < 1 or tolerance < 0 or not 0.0 <= reference_acc <= 100.0:
        raise ValueError(f"relearn_epochs needs max_epochs >= 1 (got {max_epochs}), tolerance >= 0 (got "
                         f"{tolerance}) and reference_acc in [0, 100] % (got {reference_acc})")
    target = reference_acc - tolerance - 1e-9  # accuracies are k/n in %: equal counts may differ in the last bit
    kw = dict(device=device, batch_size=eval_batch_size, input_transform=input_transform)
    if evaluate(model, forget, **kw)["acc"] >= target:
        return 0
    cfg = TrainConfig(epochs=max_epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                      weight_decay=weight_decay, schedule="constant", seed=seed)
    epochs_done = 0

    def after_epoch(m: nn.Module) -> None:
        nonlocal epochs_done
        epochs_done += 1
        if evaluate(m, forget, **kw)["acc"] >= target:
            raise _Relearned

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, frac: float):
        logits = m(x if input_transform is None else input_transform(x))
        return F.cross_entropy(logits, y), logits

    try:
        train(copy.deepcopy(model), forget, cfg, device=device, loss_fn=loss, eval_fn=after_epoch, progress=False)
    except _Relearned:
        return epochs_done
    return max_epochs + 1
