"""Tidy result records: one row per (setting, model, dataset, scenario, method,
pool config, coefficient, split, metric, seed) with its value.

Every pipeline of the kit (digits benchmark, CLIP negation, forget vectors)
appends :class:`Record` rows to a :class:`ResultsLog` as runs finish; notebooks,
plots and widgets read them back as one pandas DataFrame with
:func:`read_results`. The log is JSON Lines: each record is written with a
single ``write`` of one whole line and flushed, so an interrupted run loses at
most the record in flight: a torn last line is skipped (with a warning)
when reading, and cut off before the next append. Appends hold an exclusive
``flock`` on the log, so writers in several processes never lose or tear each
other's records; a symlinked log is refused.

Method names come from the registries: a rule registered with
``negkit.merge.register`` or a baseline registered in :mod:`negkit.unlearn` is
recordable the moment it exists (:func:`list_methods`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from negkit import merge, unlearn
from negkit.config import ConfigError, check
from negkit.metrics import RETRAIN_METRICS

__all__ = ["Record", "ResultsLog", "read_results", "method_rank", "list_methods", "COLUMNS", "METRICS", "METHODS"]

#: Metric names used throughout the kit (``acc`` is a plain accuracy in %, used
#: for per-coefficient curves such as forget/control accuracy of a λ sweep;
#: ``n_coefs`` and ``coef_max_searched`` describe a λ search: how many coefficients
#: it evaluated and the highest λ of the range it searched; then the output-level metrics of
#: :mod:`negkit.benchmark.extra`: KL/JS to Retrain, ZRF, relearn epochs).
METRICS = ("UA", "RA", "TA", "MIA", "avg_gap", "acc", "n_coefs", "coef_max_searched") + RETRAIN_METRICS

#: Display order of the built-in methods. Merge rules and baselines are named as in their
#: registries (``negkit.merge``, ``negkit.unlearn``); :func:`list_methods` adds rules registered later.
METHODS = (
    "original", "retrain", "zeroshot", "task_arithmetic", "mean", "sum", "ties", "magmax",
    "negmerge", "dare", "breadcrumbs", "consensus", "tsv", "ft", "ga", "rl", "l1_sparse", "salun", "iu", "be", "bs",
    "neggrad_plus", "scrub", "ssd", "forget_vector", "forget_vector_arithmetic",
)


def list_methods() -> list[str]:
    """Every recordable method name: :data:`METHODS`, then rules and baselines registered since."""
    names = dict.fromkeys((*METHODS, *merge.list_methods(), *unlearn.list_methods()))
    return list(names)


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

    #: ``coef`` NaN means "no coefficient"; ``value`` NaN "no admissible result".
    RANGES = {"coef": "finite or nan", "value": "finite or nan"}

    def __post_init__(self) -> None:
        check(self)  # types (a str value such as "12abc" is refused), finite numbers or NaN
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; valid metrics are {list(METRICS)}")
        if self.method not in METHODS and self.method not in list_methods():  # the registries only for new names
            raise ValueError(f"unknown method {self.method!r}; valid methods are {list_methods()}. A new merge rule "
                             "or baseline becomes recordable once registered (negkit.merge.register, "
                             "negkit.unlearn.register)")


COLUMNS = tuple(f.name for f in dataclasses.fields(Record))


class ResultsLog:
    """Append-only JSON Lines log of :class:`Record` rows.

    Args:
        path: File to append to (created with its parent folders on first write).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, records: Record | Iterable[Record]) -> None:
        """Append one or several records, each as one whole line, then fsync.

        The log is locked (``flock``) for the append, so concurrent writers wait for
        each other instead of cutting each other's records.

        Raises:
            TypeError: An item is not a :class:`Record`.
            ValueError: The log path is a symbolic link or a folder.
            OSError: The write failed (e.g. disk full); the file is first cut back to its
                last complete record, so no half record stays behind.
        """
        if isinstance(records, Record):
            records = [records]
        records = list(records)
        bad = next((r for r in records if not isinstance(r, Record)), None)
        if bad is not None:
            raise TypeError(f"ResultsLog.append takes Record objects, got a {type(bad).__name__}")
        lines = "".join(json.dumps(_jsonable(dataclasses.asdict(r))) + "\n" for r in records).encode("utf-8")
        if not lines:
            return
        if self.path.is_symlink():
            raise ValueError(f"{self.path} is a symbolic link (to {os.readlink(self.path)}); negkit does not append "
                             "through links, which would edit the target. Pass the target path itself")
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; a results log is a .jsonl file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ValueError(f"{self.path} is a symbolic link; pass the target path itself") from e
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a few writes: wait rather than fail
            self._drop_torn_tail(fd)
            complete = os.fstat(fd).st_size
            try:
                view = memoryview(lines)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:  # disk full, quota, I/O error: leave no partial record behind
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, complete)
                raise OSError(e.errno, f"could not append {len(records)} record(s) to {self.path}: "
                                       f"{e.strerror or e}; the log was cut back to its last complete record. "
                                       "Free space (or fix the file system) and resume the run", str(self.path)
                              ) from e
        finally:
            os.close(fd)  # releases the lock

    def _drop_torn_tail(self, fd: int) -> None:
        """Cut a torn last line (an append interrupted mid-write) before appending after it.

        Appending behind the fragment would glue the next record onto it: that record
        would be unreadable, and the line no longer last, so the whole log would fail to read.
        Runs under the append lock, so the fragment cannot be another writer's append in progress.
        """
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        data = os.pread(fd, size, 0)
        keep = data.rfind(b"\n") + 1  # 0 when the fragment is the only line
        warnings.warn(f"{self.path}: dropping a torn last record ({len(data) - keep} bytes, an interrupted "
                      "write) before appending", stacklevel=3)
        os.ftruncate(fd, keep)
        os.fsync(fd)

    def read(self) -> pd.DataFrame:
        """All records as a DataFrame with columns :data:`COLUMNS` (empty if no file yet)."""
        return read_results(self.path) if self.path.exists() else _frame([])

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


_DEFAULTS = {"pool_config": "", "seed": 0, "note": ""}


def _validated(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a JSON {type(row).__name__}, not a record object")
    unknown = sorted(set(row) - set(COLUMNS))
    missing = [c for c in COLUMNS if c not in row and c not in _DEFAULTS]
    if unknown or missing:
        raise ValueError(f"{where}: " + "; ".join(
            ([f"unknown column(s) {unknown}"] if unknown else []) + ([f"missing column(s) {missing}"] if missing else []))
            + f"; records have the columns {list(COLUMNS)}")
    full = {**_DEFAULTS, **row}
    for k in ("coef", "value"):
        if full[k] is None:  # how NaN is written (JSON has none)
            full[k] = math.nan
    try:
        rec = Record(**full)
    except (ConfigError, ValueError, TypeError) as e:
        raise ValueError(f"{where}: not a valid record: {e}") from None
    return dataclasses.asdict(rec)


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None  # JSON has no NaN; read back as NaN
        out[k] = v
    return out


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results log (a ``.jsonl`` file, or a folder whose ``*.jsonl`` files are concatenated).

    Every line is validated as a :class:`Record` (known columns, types, metric and
    method names); a missing ``pool_config``, ``seed`` or ``note`` takes its default.

    Returns:
        A DataFrame with columns :data:`COLUMNS`; empty (with those columns) when
        there is nothing to read.

    Only a torn tail — a last line without its newline, left by an interrupted append —
    is skipped (with a warning); a complete line that is not JSON is damage, not a torn
    write, and is refused.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A line is not a valid record; the message gives ``file:line``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"no results log at {path}; pass a .jsonl file or a folder of them "
                                              "(a run's log is run_dir/results.jsonl)", str(path))
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    rows: list[dict[str, Any]] = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        lines = text.splitlines()
        torn_tail = bool(text) and not text.endswith("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if torn_tail and i == len(lines) - 1:  # an append cut short: the record never finished
                    warnings.warn(f"{f}: skipping a truncated last record (interrupted write, no final newline)")
                    continue
                raise ValueError(f"{f}:{i + 1} is not a JSON record (a complete line, so not an interrupted "
                                 "append); is this a negkit results log? Remove or repair that line") from None
            rows.append(_validated(row, f"{f}:{i + 1}"))
    return _frame(rows)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Validated records as the log's DataFrame, with the column dtypes every reader expects."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["coef"] = pd.to_numeric(df["coef"], errors="coerce").astype(float)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["seed"] = df["seed"].fillna(0).astype(int)
    df["note"] = df["note"].fillna("")
    df["pool_config"] = df["pool_config"].fillna("")
    return df
