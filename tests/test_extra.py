"""KL/JS to Retrain, ZRF and relearn epochs recorded for a finished smoke run (negkit.benchmark.extra)."""
from __future__ import annotations

import math

import pytest

from negkit import benchmark as B
from negkit.benchmark import extra
from negkit.evaluate import evaluate
from negkit.metrics import RETRAIN_METRICS

# One random scenario, two merges, two baselines: every kind of method extra rebuilds.
SMALL = dict(scenarios=("random_10",), merge_methods=("mean", "negmerge"), baselines=("ga", "ft"),
             rules=("min_forget",))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("extra")
    cfg = B.default_config(smoke=True, **SMALL)
    B.run(cfg, run_dir, device="cpu", progress=False)
    before = len(B.load_results(run_dir))
    table = extra.record_retrain_metrics(cfg, run_dir, "random_10", device="cpu", max_epochs=5)
    return cfg, run_dir, before, table


def test_every_method_gets_every_metric_once(measured):
    cfg, run_dir, before, table = measured
    df = B.load_results(run_dir)
    best = extra.best_baseline(df, cfg, "random_10")
    gaps = df[(df.metric == "avg_gap") & df.method.isin(cfg.baselines) & (df.pool_config == "")]
    assert best == gaps.sort_values("value").method.iloc[0]
    has_coef = {m for m in ("mean", "negmerge", "task_arithmetic")
                if math.isfinite(df[(df.method == m) & (df.metric == "UA") & (df.pool_config == "")].coef.iloc[-1])}
    expected = {"original", "retrain", best} | has_coef
    assert set(table.method) == expected
    assert len(table) == len(expected) * len(RETRAIN_METRICS) == len(df) - before
    assert not table.duplicated(["method", "metric"]).any()
    assert set(table.columns) == set(df.columns)
    # Rerunning adds nothing.
    again = extra.record_retrain_metrics(cfg, run_dir, "random_10", device="cpu", max_epochs=5)
    assert len(B.load_results(run_dir)) == len(df) and len(again) == len(table)


def test_known_answers_for_original_and_retrain(measured):
    _, _, _, table = measured
    v = table.set_index(["method", "metric"]).value
    for metric in ("kl_retrain_forget", "js_retrain_forget", "kl_retrain_test", "js_retrain_test"):
        assert v["retrain", metric] == pytest.approx(0.0, abs=1e-12)  # Retrain against itself
        assert v["original", metric] > 0.0
    assert v["original", "relearn_epochs"] == 0.0  # already at its own forget accuracy
    assert 1 - math.log(2) <= v["retrain", "zrf"] <= 1.0
    assert table[table.metric == "kl_retrain_test"].split.eq("test").all()
    assert table[table.metric == "relearn_epochs"].value.between(0, 6).all()  # 6 = not relearned in 5 epochs


def test_rebuilt_models_are_the_recorded_ones(measured):
    cfg, run_dir, _, table = measured
    setup = B.prepare(cfg, run_dir, "random_10", device="cpu", record=False)
    df = B.load_results(run_dir)
    for method in set(table.method) - {"original", "retrain"}:
        model, coef, _ = extra._model_of(setup, method, df)
        ua = df[(df.method == method) & (df.metric == "UA") & (df.pool_config == "") & (df.setting == B.SETTING)]
        assert 100.0 - evaluate(model, setup.forget, device="cpu")["acc"] == pytest.approx(ua.value.iloc[-1]), method
        assert (math.isnan(coef) and math.isnan(ua.coef.iloc[-1])) or coef == ua.coef.iloc[-1]
    with pytest.raises(ValueError, match="cannot rebuild"):
        extra._model_of(setup, "forget_vector", df)


def test_summary_carries_the_new_metrics(measured):
    _, run_dir, _, table = measured
    summary = B.summary(B.load_results(run_dir))
    rows = summary[summary.metric.isin(RETRAIN_METRICS)]
    assert set(zip(rows.method, rows.metric)) == set(zip(table.method, table.metric))
    assert set(B.mean_std(summary).columns) >= set(RETRAIN_METRICS)
