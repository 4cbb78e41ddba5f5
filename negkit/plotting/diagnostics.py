"""Diagnostic figures of a multi-seed benchmark: error bars, paired intervals, pool diversity, λ curves.

- :func:`errorbar_results`: one metric per method, mean ± std over seeds (reads
  :func:`negkit.benchmark.summary`);
- :func:`paired_intervals`: NegMerge minus another method, seed-paired mean difference
  with its t-interval (reads :func:`negkit.benchmark.paired`);
- :func:`diversity_heatmap`: K × K cosine, sign agreement or relative distance of the
  pool's task vectors (reads :func:`negkit.analysis.pool_diversity`);
- :func:`member_curves`: every pool member's validation accuracy against λ, with the
  merges on top and the λ each one chose (reads the benchmark's records).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from matplotlib.lines import Line2D

from negkit.plotting.results import _clipped_yerr, _cut_dominant
from negkit.plotting.style import _axes, label, method_color
from negkit.results import method_rank

__all__ = ["errorbar_results", "paired_intervals", "paired_legend_handles", "diversity_heatmap", "member_curves"]


def errorbar_results(summary: pd.DataFrame, metric: str = "avg_gap", ax: Axes | None = None) -> Axes:
    """Bars of ``metric`` per method with mean ± std error bars over seeds.

    Error bars stop at 0 and 100 %; a zero (Retrain's gap) is a line on the axis; a method
    measured on fewer seeds than the others is labelled ``(n=…)``; when one bar dwarfs the
    rest the axis is cut above the others and that bar carries its value
    (:data:`negkit.plotting.DOMINANCE`).

    Args:
        summary: Rows of :func:`negkit.benchmark.summary` for one scenario and one λ rule (columns
            ``method, metric, value, std, n_seeds``).
        metric: Which metric to draw.
        ax: Axes to draw on (new if None).

    Raises:
        ValueError: ``summary`` has no row of ``metric``, or several rows of one method (filter
            to one scenario and setting first).
    """
    d = summary[summary.metric == metric]
    if d.empty:
        raise ValueError(f"no rows of metric {metric!r}; the summary has {sorted(set(summary.metric))}")
    if d.method.duplicated().any():
        dup = d.method[d.method.duplicated()].iloc[0]
        raise ValueError(f"{dup!r} has several {metric} rows; filter the summary to one scenario and setting")
    d = d.assign(_r=d.method.map(method_rank)).sort_values("_r", kind="stable")
    ax = _axes(ax, figsize=(8, 3))
    x = np.arange(len(d))
    means, stds = d.value.to_numpy(dtype=float), d["std"].to_numpy(dtype=float)
    err = _clipped_yerr(means, stds)
    ax.bar(x, np.nan_to_num(means), yerr=err if err.any() else None, capsize=3,
           color=[method_color(m) for m in d.method], edgecolor="none")
    for xi, m, v in zip(x, d.method, means):
        if np.isfinite(v) and v == 0:  # a zero: a line on the axis, never a stub below it
            ax.plot([xi - 0.4, xi + 0.4], [0, 0], lw=3, color=method_color(m), solid_capstyle="butt", clip_on=True)
    n = d.n_seeds.to_numpy(dtype=int) if "n_seeds" in d else np.ones(len(d), dtype=int)
    ticks = [label(m, "method") + (f" (n={k})" if k < n.max() else "") for m, k in zip(d.method, n)]
    ax.set_xticks(x, ticks, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(d) - 0.4)
    ax.set_ylim(bottom=0)
    stats = pd.DataFrame({"mean": means, "std": stds}, index=pd.MultiIndex.from_arrays([d.method, [metric] * len(d)]))
    cut = _cut_dominant(ax, stats, list(d.method), metric)
    ax.set_ylabel(label(metric, "metric"))
    note = f"mean ± std over {n.max()} seed{'s' if n.max() > 1 else ''}" + ("; axis cut" if cut else "")
    ax.text(1.0, 1.0, note, transform=ax.transAxes, ha="right", va="bottom", fontsize="small")
    return ax


def paired_intervals(paired: pd.DataFrame, ax: Axes | None = None, *, legend: bool = True) -> Axes:
    """Seed-paired mean differences ``a − b`` with their confidence intervals, one row per (scenario, b).

    A filled marker: the interval excludes 0 (the two methods differ); a hollow one: it
    includes 0 (no difference the seeds can show). The legend says so, and which side of 0
    favours ``a``.

    Args:
        paired: Output of :func:`negkit.benchmark.paired` (one setting).
        ax: Axes to draw on (new if None).
        legend: Explain the markers below the axes.
    """
    ax = _axes(ax, figsize=(6, 2.6))
    rows = paired.reset_index(drop=True)
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows.itertuples()):
        lo, hi = r.mean_diff - r.ci_low, r.ci_high - r.mean_diff
        filled = bool(r.excludes_zero)
        ax.errorbar(r.mean_diff, yi, xerr=[[lo], [hi]] if math.isfinite(lo) else None, fmt="o", capsize=3,
                    color=method_color(r.b), markerfacecolor=method_color(r.b) if filled else "white")
    ax.axvline(0.0, color="0.5", lw=0.8)
    one_scenario = rows.scenario.nunique() == 1
    ax.set_yticks(y, [("" if one_scenario else f"{label(r.scenario, 'scenario')}: ")
                      + f"{label(r.a, 'method')} − {label(r.b, 'method')}" for r in rows.itertuples()])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    metric = rows.metric.iloc[0] if len(rows) else "avg_gap"
    a = label(rows.a.iloc[0], "method") if len(rows) else "a"
    better = "< 0" if metric == "avg_gap" else "> 0"
    ax.set_xlabel(f"difference in {label(metric, 'metric_short')}, 95 % t-interval over seeds\n"
                  f"({better}: {a} closer to Retrain)")
    if legend:
        ax.legend(handles=paired_legend_handles(), loc="lower right", frameon=True, framealpha=0.9,
                  fontsize="small")
    return ax


def paired_legend_handles() -> list[Line2D]:
    """The two markers of :func:`paired_intervals`, for a figure-level legend."""
    return [Line2D([], [], marker="o", ls="", color="0.3", label="interval excludes 0: a difference"),
            Line2D([], [], marker="o", ls="", color="0.3", markerfacecolor="white",
                   label="interval includes 0: none shown")]


#: Fixed colour ranges, so every panel of a figure (and every run) shares one scale.
_DIVERSITY_RANGE = {"cosine": (-1.0, 1.0), "agreement": (0.0, 100.0), "rel_distance": (0.0, 2.0)}
_DIVERSITY_LABEL = {"cosine": "cosine similarity", "agreement": "same non-zero sign (%)",
                    "rel_distance": "‖τ_a − τ_b‖ / ‖τ_a‖"}


def diversity_heatmap(diversity: pd.DataFrame, value: str = "cosine", ax: Axes | None = None, *,
                      annot: bool | None = None, cbar: bool = True) -> Axes:
    """K × K heatmap of one column of :func:`negkit.analysis.pool_diversity`.

    The colour scale is fixed per quantity (cosine −1…1, sign agreement 0–100 %, relative
    distance 0–2), so rows of a figure and figures of different runs compare at a glance.

    Args:
        diversity: Long table ``a, b, cosine, agreement, rel_distance`` (agreement as a fraction).
        value: ``"cosine"``, ``"agreement"`` or ``"rel_distance"``.
        ax: Axes to draw on (new if None).
        annot: Write the values in the cells (default: when K ≤ 6).
        cbar: Draw the colour bar (pass False on all but one panel sharing the scale).

    Raises:
        ValueError: Unknown ``value``.
    """
    if value not in _DIVERSITY_RANGE:
        raise ValueError(f"value must be one of {list(_DIVERSITY_RANGE)}, got {value!r}")
    order = list(dict.fromkeys(diversity["a"]))
    wide = diversity.pivot(index="a", columns="b", values=value).loc[order, order]
    if value == "agreement":
        wide = 100.0 * wide
    wide.index = [label(n, "pool") for n in order]
    wide.columns = wide.index
    k = len(order)
    ax = _axes(ax, figsize=(2 + 0.45 * k, 1.5 + 0.4 * k))
    vmin, vmax = _DIVERSITY_RANGE[value]
    sns.heatmap(wide, ax=ax, cmap="viridis", vmin=vmin, vmax=vmax, annot=k <= 6 if annot is None else annot,
                fmt=".0f" if value == "agreement" else ".2f", cbar=cbar,
                cbar_kws={"label": _DIVERSITY_LABEL[value]}, square=True)
    ax.set_xlabel("")
    ax.set_ylabel("")
    return ax


def member_curves(records: pd.DataFrame, split: str = "val_forget", ax: Axes | None = None, *,
                  threshold: float | None = None, control_reference: float | None = None) -> Axes:
    """Validation accuracy on ``split`` against λ for every pool member (thin) and every merge (bold).

    Each curve holds the λ its search evaluated; a dot marks the λ it chose. With
    ``threshold`` and ``control_reference`` the admissibility line threshold × reference
    is drawn (use it on ``split="val_control"``).

    Args:
        records: One scenario's and one seed's records of one setting.
        split: ``"val_forget"`` or ``"val_control"``.
        ax: Axes to draw on (new if None).
        threshold, control_reference: The control constraint, drawn when both are given.
    """
    ax = _axes(ax, figsize=(6, 3.4))
    curves = records[(records.metric == "acc") & (records.split == split)]
    chosen = records[records.metric == "UA"].drop_duplicates(["method", "pool_config"], keep="last")
    chosen = chosen.set_index(["method", "pool_config"]).coef
    for (method, pc), g in curves.groupby(["method", "pool_config"], sort=False):
        g = g.drop_duplicates("coef", keep="last").sort_values("coef")
        single = pc != ""
        color = method_color(method)
        ax.plot(g.coef, g.value, lw=0.8 if single else 2.0, alpha=0.45 if single else 1.0, color=color,
                label=None if single else label(method, "method"), marker="." if single else None, ms=3)
        lam = chosen.get((method, pc), math.nan)
        if math.isfinite(lam):
            at = g[np.isclose(g.coef, lam)]
            if len(at):
                ax.plot([lam], [at.value.iloc[0]], "o", color=color, ms=3 if single else 6, mec="white")
    ax.plot([], [], lw=0.8, alpha=0.45, color=method_color("task_arithmetic"),
            label=f"{label('task_arithmetic', 'method')} (each member)")
    if threshold is not None and control_reference is not None:
        ax.axhline(threshold * control_reference, color="0.3", ls="--", lw=0.8,
                   label=f"{threshold:g} × original")
    ax.set_xlabel("λ")
    ax.set_ylabel(f"{label(split, 'split')} accuracy (%)")
    ax.legend(fontsize="x-small", ncol=2)
    return ax
