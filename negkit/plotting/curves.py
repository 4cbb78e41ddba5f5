"""λ-sweep figures: forget/control accuracy versus λ and the single-fine-tune sensitivity plot.

Both read the tidy table of :func:`negkit.results.read_results` (columns
:data:`negkit.results.COLUMNS`): the λ curves draw each seed on its own (seeds search
different λ), the sensitivity plots average the chosen results over seeds.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from negkit.plotting.style import METRIC_LABELS, _axes, _label, label, method_color, style_context

__all__ = ["coef_curve", "sensitivity", "sensitivity_grid"]

#: A number inside a name: "4", "0.05", "1e-4", "5e-5" (the forms pool-member names use).
_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def _numeric(name: str) -> tuple:
    # Numbers compare by value, so "ls0.05" < "ls0.1" and "wd5e-5" < "wd1e-4"; the
    # (0, ...) / (1, ...) tags keep numbers and text comparable within one key.
    # Not negkit.analysis's key order: parameter paths need whole integers
    # ("blocks.0.10" after "blocks.0.2"), which reading "0.10" as a decimal would break.
    parts = _NUMBER.split(str(name))
    return tuple((0, float(t), "") if i % 2 else (1, 0.0, t) for i, t in enumerate(parts) if t)


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
    chosen: float | Mapping[int, float] | None = None,
    *,
    forget_split: str | None = None,
    control_split: str | None = None,
    pool_config: str | None = None,
    metric: str = "acc",
    legend: bool | str = True,
) -> Axes:
    """Forget and control accuracy versus the negation coefficient λ.

    The admissibility line is ``threshold × control_reference``: a λ is admissible
    when control accuracy stays above it (e.g. 95% of the zero-shot ImageNet
    accuracy in the task-negation protocol), and the chosen λ is marked.

    Seeds are not averaged: each seed's search evaluates its own λ values and picks its own
    λ, so a mean over seeds would mix curves at different λ. With several seeds each seed is
    one thin line, and ``chosen`` may give each seed's λ (one dotted line per seed; the
    legend lists them and their median).

    Args:
        df: Tidy results; rows of ``method`` with a finite ``coef`` and ``metric`` are drawn.
        method: Method whose sweep is drawn.
        ax: Axes to draw on.
        control_reference: Control accuracy of the unedited model; when None it is read
            from ``zeroshot``/``original`` rows on the control split, if any.
        threshold: Fraction of the reference that stays admissible.
        chosen: λ to mark (e.g. from :func:`negkit.evaluate.select_coef`), or ``{seed: λ}``.
        forget_split: Split of the forget curve (default ``forget``, else ``val_forget``).
        control_split: Split of the control curve (default ``control``, ``val_control``,
            ``retain`` or ``test``, the first present).
        pool_config: Restrict to one pool member (for single-fine-tune Task Arithmetic).
        metric: Metric drawn on both curves.
        legend: True: the full legend; ``"chosen"``: only the chosen-λ entry (for the other
            panels of a figure, whose curves the first panel's legend explains); False: none.
    """
    rows = df[(df["method"] == method) & (df["metric"] == metric) & df["coef"].notna()]
    if pool_config is not None:
        rows = rows[rows["pool_config"] == pool_config]
    if rows.empty:
        swept = sorted(set(df.loc[df["coef"].notna(), "method"]))
        raise ValueError(f"no {metric!r} rows with a coefficient for method {method!r}; swept methods: {swept}")
    setup_cols = [c for c in ("setting", "model", "dataset", "scenario", "pool_config") if c in rows.columns]
    setups = rows[setup_cols].drop_duplicates()
    if len(setups) > 1:
        raise ValueError(f"{len(setups)} different setups (dataset/scenario/model/pool_config) in the rows of "
                         f"{method!r}; filter df to one, e.g. df[df.dataset == 'cars'] or pool_config=...")
    f_split = _pick_split(rows, forget_split, ("forget", "val_forget"), "forget")
    c_split = _pick_split(rows, control_split, ("control", "val_control", "retain", "test"), "control")
    ax = _axes(ax)
    # Forget drawn on top (solid, filled dots), control under it (dashed, open squares): where the
    # curves coincide (e.g. both at 100 % when no λ forgets anything) both stay visible.
    styles = {"forget": dict(marker="o", ms=3.5, lw=1.6, ls="-", color="#0173b2", zorder=4),
              "control": dict(marker="s", ms=6, lw=1.2, ls=(0, (4, 2)), mfc="none", color="#de8f05", zorder=3)}
    seeds = sorted(rows["seed"].unique()) if "seed" in rows.columns else [None]
    many = len(seeds) > 1
    for split, role in ((f_split, "forget"), (c_split, "control")):
        for k, seed in enumerate(seeds):
            part = rows[(rows["split"] == split) & ((rows["seed"] == seed) if seed is not None else True)]
            curve = part.groupby("coef", sort=True)["value"].mean()
            style = {**styles[role], **({"lw": 1.0, "ms": 2.5 if role == "forget" else 4, "alpha": 0.75}
                                        if many else {})}
            what = label(split, "split") + (f" ({len(seeds)} seeds, one line each)" if many else "")
            ax.plot(curve.index, curve.to_numpy(), label=what if k == 0 else None, **style)
    if control_reference is None:
        setup = setups.iloc[0]
        ref = df[df["method"].isin(["zeroshot", "original"]) & (df["metric"] == metric)
                 & (df["split"] == c_split) & (df["dataset"] == setup["dataset"])]
        control_reference = float(ref["value"].mean()) if not ref.empty else None
    if control_reference is not None:
        ax.axhline(threshold * control_reference, ls="--", color="0.4", lw=1,
                   label=f"{threshold:.0%} of control reference")
    lams = ([] if chosen is None else sorted(float(v) for v in chosen.values() if v is not None and np.isfinite(v))
            if isinstance(chosen, Mapping) else [float(chosen)])
    for k, lam in enumerate(lams):
        if len(lams) == 1:
            text = f"chosen λ = {lam:g}"
        else:
            text = f"chosen λ per seed: {' / '.join(f'{v:g}' for v in lams)} (median {float(np.median(lams)):g})"
        ax.axvline(lam, ls=":", color="k", lw=1, label=text if k == 0 else None)
    ax.set_xlabel("λ (negation coefficient)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    # Left, like every title of the kit: a caller's ax.set_title(..., loc="left") replaces it, never overlaps it.
    ax.set_title(_label(method) + (f" · {label(pool_config, 'pool')}" if pool_config else ""), loc="left")
    if legend:
        handles, names = ax.get_legend_handles_labels()
        if legend == "chosen":
            keep = [i for i, n in enumerate(names) if n.startswith("chosen λ")]
            handles, names = [handles[i] for i in keep], [names[i] for i in keep]
        if handles:
            ax.legend(handles, names, fontsize="small")
    return ax


def _say_if_flat(ax: Axes, values: Sequence[float], coefs: Sequence[float]) -> bool:
    """A degenerate panel (one value everywhere) says so, instead of letting matplotlib zoom
    into a ±0.05 band that suggests a spread. Returns whether it was flat."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi - lo > 1e-9 * max(1.0, abs(hi)):
        return False
    pad = max(1.0, 0.1 * abs(hi))
    ax.set_ylim(max(hi - pad, 0.0) if hi >= 0 else hi - pad, hi + pad)  # gaps, accuracies: not below 0
    why = " (every method chose λ = 0)" if len(coefs) and all(c == 0 for c in coefs) else ""
    ax.text(0.5, 0.2, f"all single fine-tunes and merges: {hi:.3g}{why}", transform=ax.transAxes,
            ha="center", va="center", fontsize="small", wrap=True,
            bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.7", alpha=0.9))
    return True


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
    _say_if_flat(ax, values, coefs)
    ax.set_xticks(pos, [str(i) for i in stats.index], rotation=60, ha="right", rotation_mode="anchor",
                  fontsize="small")
    ax.set_xlim(-0.7, len(stats) - 0.3)
    ax.set_xlabel("fine-tuning configuration" if x == "pool_config" else x)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    # Outside on the right: with 27 members the points fill the whole width.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


#: Readable names of the pool's hyperparameters (columns of ``benchmark.pool_frame``).
_HYPER_LABELS = {"epochs": "epochs", "weight_decay": "weight decay", "label_smoothing": "label smoothing",
                 "lr": "learning rate"}


def sensitivity_grid(
    df: pd.DataFrame,
    pool: pd.DataFrame,
    metric: str = "avg_gap",
    *,
    col: str = "epochs",
    x: str = "weight_decay",
    hue: str = "label_smoothing",
    reference_methods: Sequence[str] = ("negmerge", "mean", "ties", "magmax"),
    point_method: str = "task_arithmetic",
    split: str | None = None,
    axes: Sequence[Axes] | None = None,
    legend: bool = True,
) -> np.ndarray:
    """Single fine-tunes by hyperparameter: one panel per value of ``col``, ``x`` on the axis, ``hue`` as colour.

    The readable form of :func:`sensitivity` for a grid pool (27 names on one axis become
    e.g. 3 epoch panels × 3 weight decays × 3 label smoothings). Points are mean ± std over
    seeds, set slightly apart per ``hue`` so coinciding values stay visible; the merges are
    horizontal lines in every panel, each with its own colour and dash pattern (drawn
    widest first, so lines on the same value all show). One legend for the figure. When the
    pool holds one value of ``x`` (e.g. one weight decay), ``hue`` takes the x axis and the
    axis label names the fixed value, so no axis shows a single tick.

    Args:
        df: Tidy results of one setup at the chosen coefficients.
        pool: One row per pool member with column ``pool_config`` and the hyperparameter
            columns, e.g. ``negkit.benchmark.pool_frame(cfg)``.
        metric: Metric on the y axis.
        col, x, hue: Hyperparameter columns of ``pool`` for the panels, the x axis and the colours.
        reference_methods: Merges drawn as horizontal lines (absent ones are skipped).
        point_method: Method of the per-fine-tune points.
        split: Keep only this split (when ``metric`` is measured on several).
        axes: One Axes per value of ``col`` (a new figure when None).
        legend: Draw the figure's legend (right of the last panel).

    Returns:
        The Axes, one per value of ``col``.

    Raises:
        ValueError: If a column is missing from ``pool``, or ``df`` has no points.
    """
    missing = [c for c in ("pool_config", col, x, hue) if c not in pool.columns]
    if missing:
        raise ValueError(f"pool lacks column(s) {missing}; pass benchmark.pool_frame(cfg) "
                         f"(columns {list(pool.columns)})")
    rows = df[df["metric"] == metric]
    if split is not None:
        rows = rows[rows["split"] == split]
    elif rows["split"].nunique() > 1:
        raise ValueError(f"{metric!r} is measured on several splits {sorted(set(rows['split']))}; pass split=...")
    points = rows[(rows["method"] == point_method) & (rows["pool_config"] != "")]
    if points.empty:
        raise ValueError(f"no {point_method!r} rows with metric {metric!r} and a pool_config")
    for name, part in points.groupby("pool_config"):
        _one_coef(part, f"{point_method} / {name}")
    stats = _mean_by(points, "pool_config").join(pool.set_index("pool_config")[[col, x, hue]], how="inner")
    # An axis of one value says nothing: the colour's hyperparameter takes the x axis instead, and the
    # one-value hyperparameter is named once, in the axis label.
    fixed = ""
    if stats[x].nunique() == 1:
        fixed = f" ({_HYPER_LABELS.get(x, x)} {stats[x].iloc[0]:g} throughout)"
        if stats[hue].nunique() > 1:
            x, hue = hue, x
    cols, xs, hues = (sorted(stats[c].unique()) for c in (col, x, hue))
    if axes is None:
        with style_context():
            fig = plt.figure(figsize=(1.2 + 2.6 * len(cols), 3.0), layout="constrained")
            axes = fig.subplots(1, len(cols), sharey=True, squeeze=False)[0]
    axes = np.asarray(axes, dtype=object).ravel()
    if len(axes) < len(cols):
        raise ValueError(f"got {len(axes)} axes for {len(cols)} values of {col!r}")
    palette = sns.color_palette("crest", len(hues))
    offsets = (np.arange(len(hues)) - (len(hues) - 1) / 2) * (0.5 / max(len(hues), 1))
    refs = [(m, rows[(rows["method"] == m) & (rows["pool_config"] == "")]) for m in reference_methods]
    refs = [(m, r) for m, r in refs if not r.empty]
    dashes = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 3))]
    for ax, c in zip(axes, cols):
        part = stats[stats[col] == c]
        for j, (h, color) in enumerate(zip(hues, palette)):
            sub = part[part[hue] == h].set_index(x).reindex(xs)
            pos = np.arange(len(xs)) + offsets[j]
            ax.errorbar(pos, sub["mean"], yerr=sub["std"] if (sub["std"] > 0).any() else None, fmt="o-", ms=4.5,
                        lw=0.8, capsize=2, color=color, zorder=3,
                        label=f"single fine-tune, {_HYPER_LABELS.get(hue, hue)} {h:g}" if len(hues) > 1
                        else "single fine-tune")
        for i, (m, ref) in enumerate(refs):
            _one_coef(ref, m)
            ax.axhline(ref["value"].mean(), color=method_color(m), lw=2.6 - 0.45 * i, ls=dashes[i % len(dashes)],
                       zorder=2 + 0.01 * i, label=label(m))
        ax.set_xticks(np.arange(len(xs)), [f"{v:g}" for v in xs])
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel(_HYPER_LABELS.get(x, x) + fixed)
        ax.set_title(f"{_HYPER_LABELS.get(col, col)} = {c:g}", fontsize="medium", loc="left")
    values = [*stats["mean"], *(float(r["value"].mean()) for _, r in refs)]
    coefs = [*points["coef"], *(c for _, r in refs for c in r["coef"])]
    if len(np.unique(np.round(values, 9))) == 1:
        _say_if_flat(axes[0], values, coefs)  # shared y: one note, in the first panel
    axes[0].set_ylabel(label(metric, "metric"))
    for ax in axes[len(cols):]:
        ax.set_visible(False)
    if legend:
        handles, names = axes[len(cols) - 1].get_legend_handles_labels()
        axes[len(cols) - 1].legend(handles, names, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                                   frameon=False)
    return axes[:len(cols)]
