"""Configuration of the standard-classification benchmark: the config classes, the pool, the scenarios.

The paper's CIFAR-10 pool has 27 members, epochs {40, 50, 60} × weight decay
{1e-4, 5e-5, 1e-5} × label smoothing {0, 0.05, 0.1}, SGD momentum 0.9, cosine
schedule (:class:`PoolSpec`, :func:`pool_configs`). The ready recipes (digits,
Fashion-MNIST, CIFAR-10) live in :mod:`negkit.benchmark.recipes`.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Mapping

import pandas as pd

from negkit import merge, unlearn
from negkit.config import check, check_distinct, check_options, from_dict, to_dict
from negkit.coefs import coef_grid
from negkit.train import TrainConfig

__all__ = ["PoolSpec", "BenchmarkConfig", "make_config", "on_top", "pool_configs", "pool_frame", "baseline_candidates",
           "parse_scenario", "SETTING", "SETTING_MATCH", "RULES", "UNLEARNING_METRICS", "NO_COEF", "EDGE",
           "ZERO_COEF"]

SETTING = "standard"
UNLEARNING_METRICS = ("UA", "RA", "TA", "MIA")
NO_COEF = "no admissible coefficient"
RULES = ("min_forget", "match")
SETTING_MATCH = "standard_match"
EDGE = "λ search reached its maximum with control still admissible"
ZERO_COEF = ("λ = 0: no λ lowered the validation forget accuracy, the task vectors are too small to matter "
             "(fine-tune the pool longer or with a larger learning rate)")
COEF_SEARCHES = ("adaptive", "grid")


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """The fine-tuning pool: the Cartesian product epochs × weight decay × label smoothing.

    Attributes:
        epochs: Epoch counts (paper, CIFAR-10: 40, 50, 60).
        weight_decays: Weight decays (paper: 1e-4, 5e-5, 1e-5).
        label_smoothings: Label smoothings (paper: 0, 0.05, 0.1).
        lr: SGD learning rate of every fine-tune.
        batch_size: Batch size of every fine-tune.
        momentum: SGD momentum (paper: 0.9).
        schedule: Learning-rate schedule (paper: cosine).
    """

    epochs: tuple[int, ...] = (4, 5, 6)
    weight_decays: tuple[float, ...] = (1e-4, 5e-5, 1e-5)
    label_smoothings: tuple[float, ...] = (0.0, 0.05, 0.1)
    lr: float = 0.01
    batch_size: int = 32
    momentum: float = 0.9
    schedule: str = "cosine"

    RANGES = {"epochs": ">= 1", "weight_decays": ">= 0", "label_smoothings": "[0, 1)", "lr": ">= 0",
              "batch_size": ">= 1", "momentum": "[0, 1)"}

    def __post_init__(self) -> None:
        check(self)
        for key in ("epochs", "weight_decays", "label_smoothings"):
            if not getattr(self, key):
                raise ValueError(f"PoolSpec.{key} is empty, so the pool (their Cartesian product) has no member; "
                                 f"give at least one value, e.g. {key}: {list(getattr(PoolSpec, key))[:1]}")


#: Classes of the datasets whose size is known without loading them (scenario names are checked at load).
KNOWN_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "kmnist": 10, "cifar10": 10, "cifar100": 100}


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that determines a benchmark run (saved as ``run_dir/benchmark_config.json``).

    Attributes:
        dataset: Dataset registry name (``"digits"``, ``"cifar10"``).
        data_options: Keyword arguments of the dataset builder (digits: ``{"size": 8}``).
        data_root: Folder of on-disk datasets (None for digits).
        model: Model registry name (``"small_resnet"``, ``"resnet18"``).
        model_options: Extra keyword arguments of the model builder.
        scenarios: Scenario names, ``"random_<percent>"`` or ``"class_<c>[-<c>...]"``.
        seeds: Seeds of the run; each one redraws the forget split and retrains Original,
            Retrain, the pool and the baselines (initialisation and data order), and every
            record carries it. ``cfg.seed`` is the first (a one-seed view of the config is
            ``dataclasses.replace(cfg, seeds=(s,))``).
        original: Training recipe of the original model and of Retrain.
        pool: The fine-tuning pool.
        coefs: Negation coefficients λ on validation: their lowest and highest value are the
            initial range ``start..stop`` of the λ search (:func:`negkit.evaluate.search_coef`).
        coef_step: Step of the λ grid the search works on.
        coef_max: The search's range grows (doubling) up to this λ at most.
        coef_search: ``"adaptive"`` (range doubling and bisection) or ``"grid"`` (every λ
            of the grown range evaluated).
        threshold: Control accuracy must stay ≥ threshold × the original's.
        merge_methods: Merge rules (``negkit.merge`` names) whose negation is evaluated.
        merge_options: Per-rule keyword options, e.g. ``{"ties": {"density": 0.2}}``.
        baselines: Baselines (``negkit.unlearn`` names) to run.
        baseline_configs: Per-baseline overrides of :func:`negkit.unlearn.default_config`.
        baseline_grid: Per baseline, candidate values of :class:`~negkit.unlearn.UnlearnConfig`
            fields, e.g. ``{"ft": {"lr": (0.01, 0.04)}}``; every combination is trained and the
            one chosen on validation by the negation's rule is reported (empty: no tuning).
        rules: λ (and baseline setting) selection rules. ``"min_forget"``: lowest validation
            forget accuracy with control ≥ threshold × the original's (the paper's rule; the
            paper-form table). ``"match"`` (random scenarios only): the admissible forget
            accuracy closest to the original's held-out validation accuracy — what Retrain
            shows, reached without seeing Retrain; recorded with setting ``"standard_match"``.
        eval_batch_size: Batch size of evaluation passes.
        forget_vectors: Also learn forget vectors (:mod:`negkit.benchmark.forget`) and record
            them as method ``"forget_vector"``, chosen on validation by each rule.
        forget_vector_configs: Per scenario kind (``"random"``, ``"class"``), overrides of the
            reference defaults (:func:`negkit.forget_vectors.tune.default_config`), e.g.
            ``{"random": {"augment": "none"}}``.
        forget_vector_grid: Per scenario kind, candidate values of
            :class:`~negkit.forget_vectors.ForgetVectorConfig` fields; δ is kept after every
            epoch, so each (setting, epoch) is a candidate.
        smoke: Whether this is the shrunken CI configuration.
    """

    dataset: str = "digits"
    data_options: dict = dataclasses.field(default_factory=lambda: {"size": 8})
    data_root: str | None = None
    model: str = "small_resnet"
    model_options: dict = dataclasses.field(default_factory=dict)
    scenarios: tuple[str, ...] = ("random_10", "class_3")
    seeds: tuple[int, ...] = (0, 1, 2)
    original: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        epochs=20, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
        label_smoothing=0.0, schedule="cosine"))
    pool: PoolSpec = dataclasses.field(default_factory=PoolSpec)
    coefs: tuple[float, ...] = tuple(coef_grid(0.0, 1.0, 0.05))
    coef_step: float = 0.05
    coef_max: float = 8.0
    coef_search: str = "adaptive"
    threshold: float = 0.95
    merge_methods: tuple[str, ...] = ("mean", "ties", "magmax", "negmerge")
    merge_options: dict = dataclasses.field(default_factory=dict)
    baselines: tuple[str, ...] = ("ft", "ga", "rl", "l1_sparse", "salun")
    baseline_configs: dict = dataclasses.field(default_factory=dict)
    baseline_grid: dict = dataclasses.field(default_factory=dict)
    rules: tuple[str, ...] = ("min_forget", "match")
    eval_batch_size: int = 512
    forget_vectors: bool = False
    forget_vector_configs: dict = dataclasses.field(default_factory=dict)
    forget_vector_grid: dict = dataclasses.field(default_factory=dict)
    smoke: bool = False

    RANGES = {"seeds": ">= 0", "coefs": ">= 0", "threshold": "(0, 1]", "eval_batch_size": ">= 1",
              "coef_step": "> 0", "coef_max": "finite"}

    def __post_init__(self) -> None:
        check(self)  # types and RANGES (negkit.config) first: scenarios='class_3' is a str, not a tuple
        if not self.scenarios:
            raise ValueError("scenarios is empty: nothing to forget; give at least one, e.g. ['random_10', 'class_3']")
        n_classes = KNOWN_CLASSES.get(self.dataset)
        for name in self.scenarios:
            outside = [c for c in parse_scenario(name).get("classes", ()) if n_classes is not None and c >= n_classes]
            if outside:
                raise ValueError(f"scenario {name!r}: unknown class(es) {outside}; {self.dataset} has classes "
                                 f"0..{n_classes - 1}")
        for m in self.merge_methods:
            merge.get(m)
        for m, opts in self.merge_options.items():
            check_options(merge.get(m), opts, f"merge_options[{m!r}]")
            _try_merge(m, opts)
        for m in self.baselines:
            unlearn.get(m)
        for m, over in self.baseline_configs.items():
            unlearn.default_config(m, **over)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        for m, grid in self.baseline_grid.items():
            for key, values in grid.items():
                if isinstance(values, (str, bytes)) or not values:
                    raise ValueError(f"baseline_grid[{m!r}][{key!r}] must be a non-empty list of values, "
                                     f"got {values!r}")
                check_distinct(values, f"baseline_grid[{m!r}][{key!r}]")
        for kind, grid in self.forget_vector_grid.items():
            for key, values in grid.items():
                if isinstance(values, (list, tuple)):
                    check_distinct(values, f"forget_vector_grid[{kind!r}][{key!r}]")
        for m in dict.fromkeys((*self.baselines, *self.baseline_grid)):
            for name, values in baseline_candidates(self, m).items():
                try:  # unknown baselines, fields and bad values of every candidate fail here, at load
                    unlearn.default_config(m, **values)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"baseline {m!r}, candidate {name!r} (baseline_configs[{m!r}] with "
                                     f"baseline_grid[{m!r}]): {err}") from None
        unknown = [r for r in self.rules if r not in RULES]
        if unknown or "min_forget" not in self.rules:
            raise ValueError(f"rules must include 'min_forget' and come from {list(RULES)}; got {list(self.rules)}")
        if not self.coefs:
            raise ValueError("coefs is empty; use e.g. negkit.evaluate.coef_grid(0, 1, 0.05)")
        if self.coef_search not in COEF_SEARCHES:
            raise ValueError(f"coef_search must be one of {list(COEF_SEARCHES)}, got {self.coef_search!r}")
        if self.coef_max < max(self.coefs):
            raise ValueError(f"coef_max ({self.coef_max:g}) is below the largest of coefs ({max(self.coefs):g}); "
                             f"raise coef_max or shorten coefs")
        coef_grid(min(self.coefs), self.coef_max, self.coef_step)  # an absurdly fine step fails here, at once
        self._check_forget_vectors()

    def _check_forget_vectors(self) -> None:
        from negkit.forget_vectors.tune import SCENARIOS, candidate_settings, default_config

        for key, table in (("forget_vector_configs", self.forget_vector_configs),
                           ("forget_vector_grid", self.forget_vector_grid)):
            unknown = [k for k in table if k not in SCENARIOS]
            if unknown:
                raise ValueError(f"{key} has unknown scenario kinds {unknown}; valid kinds are {list(SCENARIOS)}")
        for kind in SCENARIOS:
            over = self.forget_vector_configs.get(kind, {})
            for name, values in candidate_settings(self.forget_vector_grid.get(kind, {})).items():
                default_config(kind, **{**over, **values})  # unknown fields and bad values fail here, at load

    @property
    def seed(self) -> int:
        """The first seed (the one a single-seed view such as a notebook's :func:`prepare` uses)."""
        return self.seeds[0]


def make_config(values: Mapping[str, Any] | BenchmarkConfig | None = None, **overrides: Any) -> BenchmarkConfig:
    """Build a :class:`BenchmarkConfig` from (nested) plain dicts; unknown keys fail at every level.

    ``original`` may be a dict of :class:`~negkit.train.TrainConfig` fields and ``pool``
    a dict of :class:`PoolSpec` fields; both are applied on top of the defaults.
    """
    base = to_dict(values) if isinstance(values, BenchmarkConfig) else dict(values or {})
    merged = {**base, **overrides}
    if "seed" in merged:  # a one-seed run, as configs before `seeds` existed wrote it
        if "seeds" in overrides or ("seeds" in base and "seed" in base):
            raise ValueError("give either seed= (one seed) or seeds= (several), not both")
        merged["seeds"] = (int(merged.pop("seed")),)
    defaults = BenchmarkConfig()
    for key, cls, default in (("original", TrainConfig, defaults.original), ("pool", PoolSpec, defaults.pool)):
        val = merged.get(key)
        if isinstance(val, Mapping):
            merged[key] = from_dict(cls, {**to_dict(default), **val})
    return from_dict(BenchmarkConfig, merged)


#: Fields whose dict overrides apply on top of a recipe's dict (a pool override keeps the rest of the pool).
_NESTED = ("original", "pool", "data_options", "model_options", "baseline_configs", "forget_vector_configs")


def on_top(recipe: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe's dict with a caller's overrides applied on top, one level into nested fields.

    A dict given for a field of :data:`_NESTED` updates the recipe's dict instead of replacing it
    (for ``baseline_configs`` and ``forget_vector_configs``, per method or kind as well). So
    ``default_config(smoke=True, pool={"epochs": (1, 2, 3)})`` changes the smoke pool's epochs only
    (3 × 1 × 2 = 6 members) instead of replacing the pool with the paper's 3 × 3 × 3 grid. The ready
    recipes of :mod:`negkit.benchmark.recipes` pass their result to :func:`make_config`.

    Args:
        recipe: A recipe's plain values (fields of :class:`BenchmarkConfig`).
        overrides: The caller's values; they win over ``recipe``.

    Returns:
        A new dict; neither argument is changed.
    """
    out = {**recipe, **overrides}
    for key in _NESTED:
        if isinstance(recipe.get(key), Mapping) and isinstance(overrides.get(key), Mapping):
            if key in ("baseline_configs", "forget_vector_configs"):  # one level further: per method or kind
                out[key] = {m: ({**recipe[key][m], **v} if isinstance(v, Mapping) and isinstance(
                    recipe[key].get(m), Mapping) else v) for m, v in {**recipe[key], **overrides[key]}.items()}
            else:
                out[key] = {**recipe[key], **overrides[key]}
    return out


def _try_merge(method: str, options: Mapping[str, Any]) -> None:
    """Run merge rule ``method`` with ``options`` on two 4-element vectors, so bad values fail at load.

    The signature check (``check_options``) catches misspelt names; this catches values the rule
    refuses (``ties`` density 1.5, ``dare`` p = 1) before any unit trains, with the rule's message.
    """
    import torch

    tvs = [{"w": torch.tensor([1.0, -2.0, 3.0, -4.0])}, {"w": torch.tensor([2.0, -1.0, -3.0, 4.0])}]
    try:
        merge.get(method)(tvs, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"merge_options[{method!r}] = {dict(options)!r}: {err}") from None


def _fmt(x: float) -> str:
    """Compact number for names: 1e-4 -> '1e-4', 5e-05 -> '5e-5', 0.05 -> '0.05', 0 -> '0'."""
    if x == 0:
        return "0"
    if abs(x) < 1e-3:
        mant, exp = f"{x:.6e}".split("e")
        return f"{float(mant):g}e{int(exp)}"
    return f"{x:g}"


def pool_configs(cfg: BenchmarkConfig) -> list[tuple[str, TrainConfig]]:
    """The pool's members as ``(name, TrainConfig)``, named like ``"e4_wd1e-4_ls0.05"``."""
    p = cfg.pool
    out = []
    for e in p.epochs:
        for wd in p.weight_decays:
            for ls in p.label_smoothings:
                tc = from_dict(TrainConfig, to_dict(cfg.original), epochs=int(e), weight_decay=float(wd),
                               label_smoothing=float(ls), lr=p.lr, batch_size=p.batch_size,
                               momentum=p.momentum, schedule=p.schedule, optimizer="sgd", seed=cfg.seed)
                out.append((f"e{e}_wd{_fmt(wd)}_ls{_fmt(ls)}", tc))
    return out


def baseline_candidates(cfg: BenchmarkConfig, method: str) -> dict[str, dict[str, Any]]:
    """The settings of baseline ``method`` to try: ``{name: overrides}``, named like ``"lr0.02_epochs4"``.

    Every combination of ``cfg.baseline_grid[method]`` on top of ``cfg.baseline_configs[method]``;
    one candidate named ``""`` when the baseline has no grid.
    """
    base = dict(cfg.baseline_configs.get(method, {}))
    grid = cfg.baseline_grid.get(method, {})
    if not grid:
        return {"": base}
    keys = sorted(grid)
    out = {}
    for values in itertools.product(*(tuple(grid[k]) for k in keys)):
        name = "_".join(f"{k}{_fmt(float(v)) if isinstance(v, float) else v}" for k, v in zip(keys, values))
        out[name] = {**base, **dict(zip(keys, values))}
    return out


def parse_scenario(name: str) -> dict[str, Any]:
    """``"random_10"`` -> random 10 %; ``"class_3"`` / ``"class_1-7"`` -> those classes.

    Returns:
        Keyword arguments of :func:`negkit.data.splits.make_forget_split`.
    """
    if not isinstance(name, str):
        raise TypeError(f"a scenario name is a str such as 'random_10' or 'class_3', got {type(name).__name__} "
                        f"{name!r}")
    m = re.fullmatch(r"random_(\d+(?:\.\d+)?)", name)
    if m:
        percent = float(m.group(1))
        if not 0 < percent < 100:
            raise ValueError(f"scenario {name!r}: the forget percent must be in (0, 100), e.g. 'random_10' (1–99 % "
                             f"of the training set), got {percent:g}")
        return {"scenario": "random", "fraction": percent / 100.0, "classes": ()}
    m = re.fullmatch(r"class_(\d+(?:-\d+)*)", name)
    if m:
        classes = tuple(int(c) for c in m.group(1).split("-"))
        if len(set(classes)) != len(classes):
            raise ValueError(f"scenario {name!r} repeats a class; name each forgotten class once, e.g. 'class_1-7'")
        return {"scenario": "class", "classes": classes}
    raise ValueError(f"unknown scenario {name!r}; use 'random_<percent>' (e.g. 'random_10') or "
                     f"'class_<c>[-<c>...]' (e.g. 'class_3', 'class_1-7')")


def pool_frame(cfg: BenchmarkConfig) -> pd.DataFrame:
    """The pool's hyperparameters, one row per member: pool_config, epochs, weight_decay, label_smoothing."""
    return pd.DataFrame([{"pool_config": n, "epochs": tc.epochs, "weight_decay": tc.weight_decay,
                          "label_smoothing": tc.label_smoothing} for n, tc in pool_configs(cfg)])
