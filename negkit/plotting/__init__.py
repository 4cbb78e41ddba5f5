"""Figures for sign consensus, λ sweeps, results and forget vectors.

Every plotting function takes its data first, draws on ``ax`` (a new seaborn
"whitegrid"/"paper" axes when None) and returns the Axes, so notebooks compose
panels freely and tests can inspect the artists. Result plots read the tidy
table of :func:`negkit.results.read_results` (columns :data:`negkit.results.COLUMNS`);
sign-consensus plots read the DataFrames of :mod:`negkit.analysis`.
:func:`save_figure` writes PNG and PDF atomically.

The functions live in one module per kind of figure and are re-exported here, so
``negkit.plotting.X`` is the way to call them:

- :mod:`~negkit.plotting.style`: :func:`set_style`, :func:`save_figure`, :func:`label` (every
  readable name), :func:`method_color` and :data:`METRIC_COLORS` (one palette);
- :mod:`~negkit.plotting.consensus`: :func:`consensus_heatmap`, :func:`agreement_heatmap`,
  :func:`consensus_curve`;
- :mod:`~negkit.plotting.curves`: :func:`coef_curve`, :func:`sensitivity`, :func:`sensitivity_grid`;
- :mod:`~negkit.plotting.results`: :func:`results_bars`, :func:`results_table`;
- :mod:`~negkit.plotting.images`: :func:`per_class_bars`, :func:`image_grid`;
- :mod:`~negkit.plotting.sweeps`: :func:`k_sweep` (pool size), :func:`forget_vector_epochs`;
- :mod:`~negkit.plotting.figures`: each committed figure from the CSV beside it (:func:`draw`,
  :func:`redraw`, :func:`results_figure`, :func:`errorbars_figure`, :func:`paired_figure`, …).
"""
from negkit.plotting.consensus import agreement_heatmap, consensus_curve, consensus_heatmap, network_order
from negkit.plotting.curves import coef_curve, sensitivity, sensitivity_grid
from negkit.plotting.figures import (FIGURES, comparison_figure, draw, errorbars_figure, forget_vector_epochs_figure,
                                     k_sweep_figure, paired_figure, redraw, results_figure)
from negkit.plotting.images import image_grid, per_class_bars
from negkit.plotting.results import DOMINANCE, results_bars, results_table
from negkit.plotting.sweeps import forget_vector_epochs, k_sweep
from negkit.plotting.style import (METHOD_LABELS, METRIC_COLORS, METRIC_LABELS, MIN_FONT, RULE_LABELS, SCENARIO_LABELS,
                                   SPLIT_LABELS, label, method_color, save_figure, set_style)

__all__ = [
    "set_style", "save_figure", "consensus_heatmap", "agreement_heatmap", "consensus_curve", "coef_curve",
    "sensitivity", "sensitivity_grid", "results_bars", "results_table", "per_class_bars", "image_grid", "METHOD_LABELS",
    "METRIC_LABELS", "METRIC_COLORS", "network_order", "k_sweep", "forget_vector_epochs",
    "SCENARIO_LABELS", "SPLIT_LABELS", "RULE_LABELS", "MIN_FONT", "DOMINANCE", "label", "method_color",
    "results_figure", "errorbars_figure", "paired_figure", "k_sweep_figure", "forget_vector_epochs_figure",
    "comparison_figure", "draw", "redraw", "FIGURES",
]
