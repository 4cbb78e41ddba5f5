"""Reading a benchmark run back: records, the summary table, the headline comparison."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from negkit.benchmark.config import UNLEARNING_METRICS
from negkit.results import METRICS, method_rank, read_results

__all__ = ["load_results", "summary", "headline"]

def load_results(run_dir: str | Path) -> pd.DataFrame:
    """The run's records (``run_dir/results.jsonl``), exact duplicates dropped."""
    df = read_results(Path(run_dir) / "results.jsonl")
    return df.drop_duplicates(ignore_index=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One value per (dataset, scenario, method, metric): what ``figures/digits_results.csv`` holds.

    Keeps the method-level rows (``pool_config == ""``; for ``task_arithmetic`` that is the
    validation-selected pool member) of the metrics UA, RA, TA, MIA, avg_gap; values of
    several seeds are averaged.
    """
    d = df[(df.pool_config == "") & df.metric.isin(UNLEARNING_METRICS + ("avg_gap",))]
    out = d.groupby(["dataset", "scenario", "method", "metric"], as_index=False, sort=False).value.mean()
    metric_order = {m: i for i, m in enumerate(UNLEARNING_METRICS + ("avg_gap",))}
    out = out.assign(_m=out.method.map(method_rank), _k=out.metric.map(metric_order))
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
