"""Figures for sign consensus, λ sweeps, results and forget vectors.

Every plotting function takes its data first, draws on ``ax`` (a new seaborn
"whitegrid"/"paper" axes when None) and returns the Axes, so notebooks compose
panels freely and tests can inspect the artists. Result plots read the tidy
table of :func:`negkit.results.read_results` (columns :data:`negkit.results.COLUMNS`);
sign-consensus plots read the DataFrames of :mod:`negkit.analysis`.
:func:`save_figure` writes PNG and PDF atomically.
"""
from __future__ import annotations

import contextlib
import os
import re
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from negkit.results import METHODS

__all__ = [
    "set_style", "save_figure", "consensus_heatmap", "agreement_heatmap", "consensus_curve", "coef_curve",
    "sensitivity", "results_bars", "results_table", "per_class_bars", "image_grid", "METHOD_LABELS",
    "METRIC_LABELS",
]

#: Display names for legends (registry names are kept in the data).
METHOD_LABELS = {
    "original": "Original", "retrain": "Retrain", "zeroshot": "Zero-shot", "task_arithmetic": "Task Arithmetic",
    "mean": "Mean", "sum": "Sum", "ties": "TIES", "magmax": "MagMax", "negmerge": "NegMerge", "ft": "FT",
    "ga": "GA", "rl": "RL", "l1_sparse": "l1-sparse", "salun": "SalUn", "forget_vector": "Forget vector",
    "forget_vector_arithmetic": "Forget-vector arithmetic",
}
#: Axis labels of the metrics (accuracies in %; ↓ marks lower-is-better).
METRIC_LABELS = {"UA": "UA (%)", "RA": "RA (%)", "TA": "TA (%)", "MIA": "MIA-efficacy (%)",
                 "avg_gap": "Avg. gap (%) ↓", "acc": "accuracy (%)"}


def set_style() -> None:
    """Apply the kit's seaborn theme globally (for notebooks; functions here do not need it)."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")


def _axes(ax: Axes | None, figsize: tuple[float, float] = (4.5, 3.2)) -> Axes:
    if ax is not None:
        return ax
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


#: A number inside a name: "4", "0.05", "1e-4", "5e-5" (the forms pool-member names use).
_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def _numeric(name: str) -> tuple:
    # Numbers compare by value, so "ls0.05" < "ls0.1" and "wd5e-5" < "wd1e-4"; the
    # (0, ...) / (1, ...) tags keep numbers and text comparable within one key.
    parts = _NUMBER.split(str(name))
    return tuple((0, float(t), "") if i % 2 else (1, 0.0, t) for i, t in enumerate(parts) if t)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    try:  # the kit's helper when it is there; the same temp-file + rename otherwise
        from negkit.io import atomic_write
    except ImportError:
        atomic_write = None
    if atomic_write is not None:
        with atomic_write(path) as tmp:
            yield Path(tmp)
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(
    fig_or_ax: Figure | Axes | Any,
    path_stem: str | os.PathLike,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 200,
) -> list[Path]:
    """Write a figure as ``<stem>.png`` and ``<stem>.pdf`` (each atomically).

    Args:
        fig_or_ax: A Figure, an Axes, or an array of Axes (as :func:`image_grid` returns).
        path_stem: Output path without extension (a trailing ``.png``/``.pdf`` is dropped);
            parent folders are created.
        formats: Formats to write, as matplotlib format names.
        dpi: Resolution of raster formats.

    Returns:
        The written paths, in ``formats`` order.
    """
    fig = fig_or_ax
    if isinstance(fig, (np.ndarray, list, tuple)):
        fig = np.ravel(fig)[0]
    if isinstance(fig, Axes):
        fig = fig.get_figure()
    if not isinstance(fig, Figure):
        raise TypeError(f"save_figure needs a Figure or Axes, got {type(fig_or_ax).__name__}")
    stem = Path(path_stem)
    if stem.suffix.lstrip(".").lower() in {f.lower() for f in formats}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")  # not with_suffix: stems may contain dots
        with _atomic(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- sign consensus


def _wide(df: pd.DataFrame, index: str, columns: str, values: str) -> pd.DataFrame:
    if {index, columns, values} <= set(df.columns):  # long form -> wide, rows in order of appearance
        order = list(dict.fromkeys(df[index]))
        return df.pivot_table(index=index, columns=columns, values=values, aggfunc="mean").loc[order]
    return df


def consensus_heatmap(table: pd.DataFrame, ax: Axes | None = None, *, annot: bool | None = None,
                      **kw: Any) -> Axes:
    """Heatmap of the consensus rate per layer group (rows) and pool size K (columns).

    Args:
        table: :func:`negkit.analysis.consensus_by_layer_vs_k` (wide) or the long
            :func:`negkit.analysis.consensus_vs_k` table with ``by_group=True``.
        ax: Axes to draw on.
        annot: Write the values in the cells (default: when there are at most 150).
        **kw: Forwarded to :func:`seaborn.heatmap` (e.g. ``cmap``).
    """
    if "group" in table.columns:
        table = table[table["group"] != "all"]
    table = _wide(table, "group", "k", "frac_consistent")
    ax = _axes(ax, (1.2 + 0.55 * table.shape[1], 1.0 + 0.28 * table.shape[0]))
    annot = table.size <= 150 if annot is None else annot
    opts = dict(vmin=0.0, vmax=1.0, cmap="viridis", annot=annot, fmt=".2f",
                cbar_kws={"label": "sign-consistent fraction"})
    sns.heatmap(table, ax=ax, **{**opts, **kw})
    ax.set_xlabel("K (fine-tuned models merged)")
    ax.set_ylabel("layer group")
    return ax


def agreement_heatmap(pairwise: pd.DataFrame, ax: Axes | None = None, *, annot: bool | None = None,
                      **kw: Any) -> Axes:
    """K × K heatmap of pairwise sign agreement (:func:`negkit.analysis.pairwise_agreement`, wide or long)."""
    table = _wide(pairwise, "a", "b", "agreement")
    n = table.shape[0]
    ax = _axes(ax, (1.5 + 0.5 * n, 1.0 + 0.45 * n))
    annot = n <= 12 if annot is None else annot
    opts = dict(vmin=0.0, vmax=1.0, cmap="mako", annot=annot, fmt=".2f", square=True,
                cbar_kws={"label": "same non-zero sign"})
    sns.heatmap(table, ax=ax, **{**opts, **kw})
    ax.set_xlabel("")
    ax.set_ylabel("")
    return ax


def consensus_curve(df: pd.DataFrame, ax: Axes | None = None, *, groups: Sequence[str] | None = None,
                    spread: str = "std", **kw: Any) -> Axes:
    """Consensus rate versus pool size K: mean over draws with a spread band.

    Args:
        df: :func:`negkit.analysis.consensus_vs_k` output.
        ax: Axes to draw on.
        groups: Groups to draw, one line each (default: the ``"all"`` rows when present).
        spread: ``"std"`` (mean ± standard deviation over draws) or ``"minmax"``.
        **kw: Forwarded to ``Axes.plot``.
    """
    if spread not in ("std", "minmax"):
        raise ValueError(f"spread must be 'std' or 'minmax', got {spread!r}")
    if groups is None:
        groups = ["all"] if (df["group"] == "all").any() else list(dict.fromkeys(df["group"]))
    ax = _axes(ax)
    for group in groups:
        part = df[df["group"] == group]
        if part.empty:
            raise ValueError(f"no rows for group {group!r}; groups are {sorted(set(df['group']))}")
        stats = part.groupby("k")["frac_consistent"].agg(["mean", "std", "min", "max"]).fillna(0.0)
        lo, hi = ((stats["mean"] - stats["std"], stats["mean"] + stats["std"]) if spread == "std"
                  else (stats["min"], stats["max"]))
        (line,) = ax.plot(stats.index, stats["mean"], marker="o", label=group, **kw)
        ax.fill_between(stats.index, lo.clip(0, 1), hi.clip(0, 1), color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("K (fine-tuned models merged)")
    ax.set_ylabel("sign-consistent fraction")
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    if len(groups) > 1:
        ax.legend(title="layer group", fontsize="small")
    return ax


# --------------------------------------------------------------------------- results


def _mean_by(df: pd.DataFrame, by: str) -> pd.DataFrame:
    return df.groupby(by, sort=True)["value"].agg(["mean", "std"]).fillna(0.0)


def _pick_split(df: pd.DataFrame, wanted: str | None, candidates: Sequence[str], role: str) -> str:
    present = list(dict.fromkeys(df["split"]))
    if wanted is not None:
        if wanted not in present:
            raise ValueError(f"no {role} rows with split {wanted!r}; splits present are {present}")
        return wanted
    for s in candidates:
        if s in present:
            return s
    raise ValueError(f"cannot tell the {role} split among {present}; pass {role}_split=...")


def coef_curve(
    df: pd.DataFrame,
    method: str,
    ax: Axes | None = None,
    control_reference: float | None = None,
    threshold: float = 0.95,
    chosen: float | None = None,
    *,
    forget_split: str | None = None,
    control_split: str | None = None,
    pool_config: str | None = None,
    metric: str = "acc",
) -> Axes:
    """Forget and control accuracy versus the negation coefficient λ.

    The admissibility line is ``threshold × control_reference``: a λ is admissible
    when control accuracy stays above it (e.g. 95% of the zero-shot ImageNet
    accuracy in the task-negation protocol), and the chosen λ is marked.

    Args:
        df: Tidy results; rows of ``method`` with a finite ``coef`` and ``metric`` are drawn
            (mean over seeds, ± std band when there are several).
        method: Method whose sweep is drawn.
        ax: Axes to draw on.
        control_reference: Control accuracy of the unedited model; when None it is read
            from ``zeroshot``/``original`` rows on the control split, if any.
        threshold: Fraction of the reference that stays admissible.
        chosen: λ to mark (e.g. from :func:`negkit.evaluate.select_coef`).
        forget_split: Split of the forget curve (default ``forget``, else ``val_forget``).
        control_split: Split of the control curve (default ``control``, ``val_control``,
            ``retain`` or ``test``, the first present).
        pool_config: Restrict to one pool member (for single-fine-tune Task Arithmetic).
        metric: Metric drawn on both curves.
    """
    rows = df[(df["method"] == method) & (df["metric"] == metric) & df["coef"].notna()]
    if pool_config is not None:
        rows = rows[rows["pool_config"] == pool_config]
    if rows.empty:
        swept = sorted(set(df.loc[df["coef"].notna(), "method"]))
        raise ValueError(f"no {metric!r} rows with a coefficient for method {method!r}; swept methods: {swept}")
    setups = rows[["setting", "model", "dataset", "scenario", "pool_config"]].drop_duplicates()
    if len(setups) > 1:
        raise ValueError(f"{len(setups)} different setups (dataset/scenario/model/pool_config) in the rows of "
                         f"{method!r}; filter df to one, e.g. df[df.dataset == 'cars'] or pool_config=...")
    f_split = _pick_split(rows, forget_split, ("forget", "val_forget"), "forget")
    c_split = _pick_split(rows, control_split, ("control", "val_control", "retain", "test"), "control")
    ax = _axes(ax)
    # Forget above control, small dots on larger squares: where the curves coincide
    # (e.g. both at 100 % when no λ forgets anything) both stay visible.
    styles = {"forget": dict(marker="o", ms=3, zorder=3), "control": dict(marker="s", ms=5, zorder=2)}
    for split, role in ((f_split, "forget"), (c_split, "control")):
        stats = _mean_by(rows[rows["split"] == split], "coef")
        (line,) = ax.plot(stats.index, stats["mean"], label=f"{role} ({split})", **styles[role])
        if (stats["std"] > 0).any():
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                            color=line.get_color(), alpha=0.2, lw=0)
    if control_reference is None:
        setup = setups.iloc[0]
        ref = df[df["method"].isin(["zeroshot", "original"]) & (df["metric"] == metric)
                 & (df["split"] == c_split) & (df["dataset"] == setup["dataset"])]
        control_reference = float(ref["value"].mean()) if not ref.empty else None
    if control_reference is not None:
        ax.axhline(threshold * control_reference, ls="--", color="0.4", lw=1,
                   label=f"{threshold:.0%} of control reference")
    if chosen is not None:
        ax.axvline(chosen, ls=":", color="k", lw=1, label=f"chosen λ = {chosen:g}")
    ax.set_xlabel("λ (negation coefficient)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(_label(method) + (f" · {pool_config}" if pool_config else ""))
    ax.legend(fontsize="small")
    return ax


def _one_coef(rows: pd.DataFrame, what: str) -> None:
    # Seeds may pick different λ; several λ within one seed mean a whole sweep was passed.
    n = int(rows.groupby("seed")["coef"].nunique(dropna=False).max())
    if n > 1:
        raise ValueError(f"{what} has rows at {n} coefficients; keep only the chosen one "
                         "(e.g. filter df by coef or note) before plotting")


def sensitivity(
    df: pd.DataFrame,
    x: str = "pool_config",
    metric: str = "avg_gap",
    reference_methods: Sequence[str] = ("negmerge", "mean", "ties", "magmax"),
    ax: Axes | None = None,
    *,
    point_method: str = "task_arithmetic",
    order: Sequence[str] | None = None,
    split: str | None = None,
) -> Axes:
    """Each single fine-tune's Task Arithmetic result against the merges (NegMerge, Fig. 1).

    Points are the ``point_method`` rows, one per value of ``x`` (a pool member),
    mean ± std over seeds. Each method of ``reference_methods`` present in ``df`` is a
    horizontal line, each with its own dash pattern so coinciding lines stay
    distinguishable; the legend sits outside the axes, right of them. When every
    point and line has the same value (e.g. every method chose λ = 0) the panel says
    so in its middle.

    Args:
        df: Tidy results, filtered to one setup and to the chosen coefficients.
        x: Column naming the single fine-tunes.
        metric: Metric on the y axis.
        reference_methods: Merges drawn as horizontal lines (absent ones are skipped).
        ax: Axes to draw on.
        point_method: Method of the per-fine-tune points.
        order: Order of the x values, e.g. the pool's own order
            (``benchmark.pool_frame(cfg).pool_config``). Default: by the numbers in the
            names, compared by value (``e4_wd5e-5_ls0.05`` before ``e4_wd1e-4_ls0``, ``ls0.05``
            before ``ls0.1``).
        split: Keep only this split (needed when ``metric`` is measured on several, e.g. ``acc``).

    Raises:
        ValueError: If ``metric`` has several splits and ``split`` is None, a fine-tune has rows
            at several coefficients, or ``order`` misses a value of ``x``.
    """
    rows = df[df["metric"] == metric]
    if split is not None:
        rows = rows[rows["split"] == split]
    elif rows["split"].nunique() > 1:
        raise ValueError(f"{metric!r} is measured on several splits {sorted(set(rows['split']))}; pass split=...")
    points = rows[(rows["method"] == point_method) & (rows[x] != "")]
    if points.empty:
        raise ValueError(f"no {point_method!r} rows with metric {metric!r} and a non-empty {x!r}")
    for name, part in points.groupby(x):
        _one_coef(part, f"{point_method} / {name}")
    stats = _mean_by(points, x)
    if order is None:
        order = sorted(stats.index, key=_numeric)
    else:
        order = [o for o in dict.fromkeys(order) if o in stats.index]
        missing = sorted(set(stats.index) - set(order), key=_numeric)
        if missing:
            raise ValueError(f"order lacks {len(missing)} value(s) of {x!r} present in df: {missing[:5]}; "
                             f"pass every member, e.g. order=benchmark.pool_frame(cfg).{x}")
    stats = stats.loc[order]
    ax = _axes(ax, (max(4.5, 0.3 * len(stats) + 2.5), 3.2))
    pos = np.arange(len(stats))
    ax.errorbar(pos, stats["mean"], yerr=stats["std"] if (stats["std"] > 0).any() else None, fmt="o",
                color="0.25", ms=4, capsize=2, zorder=3, label=f"{_label(point_method)} (single fine-tune)")
    palette = sns.color_palette("colorblind", len(reference_methods))
    dashes = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 3))]
    values, coefs = list(stats["mean"]), list(points["coef"])
    for i, (color, m) in enumerate(zip(palette, reference_methods)):
        ref = rows[(rows["method"] == m) & (rows["pool_config"] == "")]
        if ref.empty:
            continue
        _one_coef(ref, m)
        ax.axhline(ref["value"].mean(), color=color, lw=1.6, ls=dashes[i % len(dashes)], label=_label(m))
        values.append(float(ref["value"].mean()))
        coefs += list(ref["coef"])
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):
        # Degenerate panel: one value everywhere. Say so rather than let matplotlib
        # zoom into a ±0.05 band that suggests a spread.
        pad = max(1.0, 0.1 * abs(hi))
        ax.set_ylim(max(hi - pad, 0.0) if hi >= 0 else hi - pad, hi + pad)  # gaps, accuracies: not below 0
        why = " (every method chose λ = 0)" if coefs and all(c == 0 for c in coefs) else ""
        ax.text(0.5, 0.2, f"all single fine-tunes and merges: {hi:.3g}{why}", transform=ax.transAxes,
                ha="center", va="center", fontsize="small",
                bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.7", alpha=0.9))
    ax.set_xticks(pos, [str(i) for i in stats.index], rotation=60, ha="right", rotation_mode="anchor",
                  fontsize="small")
    ax.set_xlim(-0.7, len(stats) - 0.3)
    ax.set_xlabel("fine-tuning configuration" if x == "pool_config" else x)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    # Outside on the right: with 27 members the points fill the whole width.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


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
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(dict.fromkeys(methods), key=lambda m: (rank.get(m, len(rank)), m))


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


# --------------------------------------------------------------------------- forget vectors


def per_class_bars(
    df: pd.DataFrame | pd.Series,
    ax: Axes | None = None,
    *,
    columns: Sequence[str] | None = None,
    forgotten: Sequence[Any] = (),
    classnames: Sequence[str] | None = None,
    ylabel: str = "accuracy (%)",
) -> Axes:
    """Per-class accuracy bars, one bar per input variant (e.g. without δ, with δ).

    Args:
        df: One row per class (the index), one column per variant, values in %: e.g.
            ``pd.DataFrame({"original": per_class_accuracy(model, test),
            "with δ": per_class_accuracy(model, test, input_transform=fv)})``.
            A Series (one variant) is drawn as one bar per class.
        ax: Axes to draw on.
        columns: Variants drawn, in this order (default: all columns).
        forgotten: Classes (index values) being forgotten: shaded, their tick labels bold.
        classnames: Tick labels, indexed by position in ``df`` (default: the index values).
        ylabel: Y-axis label.

    Raises:
        ValueError: If a column of ``columns`` or a class of ``forgotten`` is not in ``df``.
    """
    table = df.to_frame() if isinstance(df, pd.Series) else df
    columns = list(table.columns) if columns is None else list(columns)
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise ValueError(f"columns {unknown} not in df; its columns are {list(table.columns)}")
    absent = [c for c in forgotten if c not in table.index]
    if absent:
        raise ValueError(f"forgotten classes {absent} are not in df's index {list(table.index)}")
    if classnames is not None and len(classnames) != len(table):
        raise ValueError(f"got {len(classnames)} classnames for {len(table)} classes")
    n, k = len(table), len(columns)
    ax = _axes(ax, (max(4.5, 0.22 * n * max(k, 2) + 2.5), 2.8))
    pos = np.arange(n)
    width = 0.8 / max(k, 1)
    palette = sns.color_palette("colorblind", k)
    for i, (col, color) in enumerate(zip(columns, palette)):
        ax.bar(pos + (i - (k - 1) / 2) * width, table[col].to_numpy(dtype=float), width, color=color,
               label=str(col), zorder=2)
    shown = [str(c) for c in (classnames if classnames is not None else table.index)]
    ax.set_xticks(pos, shown)
    marked = set(forgotten)
    for j, c in enumerate(table.index):
        if c in marked:
            ax.axvspan(j - 0.5, j + 0.5, color="0.9", zorder=0, lw=0)
            ax.get_xticklabels()[j].set_fontweight("bold")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("class" + (" (shaded: forgotten)" if len(forgotten) else ""))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def image_grid(
    images: torch.Tensor | np.ndarray | Sequence[Any],
    titles: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    *,
    fig: Figure | None = None,
    ncols: int | None = None,
    shared_scale: bool = True,
    cmap: str = "RdBu_r",
    colorbar: bool = True,
) -> np.ndarray:
    """Show perturbations δ (or images) in a grid, one panel each.

    1-channel images are drawn symmetric around 0 with a diverging colormap
    (white = 0, limits ±max|δ|); RGB images are min–max rescaled to [0, 1].
    With ``shared_scale`` the limits are taken over all images, so panels compare
    in magnitude; otherwise each panel is scaled on its own.

    Args:
        images: (N, C, H, W) or (N, H, W) tensor/array, or a list of (C, H, W)/(H, W) items; C is 1 or 3.
        titles: One title per image.
        ax: Axes to draw on, one per image (at least N); a new figure when None.
        fig: Figure to fill with a new grid of subplots (ignored when ``ax`` is given).
        ncols: Grid columns (default min(N, 8)).
        shared_scale: One colour scale for all panels.
        cmap: Diverging colormap of 1-channel images.
        colorbar: Add a colorbar (1-channel, shared scale only).

    Returns:
        The array of Axes used (unused grid cells are hidden).
    """
    items = [np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
             for x in images]
    items = [x[None] if x.ndim == 2 else x for x in items]
    if not items:
        raise ValueError("image_grid got no images")
    if any(x.ndim != 3 or x.shape[0] not in (1, 3) for x in items):
        raise ValueError(f"images must be (C, H, W) with C in (1, 3); got shapes {[x.shape for x in items]}; "
                         "select channels first, e.g. images[:, :3]")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"got {len(titles)} titles for {len(items)} images")
    n = len(items)
    if ax is not None:
        axes = np.ravel(np.asarray(ax, dtype=object))
        if len(axes) < n:
            raise ValueError(f"got {len(axes)} axes for {n} images")
    else:
        ncols = ncols or min(n, 8)
        nrows = -(-n // ncols)
        fig = fig or plt.figure(figsize=(1.6 * ncols + (0.6 if colorbar else 0), 1.7 * nrows), layout="constrained")
        axes = np.ravel(fig.subplots(nrows, ncols, squeeze=False))
    lim = max(float(np.abs(x).max()) for x in items)
    lo, hi = min(float(x.min()) for x in items), max(float(x.max()) for x in items)
    im = None
    for i, a in enumerate(axes):
        a.set_xticks([])
        a.set_yticks([])
        if i >= n:
            a.set_visible(False)
            continue
        x = items[i]
        if x.shape[0] == 1:
            m = (lim if shared_scale else float(np.abs(x).max())) or 1.0
            im = a.imshow(x[0], cmap=cmap, vmin=-m, vmax=m, interpolation="nearest")
        else:
            xmin, xmax = (lo, hi) if shared_scale else (float(x.min()), float(x.max()))
            a.imshow(np.transpose((x - xmin) / ((xmax - xmin) or 1.0), (1, 2, 0)), interpolation="nearest")
        if titles is not None:
            a.set_title(str(titles[i]), fontsize="small")
    if colorbar and shared_scale and im is not None and all(x.shape[0] == 1 for x in items):
        axes[0].get_figure().colorbar(im, ax=list(axes[:n]), shrink=0.8, label="δ")
    return axes
