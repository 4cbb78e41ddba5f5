"""SIGN-CONSENSUS view: how much of the pool agrees, per layer, as K grows.

NegMerge keeps element j of the merged vector iff sign(τ_1[j]) = … = sign(τ_K[j]) ≠ 0
(Kim et al., ICML 2025, §3), so the fraction it keeps is the consensus rate. For one
subset it can only shrink as members are added; the mean over random draws shown on the
curve usually falls with K but need not at every step. The view draws a random subset of K pool members
(a seeded draw; "draw" picks another subset of the same size), shows the per-layer
consensus rate and the fraction of elements each selected merge rule keeps, and marks K
on the consensus-vs-K curve of the whole pool. The numbers come from
:mod:`negkit.analysis`; this module only holds the selection and the cache.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import PercentFormatter
from torch import Tensor

from negkit.plotting.consensus import network_order
from negkit.plotting.style import label, method_color

__all__ = ["ConsensusState"]


class ConsensusState:
    """Plain-Python model of the sign-consensus view.

    Args:
        task_vectors: The pool, ``{name: τ}`` (TaskVectors, dicts of tensors or safetensors paths).
        methods: Merge rules (``negkit.merge`` names) that can be toggled on.
        selected: Rules shown at start (default: all of ``methods``).
        method_options: Keyword options per rule, e.g. ``{"ties": {"density": 0.2}}``.
        groups: Layer grouping passed to :func:`negkit.analysis.sign_consensus`.
        draws: Random subsets per K on the consensus-vs-K curve.
        seed: Seed of the subset draws.
    """

    def __init__(self, task_vectors: Mapping[str, Mapping[str, Tensor] | str], *,
                 methods: Sequence[str] = ("negmerge", "ties", "magmax"), selected: Sequence[str] | None = None,
                 method_options: Mapping[str, Mapping[str, Any]] | None = None, groups: Any = None,
                 draws: int = 3, seed: int = 0) -> None:
        if not task_vectors:
            raise ValueError("the sign-consensus view needs at least one task vector; pass the pool {name: τ}")
        self.names = list(task_vectors)
        self.vectors = dict(task_vectors)
        self.methods = tuple(methods)
        self.method_options = {k: dict(v) for k, v in (method_options or {}).items()}
        self.groups, self.draws, self.seed = groups, draws, seed
        self.k = len(self.names)
        self.draw = 0
        self.selected: tuple[str, ...] = ()
        self.set_methods(self.methods if selected is None else selected)
        self._tables: dict[tuple, pd.DataFrame] = {}
        self._curve: pd.DataFrame | None = None

    # --- selection ---------------------------------------------------------------------------
    def set_k(self, k: int) -> None:
        """Number of pool members merged (1..K)."""
        if not 1 <= int(k) <= len(self.names):
            raise ValueError(f"K={k} is outside 1..{len(self.names)} (the pool has {len(self.names)} members)")
        self.k = int(k)

    def set_draw(self, draw: int) -> None:
        """Which random subset of size K (0, 1, 2, ...)."""
        self.draw = int(draw)

    def set_methods(self, methods: Sequence[str]) -> None:
        """Merge rules whose kept fraction is shown (a subset of ``methods``)."""
        unknown = [m for m in methods if m not in self.methods]
        if unknown:
            raise ValueError(f"methods {unknown} are not offered; choose among {list(self.methods)}")
        self.selected = tuple(m for m in self.methods if m in methods)  # keep a stable order

    def subset(self) -> list[str]:
        """Names of the pool members merged at the current (K, draw); all of them when K = pool size."""
        if self.k == len(self.names):
            return list(self.names)
        rng = np.random.default_rng([self.seed, self.k, self.draw])
        idx = sorted(rng.choice(len(self.names), size=self.k, replace=False).tolist())
        return [self.names[i] for i in idx]

    # --- what the view shows ------------------------------------------------------------------
    def layer_table(self) -> pd.DataFrame:
        """Per layer group: consensus rate and the fraction each selected rule keeps (cached)."""
        from negkit import analysis

        members = tuple(self.subset())
        key = (members, self.selected)
        if key not in self._tables:
            per_tensor = analysis.sign_consensus([self.vectors[n] for n in members], groups=self.groups,
                                                 methods=self.selected, names=list(members),
                                                 method_options={m: self.method_options.get(m, {})
                                                                 for m in self.selected})
            self._tables[key] = analysis.by_layer(per_tensor)
        return self._tables[key]

    def numbers(self) -> list[tuple[str, Any]]:
        """Whole-vector (numel-weighted) consensus and kept fractions, in %."""
        t = self.layer_table()
        w = t["numel"].to_numpy(dtype=float)
        rows: list[tuple[str, Any]] = [("K", str(self.k)), ("members", self.members_text()),
                                       ("sign consensus (%)", 100 * float(np.average(t["frac_consistent"], weights=w)))]
        for m in self.selected:
            rows.append((f"{label(m, 'method')} keeps (%)", 100 * float(np.average(t[f"frac_kept_{m}"], weights=w))))
        return rows

    def members_text(self, show: int = 4) -> str:
        """The merged members, short enough for a table cell: all names up to ``show``, else a count."""
        members = self.subset()
        if len(members) == len(self.names):
            return f"all {len(members)}"
        if len(members) <= show:
            return ", ".join(members)
        return f"{', '.join(members[:show - 1])}, … (+{len(members) - show + 1} more; draw {self.draw})"

    def consensus_curve(self) -> pd.DataFrame:
        """Consensus rate of random sub-pools for every K (computed once)."""
        from negkit import analysis

        if self._curve is None:
            self._curve = analysis.consensus_vs_k([self.vectors[n] for n in self.names], draws=self.draws,
                                                  seed=self.seed, names=self.names)
        return self._curve

    def figure(self) -> plt.Figure:
        """Left: consensus vs K with K marked. Right: per-layer consensus and kept fractions."""
        from negkit import plotting

        t = self.layer_table()
        fig, (ax_k, ax_l) = plt.subplots(1, 2, figsize=(10, max(3.2, 0.28 * len(t) + 1.2)),
                                         gridspec_kw={"width_ratios": [1, 1.3]})
        plotting.consensus_curve(self.consensus_curve(), ax=ax_k)
        ax_k.axvline(self.k, color="#d62728", ls="-", lw=3, alpha=0.45, zorder=1)
        ax_k.yaxis.set_major_formatter(PercentFormatter(xmax=100.0, decimals=0))  # the curve is in %
        ax_k.set_ylabel("sign-consistent elements\n(mean over random draws)")
        cols = {"frac_consistent": "sign consensus",
                **{f"frac_kept_{m}": f"{label(m, 'method')} keeps" for m in self.selected}}
        # Groups the pool never moves (e.g. the Normalize layer's constant buffers, τ = 0) have no bars.
        still = t[t["mean_abs"] == 0]["group"].tolist()
        bars = t[t["mean_abs"] > 0].set_index("group")[list(cols)[::-1]].rename(columns=cols).iloc[::-1]
        bars = 100 * bars.loc[network_order(list(bars.index))[::-1]]  # input side on top
        bars.plot.barh(ax=ax_l, width=0.8, color=["0.35", *[method_color(m) for m in self.selected]][::-1])
        ax_l.set_xlabel("elements (%)")
        ax_l.set_ylabel("")
        ax_l.set_xlim(0, 100)
        ax_l.set_title(f"per layer, K = {self.k}" + (f" (τ = 0, not shown: {', '.join(still)})" if still else ""),
                       fontsize=9)
        handles, labels = ax_l.get_legend_handles_labels()
        ax_l.legend(handles[::-1], labels[::-1], fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                    frameon=False)
        fig.tight_layout()
        return fig
