"""The NegMerge paper's "standard image classification" protocol, end to end.

One code path serves the built-in digits default (small ResNet, seconds per run on
CPU) and ResNet-18 on CIFAR-10 (``dataset="cifar10", model="resnet18"``). Per
forgetting scenario (``"random_10"``: a random 10 % of the training set;
``"class_3"``: every training image of class 3):

1. **Original** θ_o: trained on the whole training set. **Retrain**: the same
   recipe on the retain set D_r only — the gold standard every Avg. Gap is measured
   against.
2. **Pool**: θ_o fine-tuned on the forget set D_f once per pool configuration. The
   paper's CIFAR-10 pool has 27 members, epochs {40, 50, 60} × weight decay
   {1e-4, 5e-5, 1e-5} × label smoothing {0, 0.05, 0.1}, SGD momentum 0.9, cosine.
   Digits keeps the 3 × 3 × 3 grid and divides the epochs by 10 ({4, 5, 6}): the
   digits forget set (~100 images, 4 batches of 32) is ~40× smaller than CIFAR-10's,
   and /10 keeps the whole demo inside its CPU budget while keeping the pool's
   relative epoch spread (see :func:`default_config`).
3. **Task vectors** τ_k = θ_k − θ_o (BatchNorm running statistics excluded, so the
   negated model keeps θ_o's). **Negation** θ(λ) = θ_o − λ·τ for each single τ_k
   (Task Arithmetic, one row per pool member) and for merged vectors (``mean``,
   ``ties``, ``magmax``, ``negmerge``: NegMerge keeps only elements whose sign all K
   vectors agree on).
4. **λ on validation**: for λ in the grid (0..1 by 0.05) measure accuracy on a
   validation forget set and a validation control set; :func:`negkit.evaluate.select_coef`
   picks the λ with the lowest forget accuracy among those whose control accuracy
   is ≥ 0.95 × the original model's control accuracy. The validation sets:

   - class-wise: ``val_forget`` = validation images of the forgotten classes,
     ``val_control`` = validation images of the other classes (both never trained on);
   - random: ``val_forget`` = D_f itself — forgetting random samples means removing
     their memorisation, which no held-out sample measures — and ``val_control`` =
     the whole validation split.

   The paper tunes λ over a wider, scaled range; our grid stops at 1, and a λ that
   lands on the grid's top edge is flagged in the record's note and logged.
   "Task Arithmetic (val)" is the pool member whose selected λ gives the lowest
   validation forget accuracy (ties: higher control accuracy, then name).
5. **Baselines** (:mod:`negkit.unlearn`): FT, GA, RL, ℓ1-sparse, SalUn.
6. **Metrics** (SalUn's): UA = 100 − accuracy on D_f, RA on D_r, TA on the test set
   (class-wise: test without the forgotten classes), MIA-efficacy on D_f, and
   Avg. Gap = mean |metric − Retrain's metric| over the four.

Everything trained goes through :func:`negkit.train.train` with ``out_dir`` under
``run_dir`` (skip if done, resume if interrupted); records go to
``run_dir/results.jsonl`` step by step, each step's records in one append, and a step
whose records exist is skipped, so rerunning after an interruption yields the same
records as one uninterrupted run. Layout::

    run_dir/benchmark_config.json   run_dir/results.jsonl   run_dir/original/
    run_dir/<scenario>/{split.json, retrain/, pool/<name>/, task_vectors/<name>.safetensors,
                        baselines/<method>/}
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from negkit import io, merge, unlearn
from negkit.config import from_dict, to_dict
from negkit.data import DatasetBundle, labels_of
from negkit.data import get as get_dataset
from negkit.data.splits import ForgetSplit, class_mask, make_forget_split, subset, without_classes
from negkit.evaluate import coef_grid, evaluate, select_coef, sweep_coefs
from negkit.metrics import avg_gap, unlearning_metrics
from negkit.models import get as get_model
from negkit.results import METHODS, METRICS, Record, ResultsLog, read_results
from negkit.taskvec import TaskVector
from negkit.train import TrainConfig, train

log = logging.getLogger(__name__)

__all__ = [
    "PoolSpec", "BenchmarkConfig", "default_config", "make_config", "pool_configs", "parse_scenario",
    "Setup", "prepare", "record_method", "run", "summary", "headline", "pool_task_vectors",
]

SETTING = "standard"
UNLEARNING_METRICS = ("UA", "RA", "TA", "MIA")
NO_COEF = "no admissible coefficient"
EDGE = "λ at the top edge of the grid"


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
        seed: Seed of the split, initialisation and data order.
        original: Training recipe of the original model and of Retrain.
        pool: The fine-tuning pool.
        coefs: Negation coefficients λ searched on validation.
        threshold: Control accuracy must stay ≥ threshold × the original's.
        merge_methods: Merge rules (``negkit.merge`` names) whose negation is evaluated.
        merge_options: Per-rule keyword options, e.g. ``{"ties": {"density": 0.2}}``.
        baselines: Baselines (``negkit.unlearn`` names) to run.
        baseline_configs: Per-baseline overrides of :func:`negkit.unlearn.default_config`.
        eval_batch_size: Batch size of evaluation passes.
        smoke: Whether this is the shrunken CI configuration.
    """

    dataset: str = "digits"
    data_options: dict = dataclasses.field(default_factory=lambda: {"size": 8})
    data_root: str | None = None
    model: str = "small_resnet"
    model_options: dict = dataclasses.field(default_factory=dict)
    scenarios: tuple[str, ...] = ("random_10", "class_3")
    seed: int = 0
    original: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        epochs=20, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
        label_smoothing=0.0, schedule="cosine"))
    pool: PoolSpec = dataclasses.field(default_factory=PoolSpec)
    coefs: tuple[float, ...] = tuple(coef_grid(0.0, 1.0, 0.05))
    threshold: float = 0.95
    merge_methods: tuple[str, ...] = ("mean", "ties", "magmax", "negmerge")
    merge_options: dict = dataclasses.field(default_factory=dict)
    baselines: tuple[str, ...] = ("ft", "ga", "rl", "l1_sparse", "salun")
    baseline_configs: dict = dataclasses.field(default_factory=dict)
    eval_batch_size: int = 512
    smoke: bool = False

    def __post_init__(self) -> None:
        for name in self.scenarios:
            parse_scenario(name)
        for m in self.merge_methods:
            merge.get(m)
        for m in self.baselines:
            unlearn.get(m)
        for m, over in self.baseline_configs.items():
            unlearn.default_config(m, **over)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not self.coefs:
            raise ValueError("coefs is empty; use e.g. negkit.evaluate.coef_grid(0, 1, 0.05)")


def make_config(values: Mapping[str, Any] | BenchmarkConfig | None = None, **overrides: Any) -> BenchmarkConfig:
    """Build a :class:`BenchmarkConfig` from (nested) plain dicts; unknown keys fail at every level.

    ``original`` may be a dict of :class:`~negkit.train.TrainConfig` fields and ``pool``
    a dict of :class:`PoolSpec` fields; both are applied on top of the defaults.
    """
    base = to_dict(values) if isinstance(values, BenchmarkConfig) else dict(values or {})
    merged = {**base, **overrides}
    defaults = BenchmarkConfig()
    for key, cls, default in (("original", TrainConfig, defaults.original), ("pool", PoolSpec, defaults.pool)):
        val = merged.get(key)
        if isinstance(val, Mapping):
            merged[key] = from_dict(cls, {**to_dict(default), **val})
    return from_dict(BenchmarkConfig, merged)


def default_config(*, smoke: bool = False, **overrides: Any) -> BenchmarkConfig:
    """The digits default, or its shrunken smoke version for CI (``smoke=True``).

    Default (``make demo``): digits at native 8×8, small ResNet, original/Retrain 20
    epochs, the paper's 27-member pool with epochs /10, λ grid 0..1 by 0.05, both
    scenarios, all four merges and five baselines. Smoke: 4 pool members
    (epochs {1, 2} × label smoothing {0, 0.1}), 5 coefficients, 2 training epochs,
    one-epoch baselines.
    """
    if smoke:
        smoke_values: dict[str, Any] = dict(
            original={"epochs": 3}, pool={"epochs": (1, 2), "weight_decays": (1e-4,),
                                          "label_smoothings": (0.0, 0.1)},
            coefs=(0.0, 0.25, 0.5, 0.75, 1.0),
            baseline_configs={m: {"epochs": 1} for m in unlearn.list_methods()}, smoke=True,
        )
        return make_config({**smoke_values, **overrides})
    return make_config(overrides)


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


def parse_scenario(name: str) -> dict[str, Any]:
    """``"random_10"`` -> random 10 %; ``"class_3"`` / ``"class_1-7"`` -> those classes.

    Returns:
        Keyword arguments of :func:`negkit.data.splits.make_forget_split`.
    """
    m = re.fullmatch(r"random_(\d+(?:\.\d+)?)", name)
    if m:
        return {"scenario": "random", "fraction": float(m.group(1)) / 100.0, "classes": ()}
    m = re.fullmatch(r"class_(\d+(?:-\d+)*)", name)
    if m:
        return {"scenario": "class", "classes": tuple(int(c) for c in m.group(1).split("-"))}
    raise ValueError(f"unknown scenario {name!r}; use 'random_<percent>' (e.g. 'random_10') or "
                     f"'class_<c>[-<c>...]' (e.g. 'class_3', 'class_1-7')")


# --------------------------------------------------------------------------- setup
@dataclasses.dataclass
class Setup:
    """Everything one scenario's methods need (returned by :func:`prepare`)."""

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
        return self.run_dir / self.scenario


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


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


def _metrics(model: nn.Module, forget: Dataset, retain: Dataset, test: Dataset, device: str) -> dict[str, float]:
    return {k: float(v) for k, v in unlearning_metrics(model, forget, retain, test, device=device).items()}


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
    run_dir, device = Path(run_dir), _device(device)
    spec = parse_scenario(scenario)
    bundle = get_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    labels = labels_of(bundle.train)
    split = make_forget_split(labels, seed=cfg.seed, num_classes=bundle.num_classes, **spec)
    _check_run_dir(cfg, run_dir)
    sdir = run_dir / split.name
    if not (sdir / "split.json").exists():
        io.save_json(split.to_dict(), sdir / "split.json")
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

    original = train(_new_model(cfg, bundle), bundle.train, cfg.original, device=device,
                     out_dir=run_dir / "original", progress=progress).model
    retrain = train(_new_model(cfg, bundle), retain, cfg.original, device=device,
                    out_dir=sdir / "retrain", progress=progress).model
    original.eval()
    retrain.eval()

    setup = Setup(
        cfg=cfg, run_dir=run_dir, scenario=split.name, device=device, bundle=bundle, split=split,
        forget=forget, retain=retain, test=test, val=bundle.val, val_forget=val_forget,
        val_control=val_control, original=original, retrain=retrain,
        original_metrics=_metrics(original, forget, retain, test, device),
        retrain_metrics=_metrics(retrain, forget, retain, test, device),
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


# --------------------------------------------------------------------------- pool and negation
def pool_task_vectors(setup: Setup, *, progress: bool = False) -> dict[str, TaskVector]:
    """Fine-tune θ_o on D_f with every pool config (skipped when done) and return τ_k = θ_k − θ_o.

    Each τ_k is also saved as ``<scenario>/task_vectors/<name>.safetensors`` (for
    streaming analysis and the explorer widget).
    """
    pre = {k: v.detach().cpu() for k, v in setup.original.state_dict().items()}
    out: dict[str, TaskVector] = {}
    members = pool_configs(setup.cfg)
    for name, tc in tqdm(members, desc=f"pool {setup.scenario}", disable=not progress):
        ft = train(copy.deepcopy(setup.original), setup.forget, tc, device=setup.device,
                   out_dir=setup.scenario_dir / "pool" / name, progress=False).model
        tv = TaskVector.from_state_dicts(pre, {k: v.detach().cpu() for k, v in ft.state_dict().items()})
        path = setup.scenario_dir / "task_vectors" / f"{name}.safetensors"
        if not path.exists():
            tv.save(path, metadata={"architecture": setup.cfg.model, "pretrained": "original",
                                    "finetune_config": _json(to_dict(tc)), "pool_config": name})
        out[name] = tv
    return out


def _json(obj: Any) -> str:
    """Compact JSON string (for safetensors metadata)."""
    import json

    return json.dumps(obj, sort_keys=True)


def _as_task_vector(tau: TaskVector | Mapping[str, torch.Tensor]) -> TaskVector:
    return tau if isinstance(tau, TaskVector) else TaskVector(dict(tau))


def _negate(setup: Setup, method: str, tau: TaskVector | Mapping[str, torch.Tensor], *,
            pool_config: str = "") -> list[Record]:
    """Sweep θ_o − λτ on validation, choose λ, measure the metrics, record everything in one append."""
    cfg, tau = setup.cfg, _as_task_vector(tau)
    pre = setup.original.state_dict()
    work = copy.deepcopy(setup.original)

    def build(coef: float) -> nn.Module:
        work.load_state_dict(tau.apply_to(pre, -coef))  # θ(λ) = θ_o − λτ
        return work

    curve = sweep_coefs(build, cfg.coefs, {"val_forget": setup.val_forget, "val_control": setup.val_control},
                        device=setup.device, batch_size=cfg.eval_batch_size, progress=False)
    wide = curve.pivot(index="coef", columns="split", values="acc").reindex([float(c) for c in cfg.coefs])
    lam = select_coef(list(wide.index), wide["val_forget"].tolist(), wide["val_control"].tolist(),
                      setup.control_reference, cfg.threshold)
    extra = [
        Record(setting=SETTING, model=cfg.model, dataset=cfg.dataset, scenario=setup.scenario, method=method,
               pool_config=pool_config, coef=float(r.coef), split=r.split, metric="acc", value=float(r.acc),
               seed=cfg.seed)
        for r in curve.itertuples()
    ]
    if lam is None:
        log.warning("%s/%s%s: %s (control never ≥ %.2f × %.2f)", setup.scenario, method,
                    f"[{pool_config}]" if pool_config else "", NO_COEF, cfg.threshold, setup.control_reference)
        metrics, note, lam = {k: math.nan for k in UNLEARNING_METRICS}, NO_COEF, math.nan
    else:
        metrics = _metrics(build(lam), setup.forget, setup.retain, setup.test, setup.device)
        note = EDGE if lam >= max(cfg.coefs) else ""
        if note:
            log.info("%s/%s%s: %s (λ=%g)", setup.scenario, method, f"[{pool_config}]" if pool_config else "",
                     EDGE, lam)
    return record_method(setup.log, setup, method, metrics, pool_config=pool_config, coef=lam, note=note,
                         extra=extra)


def _select_single(df: pd.DataFrame, setup: Setup, names: list[str]) -> None:
    """Record "Task Arithmetic (val)": the pool member with the lowest val forget accuracy at its λ."""
    d = df[(df.scenario == setup.scenario) & (df.method == "task_arithmetic") & df.pool_config.isin(names)]
    candidates = []
    for name in names:
        rows = d[d.pool_config == name]
        final = rows[rows.metric == "UA"]
        if final.empty or not math.isfinite(final.coef.iloc[-1]):
            continue
        lam = final.coef.iloc[-1]
        at = rows[(rows.metric == "acc") & np.isclose(rows.coef, lam)].set_index("split").value
        candidates.append((at["val_forget"], -at["val_control"], name, lam))
    if not candidates:
        record_method(setup.log, setup, "task_arithmetic", {k: math.nan for k in UNLEARNING_METRICS},
                      note=f"val-selected pool member: none ({NO_COEF} for every member)")
        return
    _, _, name, lam = min(candidates)
    rows = d[(d.pool_config == name) & d.metric.isin(UNLEARNING_METRICS)].drop_duplicates("metric", keep="last")
    metrics = dict(zip(rows.metric, rows.value))
    record_method(setup.log, setup, "task_arithmetic", metrics, coef=lam,
                  note=f"val-selected pool member {name}")


def run(cfg: BenchmarkConfig, run_dir: str | Path, *, device: str | None = None,
        progress: bool = True) -> pd.DataFrame:
    """Run the whole protocol for every scenario of ``cfg``; finished steps are skipped.

    Returns:
        All records of ``run_dir/results.jsonl`` (exact duplicates, which only an
        interrupted append can leave, dropped).
    """
    run_dir = Path(run_dir)
    for scenario in cfg.scenarios:
        setup = prepare(cfg, run_dir, scenario, device=device, progress=progress)
        _run_scenario(setup, progress=progress)
    return load_results(run_dir)


def _run_scenario(setup: Setup, *, progress: bool) -> None:
    cfg, sc = setup.cfg, setup.scenario
    tvs = pool_task_vectors(setup, progress=progress)
    names = list(tvs)
    steps: list[tuple[str, str, Callable[[], Any]]] = []
    for name in names:
        steps.append(("task_arithmetic", name,
                      lambda name=name: _negate(setup, "task_arithmetic", tvs[name], pool_config=name)))
    steps.append(("task_arithmetic", "", lambda: _select_single(setup.log.read(), setup, names)))
    for m in cfg.merge_methods:
        steps.append((m, "", lambda m=m: _negate(
            setup, m, merge.get(m)([tvs[n] for n in names], names=names, **cfg.merge_options.get(m, {})))))
    for m in cfg.baselines:
        steps.append((m, "", lambda m=m: record_method(setup.log, setup, m, _metrics(
            unlearn.get(m)(setup.original, setup.forget, setup.retain,
                           unlearn.default_config(m, **cfg.baseline_configs.get(m, {})),
                           device=setup.device, out_dir=setup.scenario_dir / "baselines" / m, progress=False),
            setup.forget, setup.retain, setup.test, setup.device))))
    done = _done_steps(setup.log.read())
    for method, pool_config, step in tqdm(steps, desc=f"methods {sc}", disable=not progress):
        if (sc, method, pool_config) in done:
            continue
        step()


# --------------------------------------------------------------------------- reading results
def load_results(run_dir: str | Path) -> pd.DataFrame:
    """The run's records (``run_dir/results.jsonl``), exact duplicates dropped."""
    df = read_results(Path(run_dir) / "results.jsonl")
    return df.drop_duplicates(ignore_index=True)


def _method_order(methods: pd.Series) -> pd.Series:
    order = {m: i for i, m in enumerate(METHODS)}
    return methods.map(lambda m: order.get(m, len(order)))


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One value per (dataset, scenario, method, metric): what ``figures/digits_results.csv`` holds.

    Keeps the method-level rows (``pool_config == ""``; for ``task_arithmetic`` that is the
    validation-selected pool member) of the metrics UA, RA, TA, MIA, avg_gap; values of
    several seeds are averaged.
    """
    d = df[(df.pool_config == "") & df.metric.isin(UNLEARNING_METRICS + ("avg_gap",))]
    out = d.groupby(["dataset", "scenario", "method", "metric"], as_index=False, sort=False).value.mean()
    metric_order = {m: i for i, m in enumerate(UNLEARNING_METRICS + ("avg_gap",))}
    out = out.assign(_m=_method_order(out.method), _k=out.metric.map(metric_order))
    return out.sort_values(["dataset", "scenario", "_m", "_k"]).drop(columns=["_m", "_k"]).reset_index(drop=True)


def headline(df: pd.DataFrame, metric: str = "avg_gap") -> pd.DataFrame:
    """NegMerge vs single-model Task Arithmetic vs uniform merge, per scenario.

    Columns: ``scenario``, ``negmerge``, ``task_arithmetic_val`` (the validation-selected
    member), ``task_arithmetic_best`` / ``_median`` / ``_worst`` (over the pool, an oracle
    spread on the test metrics), ``pool_std``, ``mean`` (uniform merge), ``n_pool``.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics are {list(METRICS)}")
    rows = []
    d = df[df.metric == metric]
    for sc, g in d.groupby("scenario", sort=False):
        method_rows = g[g.pool_config == ""].drop_duplicates("method", keep="last").set_index("method").value
        singles = g[(g.method == "task_arithmetic") & (g.pool_config != "")].drop_duplicates(
            "pool_config", keep="last").value.dropna()
        rows.append({
            "scenario": sc, "negmerge": method_rows.get("negmerge", math.nan),
            "task_arithmetic_val": method_rows.get("task_arithmetic", math.nan),
            "task_arithmetic_best": singles.min() if len(singles) else math.nan,
            "task_arithmetic_median": singles.median() if len(singles) else math.nan,
            "task_arithmetic_worst": singles.max() if len(singles) else math.nan,
            "pool_std": singles.std() if len(singles) > 1 else math.nan,
            "mean": method_rows.get("mean", math.nan), "n_pool": len(singles),
        })
    return pd.DataFrame(rows)
