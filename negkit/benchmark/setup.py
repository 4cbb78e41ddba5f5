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
import errno
import hashlib
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from negkit import io
from negkit.benchmark.config import (SETTING, UNLEARNING_METRICS, BenchmarkConfig, baseline_candidates, make_config,
                                     parse_scenario)
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

__all__ = ["Setup", "prepare", "record_method", "seed_dir", "one_seed", "check_run"]

@dataclasses.dataclass
class Setup:
    """Everything one scenario's methods need (returned by :func:`prepare`).

    Attributes:
        cfg: The one-seed view of the run's config (``cfg.seeds == (seed,)``).
        run_dir, scenario, device: What was asked for (``scenario`` is the split's name).
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
    def seed(self) -> int:
        """The seed of this Setup (split, initialisation, data order)."""
        return self.cfg.seed

    @property
    def seed_dir(self) -> Path:
        """Folder of this seed's artefacts (``run_dir/seed_<s>``): its Original and every scenario."""
        return seed_dir(self.run_dir, self.seed)

    @property
    def log(self) -> ResultsLog:
        """The run's results log (``run_dir/results.jsonl``)."""
        return ResultsLog(self.run_dir / "results.jsonl")

    @property
    def scenario_dir(self) -> Path:
        """Folder of this scenario's artefacts (``run_dir/seed_<s>/<scenario>``)."""
        return self.seed_dir / self.scenario


def seed_dir(run_dir: str | Path, seed: int) -> Path:
    """``run_dir/seed_<seed>``: runs of different seeds never share a folder."""
    return Path(run_dir) / f"seed_{int(seed)}"


def one_seed(cfg: BenchmarkConfig, seed: int | None = None) -> BenchmarkConfig:
    """The config of one seed of ``cfg`` (None: its first), ``seeds == (seed,)``.

    Raises:
        ValueError: ``seed`` is not one of ``cfg.seeds``.
    """
    seed = cfg.seeds[0] if seed is None else int(seed)
    if seed not in cfg.seeds:
        raise ValueError(f"seed {seed} is not one of the config's seeds {list(cfg.seeds)}")
    return dataclasses.replace(cfg, seeds=(seed,))


def _check_run_dir(cfg: BenchmarkConfig, run_dir: Path, *, write: bool = True) -> None:
    """Refuse to mix artefacts of different configs in one run_dir (method and seed lists may differ)."""
    ignore = {"scenarios", "merge_methods", "baselines", "seeds", "rules"}
    per_method = ("baseline_grid", "baseline_configs", "merge_options")  # a method added later may bring its own
    mine = {k: v for k, v in to_dict(cfg).items() if k not in ignore}
    path = run_dir / "benchmark_config.json"
    if path.exists():
        raw = io.load_json(path)
        try:  # fields the kit gained since the run was made are filled with their defaults on both sides
            raw = to_dict(make_config(raw))
        except (TypeError, ValueError):
            pass  # an unreadable config differs anyway, and the diff below names how
        saved = {k: v for k, v in raw.items() if k not in ignore}
        diff = sorted(k for k in set(mine) | set(saved) if k not in per_method and mine.get(k) != saved.get(k))
        for k in per_method:  # only the methods both configs set must agree
            a, b = mine.get(k) or {}, saved.get(k) or {}
            diff += [f"{k}[{m!r}]" for m in sorted(set(a) & set(b)) if a[m] != b[m]]
        if diff:
            raise ValueError(f"{run_dir} holds a run of a different benchmark config (differs in {diff}); "
                             "use another run_dir or delete this one")
    elif write:
        io.save_json(to_dict(cfg), path)


def _scenario_sets(bundle: DatasetBundle, split: ForgetSplit) -> dict[str, Dataset]:
    """D_f, D_r, the test set and the two validation sets λ is chosen on (module docstring).

    Raises:
        ValueError: One of them is empty.
    """
    forget, retain = subset(bundle.train, split.forget_idx), subset(bundle.train, split.retain_idx)
    if split.scenario == "class":
        test = without_classes(bundle.test, split.classes)
        val_forget = subset(bundle.val, np.flatnonzero(class_mask(labels_of(bundle.val), split.classes)))
        val_control = without_classes(bundle.val, split.classes)
    else:
        test, val_forget, val_control = bundle.test, forget, bundle.val
    sets = {"forget": forget, "retain": retain, "test": test, "val_forget": val_forget, "val_control": val_control}
    for name, ds in sets.items():
        if len(ds) == 0:
            raise ValueError(f"scenario {split.name!r} leaves the {name} set empty; pick other classes "
                             "or a larger training subset")
    return sets


def check_run(cfg: BenchmarkConfig, run_dir: str | Path, *, bundle: DatasetBundle | None = None) -> pd.DataFrame:
    """Check every precondition of a whole run before anything is trained or written.

    Loads the dataset, draws every (seed, scenario) split, checks that D_f, D_r, the test
    set and both validation sets are non-empty, builds the model and runs one batch
    through it, expands every baseline's candidate settings, checks that ``run_dir``
    holds no run of another config and that it can be written.

    Returns:
        One row per (seed, scenario): the sizes of its sets (logged by :func:`negkit.benchmark.run`).

    Raises:
        FileNotFoundError: Missing data (the dataset's own message says how to get it).
        ValueError: A bad split, model, baseline setting or a run_dir of another config.
        PermissionError: ``run_dir`` cannot be written.
        NotADirectoryError: ``run_dir`` is an existing file (checked first).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"run dir {run_dir} is an existing file, not a folder; pass a new "
                                                "or existing folder as the run dir", str(run_dir))
    if bundle is None:
        bundle = get_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    labels, rows = labels_of(bundle.train), []
    for seed in cfg.seeds:
        for scenario in cfg.scenarios:
            split = make_forget_split(labels, seed=seed, num_classes=bundle.num_classes, **parse_scenario(scenario))
            sets = _scenario_sets(bundle, split)
            rows.append({"seed": seed, "scenario": split.name, **{k: len(v) for k, v in sets.items()}})
    model = _new_model(one_seed(cfg), bundle).eval()
    with torch.no_grad():
        out = model(torch.stack([bundle.train[i][0] for i in range(min(2, len(bundle.train)))]))
    if out.shape[-1] != bundle.num_classes:
        raise ValueError(f"model {cfg.model!r} gives {out.shape[-1]} outputs for {bundle.num_classes} classes")
    for m in cfg.baselines:
        baseline_candidates(cfg, m)
    _check_run_dir(cfg, run_dir, write=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise PermissionError(f"run_dir {run_dir} is not writable; pass another run_dir")
    return pd.DataFrame(rows)


def _new_model(cfg: BenchmarkConfig, bundle: DatasetBundle) -> nn.Module:
    torch.manual_seed(cfg.seed)  # same initialisation for Original and Retrain (of this seed)
    return get_model(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.input_shape[0],
                     mean=bundle.mean, std=bundle.std, **cfg.model_options)


def prepare(cfg: BenchmarkConfig, run_dir: str | Path, scenario: str, *, seed: int | None = None,
            device: str | None = None, progress: bool = False,
            bundle: DatasetBundle | None = None, record: bool = True) -> Setup:
    """Data, split, Original and Retrain of one scenario and seed (trained once, reused on rerun).

    Also records the ``original`` and ``retrain`` rows in ``run_dir/results.jsonl``
    (once; not with ``record=False``). The original model of a seed is shared by all scenarios
    (``run_dir/seed_<s>/original``).

    Args:
        cfg: Benchmark configuration.
        run_dir: Folder of the run.
        scenario: A scenario name (need not be in ``cfg.scenarios``).
        seed: One of ``cfg.seeds`` (None: the first); it draws the forget split and
            seeds initialisation and data order.
        device: None: cuda if available, else cpu.
        progress: Show training progress bars.
        bundle: The dataset, if already loaded (else built from ``cfg``).
        record: Record Original's and Retrain's rows (False: a unit of work, which records nothing).

    Raises:
        ValueError: Unknown dataset/model/scenario/seed, a bad split, or a run_dir of another config.
    """
    run_dir, device = Path(run_dir), str(resolve_device(device))
    full_cfg, cfg = cfg, one_seed(cfg, seed)
    spec = parse_scenario(scenario)
    if bundle is None:
        bundle = get_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    labels = labels_of(bundle.train)
    split = make_forget_split(labels, seed=cfg.seed, num_classes=bundle.num_classes, **spec)
    sets = _scenario_sets(bundle, split)
    forget, retain, test = sets["forget"], sets["retain"], sets["test"]
    val_forget, val_control = sets["val_forget"], sets["val_control"]
    original, retrain = _new_model(cfg, bundle), _new_model(cfg, bundle)  # bad model names fail here

    # Nothing is written before every input has been checked.
    _check_run_dir(full_cfg, run_dir)
    sdir = seed_dir(run_dir, cfg.seed) / split.name
    if not (sdir / "split.json").exists():
        io.save_json(split.to_dict(), sdir / "split.json")
    recipe = dataclasses.replace(cfg.original, seed=cfg.seed)  # the seed also sets the data order
    # Original and Retrain train on the bundle's augmented view if it names one (CIFAR: crop + flip);
    # every metric below is computed on the clean images.
    original = train(original, training_view(bundle, bundle.train), recipe, device=device,
                     out_dir=seed_dir(run_dir, cfg.seed) / "original", progress=progress).model
    retrain = train(retrain, training_view(bundle, retain), recipe, device=device, out_dir=sdir / "retrain",
                    progress=progress).model
    original.eval()
    retrain.eval()

    ref = _reference_metrics(cfg, sdir, original, retrain, sets, device)
    setup = Setup(
        cfg=cfg, run_dir=run_dir, scenario=split.name, device=device, bundle=bundle, split=split,
        forget=forget, retain=retain, test=test, val=bundle.val, val_forget=val_forget,
        val_control=val_control, original=original, retrain=retrain,
        original_metrics=ref["original"], retrain_metrics=ref["retrain"], control_reference=ref["control_reference"],
    )
    if not record:
        return setup
    done = _done_steps(setup.log.read())
    for method, metrics in (("original", setup.original_metrics), ("retrain", setup.retrain_metrics)):
        if (cfg.seed, SETTING, split.name, method, "") not in done:
            record_method(setup.log, setup, method, metrics)
    return setup


REFERENCE_FILE = "reference_metrics.json"


def _weights_digest(model: nn.Module) -> str:
    """A digest of a model's state dict (names, shapes and bytes), to tell whether cached numbers are its."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _reference_metrics(cfg: BenchmarkConfig, sdir: Path, original: nn.Module, retrain: nn.Module,
                       sets: Mapping[str, Dataset], device: str) -> dict:
    """Original's and Retrain's UA/RA/TA/MIA and the control reference of one (seed, scenario).

    Computed once and cached in ``<scenario>/reference_metrics.json`` with a digest of both
    models' weights (every unit of the scenario needs them; a retrained model invalidates the
    cache). The values are the ones :func:`~negkit.metrics.unlearning_metrics` returns.
    """
    key = {"original": _weights_digest(original), "retrain": _weights_digest(retrain),
           "eval_batch_size": cfg.eval_batch_size}
    path = sdir / REFERENCE_FILE
    if path.exists():
        saved = io.load_json(path)
        if saved.get("key") == key:
            return saved
    ref = {"key": key,
           "original": unlearning_metrics(original, sets["forget"], sets["retain"], sets["test"], device=device),
           "retrain": unlearning_metrics(retrain, sets["forget"], sets["retain"], sets["test"], device=device),
           "control_reference": float(evaluate(original, sets["val_control"], device=device,
                                               batch_size=cfg.eval_batch_size)["acc"])}
    ref["original"] = {k: float(v) for k, v in ref["original"].items()}
    ref["retrain"] = {k: float(v) for k, v in ref["retrain"].items()}
    io.save_json(ref, path)
    return ref


def record_method(log: ResultsLog, setup: Setup, method: str, metrics: Mapping[str, float], *,
                  pool_config: str = "", coef: float = math.nan, note: str = "",
                  extra: list[Record] | None = None, setting: str = SETTING) -> list[Record]:
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
        setting: ``"standard"``, or ``"standard_match"`` for the match selection rule.

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
        Record(setting=setting, model=cfg.model, dataset=cfg.dataset, scenario=setup.scenario,
               method=method, pool_config=pool_config, coef=float(coef), split=splits[k], metric=k,
               value=v, seed=cfg.seed, note=note)
        for k, v in values.items()
    ]
    log.append(rows)
    return rows


def _done_steps(df: pd.DataFrame) -> set[tuple[int, str, str, str, str]]:
    """(seed, setting, scenario, method, pool_config) of steps whose final (avg_gap) record exists."""
    if df.empty:
        return set()
    d = df[df.metric == "avg_gap"]
    return set(zip(d.seed.astype(int), d.setting, d.scenario, d.method, d.pool_config))
