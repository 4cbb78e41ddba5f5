"""Tidy result records: one row per (setting, model, dataset, scenario, method,
pool config, coefficient, split, metric, seed) with its value.

Every pipeline of the kit (digits benchmark, CLIP negation, forget vectors)
appends :class:`Record` rows to a :class:`ResultsLog` as runs finish; notebooks,
plots and widgets read them back as one pandas DataFrame with
:func:`read_results`. The log is JSON Lines: each record is written with a
single ``write`` of one whole line and flushed, so an interrupted run loses at
most the record in flight: a torn last line is skipped (with a warning)
when reading, and cut off before the next append.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

__all__ = ["Record", "ResultsLog", "read_results", "method_rank", "COLUMNS", "METRICS", "METHODS"]

#: Metric names used throughout the kit (``acc`` is a plain accuracy in %, used
#: for per-coefficient curves such as forget/control accuracy of a λ sweep;
#: ``n_coefs`` and ``coef_max_searched`` describe a λ search: how many coefficients
#: it evaluated and the highest λ of the range it searched).
METRICS = ("UA", "RA", "TA", "MIA", "avg_gap", "acc", "n_coefs", "coef_max_searched")

#: Method names, equal to the registry names of the methods that produce them.
METHODS = (
    "original", "retrain", "zeroshot", "task_arithmetic", "mean", "sum", "ties", "magmax",
    "negmerge", "ft", "ga", "rl", "l1_sparse", "salun", "forget_vector",
    "forget_vector_arithmetic",
)



def method_rank(method: str) -> int:
    """Position of ``method`` in :data:`METHODS` (the kit's display order); unknown names sort last."""
    try:
        return METHODS.index(method)
    except ValueError:
        return len(METHODS)


@dataclasses.dataclass(frozen=True)
class Record:
    """One tidy result row.

    Attributes:
        setting: ``"standard"`` (image classification) or ``"clip"``.
        model: Architecture (``"small_resnet"``, ``"ViT-B-32/openai"``, ...).
        dataset: Registry name of the dataset (``"digits"``, ``"cars"``, ...).
        scenario: Forgetting scenario (``"random_10"``, ``"class_3"``, ``"task"``).
        method: One of :data:`METHODS`.
        pool_config: Name of the fine-tune (pool member) the row belongs to, or
            ``""`` when the row does not come from a single pool member.
        coef: Negation coefficient λ, NaN when not applicable.
        split: Data split the metric is measured on (``"forget"``, ``"retain"``,
            ``"test"``, ``"val_forget"``, ``"val_control"``, ``"control"``...).
        metric: One of :data:`METRICS`.
        value: The measured value (accuracies in %).
        seed: Seed of the run.
        note: Free text, e.g. ``"no admissible coefficient"``.
    """

    setting: str
    model: str
    dataset: str
    scenario: str
    method: str
    pool_config: str
    coef: float
    split: str
    metric: str
    value: float
    seed: int = 0
    note: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; valid metrics are {list(METRICS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods are {list(METHODS)}")


COLUMNS = tuple(f.name for f in dataclasses.fields(Record))


class ResultsLog:
    """Append-only JSON Lines log of :class:`Record` rows.

    Args:
        path: File to append to (created with its parent folders on first write).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, records: Record | Iterable[Record]) -> None:
        """Append one or several records, each as one whole line, then flush and fsync."""
        if isinstance(records, Record):
            records = [records]
        lines = "".join(json.dumps(_jsonable(dataclasses.asdict(r))) + "\n" for r in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())

    def _drop_torn_tail(self) -> None:
        """Cut a torn last line (an append interrupted mid-write) before appending after it.

        Appending behind the fragment would glue the next record onto it: that record
        would be unreadable, and the line no longer last, so the whole log would fail to read.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            keep = data.rfind(b"\n") + 1  # 0 when the fragment is the only line
            warnings.warn(f"{self.path}: dropping a torn last record ({len(data) - keep} bytes, an interrupted "
                          "write) before appending", stacklevel=3)
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> pd.DataFrame:
        """All records as a DataFrame with columns :data:`COLUMNS` (empty if no file)."""
        return read_results(self.path)

    def has(self, **key: Any) -> bool:
        """True when at least one record matches every ``column=value`` given."""
        df = self.read()
        if df.empty:
            return False
        mask = pd.Series(True, index=df.index)
        for col, val in key.items():
            if col not in COLUMNS:
                raise ValueError(f"unknown column {col!r}; valid columns are {list(COLUMNS)}")
            mask &= df[col] == val
        return bool(mask.any())


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None  # JSON has no NaN; read back as NaN
        out[k] = v
    return out


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results log (a ``.jsonl`` file, or a folder whose ``*.jsonl`` files are concatenated).

    Returns:
        A DataFrame with columns :data:`COLUMNS`; empty (with those columns) when
        there is nothing to read.
    """
    path = Path(path)
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else ([path] if path.exists() else [])
    rows: list[dict[str, Any]] = []
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # torn final line of an interrupted append
                    warnings.warn(f"{f}: skipping a truncated last record (interrupted write)")
                    continue
                raise ValueError(f"{f}:{i + 1} is not a JSON record; is this a negkit results log?")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["coef"] = pd.to_numeric(df["coef"], errors="coerce").astype(float)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["seed"] = df["seed"].fillna(0).astype(int)
    df["note"] = df["note"].fillna("")
    df["pool_config"] = df["pool_config"].fillna("")
    return df
