"""Forget-vector figures: per-class accuracy bars and a grid of perturbations δ (or images)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from negkit.plotting.style import MIN_FONT, _axes

__all__ = ["per_class_bars", "image_grid"]


def per_class_bars(
    df: pd.DataFrame | pd.Series,
    ax: Axes | None = None,
    *,
    columns: Sequence[str] | None = None,
    forgotten: Sequence[Any] = (),
    classnames: Sequence[str] | None = None,
    ylabel: str = "accuracy (%)",
) -> Axes:
    """Per-class accuracy bars, one bar per input variant (e.g. without δ, with δ).

    Args:
        df: One row per class (the index), one column per variant, values in %: e.g.
            ``pd.DataFrame({"original": per_class_accuracy(model, test),
            "with δ": per_class_accuracy(model, test, input_transform=fv)})``.
            A Series (one variant) is drawn as one bar per class.
        ax: Axes to draw on.
        columns: Variants drawn, in this order (default: all columns).
        forgotten: Classes (index values) being forgotten: shaded, their tick labels bold.
        classnames: Tick labels, indexed by position in ``df`` (default: the index values).
        ylabel: Y-axis label.

    Raises:
        ValueError: If a column of ``columns`` or a class of ``forgotten`` is not in ``df``.
    """
    table = df.to_frame() if isinstance(df, pd.Series) else df
    columns = list(table.columns) if columns is None else list(columns)
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise ValueError(f"columns {unknown} not in df; its columns are {list(table.columns)}")
    absent = [c for c in forgotten if c not in table.index]
    if absent:
        raise ValueError(f"forgotten classes {absent} are not in df's index {list(table.index)}")
    if classnames is not None and len(classnames) != len(table):
        raise ValueError(f"got {len(classnames)} classnames for {len(table)} classes")
    n, k = len(table), len(columns)
    ax = _axes(ax, (max(4.5, 0.22 * n * max(k, 2) + 2.5), 2.8))
    pos = np.arange(n)
    width = 0.8 / max(k, 1)
    palette = sns.color_palette("colorblind", k)
    for i, (col, color) in enumerate(zip(columns, palette)):
        xs, values = pos + (i - (k - 1) / 2) * width, table[col].to_numpy(dtype=float)
        ax.bar(xs, values, width, color=color, label=str(col), zorder=2)
        for x in xs[values == 0]:  # an accuracy of exactly 0 (a forgotten class) stays visible as a stub
            ax.plot([x - width / 2, x + width / 2], [0, 0], color=color, lw=3, solid_capstyle="butt", zorder=3,
                    clip_on=True)  # clipped: half of it above the axis, never a stub below 0
    shown = [str(c) for c in (classnames if classnames is not None else table.index)]
    ax.set_xticks(pos, shown)
    marked = set(forgotten)
    for j, c in enumerate(table.index):
        if c in marked:
            ax.axvspan(j - 0.5, j + 0.5, color="0.9", zorder=0, lw=0)
            ax.get_xticklabels()[j].set_fontweight("bold")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("class" + (" (shaded: forgotten)" if len(forgotten) else ""))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def image_grid(
    images: torch.Tensor | np.ndarray | Sequence[Any],
    titles: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    *,
    fig: Figure | None = None,
    ncols: int | None = None,
    shared_scale: bool = True,
    cmap: str = "RdBu_r",
    colorbar: bool = True,
    references: Sequence[Any] | None = None,
    reference_titles: Sequence[str] | None = None,
    pixel_range: float | None = 1.0,
) -> np.ndarray:
    """Show perturbations δ (or images) in a grid, one panel each, with their colour scale.

    1-channel images are drawn symmetric around 0 with a diverging colormap
    (white = 0, limits ±max|δ|); RGB images are min–max rescaled to [0, 1].
    With ``shared_scale`` the limits are taken over all images and one colour bar
    states them, so panels compare in magnitude; otherwise each panel gets its own
    colour bar. With ``pixel_range`` the colour bar says how large δ is against the
    pixels' range (raw [0, 1] images: 1.0). ``references`` (e.g. each class's mean
    image) are drawn in grey, each left of its δ, so a δ can be read against what it
    acts on.

    Args:
        images: (N, C, H, W) or (N, H, W) tensor/array, or a list of (C, H, W)/(H, W) items; C is 1 or 3.
        titles: One title per image.
        ax: Axes to draw on, one per panel (at least N, or 2N with ``references``); a new figure when None.
        fig: Figure to fill with a new grid of subplots (ignored when ``ax`` is given).
        ncols: Grid columns of δ panels (default min(N, 8), or min(N, 4) with references).
        shared_scale: One colour scale for all panels (else one per panel).
        cmap: Diverging colormap of 1-channel images.
        colorbar: Add colour bars (1-channel images).
        references: One image per δ, drawn in grey left of it (same shape as the δ).
        reference_titles: One title per reference (default ``"mean image"``; the δ keeps its own title).
        pixel_range: Range of the pixel values δ is added to, for the colour bar's label (None: not stated).

    Returns:
        The array of Axes used (δ panels, each preceded by its reference panel when given;
        unused grid cells are hidden).
    """
    items = _as_images(images)
    if not items:
        raise ValueError("image_grid got no images")
    refs = _as_images(references) if references is not None else None
    if refs is not None and len(refs) != len(items):
        raise ValueError(f"got {len(refs)} references for {len(items)} images")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"got {len(titles)} titles for {len(items)} images")
    if reference_titles is not None and (refs is None or len(reference_titles) != len(refs)):
        raise ValueError(f"got {len(reference_titles)} reference_titles for "
                         f"{0 if refs is None else len(refs)} references")
    n = len(items)
    per = 2 if refs is not None else 1
    if ax is not None:
        axes = np.ravel(np.asarray(ax, dtype=object))
        if len(axes) < per * n:
            raise ValueError(f"got {len(axes)} axes for {per * n} panels")
    else:
        ncols = ncols or min(n, 8 if per == 1 else 4)
        nrows = -(-n // ncols)
        per_colorbar = colorbar and not shared_scale
        width = (1.6 + (0.5 if per_colorbar else 0)) * per * ncols + (0.6 if colorbar and shared_scale else 0)
        fig = fig or plt.figure(figsize=(width, 1.8 * nrows), layout="constrained")
        axes = np.ravel(fig.subplots(nrows, per * ncols, squeeze=False))
    lim = max(float(np.abs(x).max()) for x in items)
    lo, hi = min(float(x.min()) for x in items), max(float(x.max()) for x in items)
    scale = "" if pixel_range is None else f"pixels 0–{pixel_range:g}"
    ims = []
    for i, a in enumerate(axes):
        a.set_xticks([])
        a.set_yticks([])
        a.grid(False)
        if i >= per * n:
            a.set_visible(False)
            continue
        j, is_ref = divmod(i, per)[0], per == 2 and i % 2 == 0
        x = refs[j] if is_ref else items[j]
        if is_ref:
            a.imshow(x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0)).clip(0, 1), cmap="gray", vmin=0,
                     vmax=pixel_range or float(x.max()) or 1.0, interpolation="nearest")
            a.set_title("mean image" if reference_titles is None else str(reference_titles[j]), fontsize=MIN_FONT + 1)
            continue
        if x.shape[0] == 1:
            m = (lim if shared_scale else float(np.abs(x).max())) or 1.0
            im = a.imshow(x[0], cmap=cmap, vmin=-m, vmax=m, interpolation="nearest")
            ims.append((a, im, m))
        else:
            xmin, xmax = (lo, hi) if shared_scale else (float(x.min()), float(x.max()))
            a.imshow(np.transpose((x - xmin) / ((xmax - xmin) or 1.0), (1, 2, 0)), interpolation="nearest")
        if titles is not None:
            a.set_title(str(titles[j]), fontsize=MIN_FONT + 1)
    one_channel = all(x.shape[0] == 1 for x in items)
    if colorbar and ims and one_channel:
        figure = axes[0].get_figure()
        if shared_scale:
            what = "shared scale" if n > 1 else ""
            note = "; ".join(x for x in (what, scale) if x)
            bar = figure.colorbar(ims[0][1], ax=list(axes[:per * n]), shrink=0.8, label=f"δ ({note})" if note else "δ")
            bar.ax.tick_params(labelsize=MIN_FONT)
        else:
            for a, im, m in ims:
                note = "; ".join(x for x in ("own scale", scale) if x)
                bar = figure.colorbar(im, ax=a, shrink=0.8, label=f"δ ({note})" if a is ims[0][0] else None)
                bar.ax.tick_params(labelsize=MIN_FONT)
    return axes


def _as_images(images: Any) -> list[np.ndarray]:
    """Items as float (C, H, W) arrays, C in (1, 3)."""
    items = [np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32) for x in images]
    items = [x[None] if x.ndim == 2 else x for x in items]
    if any(x.ndim != 3 or x.shape[0] not in (1, 3) for x in items):
        raise ValueError(f"images must be (C, H, W) with C in (1, 3); got shapes {[x.shape for x in items]}; "
                         "select channels first, e.g. images[:, :3]")
    return items
