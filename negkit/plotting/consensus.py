"""Sign-consensus figures: consensus per layer group and K, pairwise agreement, consensus vs K.

NegMerge (Kim, Han & Choe, ICML 2025, §3) keeps element ``j`` of the merged task
vector only where ``sign(τ_1[j]) = … = sign(τ_K[j]) ≠ 0``. The figures here show how
often that holds: per layer group and pool size K (heatmap), between pairs of
fine-tunes (K × K heatmap) and as K grows (curve with a band over random draws).
They read the DataFrames of :mod:`negkit.analysis`, in its wide or long form.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from negkit.plotting.style import _axes, label

__all__ = ["consensus_heatmap", "agreement_heatmap", "consensus_curve", "network_order"]


def _wide(df: pd.DataFrame, index: str, columns: str, values: str) -> pd.DataFrame:
    if {index, columns, values} <= set(df.columns):  # long form -> wide, rows in order of appearance
        order = list(dict.fromkeys(df[index]))
        return df.pivot_table(index=index, columns=columns, values=values, aggfunc="mean").loc[order]
    return df


_INPUT_SIDE = ("stem", "conv1", "patch_embed", "embed", "token_embedding", "class_embedding", "positional_embedding",
               "ln_pre")
_OUTPUT_SIDE = ("ln_post", "ln_final", "proj", "text_projection", "fc", "head", "classifier", "linear")
_NUMBER = re.compile(r"(\d+)")


def network_order(groups: Sequence[str]) -> list[str]:
    """Layer groups from input to output: stems and embeddings, numbered blocks in numeric
    order (``layers.2`` before ``layers.10``), then heads (``fc``, ``proj``, ...); names the
    rule does not know keep their given order in the middle."""
    def key(item: tuple[int, str]) -> tuple:
        i, g = item
        if g in _INPUT_SIDE:
            return (0, _INPUT_SIDE.index(g), (), i)
        if g in _OUTPUT_SIDE:
            return (2, _OUTPUT_SIDE.index(g), (), i)
        numbered = [(int(t) if t.isdigit() else t) for t in _NUMBER.split(g) if t] if _NUMBER.search(g) else None
        return (1, 0 if numbered else 1, tuple((isinstance(t, str), t) for t in numbered or ()), i)
    return [g for _, g in sorted(enumerate(groups), key=key)]


def consensus_heatmap(table: pd.DataFrame, ax: Axes | None = None, *, annot: bool | None = None,
                      draws: int | None = None, **kw: Any) -> Axes:
    """Heatmap of the mean consensus rate per layer group (rows, input to output) and pool size K (columns).

    Rows follow :func:`network_order`. Values are in % on a fixed 0–100 colour scale, so
    figures of different runs compare and a few points of difference do not look like a
    contrast (the numbers in the cells give the detail); the colour bar says that a cell is
    a mean over random draws of K members.

    Args:
        table: :func:`negkit.analysis.consensus_by_layer_vs_k` (wide) or the long
            :func:`negkit.analysis.consensus_vs_k` table with ``by_group=True`` (fractions).
        ax: Axes to draw on.
        annot: Write the values in the cells (default: when there are at most 150).
        draws: Number of random draws per K, for the colour bar's label.
        **kw: Forwarded to :func:`seaborn.heatmap` (e.g. ``cmap``).
    """
    if "group" in table.columns:
        table = table[table["group"] != "all"]
    table = _wide(table, "group", "k", "frac_consistent")
    table = 100.0 * table.loc[network_order(list(table.index))]
    ax = _axes(ax, (1.2 + 0.55 * table.shape[1], 1.0 + 0.28 * table.shape[0]))
    annot = table.size <= 150 if annot is None else annot
    over = f"mean over {draws} random draws of K members" if draws else "mean over random draws of K members"
    opts = dict(vmin=0.0, vmax=100.0, cmap="viridis", annot=annot, fmt=".0f",
                cbar_kws={"label": f"sign-consistent (%)\n({over})"})
    sns.heatmap(table, ax=ax, **{**opts, **kw})
    ax.set_xlabel("K (fine-tuned models merged)")
    ax.set_ylabel("layer group (input → output)")
    ax.tick_params(axis="y", rotation=0)
    return ax


def agreement_heatmap(pairwise: pd.DataFrame, ax: Axes | None = None, *, annot: bool | None = None,
                      title: str | None = "pairwise sign agreement of the pool's task vectors", **kw: Any) -> Axes:
    """K × K heatmap of pairwise sign agreement (:func:`negkit.analysis.pairwise_agreement`, wide or long).

    In % on a fixed 0–100 colour scale (the cells carry the numbers), rows and columns named
    by the fine-tunes' hyperparameters (``4 ep · wd 1e-4 · ls 0.1``).

    Args:
        pairwise: Fractions of elements whose non-zero signs agree, per pair of pool members.
        ax: Axes to draw on.
        annot: Write the values in the cells (default: up to 12 members).
        title: Title (left); None for none.
        **kw: Forwarded to :func:`seaborn.heatmap`.
    """
    table = 100.0 * _wide(pairwise, "a", "b", "agreement")
    table.index = [label(n, "pool") for n in table.index]
    table.columns = [label(n, "pool") for n in table.columns]
    n = table.shape[0]
    ax = _axes(ax, (2.5 + 0.6 * n, 1.8 + 0.5 * n))
    annot = n <= 12 if annot is None else annot
    opts = dict(vmin=0.0, vmax=100.0, cmap="mako", annot=annot, fmt=".0f", square=True,
                cbar_kws={"label": "elements with the same non-zero sign (%)"})
    sns.heatmap(table, ax=ax, **{**opts, **kw})
    ax.set_xlabel("")
    ax.set_ylabel("")
    if title:
        ax.set_title(title, loc="left")
    return ax


def consensus_curve(df: pd.DataFrame, ax: Axes | None = None, *, groups: Sequence[str] | None = None,
                    spread: str = "std", **kw: Any) -> Axes:
    """Consensus rate (%) versus pool size K: mean over draws with a spread band.

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
    bottom = 100.0
    for group in groups:
        part = df[df["group"] == group]
        if part.empty:
            raise ValueError(f"no rows for group {group!r}; groups are {sorted(set(df['group']))}")
        stats = 100.0 * part.groupby("k")["frac_consistent"].agg(["mean", "std", "min", "max"]).fillna(0.0)
        lo, hi = ((stats["mean"] - stats["std"], stats["mean"] + stats["std"]) if spread == "std"
                  else (stats["min"], stats["max"]))
        (line,) = ax.plot(stats.index, stats["mean"], marker="o", label=group, **kw)
        ax.fill_between(stats.index, lo.clip(0, 100), hi.clip(0, 100), color=line.get_color(), alpha=0.2, lw=0)
        bottom = min(bottom, float(lo.clip(0, 100).min()))
    ax.set_xlabel("K (fine-tuned models merged)")
    ax.set_ylabel(f"sign-consistent (%)\n(mean {'± std' if spread == 'std' else 'and range'} over draws)")
    # The y range fits the data (with a margin), so small declines with K stay visible.
    pad = max(2.0, 0.08 * (100.0 - bottom))
    ax.set_ylim(max(0.0, bottom - pad), 100.0 + pad / 4)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    if len(groups) > 1:
        ax.legend(title="layer group", fontsize="small")
    return ax
