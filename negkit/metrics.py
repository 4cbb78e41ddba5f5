"""Unlearning metrics of the machine-unlearning benchmark (SalUn, Fan et al. 2024; NegMerge Sec. 5).

* UA  — unlearning accuracy, 100 − accuracy on the forget set D_f;
* RA  — accuracy on the retain set D_r;
* TA  — accuracy on the test set (without the forgotten classes for class-wise forgetting);
* MIA — MIA-efficacy: the percentage of D_f that a confidence-based membership-inference
  attack (an RBF SVC trained on retain = member vs test = non-member confidences) calls
  *non-member*. Higher means the forget set looks less like training data. SalUn's code
  runs the same attack on four more features (correctness, entropy, modified entropy,
  the probability vector): :func:`mia_features`, :func:`mia_efficacies`.
* Avg. Gap — mean |metric − metric of Retrain| over UA, RA, TA, MIA (lower is better).

Beyond accuracies, the output-level comparisons of the stronger unlearning benchmarks:

* :func:`kl_to_retrain`, :func:`js_to_retrain` — mean divergence of the softmax outputs
  from Retrain's on a dataset (0: the same predictive distribution on every sample);
* :func:`zrf` — Zero Retrain Forgetting (Chundawat et al., AAAI 2023): 1 − mean JS
  divergence from a randomly initialised "incompetent teacher" on D_f;
* :func:`relearn_epochs` — relearn time: epochs of fine-tuning on D_f until the forget
  accuracy is back at the Original's (few epochs: the knowledge was hidden, not removed);
* :func:`ulira` — the per-example likelihood-ratio attack U-LiRA (Hayes et al. 2024),
  which trains shadow models (:mod:`negkit.ulira`, cost stated there).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.svm import SVC
from torch import nn
from torch.utils.data import Dataset

from negkit.evaluate import InputTransform, evaluate, predict, true_class_confidence
from negkit.train import TrainConfig, train

__all__ = ["accuracy", "MIA_FEATURES", "mia_features", "svc_mia", "mia_efficacy", "mia_efficacies", "avg_gap",
           "unlearning_metrics", "kl_divergence", "js_divergence", "kl_to_retrain", "js_to_retrain", "zrf",
           "relearn_epochs", "RETRAIN_METRICS", "ulira", "ULiRAConfig", "ULiRAResult"]

#: The attack features of SalUn's ``SVC_MIA``; "confidence" is the headline MIA-efficacy.
MIA_FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")

#: Record names of the output-level metrics (:mod:`negkit.benchmark.extra` writes them): divergence
#: from Retrain's softmax on D_f and on the test set, ZRF on D_f and the relearn time in epochs.
RETRAIN_METRICS = ("kl_retrain_forget", "js_retrain_forget", "kl_retrain_test", "js_retrain_test", "zrf",
                   "relearn_epochs")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in %.

    Raises:
        TypeError: ``labels`` are not integer class indices (floats, booleans).
        ValueError: Empty input or mismatched lengths.
    """
    _check_labels(labels, "accuracy")
    if logits.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise ValueError(f"need as many labels as logits rows (and at least one); got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    return 100.0 * int((logits.argmax(1) == labels).sum()) / labels.numel()


def _check_labels(labels: torch.Tensor | np.ndarray | Sequence[int], where: str,
                  n_classes: int | None = None) -> None:
    """Refuse labels that are not class indices in [0, n_classes): floats, booleans, negatives."""
    t = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if t.numel() == 0:  # no dtype to judge (np.asarray([]) is float64); the callers refuse empty input
        return
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{where}: labels must be integer class indices, got a {t.dtype} tensor; "
                        f"pass labels.long() (or the dataset's targets, not probabilities)")
    if int(t.min()) < 0:
        raise ValueError(f"{where}: labels must be class indices ≥ 0, got {int(t.min())}; "
                         f"was an ignore label (e.g. -100) left in?")
    if n_classes is not None and int(t.max()) >= n_classes:
        raise ValueError(f"{where}: label {int(t.max())} is out of range for {n_classes} classes (logits' columns)")


def _as_column(x: torch.Tensor | np.ndarray | Sequence[float], what: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.astype(np.float64).reshape(-1, 1)
    if arr.shape[0] == 0:
        raise ValueError(f"mia_efficacy: {what} confidences are empty")
    return arr


def _balanced(retain: np.ndarray, test: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Members and non-members of equal count for the attacker's training set.

    With at least as many retain as test samples this is SalUn's choice, the first
    ``len(test)`` retain samples (``Subset(retain, range(len(test)))`` in its
    ``main_forget.py``). With fewer retain samples (a large forget set, or a small
    training set against a full test set) SalUn's code fails; here a seeded uniform
    subsample of ``len(retain)`` test samples, drawn without replacement and kept in
    order, takes their place.
    """
    n_r, n_t = retain.shape[0], test.shape[0]
    if n_r >= n_t:
        return retain[:n_t], test
    keep = np.sort(np.random.default_rng(seed).choice(n_t, size=n_r, replace=False))
    return retain, test[keep]


def mia_features(logits: torch.Tensor, labels: torch.Tensor, feature: str) -> np.ndarray:
    """Per-sample features of the SVC membership-inference attack, shape (N, d).

    With p = softmax(logits) and y the true label:

    * ``correctness``: 1[argmax p = y] (d = 1);
    * ``confidence``: p_y (d = 1);
    * ``entropy``: −Σ_i p_i log p_i, terms with p_i = 0 count 0 (d = 1);
    * ``m_entropy``: the modified entropy of Song & Mittal (USENIX Security 2021),
      −(1 − p_y) log p_y − Σ_{i≠y} p_i log(1 − p_i), logs floored at log 1e-30 (d = 1).
      Deliberate deviation: SalUn's code computes −Σ_i q_i log p_i, with q_i = 1 − p_i in
      every column whose class is the label of *any* sample of the set (so a sample's
      value depends on the other samples) and log p_i where the definition has
      log(1 − p_i); here each sample gets the published definition;
    * ``prob``: the whole vector p (d = C).

    Raises:
        TypeError: ``labels`` are not integer class indices.
        ValueError: An unknown feature (the message lists them); a label < 0 or ≥ the
            number of classes; as many labels as logits rows missing.
    """
    if feature not in MIA_FEATURES:
        raise ValueError(f"unknown MIA feature {feature!r}; choose from {list(MIA_FEATURES)}")
    _check_labels(labels, "mia_features", n_classes=logits.shape[1] if logits.dim() == 2 else None)
    n_labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).numel()
    if logits.dim() != 2 or n_labels != logits.shape[0]:
        raise ValueError(f"mia_features: need logits of shape (N, C) and N labels; got {tuple(logits.shape)} "
                         f"and {n_labels} labels")
    # fp32 softmax as the attack's reference (and true_class_confidence); features in fp64
    p = torch.softmax(logits.detach().float().cpu(), dim=1).double()
    y = torch.as_tensor(labels).detach().cpu().long()
    rows = torch.arange(p.shape[0])
    if feature == "correctness":
        out = (p.argmax(1) == y).double()
    elif feature == "confidence":
        out = p[rows, y]
    elif feature == "entropy":
        out = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)
    elif feature == "m_entropy":
        floor = math.log(1e-30)
        log_p = torch.where(p > 0, p.log(), torch.full_like(p, floor))
        log_q = torch.where(p < 1, torch.log1p(-p), torch.full_like(p, floor))
        terms = -p * log_q  # i ≠ y: −p_i log(1 − p_i)
        terms[rows, y] = -(1 - p[rows, y]) * log_p[rows, y]  # i = y: −(1 − p_y) log p_y
        out = terms.sum(1)
    elif feature == "prob":
        return p.numpy()
    else:
        raise ValueError(f"unknown MIA feature {feature!r}; choose from {list(MIA_FEATURES)}")
    return out.numpy().reshape(-1, 1)


def svc_mia(retain: np.ndarray, test: np.ndarray, forget: np.ndarray, *, seed: int = 0) -> float:
    """MIA-efficacy (%) of SalUn's SVC attack on any per-sample features, each of shape (N, d).

    ``SVC(C=3, kernel="rbf", gamma="auto")`` is fitted on members (retain, label 1) and
    non-members (test, label 0), balanced as :func:`mia_efficacy` describes; the
    efficacy is the percentage of forget samples it predicts to be non-members.
    """
    retain, test, forget = (np.asarray(a, dtype=np.float64) for a in (retain, test, forget))
    for what, a in (("retain", retain), ("test", test), ("forget", forget)):
        if a.shape[0] == 0:
            raise ValueError(f"mia_efficacy: {what} confidences are empty")
    members, non_members = _balanced(retain.reshape(len(retain), -1), test.reshape(len(test), -1), seed)
    x = np.concatenate([members, non_members])
    y = np.concatenate([np.ones(members.shape[0]), np.zeros(non_members.shape[0])])
    clf = SVC(C=3, kernel="rbf", gamma="auto", random_state=seed).fit(x, y)
    return 100.0 * float((clf.predict(forget.reshape(len(forget), -1)) == 0).mean())


def mia_efficacy(retain_conf: torch.Tensor | np.ndarray, test_conf: torch.Tensor | np.ndarray,
                 forget_conf: torch.Tensor | np.ndarray, *, seed: int = 0) -> float:
    """MIA-efficacy (%) of SalUn's confidence-based SVC attack.

    The attacker is ``SVC(C=3, kernel="rbf", gamma="auto")`` fitted on an equal number
    of member (retain, label 1) and non-member (test, label 0) true-class confidences.
    The efficacy is the percentage of forget samples it predicts to be non-members.

    The two sides are balanced to ``n = min(N_r, N_test)``: if ``N_r >= N_test`` the
    members are the first ``N_test`` retain samples, exactly as in SalUn's code; if
    ``N_r < N_test`` all retain samples are used and the non-members are a uniform
    subsample of ``N_r`` test samples drawn with ``numpy.random.default_rng(seed)``
    (SalUn's code has no such case).

    Args:
        retain_conf: True-class confidences on D_r, shape (N_r,).
        test_conf: True-class confidences on the test set, shape (N_test,).
        forget_conf: True-class confidences on D_f, shape (N_f,).
        seed: ``random_state`` of the SVC and seed of the test subsample.

    Raises:
        ValueError: An empty input.
    """
    retain, test, forget = (_as_column(retain_conf, "retain"), _as_column(test_conf, "test"),
                            _as_column(forget_conf, "forget"))
    return svc_mia(retain, test, forget, seed=seed)


def mia_efficacies(retain: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   forget: tuple[torch.Tensor, torch.Tensor], *, features: Sequence[str] = MIA_FEATURES,
                   seed: int = 0) -> dict[str, float]:
    """MIA-efficacy (%) of the SVC attack on each of SalUn's features (:func:`mia_features`).

    Args:
        retain, test, forget: ``(logits, labels)`` of D_r, the test set and D_f.
        features: Names from :data:`MIA_FEATURES`.
        seed: As in :func:`mia_efficacy`.

    Returns:
        ``{feature: efficacy}``; ``"confidence"`` equals :func:`mia_efficacy`.
    """
    return {f: svc_mia(*(mia_features(lg, lb, f) for lg, lb in (retain, test, forget)), seed=seed)
            for f in features}


def avg_gap(metrics: Mapping[str, float], retrain: Mapping[str, float],
            keys: Sequence[str] = ("UA", "RA", "TA", "MIA")) -> float:
    """Mean absolute difference to Retrain over ``keys``.

    Raises:
        KeyError: A key is missing from either mapping.
    """
    for name, m in (("metrics", metrics), ("retrain", retrain)):
        missing = [k for k in keys if k not in m]
        if missing:
            raise KeyError(f"avg_gap: {name} lacks {missing}; it has {sorted(m)}")
    return float(np.mean([abs(float(metrics[k]) - float(retrain[k])) for k in keys]))


def unlearning_metrics(model: nn.Module, forget: Dataset, retain: Dataset, test: Dataset, *,
                       device: str | torch.device | None = None, input_transform: InputTransform | None = None,
                       batch_size: int = 256, seed: int = 0,
                       mia_extra: Sequence[str] = ()) -> dict[str, float]:
    """UA, RA, TA and MIA-efficacy of ``model`` (all in %).

    Args:
        model: The (unlearned) classifier.
        forget: D_f.
        retain: D_r.
        test: Test set; for class-wise forgetting pass it without the forgotten classes
            (:func:`negkit.data.splits.without_classes`).
        device: Where to evaluate.
        input_transform: Applied to raw image batches before the model (forget vectors).
        batch_size: Evaluation batch size.
        seed: Seed of the MIA attacker.
        mia_extra: Further attack features (:data:`MIA_FEATURES`), each added as
            ``"MIA_<feature>"``.

    Returns:
        ``{"UA": ..., "RA": ..., "TA": ..., "MIA": ...}`` plus the ``mia_extra`` entries.
    """
    kw = dict(device=device, input_transform=input_transform, batch_size=batch_size)
    out, conf, raw = {}, {}, {}
    for name, data in (("forget", forget), ("retain", retain), ("test", test)):
        logits, labels = predict(model, data, **kw)
        out[name] = accuracy(logits, labels)
        conf[name] = true_class_confidence(logits, labels)
        raw[name] = (logits, labels)
    metrics = {
        "UA": 100.0 - out["forget"],
        "RA": out["retain"],
        "TA": out["test"],
        "MIA": mia_efficacy(conf["retain"], conf["test"], conf["forget"], seed=seed),
    }
    extra = mia_efficacies(raw["retain"], raw["test"], raw["forget"], features=tuple(mia_extra), seed=seed)
    metrics.update({f"MIA_{f}": v for f, v in extra.items()})
    return metrics


# --------------------------------------------------------------------------- output divergences
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


from negkit.ulira import ULiRAConfig, ULiRAResult, ulira  # noqa: E402  (entry point; the module trains shadows)
