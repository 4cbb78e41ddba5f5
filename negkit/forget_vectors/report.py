"""Evaluating forget vectors: per-class accuracy, the class-wise report, and the benchmark.

:func:`per_class_accuracy` and :func:`classwise_report` show how each δ_c forgets its
class and spares the others. :func:`run_benchmark` learns δ (or the weights of δ(w)) for a
``negkit.benchmark.Setup`` and records UA, RA, TA, MIA and Avg. Gap next to the
weight-based unlearning methods of the same run.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from negkit.config import from_dict
from negkit.evaluate import predict
from negkit.forget_vectors.arithmetic import learn_arithmetic
from negkit.forget_vectors.learn import _cached, learn_forget_vector
from negkit.forget_vectors.loss import ForgetVectorConfig
from negkit.forget_vectors.vector import ForgetVector
from negkit.lock import locks_run_dir
from negkit.metrics import unlearning_metrics

__all__ = ["per_class_accuracy", "classwise_report", "run_benchmark"]


def per_class_accuracy(model: nn.Module, data: Dataset, *, input_transform: Any = None,
                       num_classes: int | None = None, device: str | torch.device | None = None,
                       batch_size: int = 512) -> pd.Series:
    """Accuracy (%) of ``model`` on each class of ``data`` (NaN for a class without samples).

    Args:
        model: Classifier taking raw pixels.
        data: Dataset of (image, label).
        input_transform: E.g. a :class:`ForgetVector`; None for the plain model.
        num_classes: Number of classes (default: the number of logits).
        device: None for cuda if available, else cpu.
        batch_size: Evaluation batch size.

    Returns:
        A Series indexed by class.
    """
    logits, labels = predict(model, data, device=device, batch_size=batch_size, input_transform=input_transform)
    correct = logits.argmax(1) == labels
    k = num_classes or logits.shape[1]
    return pd.Series({c: 100.0 * float(correct[labels == c].float().mean()) if (labels == c).any() else math.nan
                      for c in range(k)}, name="acc")


def classwise_report(model: nn.Module, vectors: Mapping[int, ForgetVector], test: Dataset, *,
                     device: str | torch.device | None = None, batch_size: int = 512) -> pd.DataFrame:
    """How well each class-wise δ_c forgets class c on ``test`` and spares the others.

    Returns:
        One row per class c: ``acc_c_original`` / ``acc_c`` (accuracy on class c without / with δ_c),
        ``UA`` = 100 − ``acc_c``, ``TA_others_original`` / ``TA_others`` (accuracy on the other
        classes without / with δ_c), ``TA_drop`` = original − with δ, and ``l2`` = ‖δ_c‖₂.
    """
    kw = dict(device=device, batch_size=batch_size)
    logits0, labels = predict(model, test, **kw)
    ok0 = logits0.argmax(1) == labels
    rows = []
    for c, fv in vectors.items():
        ok = predict(model, test, input_transform=fv, **kw)[0].argmax(1) == labels
        mine = labels == c
        rows.append({"class": int(c), "acc_c_original": 100.0 * float(ok0[mine].float().mean()),
                     "acc_c": 100.0 * float(ok[mine].float().mean()),
                     "TA_others_original": 100.0 * float(ok0[~mine].float().mean()),
                     "TA_others": 100.0 * float(ok[~mine].float().mean()), "l2": fv.norm()})
    df = pd.DataFrame(rows)
    df["UA"] = 100.0 - df["acc_c"]
    df["TA_drop"] = df["TA_others_original"] - df["TA_others"]
    return df


@locks_run_dir(lambda a: a["setup"].log.path.parent)  # the benchmark's run dir (re-entered inside benchmark.run)
def run_benchmark(setup: Any, cfg: ForgetVectorConfig | Mapping[str, Any] | None = None, *,
                  vectors: Mapping[int, ForgetVector] | None = None, device: str | torch.device | None = None,
                  progress: bool = False) -> tuple[ForgetVector, dict[str, float]]:
    """Forget a ``negkit.benchmark.Setup``'s forget set with δ and record the result.

    Learns δ on the Setup's forget / retain sets with its original model frozen (or,
    with ``vectors``, the weights of δ(w) = Σ w_c δ_c), evaluates UA, RA, TA, MIA with
    δ applied and appends them, with Avg. Gap to Retrain, to ``setup.log`` as method
    ``"forget_vector"`` (or ``"forget_vector_arithmetic"``) — next to the weight-based
    methods of the same run. δ is saved under ``<scenario>/forget_vectors/`` and reused
    on rerun; records already present are not written twice.

    Returns:
        ``(forget_vector, metrics)``.
    """
    cfg = from_dict(ForgetVectorConfig, cfg)
    method = "forget_vector" if vectors is None else "forget_vector_arithmetic"
    device = device if device is not None else setup.device
    meta = {"task": setup.scenario}
    if vectors is None:
        learn = lambda: learn_forget_vector(setup.original, setup.forget, setup.retain, cfg,  # noqa: E731
                                            device=device, progress=progress, meta=meta)
    else:
        learn = lambda: learn_arithmetic(setup.original, vectors, setup.forget, setup.retain, cfg,  # noqa: E731
                                         device=device, progress=progress, meta=meta)
    fv = _cached(Path(setup.scenario_dir) / "forget_vectors" / f"{method}.safetensors", cfg, learn, vectors)
    metrics = unlearning_metrics(setup.original, setup.forget, setup.retain, setup.test, device=device,
                                 input_transform=fv, seed=setup.cfg.seed)
    if not setup.log.has(scenario=setup.scenario, method=method, metric="avg_gap", seed=setup.cfg.seed):
        from negkit.benchmark import record_method  # benchmark imports the whole pipeline; load it lazily

        note = f"||δ||₂={fv.norm():.3g}" + (f"; w={fv.meta['weights']}" if vectors is not None else "")
        record_method(setup.log, setup, method, metrics, note=note)
    return fv, metrics
