"""Forget-vector settings per scenario, and choosing one (setting, epoch) on validation.

The authors' code has two families of defaults. Class-wise forgetting (their released
CIFAR-10 runs) uses :class:`~negkit.forget_vectors.ForgetVectorConfig`'s field defaults:
β = 5, τ = 1, lr 0.2. Random forgetting uses **β = 1, α = 1, λ = 1, τ = 0, lr 0.01,
10 epochs**, batches of 256 drawn from D_f ∪ D_r jointly and γ = 0.9
(:data:`RANDOM_DEFAULTS`). With τ = 0 the margin term stops pushing a forget sample
once its true logit ties the runner-up: it removes the confidence a memorised sample
has, instead of forcing every forget sample to be misclassified, which is what
forgetting 10 % of the data at random should look like (Retrain still classifies most of
them correctly, as unseen data).

The code ships no tuned random-forgetting setting, so :func:`select_on_validation`
chooses one. It learns δ once per setting of a small grid, keeps a copy after every
epoch (the schedule does not depend on the total number of epochs, so the copy after e
epochs *is* δ learned for e epochs) and scores every (setting, epoch) on the
benchmark's validation sets with the negation's selection rules:

- ``min_forget`` (the paper's rule (a)): the lowest forget accuracy among candidates whose
  control accuracy stays ≥ threshold × the original's;
- ``match`` (rule (b), random forgetting): the admissible candidate whose forget accuracy
  is closest to the original's held-out validation accuracy.

Each candidate row also carries the mean forget margin z_y − max_{k≠y} z_k and the
accuracy on a fixed retain subsample, so a reader can see *why* a setting wins or loses
(the UA/RA trajectory per epoch).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from negkit.config import from_dict, replace
from negkit.data.splits import subset
from negkit.evaluate import predict, resolve_device
from negkit.forget_vectors.learn import learn_forget_vector
from negkit.forget_vectors.loss import ForgetVectorConfig
from negkit.forget_vectors.vector import ForgetVector

__all__ = ["RANDOM_DEFAULTS", "RANDOM_GRID", "SCENARIOS", "default_config", "candidate_settings",
           "select_on_validation", "pick"]

#: The reference code's random-forgetting settings (its class-wise ones are the dataclass defaults).
RANDOM_DEFAULTS: dict[str, Any] = {"alpha": 1.0, "beta": 1.0, "lam": 1.0, "tau": 0.0, "lr": 0.01, "epochs": 10,
                                   "batch_size": 256, "batching": "joint", "gamma": 0.9}
#: Candidate settings tried on validation for random forgetting, around :data:`RANDOM_DEFAULTS`
#: (the reference's lr and a 10× larger one; its β and a stronger margin weight).
RANDOM_GRID: dict[str, tuple] = {"lr": (0.01, 0.1), "beta": (1.0, 5.0)}
SCENARIOS = ("random", "class")
RULES = ("min_forget", "match")


def default_config(scenario: str, **overrides: Any) -> ForgetVectorConfig:
    """The reference code's forget-vector setting for ``scenario`` (``"random"`` or ``"class"``).

    Args:
        scenario: ``"random"`` (random forgetting: :data:`RANDOM_DEFAULTS`) or ``"class"``
            (class-wise: the :class:`ForgetVectorConfig` defaults). A benchmark scenario name
            (``"random_10"``, ``"class_0"``) is accepted too.
        **overrides: Any :class:`ForgetVectorConfig` field.

    Raises:
        ValueError: Unknown scenario, or a bad field (named by :class:`ForgetVectorConfig`).
    """
    kind = scenario.split("_", 1)[0] if isinstance(scenario, str) else scenario
    if kind not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} for forget-vector defaults; use one of {list(SCENARIOS)} "
                         "(or a benchmark scenario such as 'random_10' or 'class_0')")
    base = RANDOM_DEFAULTS if kind == "random" else {}
    return from_dict(ForgetVectorConfig, {**base, **overrides})


def candidate_settings(grid: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """Every combination of ``grid``, named like ``"beta1_lr0.01"`` (one ``"default"`` for an empty grid)."""
    if not grid:
        return {"default": {}}
    keys = sorted(grid)
    for k in keys:
        if isinstance(grid[k], (str, bytes)) or not len(grid[k]):
            raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {grid[k]!r}")
    return {"_".join(f"{k}{v:g}" if isinstance(v, (int, float)) else f"{k}{v}" for k, v in zip(keys, values)):
            dict(zip(keys, values)) for values in itertools.product(*(tuple(grid[k]) for k in keys))}


def _scores(model: nn.Module, fv: ForgetVector | None, sets: Mapping[str, Dataset], device: torch.device,
            batch_size: int) -> dict[str, float]:
    """Accuracy (%) on each set with δ applied, and the mean forget margin."""
    out = {}
    for name, data in sets.items():
        logits, labels = predict(model, data, device=device, input_transform=fv, batch_size=batch_size)
        out[name] = 100.0 * float((logits.argmax(1) == labels).float().mean())
        if name == "forget":
            z_y = logits.gather(1, labels[:, None]).squeeze(1)
            others = logits.scatter(1, labels[:, None], float("-inf")).max(1).values
            out["forget_margin"] = float((z_y - others).mean())
    return out


def pick(table: pd.DataFrame, rule: str, *, reference: float, threshold: float,
         target: float | None = None) -> tuple[pd.Series, bool]:
    """The candidate a selection rule takes from :func:`select_on_validation`'s table.

    Args:
        table: One row per (setting, epoch) with ``val_forget`` and ``val_control`` in %.
        rule: ``"min_forget"`` or ``"match"`` (needs ``target``).
        reference: The original's control accuracy (%) the threshold applies to.
        threshold: Control must stay ≥ threshold × reference.
        target: The match rule's target forget accuracy (%).

    Returns:
        ``(row, admissible)``; without an admissible candidate, the one with the highest
        control accuracy and False. Ties go to the earlier epoch, then the grid order.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid rules are {list(RULES)}")
    if rule == "match" and (target is None or not math.isfinite(target)):
        raise ValueError("the match rule needs a finite target forget accuracy (the original's validation accuracy)")
    if not (math.isfinite(reference) and reference >= 0 and 0 < threshold <= 1):
        raise ValueError(f"need a finite reference >= 0 and threshold in (0, 1]; got {reference}, {threshold}")
    t = table.reset_index(drop=True)
    ok = t[t.val_control >= threshold * reference]
    if ok.empty:
        return t.loc[t.val_control.idxmax()], False
    key = ok.val_forget if rule == "min_forget" else (ok.val_forget - target).abs()
    order = pd.DataFrame({"key": key, "epoch": ok.epoch, "pos": ok.index}).sort_values(["key", "epoch", "pos"])
    return t.loc[order.pos.iloc[0]], True


def select_on_validation(model: nn.Module, forget: Dataset, retain: Dataset, val_forget: Dataset,
                         val_control: Dataset, cfg: ForgetVectorConfig | Mapping[str, Any], *,
                         grid: Mapping[str, Sequence[Any]] | None = None, retain_probe: int = 2000,
                         device: str | torch.device | None = None, batch_size: int = 1000,
                         progress: bool = False) -> tuple[pd.DataFrame, dict[tuple[str, int], ForgetVector]]:
    """Learn δ for every setting of ``grid`` and score it after every epoch on validation.

    Args:
        model: The frozen original classifier (raw [0, 1] pixels in).
        forget, retain: D_f and D_r δ is learned on.
        val_forget, val_control: The sets a candidate is scored on (the benchmark's: for
            random forgetting D_f itself and the validation split).
        cfg: The base setting (e.g. :func:`default_config`); each grid point overrides it.
        grid: ``{field: values}`` of :class:`ForgetVectorConfig` (None or empty: ``cfg`` only).
        retain_probe: Size of the seeded D_r subsample whose accuracy is reported per
            epoch (0: none); it is not used for the choice.
        device: None for cuda if available, else cpu.
        batch_size: Evaluation batch size.
        progress: tqdm bars over each setting's epochs.

    Returns:
        ``(table, vectors)``: one row per (setting, epoch) with the setting's values,
        ``val_forget``, ``val_control``, ``forget_margin`` (mean on ``val_forget``),
        ``retain_probe`` and ``norm`` (‖δ‖₂); ``vectors[(setting, epoch)]`` is δ after that
        epoch. Row ``epoch == 0`` is the original without δ, recorded once for reference.
    """
    base = from_dict(ForgetVectorConfig, cfg)
    device = resolve_device(device)
    model.to(device)
    sets: dict[str, Dataset] = {"forget": val_forget, "control": val_control}
    if retain_probe and len(retain):
        rng = np.random.default_rng(base.seed)
        sets["retain"] = subset(retain, np.sort(rng.choice(len(retain), min(retain_probe, len(retain)),
                                                           replace=False)))

    def row(setting: str, values: Mapping[str, Any], epoch: int, fv: ForgetVector | None) -> dict[str, Any]:
        s = _scores(model, fv, sets, device, batch_size)
        return {"setting": setting, **values, "epoch": epoch, "val_forget": s["forget"], "val_control": s["control"],
                "forget_margin": s["forget_margin"], "retain_probe": s.get("retain", math.nan),
                "norm": 0.0 if fv is None else fv.norm()}

    rows = [row("original", {}, 0, None)]
    vectors: dict[tuple[str, int], ForgetVector] = {}
    for name, values in candidate_settings(grid or {}).items():
        c = replace(base, **values)

        def keep(epoch: int, delta: torch.Tensor, name: str = name, values: Mapping = values, c=c) -> None:
            fv = ForgetVector(delta, clip=c.clip, meta={"setting": name, "epoch": str(epoch)})
            vectors[(name, epoch)] = fv
            rows.append(row(name, values, epoch, fv))

        learn_forget_vector(model, forget, retain, c, device=device, progress=progress, on_epoch=keep)
    return pd.DataFrame(rows), vectors
