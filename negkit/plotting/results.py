"""Result summaries: grouped bars and a method × metric table.

Both read the tidy table of :func:`negkit.results.read_results` or the output of
:func:`negkit.benchmark.summary`, and warn when one cell would average over
different setups.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from negkit.plotting.style import _axes, _label
from negkit.results import method_rank

__all__ = ["results_bars", "results_table"]

#: Columns that tell setups apart; a table cell must not average over two values of one.
_SETUP_COLUMNS = ("setting", "model", "dataset", "scenario", "split")


def _metric_rows(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Rows of ``metrics``; warns when one (method, metric) cell would mix setups.

    Works on the full tidy table and on :func:`negkit.benchmark.summary` output
    (dataset, scenario, method, metric, value: no split, one value per cell).
    """
    missing = {"method", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"df lacks column(s) {sorted(missing)}; pass tidy results (negkit.results.read_results) "
                         f"or negkit.benchmark.summary(...) output; got columns {list(df.columns)}")
    rows = df[df["metric"].isin(metrics)]
    for col in (c for c in _SETUP_COLUMNS if c in rows.columns):
        counts = rows.groupby(["method", "metric"])[col].nunique()
        if (counts > 1).any():
            method, metric = counts[counts > 1].index[0]
            values = sorted(set(rows.loc[(rows["method"] == method) & (rows["metric"] == metric), col]))
            warnings.warn(f"{method} / {metric} has rows for several {col} values {values}; their values are "
                          f"averaged. Filter df to one {col} first, e.g. df[df.{col} == {values[0]!r}].")
    return rows


#: Metric names in bar legends (the y axis already says %).
_LEGEND_METRICS = {"MIA": "MIA-efficacy", "avg_gap": "Avg. gap ↓"}


def _method_order(methods: Sequence[str]) -> list[str]:
    return sorted(dict.fromkeys(methods), key=lambda m: (method_rank(m), m))


def results_bars(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("UA", "RA", "TA", "MIA", "avg_gap"),
    ax: Axes | None = None,
    *,
    methods: Sequence[str] | None = None,
) -> Axes:
    """Grouped bars: one group per method, one bar per metric (mean over rows, ± std).

    Rows of a method are averaged (over seeds, and over pool members if several
    are present: filter ``df`` first to show one).

    Args:
        df: Tidy results.
        metrics: Metrics drawn, in this order.
        ax: Axes to draw on.
        methods: Methods drawn (default: all present, in :data:`negkit.results.METHODS` order).
    """
    rows = _metric_rows(df, metrics)
    if methods is None:
        methods = _method_order(rows["method"])
    rows = rows[rows["method"].isin(methods)]
    if rows.empty:
        raise ValueError(f"no rows for metrics {list(metrics)}; metrics present are {sorted(set(df['metric']))}")
    hue_order = [m for m in metrics if m in set(rows["metric"])]
    ax = _axes(ax, (max(4.5, 0.9 * len(methods) + 1.5), 3.2))
    sns.barplot(data=rows, x="method", y="value", hue="metric", order=list(methods), hue_order=hue_order,
                errorbar="sd", palette="colorblind", ax=ax, err_kws={"linewidth": 1}, capsize=0.1)
    ax.set_xticks(range(len(methods)), [_label(m) for m in methods], rotation=30, ha="right")
    ax.set_xlabel("")
    ax.set_ylabel("value (%)")
    # Outside on the right, so it never covers bars or a title set by the caller.
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, [_LEGEND_METRICS.get(n, n) for n in names], title="", fontsize="small", loc="upper left",
              bbox_to_anchor=(1.0, 1.0), frameon=False)
    return ax


def results_table(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("UA", "RA", "TA", "MIA", "avg_gap"),
    *,
    methods: Sequence[str] | None = None,
    show_std: bool = False,
    decimals: int = 2,
) -> pd.DataFrame:
    """Method × metric table for display (mean over rows; NaN where a method lacks a metric).

    Rows of one cell are averaged over seeds (and pool members, if ``df`` holds
    several); a cell that would mix splits, scenarios, datasets, models or settings
    warns, naming the column to filter on.

    Args:
        df: Tidy results, or :func:`negkit.benchmark.summary` output (no ``split``/``seed``
            columns; one value per cell, so no std).
        metrics: Columns, in this order (absent ones dropped).
        methods: Rows (default: all present, in :data:`negkit.results.METHODS` order).
        show_std: Return strings ``"mean ± std"`` instead of numbers.
        decimals: Rounding.
    """
    rows = _metric_rows(df, metrics)
    methods = _method_order(rows["method"]) if methods is None else list(methods)
    cols = [m for m in metrics if m in set(rows["metric"])]
    grouped = rows.groupby(["method", "metric"])["value"]
    mean = grouped.mean().unstack("metric").reindex(index=methods, columns=cols).round(decimals)
    mean.index.name, mean.columns.name = "method", "metric"
    if not show_std:
        return mean
    std = grouped.std().fillna(0.0).unstack("metric").reindex(index=methods, columns=cols)
    text = [[f"{a:.{decimals}f} ± {b:.{decimals}f}" if pd.notna(a) else "" for a, b in zip(ma, sa)]
            for ma, sa in zip(mean.to_numpy(), std.to_numpy())]
    return pd.DataFrame(text, index=mean.index, columns=mean.columns)
