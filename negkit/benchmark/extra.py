"""Output-level metrics of a finished benchmark run: divergence from Retrain, ZRF and relearn time.

UA/RA/TA/MIA compare accuracies; two models can agree on all four and still differ
in what they output. :func:`record_retrain_metrics` rebuilds, from a run dir's saved
artefacts, the Original, Retrain, NegMerge, the uniform merge (``mean``), Task
Arithmetic with the validation-selected pool member and the best classic baseline
(lowest mean Avg. Gap over the run's seeds, as the report's paired comparison picks
it), and records for each (names in :data:`negkit.metrics.RETRAIN_METRICS`):

* ``kl_retrain_forget`` / ``js_retrain_forget`` and ``kl_retrain_test`` /
  ``js_retrain_test``: mean KL(p_Retrain ‖ p_model) and JS divergence of the softmax
  outputs on D_f and on the test set, in nats (:func:`negkit.metrics.kl_to_retrain`);
* ``zrf``: 1 − mean JS from a randomly initialised model of the same architecture on
  D_f (:func:`negkit.metrics.zrf`);
* ``relearn_epochs``: epochs of fine-tuning on D_f, at the pool's learning rate and
  batch size, until the forget accuracy is back at the Original's
  (:func:`negkit.metrics.relearn_epochs`; ``max_epochs + 1`` when capped, said in the note).

Nothing is retrained: the negations are rebuilt from their saved outcome (λ) and the
pool's checkpoints, the baseline from its checkpointed chosen setting. The records have
the usual columns (setting ``"standard"``, the method's λ as ``coef``) and a (method,
metric) already recorded for the seed and scenario is skipped, so a rerun adds nothing.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from negkit import unlearn
from negkit.benchmark.config import SETTING, BenchmarkConfig, baseline_candidates
from negkit.benchmark.pipeline import _vector, negated_model, outcome_path, pool_task_vectors
from negkit.benchmark.report import load_results
from negkit.benchmark.setup import Setup, prepare
from negkit.data.augment import training_view
from negkit.evaluate import evaluate
from negkit.io import load_json
from negkit.lock import locks_run_dir
from negkit.metrics import RETRAIN_METRICS, js_to_retrain, kl_to_retrain, relearn_epochs, zrf
from negkit.models import get as get_model
from negkit.results import Record

log = logging.getLogger(__name__)

__all__ = ["record_retrain_metrics", "best_baseline", "DEFAULT_METHODS"]

#: Methods measured by default, besides the best classic baseline.
DEFAULT_METHODS = ("original", "retrain", "negmerge", "mean", "task_arithmetic")

_SPLITS = {"kl_retrain_forget": "forget", "js_retrain_forget": "forget", "kl_retrain_test": "test",
           "js_retrain_test": "test", "zrf": "forget", "relearn_epochs": "forget"}


def best_baseline(df: pd.DataFrame, cfg: BenchmarkConfig, scenario: str) -> str | None:
    """The classic baseline of ``cfg`` with the lowest mean Avg. Gap over the recorded seeds (None: none recorded)."""
    d = df[(df.scenario == scenario) & (df.setting == SETTING) & (df.metric == "avg_gap") & (df.pool_config == "")
           & df.method.isin(cfg.baselines)].dropna(subset=["value"])
    if d.empty:
        return None
    means = d.drop_duplicates(["method", "seed"], keep="last").groupby("method", sort=False).value.mean()
    return str(means.sort_values(kind="stable").index[0])


def _final_row(df: pd.DataFrame, setup: Setup, method: str) -> pd.Series | None:
    d = df[(df.seed == setup.seed) & (df.scenario == setup.scenario) & (df.setting == SETTING)
           & (df.method == method) & (df.pool_config == "") & (df.metric == "UA")]
    return None if d.empty else d.iloc[-1]


def _model_of(setup: Setup, method: str, df: pd.DataFrame) -> tuple[nn.Module, float, str] | None:
    """The method's unlearned model rebuilt from the run's artefacts, its λ and a note (None: not in the run)."""
    cfg = setup.cfg
    if method in ("original", "retrain"):
        return getattr(setup, method), math.nan, ""
    if method in cfg.merge_methods:
        path = outcome_path(setup, method)
        if not path.exists():
            return None
        coef = load_json(path)["coef"]
        if coef is None:
            return None  # no admissible λ: nothing to measure
        return negated_model(setup, _vector(pool_task_vectors(setup), cfg, method, ""), coef), float(coef), ""
    if method == "task_arithmetic":
        row = _final_row(df, setup, method)
        found = None if row is None else re.match(r"^val-selected pool member (\S+)$", row.note)
        if found is None:
            return None
        member = found.group(1)
        tau = pool_task_vectors(setup, names=[member])[member]
        return negated_model(setup, tau, row.coef), float(row.coef), f"val-selected pool member {member}"
    if method in cfg.baselines:
        row = _final_row(df, setup, method)
        found = None if row is None else re.match(r"^chosen setting (\S+) of", row.note)
        if found is None:
            return None
        name = "" if found.group(1) == "default" else found.group(1)
        ucfg = unlearn.default_config(method, **{"seed": cfg.seed, **baseline_candidates(cfg, method)[name]})
        folder = setup.scenario_dir / "baselines" / method
        model = unlearn.get(method)(setup.original, training_view(setup.bundle, setup.forget),
                                    training_view(setup.bundle, setup.retain), ucfg, device=setup.device,
                                    out_dir=folder / name if name else folder, progress=False)  # loads the checkpoint
        return model.eval(), math.nan, f"best classic baseline (mean Avg. Gap); chosen setting {found.group(1)}"
    raise ValueError(f"cannot rebuild method {method!r}; choose from {['original', 'retrain', 'task_arithmetic']} "
                     f"+ the run's merges {list(cfg.merge_methods)} + its baselines {list(cfg.baselines)}")


def _incompetent(setup: Setup) -> nn.Module:
    """A randomly initialised model of the run's architecture (ZRF's incompetent teacher), seeded apart from θ_o's."""
    cfg, b = setup.cfg, setup.bundle
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + cfg.seed)
        return get_model(cfg.model, num_classes=b.num_classes, in_channels=b.input_shape[0], mean=b.mean, std=b.std,
                         **cfg.model_options).eval()


@locks_run_dir("run_dir")
def record_retrain_metrics(cfg: BenchmarkConfig, run_dir: str | Path, scenario: str, *, seed: int | None = None,
                           methods: Sequence[str] | None = None, max_epochs: int = 20,
                           device: str | None = None) -> pd.DataFrame:
    """Record KL/JS to Retrain (D_f, test), ZRF and relearn epochs of a finished run's methods (module docstring).

    Args:
        cfg: The run's benchmark config.
        run_dir: The run's folder (:func:`negkit.benchmark.run` finished there).
        scenario: One of the run's scenarios.
        seed: One of ``cfg.seeds`` (None: the first).
        methods: Methods to measure (None: :data:`DEFAULT_METHODS` and the best classic
            baseline). A method the run did not record (or without an admissible λ) is skipped.
        max_epochs: Cap of the relearn fine-tuning.
        device: None: cuda if available.

    Returns:
        The run's :data:`~negkit.metrics.RETRAIN_METRICS` records of this seed and scenario
        (those found and those added), one row per (method, metric).

    Raises:
        ValueError: A method that cannot be rebuilt (the message lists those that can).
    """
    setup = prepare(cfg, run_dir, scenario, seed=seed, device=device, record=False)
    df = load_results(run_dir)
    if methods is None:
        best = best_baseline(df, cfg, setup.scenario)
        methods = [*DEFAULT_METHODS, *([best] if best else [])]
    mine = df[(df.seed == setup.seed) & (df.scenario == setup.scenario) & (df.setting == SETTING)
              & df.metric.isin(RETRAIN_METRICS)]
    done = set(zip(mine.method, mine.metric))
    reference_acc = evaluate(setup.original, setup.forget, device=setup.device,
                             batch_size=setup.cfg.eval_batch_size)["acc"]
    incompetent = _incompetent(setup)
    kw = dict(device=setup.device, batch_size=setup.cfg.eval_batch_size)
    for method in methods:
        todo = [m for m in RETRAIN_METRICS if (method, m) not in done]
        if not todo:
            continue
        built = _model_of(setup, method, df)
        if built is None:
            log.info("%s seed %d: %s is not in the run (or has no admissible λ); skipped", setup.scenario,
                     setup.seed, method)
            continue
        model, coef, note = built
        values = {
            "kl_retrain_forget": lambda: kl_to_retrain(model, setup.retrain, setup.forget, **kw),
            "js_retrain_forget": lambda: js_to_retrain(model, setup.retrain, setup.forget, **kw),
            "kl_retrain_test": lambda: kl_to_retrain(model, setup.retrain, setup.test, **kw),
            "js_retrain_test": lambda: js_to_retrain(model, setup.retrain, setup.test, **kw),
            "zrf": lambda: zrf(model, incompetent, setup.forget, **kw),
            "relearn_epochs": lambda: float(relearn_epochs(
                model, setup.forget, reference_acc, lr=setup.cfg.pool.lr, batch_size=setup.cfg.pool.batch_size,
                max_epochs=max_epochs, seed=setup.seed, device=setup.device, eval_batch_size=kw["batch_size"])),
        }
        rows = []
        for metric in todo:
            value = values[metric]()
            capped = metric == "relearn_epochs" and value > max_epochs
            rows.append(Record(setting=SETTING, model=setup.cfg.model, dataset=setup.cfg.dataset,
                               scenario=setup.scenario, method=method, pool_config="", coef=coef,
                               split=_SPLITS[metric], metric=metric, value=float(value), seed=setup.seed,
                               note="; ".join(filter(None, [note, f"not relearned in {max_epochs} epochs" if capped
                                                            else ""]))))
        setup.log.append(rows)
    df = load_results(run_dir)
    return df[(df.seed == setup.seed) & (df.scenario == setup.scenario) & (df.setting == SETTING)
              & df.metric.isin(RETRAIN_METRICS)].reset_index(drop=True)
