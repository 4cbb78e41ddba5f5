"""The kit's figure style, palette, display names and :func:`save_figure`.

Every plotting function of :mod:`negkit.plotting` draws on an ``ax`` it is given or
on a new axes in the kit's style (:func:`_axes`), names things with :func:`label`
(methods, metrics, pool members, scenarios, splits — one place for every readable
name), colours methods with :func:`method_color` and metrics with :data:`METRIC_COLORS`,
and is written to disk with :func:`save_figure` (PNG and PDF, each atomically).
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from negkit.io import atomic_write

__all__ = ["set_style", "save_figure", "label", "method_color", "METHOD_LABELS", "METRIC_LABELS", "METRIC_COLORS",
           "SCENARIO_LABELS", "SPLIT_LABELS", "RULE_LABELS", "MIN_FONT"]

#: Smallest text size (points) any figure of the kit uses, so figures read at paper size.
MIN_FONT = 8.0

#: Display names for legends (registry names are kept in the data).
METHOD_LABELS = {
    "original": "Original", "retrain": "Retrain", "zeroshot": "Zero-shot", "task_arithmetic": "Task Arithmetic",
    "task_arithmetic_val": "Task Arithmetic (val.-selected)", "mean": "Uniform merge", "sum": "Sum", "ties": "TIES",
    "magmax": "MagMax", "negmerge": "NegMerge", "ft": "FT", "ga": "GA", "rl": "RL", "l1_sparse": "ℓ1-sparse",
    "salun": "SalUn", "forget_vector": "Forget vector", "forget_vector_arithmetic": "Forget-vector arithmetic",
    "dare": "DARE", "breadcrumbs": "Breadcrumbs", "consensus": "Consensus mask", "tsv": "TSV-M",
    "iu": "IU", "be": "BE", "bs": "BS", "neggrad_plus": "NegGrad+", "scrub": "SCRUB", "ssd": "SSD",
}
#: The λ rules as readers know them (the records' ``setting``; docs: rule (a) and rule (b)).
RULE_LABELS = {"standard": "rule (a) min_forget", "standard_match": "rule (b) match",
               "min_forget": "rule (a) min_forget", "match": "rule (b) match"}
#: Axis labels of the metrics (accuracies in %; ↓ marks lower-is-better).
METRIC_LABELS = {"UA": "UA (%)", "RA": "RA (%)", "TA": "TA (%)", "MIA": "MIA-efficacy (%)",
                 "avg_gap": "Avg. Gap (%) ↓", "acc": "accuracy (%)"}
#: Short metric names for legends (the axis already says %).
_METRIC_SHORT = {"UA": "UA", "RA": "RA", "TA": "TA", "MIA": "MIA-efficacy", "avg_gap": "Avg. Gap ↓",
                 "acc": "accuracy"}
#: Split names as readers know them.
SPLIT_LABELS = {"val_forget": "forget (val.)", "val_control": "control (val.)", "test_forget": "forget (test)",
                "test_control": "control (test)", "forget": "forget", "control": "control", "retain": "retain",
                "test": "test", "all": "all"}
#: Fixed scenario names; ``class_<c>`` and ``random_<p>`` are spelled out by :func:`label`.
SCENARIO_LABELS: dict[str, str] = {}

# One colour per metric, told apart in colour and in lightness (RA and MIA were two browns).
METRIC_COLORS = {"UA": "#0173b2", "RA": "#de8f05", "TA": "#029e73", "MIA": "#cc78bc", "avg_gap": "#555555",
                 "acc": "#0173b2"}
# One colour per method in every figure: references grey/black, merges the strong colours,
# baselines muted ones.
_METHOD_COLORS = {
    "original": "#9e9e9e", "retrain": "#262626", "zeroshot": "#9e9e9e", "task_arithmetic": "#56b4e9",
    "task_arithmetic_val": "#56b4e9", "mean": "#e69f00", "sum": "#f0e442", "ties": "#009e73", "magmax": "#cc79a7",
    "negmerge": "#d55e00", "ft": "#8c8c8c", "ga": "#a6761d", "rl": "#7570b3", "l1_sparse": "#66a61e",
    "salun": "#e7298a", "forget_vector": "#0072b2", "forget_vector_arithmetic": "#1b9e77",
    "dare": "#b15928", "breadcrumbs": "#fb9a99", "consensus": "#6a3d9a", "tsv": "#33a02c",
}
_STYLE = {"axes.titlesize": "medium", "axes.titlelocation": "left", "legend.frameon": False,
          "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100}

_POOL_MEMBER = re.compile(r"^e(?P<e>[\d.]+)_wd(?P<wd>[\d.e+-]+)_ls(?P<ls>[\d.]+)$")


def label(name: Any, kind: str | None = None) -> str:
    """The readable name of a method, metric, split, scenario or pool member.

    ``negmerge`` → NegMerge, ``avg_gap`` → Avg. Gap (%) ↓, ``val_forget`` → forget (val.),
    ``class_3`` → class 3 forgotten, ``class_3-8`` → classes 3, 8 forgotten, ``random_10`` →
    random 10 % forgotten, ``e4_wd1e-4_ls0.05`` → 4 ep · wd 1e-4 · ls 0.05. Unknown names come
    back unchanged.

    Args:
        name: The identifier as stored in the results.
        kind: ``"method"``, ``"metric"``, ``"metric_short"``, ``"split"``, ``"scenario"``, ``"rule"``
            or ``"pool"`` to look in one table only (default: the first that knows the name).
    """
    text = str(name)
    tables = {"method": METHOD_LABELS, "metric": METRIC_LABELS, "metric_short": _METRIC_SHORT,
              "split": SPLIT_LABELS, "scenario": SCENARIO_LABELS, "rule": RULE_LABELS}
    for k in ([kind] if kind else ["method", "metric", "split", "scenario"]):
        if k in tables and text in tables[k]:
            return tables[k][text]
    if kind in (None, "scenario"):
        m = re.fullmatch(r"class_([\d-]+)", text)
        if m:
            classes = m.group(1).split("-")
            return f"class{'es' if len(classes) > 1 else ''} {', '.join(classes)} forgotten"
        m = re.fullmatch(r"random_(\d+(?:\.\d+)?)", text)
        if m:
            return f"random {m.group(1)} % forgotten"
    if kind in (None, "pool"):
        m = _POOL_MEMBER.match(text)
        if m:
            return f"{m['e']} ep · wd {m['wd']} · ls {m['ls']}"
    return text


def method_color(method: str) -> Any:
    """The method's colour, the same in every figure (unregistered names get a stable colour)."""
    if method in _METHOD_COLORS:
        return _METHOD_COLORS[method]
    palette = sns.color_palette("tab20", 20)
    return palette[sum(map(ord, method)) % 20]


def set_style() -> None:
    """Apply the kit's style globally (for notebooks; the plotting functions apply it themselves)."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", rc=_STYLE)


def style_context() -> contextlib.AbstractContextManager:
    """Context manager applying the kit's style to the figures created inside it."""
    return sns.axes_style("whitegrid", rc=_STYLE)


def _axes(ax: Axes | None, figsize: tuple[float, float] = (4.5, 3.2)) -> Axes:
    if ax is not None:
        return ax
    with style_context(), sns.plotting_context("paper"), plt.rc_context(_STYLE):
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _label(method: str) -> str:
    return label(method, "method")


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
        with atomic_write(path) as tmp:
            # No creation date in PDFs: a re-run that draws the same figure writes the same bytes.
            metadata = {"CreationDate": None} if fmt == "pdf" else None
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    return paths
