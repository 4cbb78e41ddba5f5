"""Does consensus over more members help? NegMerge and the uniform merge on random sub-pools of size K.

The paper argues that the sign consensus of more fine-tunes isolates the forget-set
direction better. :func:`k_sweep` tests that on a finished benchmark run: for each seed
it draws ``subsets`` random sub-pools of each size K (seeded, distinct), merges them
with each method, negates the merged vector with λ chosen on validation by each rule —
exactly as the benchmark negates the full pool — and records UA/RA/TA/MIA and Avg. Gap
to Retrain. The full pool (K = pool size) is the benchmark's own negation, read from its
saved outcome. One CSV per seed is cached under ``<scenario>/k_sweep.csv``, so a sweep
resumes seed by seed.

Cost: one λ search and one metrics pass per (seed, K, subset, method, rule).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from negkit import merge
from negkit.benchmark.config import SETTING, SETTING_MATCH, UNLEARNING_METRICS, BenchmarkConfig
from negkit.benchmark.pipeline import _match_target, _negation_outcome, negated_metrics, negation_search
from negkit.benchmark.pipeline import pool_task_vectors
from negkit.benchmark.setup import prepare
from negkit.io import save_text
from negkit.metrics import avg_gap

__all__ = ["k_sweep", "draw_subsets", "COLUMNS"]

COLUMNS = ["k", "subset", "seed", "method", "metric", "value", "setting", "coef", "members", "scenario"]


def draw_subsets(names: Sequence[str], k: int, n: int, seed: int) -> list[tuple[str, ...]]:
    """``n`` distinct random sub-pools of ``k`` of ``names`` (all of them if fewer exist), seeded, in draw order."""
    if not 1 <= k <= len(names):
        raise ValueError(f"k must be in [1, {len(names)}] (the pool size), got {k}")
    if n < 1:
        raise ValueError(f"need at least one subset per K, got {n}")
    total = math.comb(len(names), k)
    rng = np.random.default_rng(seed)
    if total <= n:
        return [tuple(c) for c in itertools.combinations(names, k)]
    seen: list[tuple[str, ...]] = []
    while len(seen) < n:
        pick = tuple(sorted(rng.choice(len(names), k, replace=False).tolist()))
        c = tuple(names[i] for i in pick)
        if c not in seen:
            seen.append(c)
    return seen


def k_sweep(cfg: BenchmarkConfig, run_dir: str | Path, *, scenario: str = "random_10", ks: Sequence[int] = (3, 5),
            subsets: int = 3, methods: Sequence[str] = ("negmerge", "mean"),
            rules: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            device: str | None = None, progress: bool = False) -> pd.DataFrame:
    """NegMerge and the uniform merge on random sub-pools of size K, for every seed of a finished run.

    Args:
        cfg: The run's config (its Original, Retrain and pool must be trained).
        run_dir: The run's folder.
        scenario: The scenario swept (the paper's claim concerns random forgetting).
        ks: Sub-pool sizes below the pool size; the full pool is always added.
        subsets: Random sub-pools drawn per K.
        methods: Merge rules (``negkit.merge`` names).
        rules: λ selection rules (default: the run's rules for this scenario).
        seeds: Seeds to sweep (default: the run's).
        device: None: cuda if available, else cpu.
        progress: A tqdm bar over each seed's negations.

    Returns:
        Tidy rows with :data:`COLUMNS`: ``k``, ``subset`` (index within K), ``seed``,
        ``method``, ``metric`` (UA/RA/TA/MIA/avg_gap), ``value``, ``setting`` (the rule's),
        ``coef`` (λ), ``members`` (``+``-joined names) and ``scenario``.
    """
    for m in methods:
        merge.get(m)
    out = []
    for seed in (seeds if seeds is not None else cfg.seeds):
        setup = prepare(cfg, run_dir, scenario, seed=seed, device=device, record=False)
        cache = Path(setup.scenario_dir) / "k_sweep.csv"
        rule_list = tuple(rules) if rules is not None else tuple(
            r for r in cfg.rules if r == "min_forget" or scenario.startswith("random"))
        key = f"{list(ks)}|{subsets}|{list(methods)}|{list(rule_list)}"
        if cache.exists():
            df = pd.read_csv(cache, keep_default_na=False, na_values=[""])
            if len(df) and (df["key"] == key).all():
                out.append(df.drop(columns="key"))
                continue
        tvs = pool_task_vectors(setup)
        names = list(tvs)
        plan = [(k, i, sub) for k in ks if k < len(names) for i, sub in enumerate(
            draw_subsets(names, k, subsets, seed=1000 * seed + k))] + [(len(names), 0, tuple(names))]
        rows = []
        steps = [(k, i, sub, m, r) for k, i, sub in plan for m in methods for r in rule_list]
        for k, i, sub, m, rule in tqdm(steps, desc=f"k-sweep seed {seed}", disable=not progress):
            tau = merge.get(m)([tvs[n] for n in sub], names=list(sub), **cfg.merge_options.get(m, {}))
            target = _match_target(setup) if rule == "match" else None
            if k == len(names) and m in cfg.merge_methods:  # the benchmark's own negation of the full pool
                res, metrics = _negation_outcome(setup, m, tau, rule=rule)
                lam = res.coef
            else:
                res = negation_search(setup, tau, rule=rule, target=target)
                lam = res.coef
                metrics = None if lam is None else negated_metrics(setup, tau, lam)
            values = ({k2: math.nan for k2 in UNLEARNING_METRICS} if metrics is None else
                      {k2: float(metrics[k2]) for k2 in UNLEARNING_METRICS})
            values["avg_gap"] = (math.nan if metrics is None else float(avg_gap(values, setup.retrain_metrics)))
            for metric, v in values.items():
                rows.append({"k": k, "subset": i, "seed": seed, "method": m, "metric": metric, "value": v,
                             "setting": SETTING_MATCH if rule == "match" else SETTING,
                             "coef": math.nan if lam is None else float(lam), "members": "+".join(sub),
                             "scenario": scenario})
        df = pd.DataFrame(rows, columns=COLUMNS)
        save_text(df.assign(key=key).to_csv(index=False), cache)
        out.append(df)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=COLUMNS)
