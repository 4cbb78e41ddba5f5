"""The kit's figure style, display labels and :func:`save_figure`.

Every plotting function of :mod:`negkit.plotting` draws on an ``ax`` it is given or
on a new seaborn "whitegrid"/"paper" axes (:func:`_axes`), names methods and metrics
with :data:`METHOD_LABELS` / :data:`METRIC_LABELS`, and is written to disk with
:func:`save_figure` (PNG and PDF, each atomically).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from negkit.io import atomic_write

__all__ = ["set_style", "save_figure", "METHOD_LABELS", "METRIC_LABELS"]

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
