"""Reading a benchmark run back: records, summaries over seeds, paired comparisons.

Every record carries its ``seed``. :func:`summary` gives mean ± std over seeds per
(scenario, method, metric); :func:`paired` compares two methods seed by seed (the
same split, Original and pool) with a t-interval on the mean difference;
:func:`headline` is the NegMerge vs Task Arithmetic vs uniform-merge table;
:func:`results_table` is the one-row-per-(scenario, method, metric, seed) table that
``figures/<dataset>_results.csv`` holds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from negkit.benchmark.config import SETTING, SETTING_MATCH, UNLEARNING_METRICS
from negkit.metrics import RETRAIN_METRICS
from negkit.results import METRICS, method_rank, read_results

__all__ = ["load_results", "summary", "headline", "paired", "results_table", "mean_std", "sign_flip_pvalue",
           "regime", "regime_warnings", "join_seeds", "coef_warnings", "summary_table", "write_summary", "MEMORISE_RATIO"]

_NEGATIONS = ("task_arithmetic", "mean", "ties", "magmax", "negmerge", "dare", "breadcrumbs", "consensus", "tsv")

#: The Original memorises D_f when its UA is at most this fraction of Retrain's (:func:`regime`).
MEMORISE_RATIO = 0.5

_FINAL = UNLEARNING_METRICS + ("avg_gap",) + RETRAIN_METRICS  # the last from negkit.benchmark.extra


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """The run's records (``run_dir/results.jsonl``), exact duplicates dropped."""
    df = read_results(Path(run_dir) / "results.jsonl")
    return df.drop_duplicates(ignore_index=True)


def _method_rows(df: pd.DataFrame, setting: str | None) -> pd.DataFrame:
    """Method-level final rows (``pool_config == ""``, UA/RA/TA/MIA/avg_gap) of one setting, last record wins."""
    d = df[(df.pool_config == "") & df.metric.isin(_FINAL)]
    if setting is not None and "setting" in d:
        d = d[d.setting == setting]
    keys = [k for k in ("setting", "dataset", "scenario", "method", "metric", "seed") if k in d]
    return d.drop_duplicates(keys, keep="last")


def _sorted(out: pd.DataFrame) -> pd.DataFrame:
    metric_order = {m: i for i, m in enumerate(_FINAL)}
    out = out.assign(_m=out.method.map(method_rank), _k=out.metric.map(metric_order))
    keys = [k for k in ("dataset", "scenario", "_m", "_k", "seed") if k in out]
    return out.sort_values(keys, kind="stable").drop(columns=["_m", "_k"]).reset_index(drop=True)


def summary(df: pd.DataFrame, *, setting: str | None = SETTING) -> pd.DataFrame:
    """Mean ± std over seeds per (dataset, scenario, method, metric).

    Keeps the method-level rows (``pool_config == ""``; for ``task_arithmetic`` that is the
    validation-selected pool member) of UA, RA, TA, MIA and avg_gap of one ``setting``
    (``"standard"``: the paper's λ rule; ``"standard_match"``: the match rule; None: all).

    Returns:
        Columns ``dataset, scenario, method, metric, value`` (the mean), ``std`` (over seeds,
        ddof=1; NaN for one seed) and ``n_seeds`` (seeds with a finite value).
    """
    d = _method_rows(df, setting)
    g = d.groupby(["dataset", "scenario", "method", "metric"], sort=False).value
    out = pd.DataFrame({"value": g.mean(), "std": g.std(ddof=1), "n_seeds": g.count()}).reset_index()
    return _sorted(out)


def mean_std(table: pd.DataFrame, *, digits: int = 2) -> pd.DataFrame:
    """``summary`` as a wide table of ``"mean ± std"`` strings: rows (scenario, method), columns metrics."""
    cell = table.apply(lambda r: f"{r.value:.{digits}f}" + ("" if not np.isfinite(r["std"]) else
                                                           f" ± {r['std']:.{digits}f}"), axis=1)
    wide = table.assign(cell=cell).pivot_table(index=["scenario", "method"], columns="metric", values="cell",
                                               aggfunc="first", sort=False)
    return wide[[m for m in _FINAL if m in wide.columns]]


_RULE_OF_SETTING = {SETTING: "rule (a) min_forget", SETTING_MATCH: "rule (b) match"}


def summary_table(df: pd.DataFrame, *, digits: int = 2) -> pd.DataFrame:
    """The labelled end-of-run table: one row per (scenario, λ rule, method), ``mean ± std`` cells.

    Rows hold every method of the run with a final record, Original and Retrain included
    (their rows repeat under both rules: they do not depend on λ), in the kit's method order.

    Returns:
        Columns ``scenario, rule, method`` (readable names), one ``"mean ± std"`` column per
        metric present among UA, RA, TA, MIA and Avg. Gap (std over seeds, ddof=1, left out
        for one seed) and ``n`` (seeds).
    """
    from negkit.plotting.style import label  # readable names only; the numbers come from summary()

    metrics = list(UNLEARNING_METRICS) + ["avg_gap"]
    rows = []
    settings = [s for s in _RULE_OF_SETTING if "setting" in df and (df.setting == s).any()]
    anchors = summary(df, setting=settings[0]) if settings else pd.DataFrame(columns=["scenario", "method"])
    anchors = anchors[anchors.method.isin(("original", "retrain"))]
    for setting in settings:
        table = summary(df, setting=setting)
        missing = anchors[anchors.scenario.isin(set(table.scenario)) & ~anchors.method.isin(set(table.method))]
        table = _sorted(pd.concat([missing, table], ignore_index=True)) if len(missing) else table
        table = table[table.metric.isin(metrics)]
        for (scenario, method), g in table.groupby(["scenario", "method"], sort=False):
            row = {"scenario": label(scenario, "scenario"), "rule": _RULE_OF_SETTING[setting],
                   "method": label(method, "method")}
            for r in g.itertuples():
                cell = f"{r.value:.{digits}f}"
                if np.isfinite(r.std):
                    cell += f" ± {r.std:.{digits}f}"
                row[label(r.metric, "metric").replace(" (%)", "").replace(" ↓", "")] = cell
            row["n"] = int(g.n_seeds.max())
            rows.append(row)
    cols = ["scenario", "rule", "method"] + [label(m, "metric").replace(" (%)", "").replace(" ↓", "")
                                             for m in metrics] + ["n"]
    out = pd.DataFrame(rows, columns=cols)
    return out.dropna(axis=1, how="all").fillna("")


def write_summary(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/summary.csv`` and its figure ``summary.png``; returns the paths written.

    The CSV holds :func:`summary` of each λ rule in the records (column ``setting``: ``standard``
    is rule (a) min_forget, ``standard_match`` rule (b) match); the figure is
    :func:`negkit.plotting.errorbars_figure` of it (Avg. Gap, mean ± std over seeds). Both are
    written atomically; nothing is written for records without final rows.
    """
    from negkit.io import atomic_write, save_text

    parts = [summary(df, setting=s).assign(setting=s) for s in _RULE_OF_SETTING
             if "setting" in df and (df.setting == s).any()]
    parts = [p for p in parts if len(p)]
    if not parts:
        return []
    table = pd.concat(parts, ignore_index=True)
    table = table[["setting"] + [c for c in table.columns if c != "setting"]]
    csv = save_text(table.to_csv(index=False), Path(out_dir) / "summary.csv")
    import matplotlib.pyplot as plt

    from negkit import plotting

    fig = plotting.errorbars_figure(table)
    png = Path(out_dir) / "summary.png"
    with atomic_write(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return [csv, png]


def paired(df: pd.DataFrame, a: str = "negmerge", b: Sequence[str] = ("task_arithmetic", "mean"), *,
           metric: str = "avg_gap", setting: str | None = SETTING, confidence: float = 0.95) -> pd.DataFrame:
    """Method ``a`` minus each method of ``b``, seed by seed, with a t-interval on the mean difference.

    Seeds pair the methods: each seed has its own split, Original and pool, which both
    methods share. For Avg. Gap a negative difference means ``a`` is closer to Retrain.

    Returns:
        One row per (scenario, other): ``mean_diff``, ``std_diff``, ``n_seeds``, ``ci_low``,
        ``ci_high`` (``confidence`` t-interval, NaN below two seeds) and ``excludes_zero``.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics are {list(METRICS)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    d = _method_rows(df, setting)
    d = d[d.metric == metric]
    rows = []
    for sc, g in d.groupby("scenario", sort=False):
        wide = g.pivot_table(index="seed", columns="method", values="value", aggfunc="last")
        for other in b:
            if a not in wide or other not in wide:
                continue
            diff = (wide[a] - wide[other]).dropna()
            n = len(diff)
            mean = float(diff.mean()) if n else math.nan
            sd = float(diff.std(ddof=1)) if n > 1 else math.nan
            half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
            rows.append({"scenario": sc, "a": a, "b": other, "metric": metric, "mean_diff": mean, "std_diff": sd,
                         "n_seeds": n, "ci_low": mean - half, "ci_high": mean + half,
                         "excludes_zero": bool(n > 1 and (mean - half > 0 or mean + half < 0)),
                         "p_value": sign_flip_pvalue(diff.to_numpy()) if n else math.nan})
    return pd.DataFrame(rows, columns=["scenario", "a", "b", "metric", "mean_diff", "std_diff", "n_seeds",
                                       "ci_low", "ci_high", "excludes_zero", "p_value"])


def sign_flip_pvalue(diff: Sequence[float] | np.ndarray) -> float:
    """Exact two-sided sign-flip (paired permutation) p-value of a mean difference of zero.

    Under the null hypothesis each seed's difference is as likely to have either sign, so
    the 2ⁿ sign patterns are equally likely; the p-value is the fraction of them whose
    |mean| is at least the observed one (the observed pattern included). With n seeds the
    smallest attainable p-value is 2 / 2ⁿ (0.0625 for five seeds, 0.03125 for six).

    Args:
        diff: Per-seed differences (finite), n ≤ 20.

    Raises:
        ValueError: Empty, non-finite, or more than 20 differences (2ⁿ patterns).
    """
    d = np.asarray(diff, dtype=float).ravel()
    if d.size == 0 or d.size > 20 or not np.all(np.isfinite(d)):
        raise ValueError(f"sign_flip_pvalue needs 1-20 finite differences, got {d.tolist()}")
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)  # (2ⁿ, n) of ±1
    means = np.abs(signs @ d) / d.size
    observed = abs(d.mean())
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def regime(df: pd.DataFrame) -> pd.DataFrame:
    """Whether the Original memorised D_f, per (scenario, seed): is there anything to undo?

    Unlearning random samples removes memorisation: it only makes sense when the Original
    fits D_f (UA near 0) while Retrain, which never saw D_f, errs on it like on unseen data.

    Returns:
        Columns ``scenario, seed, original_forget_acc`` (the Original's training accuracy on
        D_f, %), ``original_UA``, ``retrain_UA`` and ``memorises`` (the Original's UA is at
        most :data:`MEMORISE_RATIO` × Retrain's).
    """
    d = df[(df.metric == "UA") & df.method.isin(("original", "retrain")) & (df.pool_config == "")]
    if "setting" in d:
        d = d[d.setting == SETTING]
    if d.empty:
        return pd.DataFrame(columns=["scenario", "seed", "original_forget_acc", "original_UA", "retrain_UA",
                                     "memorises"])
    wide = d.pivot_table(index=["scenario", "seed"], columns="method", values="value", aggfunc="last").reset_index()
    out = pd.DataFrame({"scenario": wide.scenario, "seed": wide.seed.astype(int),
                        "original_forget_acc": 100.0 - wide.get("original", math.nan),
                        "original_UA": wide.get("original", math.nan), "retrain_UA": wide.get("retrain", math.nan)})
    out["memorises"] = out.original_UA <= MEMORISE_RATIO * out.retrain_UA
    return out.reset_index(drop=True)


def coef_warnings(df: pd.DataFrame) -> list[str]:
    """Plain sentences for the λ searches that found nothing to do: every negation of a scenario at
    λ = 0, or searches that stopped at the top of their range with control still admissible."""
    from negkit.benchmark.config import EDGE

    d = df[(df.metric == "UA") & df.method.isin(_NEGATIONS)]
    if "setting" not in d:
        d = d.assign(setting=SETTING)
    out = []
    for (sc, setting), g in d.groupby(["scenario", "setting"], sort=False):
        where = f"{sc}, {_RULE_OF_SETTING.get(setting, setting)}"
        if len(g) and (g.coef == 0).all():
            if setting == SETTING_MATCH:
                out.append(f"{where}: every negation chose λ = 0, as no λ > 0 brought the validation forget "
                           "accuracy closer to Retrain's; the Original may already be there (see the regime "
                           "check), or the validation forget set is too small to tell (data_options val_size)")
            else:
                out.append(f"{where}: every negation chose λ = 0, so none unlearned anything: the pool's task "
                           "vectors are too small; fine-tune the pool longer or with a larger learning rate "
                           "(pool.epochs, pool.lr)")
        edge = g[g.note == EDGE]
        if len(edge):
            out.append(f"{where}: {len(edge)} λ search(es) stopped at the top of their range with control still "
                       "admissible; raise coef_max to search further")
    return out


def regime_warnings(df: pd.DataFrame) -> list[str]:
    """One plain sentence per scenario where some seed's Original does not memorise D_f (see :func:`regime`)."""
    r = regime(df)
    out = []
    for sc, g in r.groupby("scenario", sort=False):
        bad = g[~g.memorises]
        if len(bad):
            out.append(f"{sc}: the Original does not memorise D_f: little to undo (seeds {bad.seed.tolist()}: "
                       f"Original UA {bad.original_UA.mean():.1f} % vs Retrain UA {bad.retrain_UA.mean():.1f} %, "
                       f"more than {MEMORISE_RATIO:g} × Retrain's); train the Original longer or on fewer images "
                       "until it fits its training set")
    return out


def headline(df: pd.DataFrame, metric: str = "avg_gap", *, setting: str | None = SETTING) -> pd.DataFrame:
    """NegMerge vs single-model Task Arithmetic vs uniform merge, per scenario, averaged over seeds.

    Columns: ``scenario``, ``negmerge``, ``task_arithmetic_val`` (the validation-selected
    member), ``task_arithmetic_best`` / ``_median`` / ``_worst`` (over the pool, an oracle
    spread on the test metrics), ``pool_std``, ``mean`` (uniform merge), ``n_pool``,
    ``n_seeds``; ``*_std`` columns give the spread of the first three over seeds.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics are {list(METRICS)}")
    d = df[df.metric == metric]
    if setting is not None and "setting" in d:
        d = d[d.setting == setting]
    per_seed = []
    for (sc, seed), g in d.groupby(["scenario", "seed"], sort=False):
        method_rows = g[g.pool_config == ""].drop_duplicates("method", keep="last").set_index("method").value
        singles = g[(g.method == "task_arithmetic") & (g.pool_config != "")].drop_duplicates(
            "pool_config", keep="last").value.dropna()
        per_seed.append({
            "scenario": sc, "seed": seed, "negmerge": method_rows.get("negmerge", math.nan),
            "task_arithmetic_val": method_rows.get("task_arithmetic", math.nan),
            "task_arithmetic_best": singles.min() if len(singles) else math.nan,
            "task_arithmetic_median": singles.median() if len(singles) else math.nan,
            "task_arithmetic_worst": singles.max() if len(singles) else math.nan,
            "pool_std": singles.std() if len(singles) > 1 else math.nan,
            "mean": method_rows.get("mean", math.nan), "n_pool": len(singles),
        })
    cols = ["negmerge", "task_arithmetic_val", "task_arithmetic_best", "task_arithmetic_median",
            "task_arithmetic_worst", "pool_std", "mean", "n_pool"]
    if not per_seed:
        return pd.DataFrame(columns=["scenario", *cols, "n_seeds"])
    ps = pd.DataFrame(per_seed)
    g = ps.groupby("scenario", sort=False)
    out = g[cols].mean()
    for c in ("negmerge", "task_arithmetic_val", "mean"):
        out[f"{c}_std"] = g[c].std(ddof=1)
    out["n_seeds"] = g.seed.nunique()
    return out.reset_index()


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, scenario, method, metric, seed): the committed ``<dataset>_results.csv``.

    Columns: ``setting, dataset, model, scenario, method, metric, seed, value, coef, note``
    and, for negations, ``n_coefs`` (λ evaluated) and ``coef_max_searched`` (top of the range
    searched); the note says when λ hit the top of its range or when no λ was admissible.
    """
    d = _method_rows(df, None).reset_index(drop=True)
    searched = ("n_coefs", "coef_max_searched")
    joined = {c: d.pop(c) for c in searched if c in d}  # rows joined from an earlier table (:func:`join_seeds`)
    # The validation-selected Task Arithmetic row searched λ as its pool member did (named in its note).
    member = d.note.fillna("").str.extract(r"^val-selected pool member (\S+)$", expand=False).fillna("")
    d = d.assign(_member=member.where(d.method == "task_arithmetic", ""))
    search = df[df.metric.isin(searched)].rename(columns={"pool_config": "_member"})
    keys = ["setting", "dataset", "scenario", "method", "seed", "_member"]
    if not search.empty:
        wide = search.pivot_table(index=keys, columns="metric", values="value", aggfunc="last").reset_index()
        d = d.merge(wide, on=keys, how="left")  # a left merge keeps d's row order and index
    for c in searched:
        if c not in d:
            d[c] = math.nan
        if c in joined:
            d[c] = d[c].fillna(joined[c])
    cols = ["setting", "dataset", "model", "scenario", "method", "metric", "seed", "value", "coef", "note",
            "n_coefs", "coef_max_searched"]
    return _sorted(d[cols]).sort_values(["setting", "dataset", "scenario"], kind="stable").reset_index(drop=True)


def join_seeds(records: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """``records`` plus the rows of ``table`` for seeds ``records`` lacks: one run's seeds beside another's.

    ``table`` is a per-seed results table (:func:`results_table`, e.g. a ``<dataset>_results.csv``
    an earlier report wrote). For each (dataset, scenario) a seed that has any record in
    ``records`` comes from ``records`` only; the other seeds' method rows come from ``table``.
    :func:`summary`, :func:`paired`, :func:`regime` and :func:`results_table` read the result;
    :func:`headline` needs every pool member's record, which a results table does not hold.

    Raises:
        ValueError: ``table`` misses a column of a results table, or holds a (setting, dataset,
            scenario, method, metric, seed) twice.
    """
    need = ["setting", "dataset", "scenario", "method", "metric", "seed", "value"]
    missing = [c for c in need if c not in table]
    if missing:
        raise ValueError(f"the results table to join misses columns {missing}: pass a <dataset>_results.csv "
                         "written by a benchmark report (one row per setting, scenario, method, metric and seed)")
    dup = table.duplicated(need[:-1])
    if dup.any():
        row = table[dup].iloc[0]
        raise ValueError(f"the results table to join holds {row.method} {row.metric} of {row.scenario}, seed "
                         f"{row.seed} ({row.setting}) twice: pass one report's table")
    have = set(zip(records.dataset, records.scenario, records.seed.astype(int))) if len(records) else set()
    keep = [(ds, sc, int(sd)) not in have for ds, sc, sd in zip(table.dataset, table.scenario, table.seed)]
    extra = table[keep].assign(pool_config="", seed=lambda t: t.seed.astype(int))
    if "note" in extra:
        extra["note"] = extra.note.fillna("")
    return pd.concat([records, extra], ignore_index=True)
