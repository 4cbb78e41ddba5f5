"""Each committed figure drawn from the CSV it ships beside, by one function that reads that table.

A figure and its table cannot disagree when the figure is drawn from the table: every number
a figure shows (bar heights, error bars, the values written on cut bars) is computed from the
rows of ``<stem>.csv``, and ``figures/<stem>.png`` is what :func:`draw` makes of them. Seeds
are averaged (mean ± std over seeds), never shown for one seed beside a mean of several.

=============================  ======================================  ==========================
CSV                            figure                                  drawn by
=============================  ======================================  ==========================
``<dataset>_results.csv``      ``<dataset>_results``                   :func:`results_figure`
``<dataset>_summary.csv``      ``<dataset>_results_errorbars``         :func:`errorbars_figure`
``<dataset>_paired.csv``       ``<dataset>_paired``                    :func:`paired_figure`
``<dataset>_k_sweep.csv``      ``<dataset>_k_sweep``                   :func:`k_sweep_figure`
``<..>_forget_vector_epochs``  same stem                               :func:`forget_vector_epochs_figure`
``forget_vectors_comparison``  ``forget_vectors_comparison_<scenario>``  :func:`comparison_figure`
=============================  ======================================  ==========================

``negkit.plotting.redraw("figures")`` redraws every figure whose CSV is there.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from negkit.plotting.diagnostics import errorbar_results, paired_intervals, paired_legend_handles
from negkit.plotting.results import results_bars
from negkit.plotting.style import label, save_figure, style_context
from negkit.plotting.sweeps import forget_vector_epochs, k_sweep

__all__ = ["results_figure", "errorbars_figure", "paired_figure", "k_sweep_figure", "forget_vector_epochs_figure",
           "comparison_figure", "draw", "redraw", "FIGURES"]

_SETTINGS = ("standard", "standard_match")


def _read(table: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    return table if isinstance(table, pd.DataFrame) else pd.read_csv(table)


def _panels(table: pd.DataFrame) -> list[tuple[str, str | None]]:
    """(scenario, setting) pairs in the table's order; setting None when the table has one rule only."""
    scenarios = list(dict.fromkeys(table["scenario"]))
    if "setting" not in table.columns:
        return [(sc, None) for sc in scenarios]
    settings = [s for s in _SETTINGS if s in set(table["setting"])] + sorted(set(table["setting"]) - set(_SETTINGS))
    return [(sc, s) for sc in scenarios for s in settings if ((table.scenario == sc) & (table.setting == s)).any()]


def _title(scenario: str, setting: str | None) -> str:
    return label(scenario, "scenario") + (f" · λ {label(setting, 'rule')}" if setting else "")


def _subplots(n: int, width: float, height: float) -> tuple[Figure, list]:
    with style_context():
        fig, axes = plt.subplots(n, 1, figsize=(width, height * n), squeeze=False, layout="constrained")
    return fig, list(axes[:, 0])


def results_figure(table: pd.DataFrame | str | os.PathLike) -> Figure:
    """UA, RA, TA, MIA and Avg. Gap per method, one row per scenario (and λ rule), from ``<dataset>_results.csv``.

    Args:
        table: The CSV (or its DataFrame): :func:`negkit.benchmark.summary` rows (``value, std,
            n_seeds``) or :func:`negkit.benchmark.results_table` rows (one per seed and setting).
    """
    t = _read(table)
    if "pool_config" in t.columns:
        t = t[t.pool_config.fillna("") == ""]
    panels = _panels(t)
    fig, axes = _subplots(len(panels), 9.0, 3.4)
    for i, (ax, (sc, s)) in enumerate(zip(axes, panels)):
        part = t[(t.scenario == sc) & ((t.setting == s) if s else True)]
        results_bars(part, ax=ax, legend=i == 0)
        ax.set_title(_title(sc, s), loc="left")
    return fig


def errorbars_figure(table: pd.DataFrame | str | os.PathLike, metric: str = "avg_gap") -> Figure:
    """``metric`` per method, mean ± std over seeds, one panel per scenario and λ rule, from ``<dataset>_summary.csv``."""
    t = _read(table)
    panels = _panels(t)
    fig, axes = _subplots(len(panels), 10.0, 3.2)
    for ax, (sc, s) in zip(axes, panels):
        errorbar_results(t[(t.scenario == sc) & ((t.setting == s) if s else True)], metric=metric, ax=ax)
        ax.set_title(f"{_title(sc, s)}: {label(metric, 'metric_short')} to Retrain", loc="left")
    return fig


def paired_figure(table: pd.DataFrame | str | os.PathLike) -> Figure:
    """NegMerge minus each comparison, seed-paired 95 % intervals, one panel per scenario and λ rule (rule (b)
    applies to random forgetting only), from ``<dataset>_paired.csv``; one legend explains the markers."""
    t = _read(table)
    panels = _panels(t)
    n_rows = max(len(t[(t.scenario == sc) & ((t.setting == s) if s else True)]) for sc, s in panels)
    with style_context():
        fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, (0.32 * n_rows + 1.4) * len(panels)), squeeze=False,
                                 layout="constrained")
    for ax, (sc, s) in zip(axes[:, 0], panels):
        paired_intervals(t[(t.scenario == sc) & ((t.setting == s) if s else True)], ax=ax, legend=False)
        ax.set_title(_title(sc, s), loc="left")
    fig.legend(handles=paired_legend_handles(), loc="outside lower center", ncol=2, frameon=False)
    return fig


def k_sweep_figure(table: pd.DataFrame | str | os.PathLike, metric: str = "avg_gap") -> Figure:
    """``metric`` against pool size K, one panel per λ rule, from ``<dataset>_k_sweep.csv``."""
    t = _read(table)
    settings = [s for s in _SETTINGS if "setting" in t and s in set(t.setting)] or [None]
    with style_context():
        fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 3.4), squeeze=False,
                                 layout="constrained")
    scenario = label(t.scenario.iloc[0], "scenario") if "scenario" in t and len(t) else ""
    for ax, s in zip(axes[0], settings):
        k_sweep(t, metric, setting=s, ax=ax)
        ax.set_title(f"{scenario} · λ {label(s, 'rule')}" if s else scenario, loc="left")
    return fig


def forget_vector_epochs_figure(table: pd.DataFrame | str | os.PathLike) -> Figure:
    """Every forget-vector setting's validation accuracy per epoch, one panel per scenario."""
    t = _read(table)
    scenarios = list(dict.fromkeys(t.scenario)) if "scenario" in t else [None]
    with style_context():
        fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 3.6), squeeze=False,
                                 layout="constrained")
    for ax, sc in zip(axes[0], scenarios):
        part = t[t.scenario == sc] if sc else t
        target = (part[part.setting == "original"].val_control.mean()
                  if sc and str(sc).startswith("random") and "val_control" in part else None)
        forget_vector_epochs(part, ax=ax, target=target)
        ax.set_title(f"{label(sc, 'scenario')}: forget vector per epoch (validation)" if sc else "", loc="left")
    return fig


def comparison_figure(table: pd.DataFrame | str | os.PathLike, scenario: str = "class_3") -> Figure:
    """Forget vectors beside every weight-space method on one scenario, from ``forget_vectors_comparison.csv``
    (wide: ``scenario, method, UA, RA, TA, MIA, avg_gap``)."""
    t = _read(table)
    part = t[t.scenario == scenario]
    if part.empty:
        raise ValueError(f"no rows of scenario {scenario!r}; the table has {sorted(set(t.scenario))}")
    long = part.melt(id_vars=["scenario", "method"], var_name="metric", value_name="value")
    fig, (ax,) = _subplots(1, 8.0, 3.4)
    results_bars(long, ax=ax)
    ax.set_title(label(scenario, "scenario"), loc="left")
    return fig


#: Figure stem patterns: CSV stem (regex) -> (figure stem template, drawing function).
FIGURES: dict[str, tuple[str, Callable[..., Figure]]] = {
    r"(?P<p>.+)_forget_vector_epochs": ("{p}_forget_vector_epochs", forget_vector_epochs_figure),
    r"(?P<p>.+)_k_sweep": ("{p}_k_sweep", k_sweep_figure),
    r"(?P<p>.+)_paired": ("{p}_paired", paired_figure),
    r"(?P<p>.+)_summary": ("{p}_results_errorbars", errorbars_figure),
    r"(?P<p>.+)_results": ("{p}_results", results_figure),
    r"forget_vectors_comparison": ("forget_vectors_comparison_class_3", comparison_figure),
}


def _match(csv: Path) -> tuple[str, Callable[..., Figure]] | None:
    for pattern, (template, fn) in FIGURES.items():
        m = re.fullmatch(pattern, csv.stem)
        if m:
            return template.format(**m.groupdict()), fn
    return None


def draw(csv: str | os.PathLike) -> tuple[str, Figure]:
    """The figure of one CSV of :data:`FIGURES`: ``(figure stem, Figure)``.

    Raises:
        ValueError: The CSV's name matches no figure.
    """
    csv = Path(csv)
    found = _match(csv)
    if found is None:
        raise ValueError(f"no figure is drawn from {csv.name}; known tables: {list(FIGURES)}")
    stem, fn = found
    return stem, fn(csv)


def redraw(figures_dir: str | os.PathLike, *, only_existing: bool = True) -> list[Path]:
    """Redraw every figure of ``figures_dir`` from the CSV beside it (PNG + PDF).

    Args:
        figures_dir: Folder holding the CSVs (e.g. ``figures``).
        only_existing: Redraw only figures already there (a CSV kept without its figure stays so).

    Returns:
        The PNG paths written.
    """
    out = []
    folder = Path(figures_dir)
    for csv in sorted(folder.glob("*.csv")):
        found = _match(csv)
        if found is None or (only_existing and not (folder / f"{found[0]}.png").exists()):
            continue
        stem, fig = draw(csv)
        out.append(save_figure(fig, folder / stem)[0])
        plt.close(fig)
    return out
