"""Result summaries: grouped bars (accuracies, and Avg. Gap in its own panel) and a method × metric table.

Both read the tidy table of :func:`negkit.results.read_results` or the output of
:func:`negkit.benchmark.summary`, and warn when one cell would average over
different setups.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from negkit.plotting.style import METRIC_COLORS, MIN_FONT, _axes, label, method_color
from negkit.results import method_rank

__all__ = ["results_bars", "results_table", "DOMINANCE"]

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


def _method_order(methods: Sequence[str]) -> list[str]:
    return sorted(dict.fromkeys(methods), key=lambda m: (method_rank(m), m))


def _cell_stats(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean, spread and number of seeds per (method, metric): over seeds when the rows carry several.

    Pool members of one seed are averaged first, so the error bar is the spread over seeds only.
    :func:`negkit.benchmark.summary` output with ``std``/``n_seeds`` columns keeps its own.
    """
    if "seed" in rows.columns:
        per_seed = rows.groupby(["method", "metric", "seed"])["value"].mean()
        stats = per_seed.groupby(level=["method", "metric"]).agg(["mean", "std", "count"])
    else:
        g = rows.groupby(["method", "metric"])
        stats = g["value"].agg(["mean", "count"])
        stats["std"] = g["std"].mean() if "std" in rows.columns else float("nan")
        if "n_seeds" in rows.columns:
            stats["count"] = g["n_seeds"].max()
    return stats


#: Metrics on a 0-100 % scale: error bars are clipped to it.
_PERCENT_RANGE = (0.0, 100.0)
#: The Avg. Gap axis is cut when its largest bar exceeds this many times the next one.
DOMINANCE = 3.0


def _clipped_yerr(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """(2, N) asymmetric error bars: ± std, clipped so no bar runs below 0 % or above 100 %."""
    stds = np.where(np.isnan(stds) | np.isnan(means), 0.0, stds)
    m = np.nan_to_num(means)
    lo = np.clip(np.minimum(stds, m - _PERCENT_RANGE[0]), 0.0, None)
    hi = np.clip(np.minimum(stds, _PERCENT_RANGE[1] - m), 0.0, None)
    return np.vstack([lo, hi])


def _bars(ax: Axes, stats: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str], *,
          colors: Sequence, by_method: bool = False) -> None:
    """One bar per (method, metric), error bars within [0, 100] %; a zero is a line on the axis, a missing
    value a hatched "n/a"."""
    k = len(metrics)
    width = 0.8 / k
    top = float(stats["mean"].max()) if len(stats) else 1.0
    stub = 0.012 * max(top, 1.0)
    for j, (metric, color) in enumerate(zip(metrics, colors)):
        xs = np.arange(len(methods)) + (j - (k - 1) / 2) * width
        means = np.array([stats["mean"].get((m, metric), np.nan) for m in methods], dtype=float)
        stds = np.array([stats["std"].get((m, metric), np.nan) for m in methods], dtype=float)
        present = ~np.isnan(means)
        yerr = _clipped_yerr(means, stds)
        colored = [method_color(m) for m in methods] if by_method else color
        ax.bar(xs, np.where(present, means, 0.0), width, color=colored, zorder=2,
               yerr=yerr if yerr.any() else None, error_kw={"elinewidth": 0.9, "capsize": 1.5, "ecolor": "0.15"},
               label=label(metric, "metric_short"))
        for i, (x, mean, ok) in enumerate(zip(xs, means, present)):
            if not ok:  # missing: an outlined, hatched box, never mistaken for a zero
                ax.bar(x, 3 * stub, width, bottom=0, fill=False, hatch="////", edgecolor="0.6", lw=0.5, zorder=1)
                ax.text(x, 4 * stub, "n/a", rotation=90, ha="center", va="bottom", fontsize=MIN_FONT, color="0.45")
            elif abs(mean) < stub:  # a true zero: a line on the axis in the bar's colour (clipped: never below 0)
                ax.plot([x - width / 2, x + width / 2], [0, 0], lw=3, solid_capstyle="butt", zorder=3,
                        clip_on=True, color=method_color(methods[i]) if by_method else color)


def _cut_dominant(ax: Axes, stats: pd.DataFrame, methods: Sequence[str], metric: str) -> list[str]:
    """Broken axis for one bar that dwarfs the rest: the axis stops above the others, the tall bar is cut
    with a break mark and its value written on it. Returns the methods whose bars were cut."""
    means = pd.Series({m: stats["mean"].get((m, metric), np.nan) for m in methods}, dtype=float).dropna()
    if len(means) < 3:
        return []
    order = means.sort_values(ascending=False)
    big, rest = order.iloc[0], order.iloc[1]
    if not (rest > 0 and big > DOMINANCE * rest):
        return []
    stds = pd.Series({m: stats["std"].get((m, metric), np.nan) for m in methods}, dtype=float).fillna(0.0)
    limit = 1.25 * max(float((means + stds)[means < big].max()), rest)
    ax.set_ylim(0, limit)
    cut = [m for m in means.index if means[m] > limit]
    for m in cut:
        x = list(methods).index(m)
        ax.text(x, 0.97 * limit, f"{means[m]:.1f}", rotation=90, ha="center", va="top", fontsize=MIN_FONT,
                color="white", fontweight="bold", zorder=5, gid="negkit-value")
        # The break: a white zigzag across the bar, below the axis top.
        ax.plot([x - 0.45, x - 0.15, x + 0.15, x + 0.45], [0.80 * limit, 0.83 * limit, 0.79 * limit, 0.82 * limit],
                color="white", lw=2.5, zorder=4, clip_on=False)
    return cut


def results_bars(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("UA", "RA", "TA", "MIA", "avg_gap"),
    ax: Axes | None = None,
    *,
    methods: Sequence[str] | None = None,
    gap_ax: Axes | None = None,
    legend: bool = True,
) -> Axes:
    """Grouped bars per method: the accuracies on a 0–100 axis, Avg. Gap in a panel of its own.

    Avg. Gap is small next to accuracies, so it gets its own axis (right of ``ax``, or
    ``gap_ax``). Bars are means over seeds with ± std error bars when several seeds are
    present (pool members of one seed are averaged first: filter ``df`` to show one).
    A missing value is a hatched "n/a" box; a zero is a coloured line on the axis; error bars stop
    at 0 and 100 %. When one Avg. Gap bar is more than :data:`DOMINANCE` times the next, that
    axis is cut above the others and the tall bar carries its value. A method measured on
    fewer seeds than the others is labelled ``(n=…)``.

    Args:
        df: Tidy results, or :func:`negkit.benchmark.summary` output (a ``std`` column gives error bars).
        metrics: Metrics drawn, in this order; ``avg_gap`` goes to its own panel.
        ax: Axes of the accuracies (a new figure when None).
        methods: Methods drawn (default: all present, in :data:`negkit.results.METHODS` order).
        gap_ax: Axes of the Avg. Gap panel (default: a panel attached right of ``ax``).
        legend: Draw the metric legend (above ``ax``); pass False on all but one panel of a figure.

    Returns:
        The accuracies' Axes (the Avg. Gap panel is ``ax.negkit_gap_ax``).
    """
    rows = _metric_rows(df, metrics)
    if methods is None:
        methods = _method_order(rows["method"])
    methods = list(methods)
    rows = rows[rows["method"].isin(methods)]
    if rows.empty:
        raise ValueError(f"no rows for metrics {list(metrics)}; metrics present are {sorted(set(df['metric']))}")
    stats = _cell_stats(rows)
    acc_metrics = [m for m in metrics if m != "avg_gap" and m in set(rows["metric"])]
    with_gap = "avg_gap" in metrics and "avg_gap" in set(rows["metric"])
    if ax is None:
        ax = _axes(None, (max(4.5, 0.75 * len(methods) + 1.5), 3.2))
    if not acc_metrics:  # Avg. Gap only: it takes the main axes
        gap_ax = ax if gap_ax is None else gap_ax
    else:
        _bars(ax, stats, methods, acc_metrics, colors=[METRIC_COLORS.get(m, "0.5") for m in acc_metrics])
    # A method measured on fewer seeds than the rest says so under its bar (e.g. forget vectors on seed 0 only).
    counts = stats["count"].groupby(level="method").max()
    n_max = int(counts.max()) if len(counts) else 1
    ticks = [label(m, "method") + (f" (n={int(counts[m])})" if m in counts and int(counts[m]) < n_max else "")
             for m in methods]
    ax.set_xticks(range(len(methods)), ticks, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.55, len(methods) - 0.45)
    ax.set_ylim(0, 105)
    ax.set_xlabel("")
    ax.set_ylabel("accuracy / MIA-efficacy (%)")
    if legend and acc_metrics:
        # Above the panel's right end: a caller's title sits on the left (loc="left").
        ax.legend(fontsize="small", loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(acc_metrics),
                  frameon=False, borderaxespad=0.2, handlelength=1.0, columnspacing=1.0)
    if with_gap:
        if gap_ax is None:
            # Attached outside the right edge in axes coordinates, so it follows ax in any layout.
            gap_ax = ax.inset_axes([1.07, 0.0, 0.36, 1.0])
        _bars(gap_ax, stats, methods, ["avg_gap"], colors=[METRIC_COLORS["avg_gap"]], by_method=True)
        gap_ax.set_xticks(range(len(methods)), ticks, rotation=90, fontsize=MIN_FONT)
        gap_ax.set_xlim(-0.6, len(methods) - 0.4)
        if gap_ax is ax:
            ax.relim()
            ax.autoscale(axis="y")
        gap_ax.set_ylim(bottom=0)
        cut = _cut_dominant(gap_ax, stats, methods, "avg_gap")
        if gap_ax is ax:  # a caller's title replaces ours: the axis label says it
            ax.set_ylabel(label("avg_gap", "metric") + (" · axis cut" if cut else ""))
        else:
            gap_ax.set_title(label("avg_gap", "metric") + (" · axis cut" if cut else ""), fontsize="small",
                             loc="left")
        gap_ax.grid(axis="x", visible=False)
        ax.negkit_gap_ax = gap_ax
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
