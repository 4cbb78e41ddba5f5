"""One scenario's setting: data, forget split, Original and Retrain, and recording results.

:func:`prepare` is the entry point every digits/CIFAR pipeline shares (the weight
negation of :mod:`negkit.benchmark.pipeline`, forget vectors in notebook 04, the
explorer widget); :func:`record_method` writes a method's UA/RA/TA/MIA and Avg. Gap
(against the Setup's Retrain) as tidy records in one append.

Validation sets used to choose λ:

- class-wise: ``val_forget`` = validation images of the forgotten classes,
  ``val_control`` = validation images of the other classes (both never trained on);
- random: ``val_forget`` = D_f itself — forgetting random samples means removing
  their memorisation, which no held-out sample measures — and ``val_control`` = the
  whole validation split.

The control reference is the original model's accuracy on ``val_control``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from negkit import io
from negkit.benchmark.config import SETTING, UNLEARNING_METRICS, BenchmarkConfig, parse_scenario
from negkit.config import to_dict
from negkit.data import DatasetBundle, labels_of
from negkit.data import get as get_dataset
from negkit.data.augment import training_view
from negkit.data.splits import ForgetSplit, class_mask, make_forget_split, subset, without_classes
from negkit.evaluate import evaluate, resolve_device
from negkit.metrics import avg_gap, unlearning_metrics
from negkit.models import get as get_model
from negkit.results import Record, ResultsLog
from negkit.train import train

__all__ = ["Setup", "prepare", "record_method"]

@dataclasses.dataclass
class Setup:
    """Everything one scenario's methods need (returned by :func:`prepare`).

    Attributes:
        cfg, run_dir, scenario, device: What was asked for (``scenario`` is the split's name).
        bundle, split: The dataset and the forget/retain split of its training set.
        forget, retain, test, val: D_f, D_r, the test set (class-wise: without the
            forgotten classes) and the whole validation split.
        val_forget, val_control: The validation sets λ is chosen on (module docstring).
        original, retrain: θ_o and the Retrain model, in eval mode.
        original_metrics, retrain_metrics: Their UA/RA/TA/MIA on this scenario.
        control_reference: θ_o's accuracy on ``val_control`` (the 95 % threshold's base).
    """

    cfg: BenchmarkConfig
    run_dir: Path
    scenario: str
    device: str
    bundle: DatasetBundle
    split: ForgetSplit
    forget: Dataset
    retain: Dataset
    test: Dataset
    val: Dataset
    val_forget: Dataset
    val_control: Dataset
    original: nn.Module
    retrain: nn.Module
    original_metrics: dict[str, float]
    retrain_metrics: dict[str, float]
    control_reference: float

    @property
    def log(self) -> ResultsLog:
        """The run's results log (``run_dir/results.jsonl``)."""
        return ResultsLog(self.run_dir / "results.jsonl")

    @property
    def scenario_dir(self) -> Path:
        """Folder of this scenario's artefacts (``run_dir/<scenario>``)."""
        return self.run_dir / self.scenario


def _check_run_dir(cfg: BenchmarkConfig, run_dir: Path) -> None:
    """Refuse to mix artefacts of different configs in one run_dir (method lists may differ)."""
    ignore = {"scenarios", "merge_methods", "baselines"}
    mine = {k: v for k, v in to_dict(cfg).items() if k not in ignore}
    path = run_dir / "benchmark_config.json"
    if path.exists():
        saved = {k: v for k, v in io.load_json(path).items() if k not in ignore}
        diff = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k))
        if diff:
            raise ValueError(f"{run_dir} holds a run of a different benchmark config (differs in {diff}); "
                             "use another run_dir or delete this one")
    else:
        io.save_json(to_dict(cfg), path)


def _new_model(cfg: BenchmarkConfig, bundle: DatasetBundle) -> nn.Module:
    torch.manual_seed(cfg.seed)  # same initialisation for Original and Retrain
    return get_model(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.input_shape[0],
                     mean=bundle.mean, std=bundle.std, **cfg.model_options)


def prepare(cfg: BenchmarkConfig, run_dir: str | Path, scenario: str, *, device: str | None = None,
            progress: bool = False) -> Setup:
    """Data, split, Original and Retrain of one scenario (trained once, reused on rerun).

    Also records the ``original`` and ``retrain`` rows in ``run_dir/results.jsonl``
    (once). The original model is shared by all scenarios (``run_dir/original``).

    Args:
        cfg: Benchmark configuration.
        run_dir: Folder of the run.
        scenario: A scenario name (need not be in ``cfg.scenarios``).
        device: None: cuda if available, else cpu.
        progress: Show training progress bars.

    Raises:
        ValueError: Unknown dataset/model/scenario, a bad split, or a run_dir of another config.
    """
    run_dir, device = Path(run_dir), str(resolve_device(device))
    spec = parse_scenario(scenario)
    bundle = get_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    labels = labels_of(bundle.train)
    split = make_forget_split(labels, seed=cfg.seed, num_classes=bundle.num_classes, **spec)
    forget, retain = subset(bundle.train, split.forget_idx), subset(bundle.train, split.retain_idx)
    if split.scenario == "class":
        test = without_classes(bundle.test, split.classes)
        val_forget = subset(bundle.val, np.flatnonzero(class_mask(labels_of(bundle.val), split.classes)))
        val_control = without_classes(bundle.val, split.classes)
    else:
        test, val_forget, val_control = bundle.test, forget, bundle.val
    for name, ds in (("val_forget", val_forget), ("val_control", val_control), ("test", test)):
        if len(ds) == 0:
            raise ValueError(f"scenario {split.name!r} leaves the {name} set empty; pick other classes")
    original, retrain = _new_model(cfg, bundle), _new_model(cfg, bundle)  # bad model names fail here

    # Nothing is written before every input has been checked.
    _check_run_dir(cfg, run_dir)
    sdir = run_dir / split.name
    if not (sdir / "split.json").exists():
        io.save_json(split.to_dict(), sdir / "split.json")
    # Original and Retrain train on the bundle's augmented view if it names one (CIFAR: crop + flip);
    # every metric below is computed on the clean images.
    original = train(original, training_view(bundle, bundle.train), cfg.original, device=device,
                     out_dir=run_dir / "original", progress=progress).model
    retrain = train(retrain, training_view(bundle, retain), cfg.original, device=device, out_dir=sdir / "retrain",
                    progress=progress).model
    original.eval()
    retrain.eval()

    setup = Setup(
        cfg=cfg, run_dir=run_dir, scenario=split.name, device=device, bundle=bundle, split=split,
        forget=forget, retain=retain, test=test, val=bundle.val, val_forget=val_forget,
        val_control=val_control, original=original, retrain=retrain,
        original_metrics=unlearning_metrics(original, forget, retain, test, device=device),
        retrain_metrics=unlearning_metrics(retrain, forget, retain, test, device=device),
        control_reference=float(evaluate(original, val_control, device=device,
                                          batch_size=cfg.eval_batch_size)["acc"]),
    )
    done = _done_steps(setup.log.read())
    for method, metrics in (("original", setup.original_metrics), ("retrain", setup.retrain_metrics)):
        if (split.name, method, "") not in done:
            record_method(setup.log, setup, method, metrics)
    return setup


def record_method(log: ResultsLog, setup: Setup, method: str, metrics: Mapping[str, float], *,
                  pool_config: str = "", coef: float = math.nan, note: str = "",
                  extra: list[Record] | None = None) -> list[Record]:
    """Append UA/RA/TA/MIA and Avg. Gap (vs the Setup's Retrain) of one method, in one write.

    Args:
        log: Where to append (usually ``setup.log``).
        setup: The scenario (gives dataset, model, scenario, seed and Retrain's metrics).
        method: One of :data:`negkit.results.METHODS`.
        metrics: ``{"UA", "RA", "TA", "MIA"}`` in % (NaN values allowed, e.g. no admissible λ).
        pool_config: Pool member name for single-fine-tune rows, else ``""``.
        coef: λ used, NaN when not applicable.
        note: Free text.
        extra: Further records (e.g. a λ curve) written in the same append, before the metrics.

    Returns:
        The records written.
    """
    missing = [k for k in UNLEARNING_METRICS if k not in metrics]
    if missing:
        raise ValueError(f"metrics of {method!r} lack {missing}; pass UA, RA, TA and MIA "
                         "(negkit.metrics.unlearning_metrics returns them)")
    cfg = setup.cfg
    gap = avg_gap(metrics, setup.retrain_metrics) if all(
        math.isfinite(float(metrics[k])) for k in UNLEARNING_METRICS) else math.nan
    splits = {"UA": "forget", "RA": "retain", "TA": "test", "MIA": "forget", "avg_gap": "all"}
    values = {**{k: float(metrics[k]) for k in UNLEARNING_METRICS}, "avg_gap": float(gap)}
    rows = list(extra or []) + [
        Record(setting=SETTING, model=cfg.model, dataset=cfg.dataset, scenario=setup.scenario,
               method=method, pool_config=pool_config, coef=float(coef), split=splits[k], metric=k,
               value=v, seed=cfg.seed, note=note)
        for k, v in values.items()
    ]
    log.append(rows)
    return rows


def _done_steps(df: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(scenario, method, pool_config) of steps whose final (avg_gap) record exists."""
    if df.empty:
        return set()
    d = df[df.metric == "avg_gap"]
    return set(zip(d.scenario, d.method, d.pool_config))
