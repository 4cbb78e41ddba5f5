"""negkit.load_run: a run folder's records, config and summary read back in one call."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

import negkit
from negkit import benchmark, io
from negkit.config import to_dict
from negkit.results import Record, ResultsLog


def _write_run(run_dir: Path) -> benchmark.BenchmarkConfig:
    cfg = benchmark.default_config(smoke=True)
    io.save_json(to_dict(cfg), run_dir / "benchmark_config.json")
    log = ResultsLog(run_dir / "results.jsonl")
    for seed, ua in ((0, 90.0), (1, 94.0)):
        for method, value in (("negmerge", ua), ("retrain", 100.0)):
            for setting in ("standard", "standard_match"):
                log.append(Record("standard" if setting == "standard" else setting, "small_resnet", "digits",
                                  "random_10", method, "", math.nan, "forget", "UA", value, seed))
    return cfg


def test_load_run_reads_records_config_and_summary(tmp_path: Path):
    cfg = _write_run(tmp_path)
    run = negkit.load_run(tmp_path)
    assert dataclasses.is_dataclass(run) and run.config == cfg
    assert len(run.records) == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.records = None
    nm = run.summary[(run.summary.method == "negmerge") & (run.summary.setting == "standard")].iloc[0]
    assert nm.value == pytest.approx(92.0) and nm["std"] == pytest.approx(math.sqrt(8)) and nm.n_seeds == 2
    assert set(run.summary.setting) == {"standard", "standard_match"}
    assert "8 records" in repr(run)


def test_load_run_says_what_to_pass(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist.*runs/digits"):
        negkit.load_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no results.jsonl"):
        negkit.load_run(tmp_path)
