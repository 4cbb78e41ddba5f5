"""Choosing β and the number of epochs of each class-wise forget vector on validation.

The authors' released class-wise runs did not share one setting: β ranged over 3–10
and training over 60–190 epochs, chosen per class. :func:`select_classwise` makes that
choice reproducible. For class c it learns δ_c once per β in a grid, for the largest
number of epochs in the epoch grid, keeping a copy of δ after every epoch of the grid
(the learning-rate schedule does not depend on the total, so the copy after e epochs is
exactly δ learned for e epochs). Every (β, e) is scored on the **validation** split:

    score = acc_val(class c | δ) + (acc_val(other classes) − acc_val(other classes | δ)),

the accuracy left on the forgotten class plus the accuracy lost on the others, in
points — an Avg.-Gap-like distance to the ideal of Retrain, which never predicts class
c and keeps the others. The lowest score wins. A small validation set ties often (one
image is a whole step of the score); ties go to the smaller ‖δ‖₂ — the gentler δ, which is
also the one further along its schedule — then to the smaller β and fewer epochs. The
chosen setting and the whole grid are recorded with δ_c.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from negkit.config import from_dict, replace
from negkit.data import labels_of
from negkit.data.splits import make_forget_split, subset
from negkit.evaluate import predict, resolve_device
from negkit.forget_vectors.learn import _cached, learn_forget_vector
from negkit.forget_vectors.loss import ForgetVectorConfig
from negkit.forget_vectors.vector import ForgetVector

__all__ = ["PAPER_BETAS", "PAPER_EPOCHS", "select_classwise"]

#: β values of the authors' released class-wise runs.
PAPER_BETAS = tuple(range(3, 11))
#: A grid over the 60–190 epochs of the authors' released class-wise runs.
PAPER_EPOCHS = (60, 90, 120, 150, 190)


def _accuracies(model: nn.Module, val: Dataset, cls: int, fv: ForgetVector | None,
                device: torch.device) -> tuple[float, float]:
    """(accuracy on class ``cls``, accuracy on the other classes) of ``val`` in %, with ``fv`` applied."""
    logits, labels = predict(model, val, device=device, input_transform=fv)
    ok = (logits.argmax(1) == labels).float()
    mine = labels == cls
    return 100.0 * float(ok[mine].mean()), 100.0 * float(ok[~mine].mean())


def select_classwise(model: nn.Module, data: Any, classes: Sequence[int],
                     cfg: ForgetVectorConfig | Mapping[str, Any] | None = None, *,
                     betas: Sequence[float] = PAPER_BETAS, epochs: Sequence[int] = PAPER_EPOCHS,
                     val: Dataset | None = None, cache_dir: str | Path | None = None,
                     device: str | torch.device | None = None,
                     progress: bool = False) -> tuple[dict[int, ForgetVector], pd.DataFrame]:
    """Class-wise forget vectors with β and epochs chosen per class on validation.

    Args:
        model: Frozen classifier taking raw pixels.
        data: A ``DatasetBundle`` (δ_c is learned on ``train`` and chosen on ``val``) or a
            Dataset of (image, label) to learn on, with ``val`` given.
        classes: Classes to learn a vector for.
        cfg: Everything but β and epochs, which come from the grids (the seed is offset by
            the class, as in :func:`~negkit.forget_vectors.learn_classwise`).
        betas: Candidate β values (default: 3–10, the authors' range).
        epochs: Candidate numbers of epochs (default: 60–190, the authors' range); costs
            ``len(betas) × max(epochs)`` epochs per class.
        val: Validation set of (image, label); default ``data.val``.
        cache_dir: If given, each chosen δ_c is saved there as ``class_<c>.safetensors``
            with its grid, and reused by later calls with the same config and grids.
        device: None for cuda if available, else cpu.
        progress: Show a tqdm bar over classes.

    Returns:
        ``({class: ForgetVector}, grid)``: each vector's ``meta`` holds the chosen ``beta``
        and ``epochs``; ``grid`` has one row per (class, beta, epochs) with the validation
        accuracies (``val_acc_c``, ``val_acc_others``, ``val_acc_others_original``), the
        ``score``, ``l2`` = ‖δ‖₂ and a ``chosen`` flag.

    Raises:
        ValueError: Empty grids, no validation set, or a class without training or
            validation images.
    """
    cfg = from_dict(ForgetVectorConfig, cfg)
    betas = [float(b) for b in betas]
    grid_epochs = sorted({int(e) for e in epochs})
    if not betas or not grid_epochs or min(grid_epochs) < 1:
        raise ValueError(f"select_classwise needs at least one β and epochs >= 1 (got betas={betas}, "
                         f"epochs={list(epochs)})")
    dataset = getattr(data, "train", data)
    val = val if val is not None else getattr(data, "val", None)
    if val is None:
        raise ValueError("no validation set: pass a DatasetBundle (its val split is used) or val=")
    val_labels = labels_of(val)
    missing = sorted(int(c) for c in classes if not (val_labels == int(c)).any())
    if missing:
        raise ValueError(f"class(es) {missing} have no validation images; β and epochs cannot be chosen for them")
    labels = labels_of(dataset)
    splits = {int(c): make_forget_split(labels, "class", classes=(int(c),)) for c in classes}  # validates all first
    device = resolve_device(device)
    grid_key = {"beta": betas, "epochs": grid_epochs, "selected_on": "validation"}
    vectors: dict[int, ForgetVector] = {}
    tables = []
    for c, split in tqdm(splits.items(), desc="class-wise β / epochs selection", disable=not progress):
        forget, retain = subset(dataset, split.forget_idx), subset(dataset, split.retain_idx)
        base = replace(cfg, seed=cfg.seed + c, epochs=max(grid_epochs))
        path = Path(cache_dir) / f"class_{c}.safetensors" if cache_dir is not None else None
        fv = _cached(path, base, lambda: _select_one(model, forget, retain, val, c, base, betas, grid_epochs, device),
                     extra=grid_key)
        vectors[c] = fv
        tables.append(pd.DataFrame(json.loads(fv.meta["selection"])))
    return vectors, pd.concat(tables, ignore_index=True)


def _select_one(model: nn.Module, forget: Dataset, retain: Dataset, val: Dataset, c: int,
                base: ForgetVectorConfig, betas: list[float], grid_epochs: list[int],
                device: torch.device) -> ForgetVector:
    """Learn δ_c for every β up to ``max(grid_epochs)``, score each (β, e) on ``val``, keep the best."""
    _, others0 = _accuracies(model, val, c, None, device)
    rows, snapshots = [], {}
    for beta in betas:
        def keep(epoch: int, delta: torch.Tensor, beta: float = beta) -> None:
            if epoch in grid_epochs:
                snapshots[beta, epoch] = delta.cpu()
                acc_c, others = _accuracies(model, val, c, ForgetVector(delta, clip=base.clip), device)
                rows.append({"class": c, "beta": beta, "epochs": epoch, "val_acc_c": acc_c,
                             "val_acc_others": others, "val_acc_others_original": others0,
                             "score": acc_c + (others0 - others), "l2": float(delta.norm())})

        learn_forget_vector(model, forget, retain, replace(base, beta=beta), device=device, on_epoch=keep)
    table = pd.DataFrame(rows)
    best = table.sort_values(["score", "l2", "beta", "epochs"], kind="stable").index[0]
    table["chosen"] = table.index == best
    beta, epoch = float(table.at[best, "beta"]), int(table.at[best, "epochs"])
    meta = {"task": f"class_{c}", "classes": str(c), "method": "forget_vector", "beta": repr(beta),
            "epochs": str(epoch), "selection": table.to_json(orient="records")}
    return ForgetVector(snapshots[beta, epoch], clip=base.clip, meta=meta)
