"""FORGET-VECTOR view: pick classes, see δ and per-class accuracy with and without it.

A forget vector δ (Sun et al., 2024) is a universal input perturbation of one image's
shape, added to raw pixels: the model is queried with x + δ and its weights never change.
For several classes the view uses forget-vector arithmetic δ(w) = Σ_c w_c δ_c over the
class-wise vectors (w_c = 1 unless weights are given), and compares per-class accuracy of
the model on clean inputs and on x + δ(w). Logits on clean inputs are computed once.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn

from negkit.evaluate import resolve_device
from negkit.widgets.live import _as_tensors

__all__ = ["ForgetVectorState"]


class ForgetVectorState:
    """Plain-Python model of the forget-vector view.

    Args:
        model: The frozen classifier (takes raw [0, 1] pixels).
        vectors: Class-wise forget vectors ``{class index: ForgetVector}``.
        data: Evaluation set (a dataset or ``(images, labels)``), e.g. the test split.
        classnames: Names of all classes (default: their indices).
        weights: Arithmetic weights w_c per class (default 1 for every selected class).
        device: Torch device (None: cuda if available, else cpu).
    """

    def __init__(self, model: nn.Module, vectors: Mapping[int, Any], data: Any, *,
                 classnames: Sequence[str] | None = None, weights: Mapping[int, float] | None = None,
                 device: str | torch.device | None = None) -> None:
        if not vectors:
            raise ValueError("no forget vectors given; pass the class-wise {class: ForgetVector} "
                             "mapping from negkit.forget_vectors.learn_classwise")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.vectors = {int(c): v.to(self.device) for c, v in vectors.items()}
        x, y = _as_tensors(data)
        self.x, self.y = x.to(self.device), y.to(self.device)
        shapes = {c: tuple(v.shape) for c, v in self.vectors.items()}
        bad = {c: s for c, s in shapes.items() if s != tuple(self.x.shape[1:])}
        if bad:
            raise ValueError(f"forget vectors of classes {sorted(bad)} have shape {next(iter(bad.values()))}, "
                             f"the images {tuple(self.x.shape[1:])}; learn them at the model's input resolution")
        n = int(self.y.max()) + 1 if classnames is None else len(classnames)
        self.classnames = list(classnames) if classnames is not None else [str(i) for i in range(n)]
        self.weights = {int(c): float(w) for c, w in (weights or {}).items()}
        self.selected: tuple[int, ...] = (min(self.vectors),)
        self._data = torch.utils.data.TensorDataset(self.x, self.y)
        self._clean = self._accuracy(None)
        self._with: dict[tuple, pd.Series] = {}

    def classes(self) -> list[int]:
        """Classes that have a forget vector."""
        return sorted(self.vectors)

    def select(self, classes: Sequence[int]) -> None:
        """Classes to forget at once (at least one, each with a forget vector)."""
        classes = tuple(sorted({int(c) for c in classes}))
        if not classes:
            raise ValueError("select at least one class to forget")
        missing = [c for c in classes if c not in self.vectors]
        if missing:
            raise ValueError(f"no forget vector for classes {missing}; available: {self.classes()}")
        self.selected = classes

    def combined(self) -> Any:
        """δ(w) = Σ_c w_c δ_c over the selected classes (a ForgetVector)."""
        from negkit.forget_vectors import combine

        return combine({c: self.vectors[c] for c in self.selected},
                       {c: self.weights.get(c, 1.0) for c in self.selected})

    def _accuracy(self, fv: Any | None) -> pd.Series:
        from negkit.forget_vectors import per_class_accuracy

        return per_class_accuracy(self.model, self._data, input_transform=fv, num_classes=len(self.classnames),
                                  device=self.device)

    def per_class_accuracy(self) -> pd.DataFrame:
        """One row per class: accuracy (%) without and with δ(w), and whether it is being forgotten."""
        if self.selected not in self._with:
            self._with[self.selected] = self._accuracy(self.combined())
        with_delta = self._with[self.selected]
        rows = [{"class": c, "name": self.classnames[c], "forgotten": c in self.selected,
                 "acc_without": float(self._clean[c]), "acc_with": float(with_delta[c])}
                for c in range(len(self.classnames)) if bool((self.y == c).any())]
        return pd.DataFrame(rows)

    def numbers(self) -> list[tuple[str, Any]]:
        """Mean accuracy (%) on the forgotten and the other classes, without and with δ(w)."""
        t = self.per_class_accuracy()
        names = ", ".join(self.classnames[c] for c in self.selected)
        rows: list[tuple[str, Any]] = [("forgetting", names), ("‖δ(w)‖₂", self.combined().norm())]
        for label, part in (("forgotten classes", t[t["forgotten"]]), ("other classes", t[~t["forgotten"]])):
            if not part.empty:
                rows += [(f"{label}: acc without δ (%)", float(part["acc_without"].mean())),
                         (f"{label}: acc with δ (%)", float(part["acc_with"].mean()))]
        return rows

    def figure(self, classes: Sequence[int] | None = None) -> plt.Figure:
        """Top: the selected δ_c and δ(w) as images. Bottom: per-class accuracy without / with δ(w).

        Args:
            classes: Draw this selection instead of the current one, leaving the view's
                selection as it is (e.g. a report figure forgetting every class at once).
        """
        if classes is not None:
            kept = self.selected
            try:
                self.select(classes)
                return self.figure()
            finally:
                self.selected = kept
        from negkit import plotting

        deltas = [self.vectors[c].delta for c in self.selected]
        titles = [f"δ_{self.classnames[c]}" for c in self.selected]
        if len(deltas) > 1:
            deltas.append(self.combined().delta)
            titles.append("δ(w) = Σ w_c δ_c")
        ncols = max(4, len(deltas))
        fig = plt.figure(figsize=(max(6.0, 1.6 * ncols), 5.2), layout="constrained")
        top = fig.add_gridspec(2, ncols, height_ratios=[1, 1.4])
        # One shared colour scale, so the panels compare in magnitude.
        plotting.image_grid(torch.stack([d.detach().cpu() for d in deltas]), titles=titles,
                            ax=[fig.add_subplot(top[0, i]) for i in range(len(deltas))])
        ax = fig.add_subplot(top[1, :])
        t = self.per_class_accuracy().set_index("class")
        bars = t[["acc_without", "acc_with"]].rename(columns={"acc_without": "without δ", "acc_with": "with δ(w)"})
        # Only classes with images have a row; a selected class without any has no bar to shade.
        plotting.per_class_bars(bars, ax=ax, classnames=list(t["name"]),
                                forgotten=[c for c in self.selected if c in t.index])
        ax.set_xlabel("class (forgotten, shaded: " + ", ".join(self.classnames[c] for c in self.selected) + ")")
        # Above the axes rather than right of them: the bars keep the figure's full width.
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=2, frameon=False)
        return fig
