"""Sign-consensus figures: consensus per layer group and K, pairwise agreement, consensus vs K.

NegMerge (Kim, Han & Choe, ICML 2025, §3) keeps element ``j`` of the merged task
vector only where ``sign(τ_1[j]) = … = sign(τ_K[j]) ≠ 0``. The figures here show how
often that holds: per layer group and pool size K (heatmap), between pairs of
fine-tunes (K × K heatmap) and as K grows (curve with a band over random draws).
They read the DataFrames of :mod:`negkit.analysis`, in its wide or long form.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from negkit.plotting.style import _axes

__all__ = ["consensus_heatmap", "agreement_heatmap", "consensus_curve"]


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
