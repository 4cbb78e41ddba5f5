"""Forget / retain splits of a training set: the two unlearning scenarios.

* ``random``: a seeded ``fraction`` of the training images, drawn uniformly
  (e.g. 10 % -> ``"random_10"``), is to be forgotten.
* ``class``: every training image of the given classes is to be forgotten
  (``"class_3"``, ``"class_1-7"``); the test set used for TA then excludes those
  classes (:func:`without_classes`).

The forget set D_f and the retain set D_r = D \\ D_f are disjoint and together
cover the training set.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from negkit.data import labels_of

__all__ = ["ForgetSplit", "make_forget_split", "subset", "class_mask", "without_classes", "SCENARIOS",
           "reference_val_split"]

SCENARIOS = ("random", "class")


@dataclasses.dataclass(frozen=True, eq=False)
class ForgetSplit:
    """Indices of the forget and retain sets within a training set.

    Attributes:
        forget_idx: Sorted int64 indices of D_f.
        retain_idx: Sorted int64 indices of D_r (the complement).
        scenario: ``"random"`` or ``"class"``.
        fraction: Fraction of the training set that is forgotten (for ``class``
            the realised fraction).
        classes: Forgotten classes (empty for ``random``).
        seed: Seed of the random draw.
    """

    forget_idx: np.ndarray
    retain_idx: np.ndarray
    scenario: str
    fraction: float
    classes: tuple[int, ...] = ()
    seed: int = 0

    @property
    def name(self) -> str:
        """Scenario name used in records and folder names: ``random_10``, ``class_3``, ``class_1-7``."""
        if self.scenario == "class":
            return "class_" + "-".join(str(c) for c in self.classes)
        pct = round(100 * self.fraction, 6)
        return f"random_{int(pct) if pct == int(pct) else pct:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (indices as lists) including ``name``."""
        return {
            "name": self.name, "scenario": self.scenario, "fraction": self.fraction,
            "classes": list(self.classes), "seed": self.seed,
            "forget_idx": self.forget_idx.tolist(), "retain_idx": self.retain_idx.tolist(),
        }


def make_forget_split(labels: Sequence[int] | np.ndarray, scenario: str = "random", fraction: float = 0.1,
                      classes: Iterable[int] = (), seed: int = 0,
                      num_classes: int | None = None) -> ForgetSplit:
    """Draw a forget / retain split of a training set.

    Args:
        labels: Labels of the training set (``negkit.data.labels_of(bundle.train)``).
        scenario: ``"random"`` (a ``fraction`` of all images) or ``"class"`` (all images of ``classes``).
        fraction: Fraction forgotten in the random scenario, in (0, 1); ignored for ``class``.
        classes: Classes to forget in the class scenario.
        seed: Seed of the random draw.
        num_classes: If given, classes must lie in ``range(num_classes)``; otherwise they
            must occur in ``labels``.

    Returns:
        The split.

    Raises:
        ValueError: Unknown scenario, fraction outside (0, 1), unknown class, forgetting
            every class, or an empty forget or retain set.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    classes = tuple(sorted({int(c) for c in classes}))
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid scenarios are {list(SCENARIOS)}")
    if scenario == "random":
        if classes:
            raise ValueError(f"classes={classes} given for the random scenario; use scenario='class'")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        n_forget = int(round(fraction * n))
        if n_forget == 0 or n_forget == n:
            raise ValueError(
                f"fraction={fraction} of {n} images gives an empty "
                f"{'forget' if n_forget == 0 else 'retain'} set; choose a fraction between {1 / n:.2g} and "
                f"{1 - 1 / n:.4g}"
            )
        perm = np.random.default_rng(seed).permutation(n)
        forget = np.sort(perm[:n_forget])
    else:
        if not classes:
            raise ValueError("scenario='class' needs classes=(...) to forget, e.g. classes=(3,)")
        present = np.unique(labels)
        valid = set(range(num_classes)) if num_classes is not None else set(present.tolist())
        unknown = [c for c in classes if c not in valid]
        if unknown:
            raise ValueError(f"unknown class(es) {unknown}; valid classes are {sorted(valid)}")
        if set(present.tolist()) <= set(classes):
            raise ValueError(f"forgetting classes {list(classes)} would forget every class; keep at least one")
        forget = np.flatnonzero(class_mask(labels, classes))
        if len(forget) == 0:
            raise ValueError(f"no training image has class(es) {list(classes)}: the forget set would be empty")
        fraction = len(forget) / n
    retain = np.setdiff1d(np.arange(n), forget, assume_unique=True)
    return ForgetSplit(forget_idx=forget.astype(np.int64), retain_idx=retain.astype(np.int64),
                       scenario=scenario, fraction=float(fraction), classes=classes, seed=seed)


def subset(dataset: Dataset, idx: Sequence[int] | np.ndarray) -> Subset:
    """``torch.utils.data.Subset`` of ``dataset`` at ``idx`` (``labels_of`` follows it without loading images)."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
        raise IndexError(f"subset indices must lie in [0, {len(dataset)}); got {idx.min()}..{idx.max()}")
    return Subset(dataset, idx.tolist())


def class_mask(labels: Sequence[int] | np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """Boolean array, True where ``labels`` is one of ``classes``."""
    return np.isin(np.asarray(labels, dtype=np.int64), np.asarray(list(classes), dtype=np.int64))


def without_classes(dataset: Dataset, classes: Iterable[int]) -> Subset:
    """The items of ``dataset`` whose label is not in ``classes`` (test set for class-wise forgetting)."""
    return subset(dataset, np.flatnonzero(~class_mask(labels_of(dataset), classes)))


def reference_val_split(n: int, fraction: float = 0.1, cap: int | None = 5000,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``{dataset}Val`` split of the task-vector code: (train indices, validation indices).

    The reference (task_vectors' ``datasets/common.py``, also used by NegMerge) holds out
    ``v = min(floor(fraction * n), cap)`` training images with
    ``torch.utils.data.random_split(train, [n - v, v], generator=torch.Generator().manual_seed(seed))``
    and validates on the second part. This reproduces those indices exactly, in the same
    (permuted, unsorted) order: for MNIST (n = 60000) the training part starts with 36044.

    Args:
        n: Number of training images.
        fraction: Fraction held out for validation (before the cap).
        cap: Largest validation size (None: no cap).
        seed: Seed of the ``torch.Generator``.

    Returns:
        ``(train_idx, val_idx)``: disjoint int64 arrays of lengths ``n - v`` and ``v``.

    Raises:
        ValueError: When the validation or training part would be empty.
    """
    v = int(fraction * n)
    v = min(v, cap) if cap is not None else v
    if not 0 < v < n:
        raise ValueError(f"cannot hold out {v} of {n} images for validation (fraction={fraction}, cap={cap}); "
                         "use a larger dataset or fraction")
    # random_split draws one randperm of all n indices and cuts it at n - v.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy().astype(np.int64)
    return perm[: n - v], perm[n - v:]
