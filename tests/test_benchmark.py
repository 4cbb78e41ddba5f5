"""The digits/CIFAR protocol: configs, pool, λ selection, records, resumability, bad input."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from negkit import benchmark as B
from negkit import io
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
    cfg = B.make_config(pool={"epochs": (4, 5, 6)})  # PoolSpec's grid: the paper's, epochs /10
    pool = B.pool_configs(cfg)
    names = [n for n, _ in pool]
    assert len(pool) == 27 and len(set(names)) == 27
    assert names[0] == "e4_wd1e-4_ls0" and "e5_wd5e-5_ls0.05" in names and names[-1] == "e6_wd1e-5_ls0.1"
    tc = dict(pool)["e5_wd5e-5_ls0.05"]
    assert isinstance(tc, TrainConfig)
    assert (tc.epochs, tc.weight_decay, tc.label_smoothing, tc.momentum, tc.schedule, tc.optimizer) == (
        5, 5e-5, 0.05, 0.9, "cosine", "sgd")
    digits = [n for n, _ in B.pool_configs(B.default_config())]
    assert digits == ["e4_wd1e-4_ls0", "e4_wd1e-4_ls0.1", "e4_wd1e-5_ls0", "e4_wd1e-5_ls0.1",
                      "e6_wd1e-4_ls0", "e6_wd1e-4_ls0.1", "e6_wd1e-5_ls0", "e6_wd1e-5_ls0.1"]


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
    ({}, "random_0", r"forget percent must be in \(0, 100\)"),
    ({}, "random_100", r"forget percent must be in \(0, 100\)"),
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
    with pytest.raises(ValueError, match=r"different benchmark config \(differs in \['threshold'\]\)"):
        B.prepare(B.make_config(_tiny(), threshold=0.9), run_dir, "class_3", device="cpu")
    with pytest.raises(ValueError, match=r"seed 1 is not one of the config's seeds \[0\]"):
        B.prepare(_tiny(), run_dir, "class_3", seed=1, device="cpu")


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
    saved = sorted((run_dir / "seed_0" / "class_3" / "task_vectors").glob("*.safetensors"))
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
    assert list(s.columns) == ["dataset", "scenario", "method", "metric", "value", "std", "n_seeds"]
    assert (s.n_seeds == 1).all() and s["std"].isna().all()  # one seed: no spread
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
    setup = types.SimpleNamespace(scenario="class_3", log=log, seed=0,
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


# ---------------------------------------------------------------- seeds, rules, baseline grid
SEEDED = dict(seeds=(0, 1), scenarios=("random_10",), baselines=("ga",), merge_methods=("mean", "negmerge"),
              pool={"epochs": (1,), "weight_decays": (1e-4,), "label_smoothings": (0.0, 0.1)},
              baseline_grid={"ga": {"lr": (1e-4, 3e-3)}})


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("seeded")
    cfg = B.default_config(smoke=True, **SEEDED)
    return run_dir, cfg, B.run(cfg, run_dir, device="cpu", progress=False)


def test_seeds_redraw_the_split_and_keep_their_artefacts_apart(seeded_run):
    run_dir, cfg, df = seeded_run
    assert set(df.seed) == {0, 1}
    splits = [set(io.load_json(run_dir / f"seed_{s}" / "random_10" / "split.json")["forget_idx"]) for s in (0, 1)]
    assert splits[0] != splits[1] and len(splits[0]) == len(splits[1])
    for s in (0, 1):
        assert (run_dir / f"seed_{s}" / "original").is_dir() and (run_dir / f"seed_{s}" / "random_10" / "pool").is_dir()
    # Original is retrained per seed (its own initialisation and data order).
    orig = df[(df.method == "original") & (df.metric == "MIA")].set_index("seed").value
    retr = df[(df.method == "retrain") & (df.metric == "avg_gap")]
    assert len(orig) == 2 and (retr.value == 0).all() and len(retr) == 2
    s = B.summary(df)
    one = s[(s.method == "negmerge") & (s.metric == "UA")].iloc[0]
    per_seed = df[(df.setting == "standard") & (df.method == "negmerge") & (df.metric == "UA") & (df.pool_config == "")]
    assert one.n_seeds == 2 and one.value == pytest.approx(per_seed.value.mean())
    assert one["std"] == pytest.approx(per_seed.value.std(ddof=1), nan_ok=True)


def test_random_forgetting_records_both_selection_rules(seeded_run):
    run_dir, cfg, df = seeded_run
    final = df[(df.metric == "avg_gap") & (df.pool_config == "")]
    for setting in ("standard", "standard_match"):
        got = set(final[(final.setting == setting) & (final.seed == 0)].method)
        assert {"task_arithmetic", "mean", "negmerge", "ga"} <= got
    # The match rule picks the admissible λ whose val forget accuracy is closest to the original's val accuracy.
    setup = B.prepare(cfg, run_dir, "random_10", seed=1, device="cpu")
    curve = df[(df.setting == "standard_match") & (df.seed == 1) & (df.method == "mean") & (df.metric == "acc")]
    wide = curve.pivot_table(index="coef", columns="split", values="value")
    ok = wide[wide.val_control >= cfg.threshold * setup.control_reference]
    dist = (ok.val_forget - setup.control_reference).abs()
    lam = final[(final.setting == "standard_match") & (final.seed == 1) & (final.method == "mean")].coef.iloc[0]
    assert lam == dist[dist == dist.min()].index.min()


def test_baselines_are_tuned_on_validation_and_name_their_setting(seeded_run):
    run_dir, cfg, df = seeded_run
    sel = io.load_json(run_dir / "seed_0" / "random_10" / "baselines" / "ga" / "selection.json")
    assert set(sel["val"]) == {"lr1e-4", "lr0.003"}
    ga = df[(df.method == "ga") & (df.metric == "UA") & (df.setting == "standard") & (df.seed == 0)]
    chosen = ga.note.iloc[0].split()[2]
    val, ref = sel["val"], sel["control_reference"]
    ok = {n: v["val_forget"] for n, v in val.items() if v["val_control"] >= cfg.threshold * ref}
    assert chosen == (min(ok, key=ok.get) if ok else max(val, key=lambda n: val[n]["val_control"]))
    assert (run_dir / "seed_0" / "random_10" / "baselines" / "ga" / "lr0.003").is_dir()


def test_pick_rule_on_hand_made_candidates():
    val = {"a": {"val_forget": 50.0, "val_control": 90.0}, "b": {"val_forget": 30.0, "val_control": 80.0},
           "c": {"val_forget": 40.0, "val_control": 96.0}, "d": {"val_forget": 40.0, "val_control": 99.0}}
    assert pipeline._pick(val, 100.0, 0.95, None) == ("c", True)      # b fails control; c ties d, comes first
    assert pipeline._pick(val, 100.0, 0.80, None) == ("b", True)
    assert pipeline._pick(val, 100.0, 0.80, 48.0) == ("a", True)      # closest to the target
    assert pipeline._pick(val, 200.0, 0.95, None) == ("d", False)     # none admissible: highest control


def test_join_seeds_rebuilds_the_report_from_one_seeds_records_and_the_others_table(seeded_run, tmp_path):
    _, _, df = seeded_run
    table = B.results_table(df)
    table.to_csv(tmp_path / "results.csv", index=False)
    earlier = pd.read_csv(tmp_path / "results.csv")  # as the committed CSV reads back (notes NaN, not "")
    joined = B.join_seeds(df[df.seed == 1], earlier)
    cols = ["setting", "scenario", "method", "metric", "seed", "value", "coef", "n_coefs", "coef_max_searched"]
    pd.testing.assert_frame_equal(B.results_table(joined)[cols], table[cols], check_dtype=False)
    for setting in (B.SETTING, B.SETTING_MATCH):
        pd.testing.assert_frame_equal(B.summary(joined, setting=setting), B.summary(df, setting=setting))
        pd.testing.assert_frame_equal(B.paired(joined, setting=setting), B.paired(df, setting=setting))
    pd.testing.assert_frame_equal(B.regime(joined), B.regime(df))
    # A seed the records hold comes from the records only: the table's other values for it are ignored.
    changed = earlier.assign(value=earlier.value + 1000)
    again = B.results_table(B.join_seeds(df[df.seed == 1], changed))
    assert (again[again.seed == 1].value < 1000).all() and (again[again.seed == 0].value >= 1000 - 1e-9).all()
    with pytest.raises(ValueError, match="misses columns.*'metric'"):
        B.join_seeds(df, earlier.drop(columns="metric"))
    with pytest.raises(ValueError, match="twice"):
        B.join_seeds(df, pd.concat([earlier, earlier.iloc[:1]]))


def test_paired_differences_and_t_interval_by_hand():
    rows = []
    for seed, (nm, ta, mean) in enumerate([(1.0, 2.0, 3.0), (2.0, 2.5, 3.0), (1.5, 3.5, 3.0)]):
        for method, v in (("negmerge", nm), ("task_arithmetic", ta), ("mean", mean)):
            rows.append(dict(setting="standard", model="m", dataset="d", scenario="class_3", method=method,
                             pool_config="", coef=1.0, split="all", metric="avg_gap", value=v, seed=seed, note=""))
    p = B.paired(pd.DataFrame(rows)).set_index("b")
    # negmerge − task_arithmetic = (-1, -0.5, -2): mean -7/6, sd 0.7638, t(0.975, 2) = 4.3027
    half = 4.302653 * 0.763763 / math.sqrt(3)
    assert p.loc["task_arithmetic", "mean_diff"] == pytest.approx(-7 / 6)
    assert p.loc["task_arithmetic", "ci_low"] == pytest.approx(-7 / 6 - half, rel=1e-4)
    assert p.loc["task_arithmetic", "ci_high"] == pytest.approx(-7 / 6 + half, rel=1e-4)
    assert not p.loc["task_arithmetic", "excludes_zero"]
    # negmerge − mean = (-2, -1, -1.5): mean -1.5, sd 0.5, half-width 1.242 → excludes 0.
    assert p.loc["mean", "mean_diff"] == pytest.approx(-1.5) and p.loc["mean", "excludes_zero"]
    with pytest.raises(ValueError, match="confidence"):
        B.paired(pd.DataFrame(rows), confidence=95)
    table = B.mean_std(B.summary(pd.DataFrame(rows)))
    assert table.loc[("class_3", "mean"), "avg_gap"] == "3.00 ± 0.00"


def test_results_table_has_one_row_per_scenario_method_metric_seed(seeded_run):
    _, _, df = seeded_run
    t = B.results_table(df)
    assert not t.duplicated(["setting", "scenario", "method", "metric", "seed"]).any()
    assert {"seed", "coef", "note", "n_coefs", "coef_max_searched"} <= set(t.columns)
    neg = t[(t.method == "negmerge") & (t.setting == "standard")]
    assert len(neg) == 2 * 5 and (neg.n_coefs >= 2).all()


def test_preconditions_of_the_whole_run_are_checked_before_training(tmp_path):
    cfg = B.default_config(smoke=True, seeds=(0, 1), scenarios=("random_10", "class_3"))
    sizes = B.check_run(cfg, tmp_path / "run")
    assert len(sizes) == 4 and (sizes[["forget", "retain", "val_forget", "val_control", "test"]] > 0).all().all()
    assert not list((tmp_path / "run").iterdir())  # checked, nothing written
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        B.run(B.fashion_mnist_config(data_root=str(tmp_path / "none")), tmp_path / "fm", device="cpu")
    assert not list((tmp_path / "fm").glob("seed_*")) and not (tmp_path / "fm" / "results.jsonl").exists()
    io.save_json({**B.config.to_dict(cfg), "threshold": 0.5}, tmp_path / "other" / "benchmark_config.json")
    with pytest.raises(ValueError, match="different benchmark config"):
        B.run(cfg, tmp_path / "other", device="cpu")
    assert not list((tmp_path / "other").glob("seed_*")) and not (tmp_path / "other" / "results.jsonl").exists()


def test_fashion_mnist_and_dataset_configs():
    cpu, quick = B.fashion_mnist_config(), B.fashion_mnist_config(quick=True)
    full = B.fashion_mnist_config(full=True)
    assert cpu.seeds == (0, 1, 2, 3, 4) and cpu.scenarios == ("random_10", "class_0") and cpu.dataset == "fashion_mnist"
    assert cpu.data_options == {"size": 28, "train_size": 12000, "val_size": 2000} and len(B.pool_configs(cpu)) == 6
    assert cpu.forget_vectors and cpu.original.weight_decay == 0 and cpu.original.epochs == 30
    assert quick.data_options["train_size"] == 5000 and quick.data_options["size"] == 14
    assert quick.seeds == (0, 1, 2) and len(B.pool_configs(quick)) == 9
    assert "train_size" not in full.data_options and len(B.pool_configs(full)) == 27
    assert set(cpu.baseline_grid) == set(cpu.baselines)
    # every baseline is tuned over the same number of candidates
    assert {len(B.baseline_candidates(cpu, m)) for m in cpu.baselines} == {2}
    with pytest.raises(ValueError, match="not both"):
        B.fashion_mnist_config(full=True, quick=True)
    assert B.dataset_config("fashion_mnist") == cpu and B.dataset_config("digits") == B.default_config()
    assert B.dataset_config("fashion_mnist", smoke=True).data_options["size"] == 14
    assert B.default_config(dataset="fashion_mnist", smoke=True).seeds == (0,)
    assert B.default_config().seeds == (0, 1, 2)
    with pytest.raises(ValueError, match="there are"):
        B.dataset_config("svhn")
    grid = B.make_config(baseline_grid={"ga": {"lr": (1e-3, 3e-3), "epochs": (3, 6)}})
    assert list(B.baseline_candidates(grid, "ga")) == [
        "epochs3_lr0.001", "epochs3_lr0.003", "epochs6_lr0.001", "epochs6_lr0.003"]
    with pytest.raises(ValueError, match="baseline_grid"):
        B.make_config(baseline_grid={"ft": {"lr": ()}})
    with pytest.raises(ValueError, match="distinct|repeats"):
        B.make_config(seeds=(0, 0))


def test_summary_table_is_labelled_with_original_and_retrain_under_every_rule(seeded_run):
    run_dir, cfg, df = seeded_run
    table = B.summary_table(df)
    assert list(table.columns[:3]) == ["scenario", "rule", "method"] and "Avg. Gap" in table.columns
    for (scenario, rule), g in table.groupby(["scenario", "rule"]):
        assert {"Original", "Retrain", "NegMerge"} <= set(g.method), (scenario, rule)
    assert set(table.rule) == {"rule (a) min_forget", "rule (b) match"}
    assert (table.n == 2).all()
    # Every cell is the mean ± std over the two seeds of summary(), to two decimals.
    s = B.summary(df)
    ref = s[(s.scenario == "random_10") & (s.method == "negmerge") & (s.metric == "avg_gap")].iloc[0]
    row = table[(table.scenario == "random 10 % forgotten") & (table.rule == "rule (a) min_forget")
                & (table.method == "NegMerge")].iloc[0]
    assert row["Avg. Gap"] == f"{ref.value:.2f} ± {ref['std']:.2f}"


def test_write_summary_writes_the_csv_and_figure_of_both_rules(seeded_run, tmp_path):
    run_dir, cfg, df = seeded_run
    paths = B.write_summary(df, tmp_path)
    assert [p.name for p in paths] == ["summary.csv", "summary.png"] and all(p.stat().st_size > 0 for p in paths)
    written = pd.read_csv(paths[0])
    assert set(written.setting) == {B.SETTING, B.SETTING_MATCH}
    assert B.write_summary(df.iloc[0:0], tmp_path / "empty") == []
