"""Reading a finished (or partly finished) run folder back in one call: :func:`load_run`.

A benchmark run folder holds ``benchmark_config.json`` (the config it was made with) and
``results.jsonl`` (the tidy records, one row per setting, scenario, method, metric and
seed); a CLIP negation run holds ``results.jsonl`` and its notebook parameters. :func:`load_run`
returns the records, the config and the mean ± std summary over seeds of both λ rules.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Run", "load_run"]


@dataclasses.dataclass(frozen=True)
class Run:
    """What :func:`load_run` reads from a run folder.

    Attributes:
        run_dir: The folder.
        records: Tidy records of ``results.jsonl`` (exact duplicates dropped).
        config: The run's :class:`~negkit.benchmark.BenchmarkConfig`, or the saved config as a
            dict when it is not a benchmark config (e.g. a CLIP run), or None when none was saved.
        summary: Mean ± std over seeds per (setting, dataset, scenario, method, metric) of the
            method-level rows (:func:`negkit.benchmark.summary` for each λ rule present), with
            ``std`` NaN and ``n_seeds`` 1 where one seed ran; empty for runs without such rows.
    """

    run_dir: Path
    records: pd.DataFrame
    config: Any
    summary: pd.DataFrame

    def __repr__(self) -> str:
        kind = type(self.config).__name__ if self.config is not None else "no config"
        return f"Run({str(self.run_dir)!r}, {len(self.records)} records, {kind}, {len(self.summary)} summary rows)"


def _config(run_dir: Path) -> Any:
    from negkit import benchmark, io

    path = run_dir / "benchmark_config.json"
    if path.exists():
        raw = io.load_json(path)
        try:
            return benchmark.make_config(raw)
        except (TypeError, ValueError):  # written by another version of the kit: keep what it says
            return raw
    for name in ("config.json", "parameters.json"):
        if (run_dir / name).exists():
            return io.load_json(run_dir / name)
    return None


def load_run(run_dir: str | Path) -> Run:
    """The records, config and summary of the run in ``run_dir``.

    Args:
        run_dir: A folder written by ``negkit benchmark``, :func:`negkit.benchmark.run`, the
            notebooks or ``make demo`` (e.g. ``"runs/digits"``).

    Returns:
        A frozen :class:`Run`.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist or holds no ``results.jsonl``.

    Example::

        run = negkit.load_run("runs/digits")
        run.summary.query("metric == 'avg_gap' and setting == 'standard'")
    """
    from negkit import benchmark

    run_dir = Path(run_dir)
    if not (run_dir / "results.jsonl").exists():
        what = "does not exist" if not run_dir.exists() else "holds no results.jsonl"
        raise FileNotFoundError(f"{run_dir} {what}: pass the folder a run wrote (e.g. runs/digits after "
                                "`make demo`, or the run_dir of `negkit benchmark`)")
    records = benchmark.load_results(run_dir)
    parts = []
    if {"setting", "pool_config", "metric", "scenario", "method", "seed"} <= set(records.columns):
        for setting in dict.fromkeys(records.setting):
            s = benchmark.summary(records, setting=setting)
            if len(s):
                parts.append(s.assign(setting=setting))
    summary = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["dataset", "scenario", "method", "metric", "value", "std", "n_seeds", "setting"])
    return Run(run_dir=run_dir, records=records, config=_config(run_dir), summary=summary)
