"""Figures of the protocol's sweeps: pool size K, and a forget vector's validation trajectory.

:func:`k_sweep` reads the tidy table of :func:`negkit.benchmark.ksweep.k_sweep` (or the
committed ``<dataset>_k_sweep.csv``); :func:`forget_vector_epochs` reads the per-(setting,
epoch) tables the benchmark saves as ``<scenario>/forget_vectors/selection.csv``, stacked
with a ``seed`` column. Both draw means over seeds with their std as a band or bar; values
are in % like every result of the kit.
"""
from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from negkit.plotting.style import _axes, label, method_color

__all__ = ["k_sweep", "forget_vector_epochs"]


def k_sweep(table: pd.DataFrame, metric: str = "avg_gap", *, setting: str | None = None,
            ax: Axes | None = None) -> Axes:
    """``metric`` against pool size K per merge method: mean over seeds and sub-pools, ± std over seeds.

    Each seed's value at K is first averaged over its random sub-pools, so the error bar
    is the spread over seeds (the unit a result is repeated over).

    Args:
        table: Rows ``k, subset, seed, method, metric, value`` (and ``setting``).
        metric: The metric plotted (``"avg_gap"``, ``"UA"``...).
        setting: Keep one λ rule's rows (``"standard"`` or ``"standard_match"``); None: all.
        ax: Axes to draw on.
    """
    ax = _axes(ax)
    d = table[table.metric == metric]
    if setting is not None and "setting" in d:
        d = d[d.setting == setting]
    if d.empty:
        raise ValueError(f"no rows of metric {metric!r}" + (f" and setting {setting!r}" if setting else ""))
    per_seed = d.groupby(["method", "k", "seed"], as_index=False).value.mean()
    for method, g in per_seed.groupby("method", sort=False):
        s = g.groupby("k").value.agg(["mean", "std", "count"]).reset_index()
        ax.errorbar(s.k, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, color=method_color(method),
                    label=f"{label(method)} (n={int(s['count'].max())} seeds)")
    ax.set_xticks(sorted(per_seed.k.unique()))
    ax.set_xlabel("pool size K (members merged)")
    ax.set_ylabel(label(metric, "metric"))
    ax.legend(frameon=False, fontsize=8)
    return ax


def forget_vector_epochs(table: pd.DataFrame, *, ax: Axes | None = None, target: float | None = None) -> Axes:
    """Forget and retain accuracy of every forget-vector setting after each epoch, mean ± std over seeds.

    Args:
        table: Stacked ``selection.csv`` rows: ``setting, epoch, val_forget, retain_probe`` (%) and ``seed``;
            the ``"original"`` rows (epoch 0, no δ) give the starting point of every setting.
        ax: Axes to draw on.
        target: A forget accuracy to mark (e.g. the original's validation accuracy, the match rule's target).
    """
    ax = _axes(ax, figsize=(6, 3.4))
    start = table[table.setting == "original"]
    for i, (setting, g) in enumerate(table[table.setting != "original"].groupby("setting", sort=False)):
        g = pd.concat([start.assign(setting=setting), g])
        s = g.groupby("epoch")[["val_forget", "retain_probe"]].agg(["mean", "std"])
        color = f"C{i}"
        ax.plot(s.index, s[("val_forget", "mean")], "-o", ms=3, color=color, label=f"{setting}: forget set")
        ax.fill_between(s.index, s[("val_forget", "mean")] - s[("val_forget", "std")].fillna(0),
                        (s[("val_forget", "mean")] + s[("val_forget", "std")].fillna(0)).clip(upper=100),
                        color=color, alpha=0.15, lw=0)
        ax.plot(s.index, s[("retain_probe", "mean")], "--", color=color, label=f"{setting}: retain probe")
    if target is not None:
        ax.axhline(target, color="0.3", lw=1, ls=":", label=f"match target {target:.1f} %")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch of δ")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(top=100.5)
    ax.legend(frameon=False, fontsize=8, ncol=2)
    return ax
