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

Beyond accuracies, the output-level comparisons of the stronger unlearning benchmarks
(:mod:`negkit.retrain_metrics`, re-exported here):

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

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from sklearn.svm import SVC
from torch import nn
from torch.utils.data import Dataset

from negkit.evaluate import InputTransform, predict, true_class_confidence

__all__ = ["accuracy", "MIA_FEATURES", "mia_features", "svc_mia", "mia_efficacy", "mia_efficacies", "avg_gap",
           "unlearning_metrics", "kl_divergence", "js_divergence", "kl_to_retrain", "js_to_retrain", "zrf",
           "relearn_epochs", "RETRAIN_METRICS", "ulira", "ULiRAConfig", "ULiRAResult"]

#: The attack features of SalUn's ``SVC_MIA``; "confidence" is the headline MIA-efficacy.
MIA_FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")

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


from negkit.retrain_metrics import (RETRAIN_METRICS, js_divergence, js_to_retrain, kl_divergence,  # noqa: E402
                                    kl_to_retrain, relearn_epochs, zrf)
from negkit.ulira import ULiRAConfig, ULiRAResult, ulira  # noqa: E402  (entry point; the module trains shadows)
