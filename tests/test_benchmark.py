"""The digits/CIFAR protocol: configs, pool, λ selection, records, resumability, bad input."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from negkit import benchmark as B
from negkit.benchmark import pipeline, setup as setup_mod
from negkit.metrics import avg_gap
from negkit.results import COLUMNS, ResultsLog, read_results
from negkit.taskvec import TaskVector
from negkit.train import TrainConfig

# One scenario, two baselines, four pool members: the smallest run that exercises every step.
TINY = dict(scenarios=("class_3",), baselines=("ga", "salun"))


def _tiny():
    return B.default_config(smoke=True, **TINY)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(COLUMNS)).reset_index(drop=True)


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bench")
    df = B.run(_tiny(), run_dir, device="cpu", progress=False)
    return run_dir, df


# ---------------------------------------------------------------- configs
def test_paper_pool_has_27_named_members():
    cfg = B.default_config()
    pool = B.pool_configs(cfg)
    names = [n for n, _ in pool]
    assert len(pool) == 27 and len(set(names)) == 27
    assert names[0] == "e4_wd1e-4_ls0" and "e5_wd5e-5_ls0.05" in names and names[-1] == "e6_wd1e-5_ls0.1"
    tc = dict(pool)["e5_wd5e-5_ls0.05"]
    assert isinstance(tc, TrainConfig)
    assert (tc.epochs, tc.weight_decay, tc.label_smoothing, tc.momentum, tc.schedule, tc.optimizer) == (
        5, 5e-5, 0.05, 0.9, "cosine", "sgd")


def test_cifar10_config_uses_the_papers_pool_and_explains_missing_data(tmp_path):
    cfg = B.cifar10_config(str(tmp_path / "nowhere"))
    names = [n for n, _ in B.pool_configs(cfg)]
    assert len(names) == 27 and "e40_wd1e-4_ls0.05" in names and "e60_wd1e-5_ls0.1" in names
    assert (cfg.dataset, cfg.model) == ("cifar10", "resnet18")
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        B.prepare(cfg, tmp_path / "run", "class_3", device="cpu")


def test_make_config_nested_dicts_and_unknown_keys():
    cfg = B.make_config({"original": {"epochs": 7}, "pool": {"epochs": [40, 50]}}, seed=3)
    assert cfg.original.epochs == 7 and cfg.original.lr == B.BenchmarkConfig().original.lr
    assert cfg.pool.epochs == (40, 50) and cfg.seed == 3
    with pytest.raises(ValueError, match=r"unknown BenchmarkConfig key\(s\) \['sead'\]"):
        B.make_config(sead=1)
    with pytest.raises(ValueError, match=r"unknown TrainConfig key\(s\) \['epoch'\]"):
        B.make_config({"original": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"unknown PoolSpec key"):
        B.make_config({"pool": {"wd": (1e-4,)}})
    with pytest.raises(ValueError, match="unknown merge method|valid"):
        B.make_config(merge_methods=("negmerg",))
    with pytest.raises(ValueError, match="unknown unlearning method 'sal'"):
        B.make_config(baselines=("sal",))
    with pytest.raises(ValueError, match=r"unknown UnlearnConfig key"):
        B.make_config(baseline_configs={"ft": {"epoch": 1}})
    with pytest.raises(ValueError, match="threshold"):
        B.make_config(threshold=1.5)


def test_scenario_names():
    assert B.parse_scenario("random_10") == {"scenario": "random", "fraction": 0.1, "classes": ()}
    assert B.parse_scenario("class_1-7")["classes"] == (1, 7)
    for bad in ("random", "class_", "cls_3", "random_ten"):
        with pytest.raises(ValueError, match="unknown scenario"):
            B.parse_scenario(bad)
    with pytest.raises(ValueError, match="unknown scenario"):
        B.make_config(scenarios=("rand_10",))


@pytest.mark.parametrize("changes, scenario, match", [
    ({"dataset": "digitz"}, "class_3", "unknown dataset 'digitz'"),
    ({"model": "resnet99"}, "class_3", "resnet99"),
    ({}, "random_0", r"fraction must be in \(0, 1\)"),
    ({}, "random_100", r"fraction must be in \(0, 1\)"),
    ({}, "class_0-1-2-3-4-5-6-7-8-9", "every class"),
    ({}, "class_12", r"unknown class\(es\) \[12\]"),
    ({}, "random_0.01", "empty forget set"),
    ({"data_options": {"size": 8, "colour": 3}}, "class_3", "colour"),
])
def test_bad_input_fails_clearly_before_training(tmp_path, changes, scenario, match):
    with pytest.raises((ValueError, TypeError), match=match):
        B.prepare(B.make_config(B.default_config(smoke=True), **changes), tmp_path, scenario, device="cpu")
    assert not list(tmp_path.iterdir())  # nothing written before the inputs are checked


def test_run_dir_of_another_config_is_refused(done_run):
    run_dir, _ = done_run
    with pytest.raises(ValueError, match=r"different benchmark config \(differs in \['seed'\]\)"):
        B.prepare(B.make_config(_tiny(), seed=1), run_dir, "class_3", device="cpu")


def test_unknown_metric_in_headline(done_run):
    with pytest.raises(ValueError, match="unknown metric 'gap'"):
        B.headline(done_run[1], metric="gap")


# ---------------------------------------------------------------- the run
def test_run_records_every_method_with_consistent_metrics(done_run):
    run_dir, df = done_run
    cfg = _tiny()
    names = [n for n, _ in B.pool_configs(cfg)]
    assert len(names) == 4
    final = df[df.metric.isin(B.UNLEARNING_METRICS + ("avg_gap",))]
    methods = set(final[final.pool_config == ""].method)
    assert methods == {"original", "retrain", "task_arithmetic", "mean", "ties", "magmax", "negmerge",
                       "ga", "salun"}
    assert set(final[final.pool_config != ""].pool_config) == set(names)
    # Five rows (UA, RA, TA, MIA, avg_gap) per method and per pool member, no duplicates.
    assert final.groupby(["method", "pool_config"]).size().eq(5).all()
    retrain = final[final.method == "retrain"].set_index("metric").value
    assert retrain["avg_gap"] == 0.0
    for (method, pc), g in final.groupby(["method", "pool_config"]):
        v = g.set_index("metric").value
        if math.isfinite(v["UA"]):
            assert v["avg_gap"] == pytest.approx(avg_gap(v, retrain))
    # Class-wise forgetting: Retrain never saw class 3 and cannot classify it.
    assert retrain["UA"] == 100.0
    # Task vectors (saved for streaming analysis) cover exactly the parameters, no buffers.
    saved = sorted((run_dir / "class_3" / "task_vectors").glob("*.safetensors"))
    assert len(saved) == 4
    setup = B.prepare(cfg, run_dir, "class_3", device="cpu")
    tv = TaskVector.load(saved[0])
    assert set(tv) == {k for k, _ in setup.original.named_parameters()}


def test_lambda_curves_and_selection_rule(done_run):
    _, df = done_run
    cfg = _tiny()
    curves = df[df.metric == "acc"]
    for (method, pc), g in curves.groupby(["method", "pool_config"]):
        assert set(g.split) == {"val_forget", "val_control"}
        # The search's λ lie on the grid coef_step apart and include both ends of the initial range.
        lams = sorted(g[g.split == "val_forget"].coef)
        assert {min(cfg.coefs), max(cfg.coefs)} <= set(lams) and len(set(lams)) == len(lams)
        assert all(abs(c / cfg.coef_step - round(c / cfg.coef_step)) < 1e-6 for c in lams)
        search = df[(df.method == method) & (df.pool_config == pc)].set_index("metric").value
        assert search["n_coefs"] == len(lams) and search["coef_max_searched"] >= max(lams)
    assert set(curves.method) == {"task_arithmetic", "mean", "ties", "magmax", "negmerge"}
    # λ=0 is the original model: every curve starts at the same control accuracy = the reference.
    at0 = curves[(curves.coef == 0.0) & (curves.split == "val_control")].value
    assert at0.nunique() == 1
    ref = at0.iloc[0]
    final = df[(df.metric == "UA")]
    for (method, pc), g in curves.groupby(["method", "pool_config"]):
        lam = final[(final.method == method) & (final.pool_config == pc)].coef.iloc[0]
        wide = g.pivot(index="coef", columns="split", values="value")
        ok = wide[wide.val_control >= cfg.threshold * ref]
        best = ok.val_forget.min()
        assert lam == ok[ok.val_forget == best].index.min()  # lowest forget acc, ties to smaller λ
    # The val-selected single model is one of the pool members, with its metrics.
    sel = df[(df.method == "task_arithmetic") & (df.pool_config == "") & (df.metric == "avg_gap")]
    member = sel.note.iloc[0].split()[-1]
    mem = df[(df.method == "task_arithmetic") & (df.pool_config == member) & (df.metric == "avg_gap")]
    assert sel.value.iloc[0] == mem.value.iloc[0] and sel.coef.iloc[0] == mem.coef.iloc[0]


def test_rerun_skips_finished_steps(done_run):
    run_dir, df = done_run
    before = (run_dir / "results.jsonl").read_text()
    again = B.run(_tiny(), run_dir, device="cpu", progress=False)
    assert (run_dir / "results.jsonl").read_text() == before
    pd.testing.assert_frame_equal(_sorted(again), _sorted(df))


@pytest.mark.parametrize("where", ["_negate", "train"])
def test_interrupted_run_resumes_to_the_same_records(done_run, tmp_path, monkeypatch, where):
    _, reference = done_run
    modules = [pipeline] if where == "_negate" else [setup_mod, pipeline]
    real = getattr(pipeline, where)
    calls = {"n": 0}
    stop_at = 3 if where == "_negate" else 5  # mid-negation / mid-pool (calls 1-2 train Original, Retrain)

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    for mod in modules:
        monkeypatch.setattr(mod, where, flaky)
    with pytest.raises(KeyboardInterrupt):
        B.run(_tiny(), tmp_path, device="cpu", progress=False)
    partial = read_results(tmp_path / "results.jsonl")
    assert 0 < len(partial) < len(reference)
    for mod in modules:
        monkeypatch.setattr(mod, where, real)
    resumed = B.run(_tiny(), tmp_path, device="cpu", progress=False)
    pd.testing.assert_frame_equal(_sorted(resumed), _sorted(reference))


def test_no_admissible_coefficient_is_a_note_not_a_crash(done_run, tmp_path):
    run_dir, _ = done_run
    setup = B.prepare(_tiny(), run_dir, "class_3", device="cpu")
    setup.run_dir = tmp_path  # write the extra records elsewhere
    setup.control_reference = 1e9  # no λ can keep 95 % of this
    tvs = B.pool_task_vectors(setup)
    pipeline._negate(setup, "negmerge", next(iter(tvs.values())))
    df = read_results(tmp_path / "results.jsonl")
    final = df[df.metric.isin(B.UNLEARNING_METRICS + ("avg_gap",))]
    assert (final.note == B.NO_COEF).all() and final.value.isna().all() and final.coef.isna().all()
    # The curve is still recorded: λ = 0 and the initial top 1 fail control, so nothing else is searched.
    n = df[df.metric == "n_coefs"].value.iloc[0]
    assert n == 2 and len(df[df.metric == "acc"]) == 2 * n
    pipeline._select_single(df.assign(method="task_arithmetic", pool_config="m"), setup, ["m"])
    sel = read_results(tmp_path / "results.jsonl").iloc[-5:]
    assert sel.value.isna().all() and "none" in sel.note.iloc[0]


def test_record_method_and_summary(done_run, tmp_path):
    run_dir, df = done_run
    setup = B.prepare(_tiny(), run_dir, "class_3", device="cpu")
    log = ResultsLog(tmp_path / "r.jsonl")
    rows = B.record_method(log, setup, "forget_vector", {"UA": 90.0, "RA": 99.0, "TA": 98.0, "MIA": 80.0},
                           note="δ")
    assert [r.metric for r in rows] == ["UA", "RA", "TA", "MIA", "avg_gap"]
    assert rows[-1].value == pytest.approx(avg_gap({r.metric: r.value for r in rows[:4]}, setup.retrain_metrics))
    with pytest.raises(ValueError, match=r"lack \['MIA'\]"):
        B.record_method(log, setup, "forget_vector", {"UA": 1.0, "RA": 1.0, "TA": 1.0})
    with pytest.raises(ValueError, match="unknown method"):
        B.record_method(log, setup, "forget_vectors", {"UA": 1, "RA": 1, "TA": 1, "MIA": 1})
    both = pd.concat([df, read_results(log.path)], ignore_index=True)
    s = B.summary(both)
    assert list(s.columns) == ["dataset", "scenario", "method", "metric", "value"]
    assert s.groupby("method").size().eq(5).all() and len(s) == 5 * 10
    assert s.method.iloc[0] == "original" and s.method.iloc[-1] == "forget_vector"
    h = B.headline(df)
    assert h.n_pool.iloc[0] == 4
    assert h.task_arithmetic_best.iloc[0] <= h.task_arithmetic_median.iloc[0] <= h.task_arithmetic_worst.iloc[0]
    assert np.isfinite(h.negmerge.iloc[0])


def test_val_selected_member_survives_duplicate_curve_rows(tmp_path):
    # A resumed step re-appends the records of an append that was cut short, so the log can hold
    # exact duplicates; choosing "Task Arithmetic (val)" from it must not trip over them.
    import dataclasses
    import types

    from negkit.results import Record

    log = ResultsLog(tmp_path / "r.jsonl")
    setup = types.SimpleNamespace(scenario="class_3", log=log,
                                  cfg=types.SimpleNamespace(model="small_resnet", dataset="digits", seed=0),
                                  retrain_metrics={"UA": 100.0, "RA": 99.0, "TA": 98.0, "MIA": 90.0})
    base = dict(setting="standard", model="small_resnet", dataset="digits", scenario="class_3",
                method="task_arithmetic", seed=0)
    rows = []
    for name, (val_forget, ua) in {"a": (10.0, 91.0), "b": (20.0, 81.0)}.items():
        for coef in (0.0, 0.5):
            rows += [Record(**base, pool_config=name, coef=coef, split="val_forget", metric="acc",
                            value=val_forget if coef else 99.0),
                     Record(**base, pool_config=name, coef=coef, split="val_control", metric="acc", value=95.0)]
        rows += [Record(**base, pool_config=name, coef=0.5, split=s, metric=m, value=v) for s, m, v in
                 [("forget", "UA", ua), ("retain", "RA", 97.0), ("test", "TA", 96.0), ("forget", "MIA", 80.0),
                  ("all", "avg_gap", 3.0)]]
    df = pd.DataFrame([dataclasses.asdict(r) for r in rows])
    df = pd.concat([df, df.iloc[:4]], ignore_index=True)  # member a's curve written twice
    pipeline._select_single(df, setup, ["a", "b"])
    sel = read_results(log.path)
    assert (sel.pool_config == "").all() and (sel.note == "val-selected pool member a").all()
    assert sel.set_index("metric").value["UA"] == 91.0 and (sel.coef == 0.5).all()
