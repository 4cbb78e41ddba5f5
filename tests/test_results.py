from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re

import pytest

from negkit.results import COLUMNS, Record, ResultsLog, read_results


def _rec(**kw):
    base = dict(setting="standard", model="small_resnet", dataset="digits", scenario="random_10",
                method="negmerge", pool_config="", coef=0.35, split="test", metric="TA", value=91.5)
    return Record(**{**base, **kw})


def test_append_and_read_back(tmp_path):
    log = ResultsLog(tmp_path / "sub" / "results.jsonl")
    assert log.read().empty and list(log.read().columns) == list(COLUMNS)
    log.append(_rec())
    log.append([_rec(metric="UA", value=10.0), _rec(method="retrain", coef=math.nan)])
    df = log.read()
    assert len(df) == 3
    assert df.loc[0, "value"] == 91.5
    assert math.isnan(df.loc[2, "coef"])
    assert log.has(method="retrain") and not log.has(method="ties")
    with pytest.raises(ValueError, match="unknown column"):
        log.has(methd="retrain")


def test_torn_last_line_is_skipped_with_warning(tmp_path):
    log = ResultsLog(tmp_path / "r.jsonl")
    log.append(_rec())
    with open(log.path, "a") as fh:
        fh.write('{"setting": "standard", "mod')  # an append cut short
    with pytest.warns(UserWarning, match="truncated"):
        df = log.read()
    assert len(df) == 1


def test_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text("not json\n{}\n")
    with pytest.raises(ValueError, match="r.jsonl:1"):
        read_results(p)


def test_folder_of_logs_concatenates(tmp_path):
    ResultsLog(tmp_path / "a.jsonl").append(_rec())
    ResultsLog(tmp_path / "b" / "c.jsonl").append(_rec(dataset="cars", setting="clip"))
    assert sorted(read_results(tmp_path)["dataset"]) == ["cars", "digits"]


@pytest.mark.parametrize("field,value", [("metric", "accuracy"), ("method", "negmrge")])
def test_unknown_names_rejected(field, value):
    with pytest.raises(ValueError, match=f"unknown {field}"):
        _rec(**{field: value})


def test_append_after_a_torn_last_line_drops_the_torn_record_and_keeps_the_new_ones(tmp_path):
    # An append cut short leaves a line without "\n". The next append must not glue its first
    # record onto that fragment (the new record would be lost, and the log unreadable after one more append).
    log = ResultsLog(tmp_path / "r.jsonl")
    log.append(_rec())
    with open(log.path, "a") as fh:
        fh.write('{"setting": "standard", "mod')
    with pytest.warns(UserWarning, match="torn"):
        log.append([_rec(metric="UA", value=10.0), _rec(metric="RA", value=99.0)])
    log.append(_rec(metric="MIA", value=50.0))
    df = log.read()
    assert list(df.metric) == ["TA", "UA", "RA", "MIA"]
    assert log.path.read_text().endswith("\n") and log.path.read_text().count("\n") == 4


def test_method_rank_follows_methods_and_puts_unknown_last():
    from negkit.results import METHODS, method_rank

    assert [method_rank(m) for m in METHODS] == list(range(len(METHODS)))
    assert method_rank("retrain") < method_rank("negmerge") < method_rank("forget_vector")
    assert method_rank("not-a-method") == len(METHODS)


# ---------------------------------------------------------------- a missing log, damage vs a torn tail
def test_reading_a_missing_log_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "results.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_results(missing)


def test_a_complete_last_line_that_is_not_json_is_damage_not_a_torn_write(tmp_path):
    log = ResultsLog(tmp_path / "r.jsonl")
    log.append(_rec())
    with open(log.path, "a") as fh:
        fh.write('{"setting": "standard", "mod\n')  # ends with its newline: not an interrupted append
    with pytest.raises(ValueError, match=r"r\.jsonl:2 is not a JSON record"):
        read_results(log.path)


def test_only_a_tail_without_newline_is_skipped(tmp_path):
    p = tmp_path / "r.jsonl"
    good = json.dumps(dataclasses.asdict(_rec()))
    p.write_text(good + "\n" + good + "\n" + "{broken")
    with pytest.warns(UserWarning, match="truncated last record"):
        assert len(read_results(p)) == 2
    p.write_text(good + "\n" + "{broken\n" + good + "\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:2"):
        read_results(p)


# ---------------------------------------------------------------- a failed append leaves only complete records
class _FailAfter:
    """``os.write`` that writes ``n`` bytes of the first call, then fails with ENOSPC."""

    def __init__(self, n):
        self.n, self.real = n, os.write

    def __call__(self, fd, data):
        if self.n is None:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = self.real(fd, bytes(data[:self.n]))
        self.n = None
        return written


@pytest.mark.parametrize("partial", [0, 1, 25])
def test_a_disk_full_append_truncates_back_to_the_last_record_and_names_the_path(tmp_path, monkeypatch, partial):
    log = ResultsLog(tmp_path / "r.jsonl")
    log.append([_rec(), _rec(metric="UA", value=3.0)])
    before = log.path.read_bytes()
    monkeypatch.setattr(os, "write", _FailAfter(partial))
    with pytest.raises(OSError, match=re.escape(str(log.path))) as info:
        log.append([_rec(metric="RA"), _rec(metric="MIA")])
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and "last complete record" in str(info.value)
    assert log.path.read_bytes() == before
    log.append(_rec(metric="RA", value=1.0))  # the log is still appendable and readable
    assert list(log.read().metric) == ["TA", "UA", "RA"]


def test_a_failed_fsync_also_truncates(tmp_path, monkeypatch):
    log = ResultsLog(tmp_path / "r.jsonl")
    log.append(_rec())
    before = log.path.read_bytes()

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="could not append 1 record") as info:
        log.append(_rec(metric="UA"))
    monkeypatch.undo()
    assert info.value.errno == errno.EIO and log.path.read_bytes() == before
