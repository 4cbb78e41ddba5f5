"""Markdown tables drawn from a report's CSVs, and docs/results.md quoting the committed ones."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from negkit.benchmark import markdown

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fashion_mnist.py"


def _summary(rows):
    return pd.DataFrame(rows, columns=["setting", "scenario", "method", "metric", "value", "std", "n_seeds"])


def test_gap_table_bolds_the_lowest_falls_back_and_names_short_seed_counts():
    summary = _summary([
        ("standard", "random_10", "original", "avg_gap", 5.0, 0.2, 5),
        ("standard", "random_10", "negmerge", "avg_gap", 3.004, 0.5, 5),
        ("standard", "random_10", "ssd", "avg_gap", 3.001, 0.1, 4),
        ("standard_match", "random_10", "negmerge", "avg_gap", 4.0, 0.3, 5),
        ("standard", "random_10", "retrain", "avg_gap", 0.0, 0.0, 5),
    ])
    text = markdown.gap_table(summary, methods=["original", "negmerge", "ssd", "retrain"], fallback="standard",
                              columns=[("random_10", "standard"), ("random_10", "standard_match")])
    lines = text.splitlines()
    assert lines[0] == "| method | random 10 %, rule (a) | random 10 %, rule (b) |"
    # Retrain is the reference, never "the lowest"; the two 3.00s tie at two decimals and both are bold.
    assert lines[3] == "| NegMerge | **3.00 ± 0.50** | 4.00 ± 0.30 |"
    assert lines[4] == "| SSD | **3.00 ± 0.10** (n = 4) | **3.00 ± 0.10** (n = 4) |"
    assert lines[2] == "| Original (no unlearning) | 5.00 ± 0.20 | 5.00 ± 0.20 |"
    assert markdown.gap_table(summary, methods=["original"], columns=[("random_10", "standard_match")]).endswith(
        "| Original (no unlearning) | — |")


def test_gap_table_refuses_a_table_that_is_not_a_summary():
    with pytest.raises(ValueError, match="summary"):
        markdown.gap_table(pd.DataFrame({"scenario": ["x"]}), columns=[("x", "standard")])


def test_paired_and_regime_tables():
    paired = pd.DataFrame([
        dict(scenario="class_0", a="negmerge", b="rl", setting="standard", mean_diff=18.04, ci_low=6.45,
             ci_high=29.63, excludes_zero=True, p_value=0.0625, n_seeds=5, best_baseline=True),
        dict(scenario="random_10", a="negmerge", b="mean", setting="standard_match", mean_diff=-0.16,
             ci_low=-0.37, ci_high=0.05, excludes_zero=False, p_value=0.125, n_seeds=5, best_baseline=False)])
    lines = markdown.paired_table(paired).splitlines()
    assert lines[0] == "| scenario, rule | NegMerge − | mean diff | 95 % t-interval | sign-flip p | n |"
    assert lines[2] == "| class 0 (a) | RL (best classic) | +18.04 | **[+6.45, +29.63]** | 0.062 | 5 |"
    assert lines[3] == "| random 10 % (b) | uniform merge | -0.16 | [-0.37, +0.05] | 0.125 | 5 |"
    regime = pd.DataFrame([dict(scenario="random_10", seed=1, original_forget_acc=99.0, original_UA=1.0,
                                retrain_UA=10.0, memorises=False)])
    assert markdown.regime_table(regime).splitlines()[2] == "| random 10 % | 1 | 99.00 | 1.00 | 10.00 | no |"


def test_frame_table_shows_any_frame():
    assert markdown.frame_table(pd.DataFrame({"k": [3, 5], "mean": [3.79, 3.85]})).splitlines() == [
        "| k | mean |", "|---|---|", "| 3 | 3.79 |", "| 5 | 3.85 |"]


def test_metric_table_prints_zero_for_an_exact_reference():
    summary = _summary([("standard", "class_0", "retrain", "kl", 0.0, 0.0, 5),
                        ("standard", "class_0", "negmerge", "kl", 2.4134, 0.8, 5)])
    lines = markdown.metric_table(summary, scenarios=["class_0"], methods=["retrain", "negmerge"], metrics=["kl"],
                                  headers={"kl": "KL"}, digits=3, zero=["retrain"]).splitlines()
    assert lines[0] == "| scenario | method | KL |"
    assert lines[2:] == ["| class 0 | Retrain | 0 |", "| class 0 | NegMerge | 2.413 ± 0.800 |"]


@pytest.fixture(scope="module")
def bench():
    """benchmarks/fashion_mnist.py, imported in-process (the runner is a script, not a module of the kit)."""
    spec = importlib.util.spec_from_file_location("fashion_mnist_runner", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tables(bench, capsys, check=None, write=None):
    """Run ``fashion_mnist.py tables`` on the committed figures: (exit message or None, stdout)."""
    args = argparse.Namespace(figures_dir=str(ROOT / "figures"), check=check, write=write)
    try:
        bench.tables(args)
        return None, capsys.readouterr().out
    except SystemExit as err:
        return str(err), capsys.readouterr().out


def test_docs_results_quote_the_committed_csvs(bench, capsys):
    error, out = _tables(bench, capsys, check=str(ROOT / "docs" / "results.md"))
    assert error is None, error
    assert "its 6 tables match" in out


def test_a_stale_table_is_named_and_write_repairs_it(bench, capsys, tmp_path):
    doc = tmp_path / "results.md"
    text = (ROOT / "docs" / "results.md").read_text()
    original = pd.read_csv(ROOT / "figures" / "fashion_mnist_summary.csv")
    gap = original[(original.method == "negmerge") & (original.metric == "avg_gap") &
                   (original.setting == "standard") & (original.scenario == "class_0")].iloc[0]
    stale_cell = f"{gap.value:.2f} ± {gap['std']:.2f}"
    assert stale_cell in text
    doc.write_text(text.replace(stale_cell, "1.00 ± 0.00", 1))
    error, _ = _tables(bench, capsys, check=str(doc))
    assert error and "['avg_gap']" in error and "--write" in error
    assert _tables(bench, capsys, write=str(doc))[0] is None
    assert doc.read_text() == text
    (tmp_path / "copy.md").write_text(text.replace("<!-- table: paired -->", "<!-- table: nonesuch -->"))
    error, _ = _tables(bench, capsys, check=str(tmp_path / "copy.md"))
    assert error and "nonesuch" in error
