"""The benchmark's training and λ searches, cut into independent units of work for an executor.

Every model the protocol trains is one unit, a plain function call
``run_unit(cfg, run_dir, unit)`` that trains into the same run folder
:func:`negkit.benchmark.run` uses, through the same :func:`negkit.train.train` (skip
if its done-marker exists, resume from the last epoch otherwise). Per seed ``s``::

    "seed_s/original"                               run_dir/seed_s/original/
    "seed_s/<scenario>/retrain"                     run_dir/seed_s/<scenario>/retrain/
    "seed_s/<scenario>/pool/<member>"               .../<scenario>/pool/<member>/          needs Original
    "seed_s/<scenario>/baselines/<method>[/<set>]"  .../<scenario>/baselines/<method>/...  needs Original

(``<set>``: one setting of the baseline's validation grid, when it has one.) Then every
negation's λ search and metrics (:func:`negkit.benchmark.pipeline.negation_unit`), per
selection rule ``<rule>``::

    "seed_s/<scenario>/negation/<rule>/task_arithmetic/<member>"  .../negation/...   needs Original, Retrain, <member>
    "seed_s/<scenario>/negation/<rule>/<merge rule>"               .../negation/...   needs Original, Retrain, the pool

A unit writes nothing else: no records, no shared file. An executor (a loop, Ray
tasks on a cluster) runs the units in any order that respects ``after``, then calls
the ordinary :func:`negkit.benchmark.run`, which finds every model trained and only
evaluates and records. The records are therefore those of a plain ``run`` by
construction, and a run resumes the same way whoever started it.

Example::

    from negkit.benchmark import default_config, run, units
    cfg = default_config(smoke=True)
    units.validate(cfg, "runs/smoke")
    for unit in units.training_units(cfg) + units.negation_units(cfg):
        units.run_unit(cfg, "runs/smoke", unit, device="cpu")
    df = run(cfg, "runs/smoke")       # trains and searches nothing more
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from negkit import checkpoint, unlearn
from negkit.benchmark.config import BenchmarkConfig, baseline_candidates, parse_scenario, pool_configs
from negkit.benchmark.forget import DONE_FILE as FV_DONE
from negkit.benchmark.forget import forget_vector_unit
from negkit.benchmark.pipeline import OUTCOME_FILE, negation_rules, negation_unit
from negkit.benchmark.setup import _check_run_dir, _new_model, _scenario_sets, check_run, one_seed, seed_dir
from negkit.data import DatasetBundle, labels_of
from negkit.data import get as get_dataset
from negkit.data.augment import training_view
from negkit.data.splits import ForgetSplit, make_forget_split
from negkit.evaluate import resolve_device
from negkit.train import TrainConfig, train

__all__ = ["Unit", "KINDS", "training_units", "negation_units", "validate", "is_done", "run_unit"]

KINDS = ("original", "retrain", "pool", "baseline", "negation", "forget_vector")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One model to train, or one negation's λ search.

    Attributes:
        name: Unique, path-like (``"seed_0/class_3/pool/e1_wd1e-4_ls0"``); also the task's name on Ray.
        kind: One of :data:`KINDS`.
        seed: The seed (one of ``cfg.seeds``).
        scenario: Scenario name (empty for ``original``).
        member: Pool member (of ``pool``, or negated by Task Arithmetic) or baseline method (empty otherwise).
        setting: A baseline's setting from its validation grid (empty: no grid).
        after: Names of the units that must finish first.
        method: A negation's method (``"task_arithmetic"`` or a merge rule; empty otherwise).
        rule: A negation's λ selection rule (empty otherwise).
    """

    name: str
    kind: str
    seed: int
    scenario: str = ""
    member: str = ""
    setting: str = ""
    after: tuple[str, ...] = ()
    method: str = ""
    rule: str = ""

    def out_dir(self, run_dir: str | Path) -> Path:
        """The unit's run folder under ``run_dir``."""
        base = seed_dir(run_dir, self.seed)
        if self.kind == "original":
            return base / "original"
        sub = {"retrain": ("retrain",), "pool": ("pool", self.member),
               "baseline": ("baselines", self.member) + ((self.setting,) if self.setting else ()),
               "negation": ("negation", self.rule, self.method) + ((self.member,) if self.member else ()),
               "forget_vector": ("forget_vectors",)}
        return base.joinpath(self.scenario, *sub[self.kind])


def training_units(cfg: BenchmarkConfig) -> list[Unit]:
    """Every model ``cfg``'s benchmark trains: per seed Original, then per scenario Retrain, pool, baselines."""
    units = []
    for seed in cfg.seeds:
        original = Unit(f"seed_{seed}/original", "original", seed)
        units.append(original)
        after = (original.name,)
        for sc in (_folder(sc) for sc in cfg.scenarios):
            pre = f"seed_{seed}/{sc}"
            units.append(Unit(f"{pre}/retrain", "retrain", seed, sc))
            units += [Unit(f"{pre}/pool/{m}", "pool", seed, sc, m, after=after) for m, _ in pool_configs(cfg)]
            units += [Unit(f"{pre}/baselines/{m}" + (f"/{s}" if s else ""), "baseline", seed, sc, m, s, after)
                      for m in cfg.baselines for s in baseline_candidates(cfg, m)]
    return units


def negation_units(cfg: BenchmarkConfig) -> list[Unit]:
    """Every negation ``cfg``'s benchmark searches λ for: per seed, scenario and rule, each member, each merge.

    With ``cfg.forget_vectors``, also each (seed, scenario)'s forget-vector selection (it
    waits for Original and Retrain).
    """
    units = []
    for seed in cfg.seeds:
        for sc in (_folder(sc) for sc in cfg.scenarios):
            pre = f"seed_{seed}/{sc}"
            base = (f"seed_{seed}/original", f"{pre}/retrain")
            members = [m for m, _ in pool_configs(cfg)]
            for rule in negation_rules(cfg, sc):
                units += [Unit(f"{pre}/negation/{rule}/task_arithmetic/{m}", "negation", seed, sc, m,
                               after=base + (f"{pre}/pool/{m}",), method="task_arithmetic", rule=rule)
                          for m in members]
                units += [Unit(f"{pre}/negation/{rule}/{mm}", "negation", seed, sc,
                               after=base + tuple(f"{pre}/pool/{m}" for m in members), method=mm, rule=rule)
                          for mm in cfg.merge_methods]
            if cfg.forget_vectors:  # δ learned on the frozen Original, chosen on validation (negkit.benchmark.forget)
                units.append(Unit(f"{pre}/forget_vectors", "forget_vector", seed, sc, after=base))
    return units


def _folder(scenario: str) -> str:
    """The scenario's canonical name, which :func:`prepare` uses as its folder (``random_10.0`` -> ``random_10``)."""
    spec = parse_scenario(scenario)
    return ForgetSplit(np.empty(0, np.int64), np.empty(0, np.int64), spec["scenario"], spec.get("fraction", 0.0),
                       spec["classes"]).name


def validate(cfg: BenchmarkConfig, run_dir: str | Path) -> None:
    """Check everything a run needs before any unit starts; record the config in ``run_dir``.

    The checks of :func:`negkit.benchmark.setup.check_run` (data, every split, the model,
    baseline settings, a run_dir of another config, a writable run_dir), then
    ``benchmark_config.json`` is written so that no other config can train into the folder.

    Raises:
        FileNotFoundError: The dataset is missing (the message says how to get it).
        ValueError: An empty set, an unknown model, a run_dir of another config.
        PermissionError: ``run_dir`` cannot be written.
    """
    check_run(cfg, run_dir)
    _check_run_dir(cfg, Path(run_dir))


def is_done(cfg: BenchmarkConfig, run_dir: str | Path, unit: Unit) -> bool:
    """Whether the unit's done-marker exists (a baseline: every stage folder's; a negation: its outcome file)."""
    out = unit.out_dir(run_dir)
    if unit.kind == "negation":
        return (out / OUTCOME_FILE).exists()
    if unit.kind == "forget_vector":
        return (out / FV_DONE).exists()
    if unit.kind != "baseline":
        return checkpoint.is_finished(out)
    stages = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    return bool(stages) and all(checkpoint.is_finished(p) for p in stages)


def _sets(cfg: BenchmarkConfig, scenario: str) -> tuple[DatasetBundle, dict[str, Dataset]]:
    """The dataset and, for a scenario, its sets (the split :func:`prepare` draws for ``cfg.seed``)."""
    bundle = get_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    if not scenario:
        return bundle, {}
    split = make_forget_split(labels_of(bundle.train), seed=cfg.seed, num_classes=bundle.num_classes,
                              **parse_scenario(scenario))
    return bundle, _scenario_sets(bundle, split)


def _original(cfg: BenchmarkConfig, run_dir: Path, bundle: DatasetBundle, device: str) -> nn.Module:
    # prepare()'s initialisation (seeded _new_model) and recipe (the seed also sets the data order).
    return train(_new_model(cfg, bundle), training_view(bundle, bundle.train), _recipe(cfg), device=device,
                 out_dir=seed_dir(run_dir, cfg.seed) / "original", progress=False).model


def _recipe(cfg: BenchmarkConfig) -> TrainConfig:
    return dataclasses.replace(cfg.original, seed=cfg.seed)


def run_unit(cfg: BenchmarkConfig, run_dir: str | Path, unit: Unit, *, device: str | None = None) -> str:
    """Train one unit into its run folder (loading instead when it is finished), or search one negation's λ.

    Args:
        cfg: The benchmark's configuration (all seeds; the unit picks its own).
        run_dir: The run's folder (shared storage when units run on several machines).
        unit: One of :func:`training_units` or :func:`negation_units` ``(cfg)``.
        device: None: cuda if available, else cpu.

    Returns:
        The unit's name.

    Raises:
        ValueError: ``unit.kind`` is not one of :data:`KINDS`, or its seed is not one of ``cfg.seeds``.
    """
    if unit.kind not in KINDS:
        raise ValueError(f"unknown unit kind {unit.kind!r}; valid kinds are {list(KINDS)}")
    if unit.kind == "negation":
        negation_unit(cfg, run_dir, unit.seed, unit.scenario, unit.method, unit.member, unit.rule, device=device)
        return unit.name
    if unit.kind == "forget_vector":
        forget_vector_unit(cfg, run_dir, unit.seed, unit.scenario, device=device)
        return unit.name
    cfg = one_seed(cfg, unit.seed)
    run_dir, device = Path(run_dir), str(resolve_device(device))
    bundle, sets = _sets(cfg, unit.scenario)
    out = unit.out_dir(run_dir)
    if unit.kind == "original":
        _original(cfg, run_dir, bundle, device)
    elif unit.kind == "retrain":
        train(_new_model(cfg, bundle), training_view(bundle, sets["retain"]), _recipe(cfg), device=device, out_dir=out,
              progress=False)
    elif unit.kind == "pool":
        tc = dict(pool_configs(cfg))[unit.member]
        original = _original(cfg, run_dir, bundle, device).eval()
        train(copy.deepcopy(original), sets["forget"], tc, device=device, out_dir=out, progress=False)
    else:
        overrides = baseline_candidates(cfg, unit.member)[unit.setting]
        ucfg = unlearn.default_config(unit.member, **{"seed": cfg.seed, **overrides})
        original = _original(cfg, run_dir, bundle, device).eval()
        # D_f and D_r with the training augmentation, as the reference's unlearning loaders (metrics stay clean)
        unlearn.get(unit.member)(original, training_view(bundle, sets["forget"]), training_view(bundle, sets["retain"]),
                                 ucfg, device=device, out_dir=out,
                                 progress=False)
    return unit.name
