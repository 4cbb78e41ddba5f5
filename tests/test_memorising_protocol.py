"""The memorising-regime protocol: forget vectors per scenario, the regime check, paired statistics, K-sweep."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from negkit import benchmark as B
from negkit import forget_vectors as fvs
from negkit.benchmark import forget as bforget
from negkit.benchmark import ksweep, units
from negkit.forget_vectors import tune


# ---------------------------------------------------------------- forget-vector defaults per scenario
def test_random_forgetting_gets_the_reference_random_defaults():
    c = tune.default_config("random_10")
    assert (c.beta, c.alpha, c.lam, c.tau, c.lr, c.epochs, c.batch_size, c.batching, c.gamma) == (
        1.0, 1.0, 1.0, 0.0, 0.01, 10, 256, "joint", 0.9)


def test_classwise_forgetting_keeps_its_own_defaults():
    assert tune.default_config("class_0") == fvs.ForgetVectorConfig()
    assert (fvs.ForgetVectorConfig().beta, fvs.ForgetVectorConfig().tau, fvs.ForgetVectorConfig().lr) == (5.0, 1.0, 0.2)


def test_unknown_scenario_kind_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="random.*class"):
        tune.default_config("classwise")


def test_overrides_are_checked_by_the_config():
    assert tune.default_config("random", lr=0.1).lr == 0.1
    with pytest.raises(ValueError):
        tune.default_config("random", gamma=0.0)


def test_candidate_settings_are_the_grid_product():
    got = tune.candidate_settings({"lr": (0.01, 0.1), "beta": (1.0, 5.0)})
    assert list(got) == ["beta1_lr0.01", "beta1_lr0.1", "beta5_lr0.01", "beta5_lr0.1"]
    assert got["beta5_lr0.01"] == {"beta": 5.0, "lr": 0.01}
    assert tune.candidate_settings({}) == {"default": {}}
    with pytest.raises(ValueError, match="non-empty"):
        tune.candidate_settings({"lr": ()})


# ---------------------------------------------------------------- the selection rules
TABLE = pd.DataFrame({"setting": ["a", "a", "a", "b", "b"], "epoch": [1, 2, 3, 1, 2],
                      "val_forget": [99.0, 93.0, 80.0, 91.0, 60.0],
                      "val_control": [90.0, 89.0, 84.0, 88.0, 70.0]})


def test_min_forget_takes_the_lowest_admissible_forget_accuracy():
    row, ok = tune.pick(TABLE, "min_forget", reference=90.0, threshold=0.95)  # control ≥ 85.5
    assert ok and (row.setting, row.epoch) == ("b", 1)


def test_match_takes_the_admissible_forget_accuracy_closest_to_the_target():
    row, ok = tune.pick(TABLE, "match", reference=90.0, threshold=0.95, target=92.0)
    assert ok and (row.setting, row.epoch) in {("a", 2), ("b", 1)}  # |93−92| = |91−92|: the earlier epoch wins
    assert (row.setting, row.epoch) == ("b", 1)
    row, _ = tune.pick(TABLE, "match", reference=90.0, threshold=0.95, target=98.0)
    assert (row.setting, row.epoch) == ("a", 1)


def test_no_admissible_candidate_gives_the_highest_control_flagged():
    row, ok = tune.pick(TABLE, "min_forget", reference=100.0, threshold=0.95)
    assert not ok and row.val_control == 90.0


def test_match_without_a_target_is_refused():
    with pytest.raises(ValueError, match="target"):
        tune.pick(TABLE, "match", reference=90.0, threshold=0.95)
    with pytest.raises(ValueError, match="unknown rule"):
        tune.pick(TABLE, "closest", reference=90.0, threshold=0.95)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _sets(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_per_epoch_snapshots_are_the_vectors_of_shorter_runs():
    model, forget, retain = _Linear(), _sets(12, 1), _sets(40, 2)
    cfg = tune.default_config("random", epochs=3, batch_size=16, augment="none", lr=0.5)
    table, vectors = tune.select_on_validation(model, forget, retain, forget, retain, cfg,
                                               grid={"beta": (1.0, 5.0)}, device="cpu")
    assert len(table) == 1 + 2 * 3 and table.epoch.iloc[0] == 0 and table.norm.iloc[0] == 0
    assert set(vectors) == {(s, e) for s in ("beta1", "beta5") for e in (1, 2, 3)}
    short = fvs.learn_forget_vector(model, forget, retain, tune.default_config(
        "random", epochs=2, batch_size=16, augment="none", lr=0.5, beta=5.0), device="cpu")
    assert torch.equal(short.delta, vectors[("beta5", 2)].delta)
    assert {"forget_margin", "retain_probe", "val_forget", "val_control"} <= set(table.columns)


# ---------------------------------------------------------------- the benchmark's forget-vector step
FV = dict(scenarios=("random_10", "class_3"), baselines=(), merge_methods=("negmerge",),
          pool={"epochs": (1,), "weight_decays": (1e-4,), "label_smoothings": (0.0, 0.1)},
          forget_vectors=True, forget_vector_configs={"random": {"epochs": 2, "augment": "none"},
                                                      "class": {"epochs": 2, "augment": "none"}},
          forget_vector_grid={"random": {"lr": (0.01, 0.1)}})


@pytest.fixture(scope="module")
def fv_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fv")
    cfg = B.default_config(smoke=True, **FV)
    return run_dir, cfg, B.run(cfg, run_dir, device="cpu", progress=False)


def test_forget_vectors_are_recorded_per_rule_with_their_choice(fv_run):
    run_dir, cfg, df = fv_run
    fv = df[(df.method == "forget_vector") & (df.metric == "avg_gap")]
    assert set(zip(fv.scenario, fv.setting)) == {("random_10", B.SETTING), ("random_10", B.SETTING_MATCH),
                                                 ("class_3", B.SETTING)}
    assert fv.note.str.contains("of 4 candidates").sum() == 2  # 2 settings × 2 epochs on random_10
    sel = pd.read_csv(run_dir / "seed_0" / "random_10" / "forget_vectors" / "selection.csv")
    assert set(sel.setting) == {"original", "lr0.01", "lr0.1"}


def test_forget_vector_config_errors_come_at_load():
    with pytest.raises(ValueError, match="unknown scenario kinds"):
        B.default_config(smoke=True, forget_vector_grid={"randm": {"lr": (0.1,)}})
    with pytest.raises(ValueError):
        B.default_config(smoke=True, forget_vector_configs={"random": {"gama": 0.5}})


def test_forget_vector_units_wait_for_original_and_retrain_and_give_the_same_records(fv_run, tmp_path):
    run_dir, cfg, df = fv_run
    fv_units = [u for u in units.negation_units(cfg) if u.kind == "forget_vector"]
    assert [u.name for u in fv_units] == ["seed_0/random_10/forget_vectors", "seed_0/class_3/forget_vectors"]
    assert fv_units[0].after == ("seed_0/original", "seed_0/random_10/retrain")
    one = B.make_config(cfg, scenarios=("random_10",))  # the same artefacts, half the work
    for u in units.training_units(one) + units.negation_units(one):
        units.run_unit(one, tmp_path, u, device="cpu")
    assert all(units.is_done(one, tmp_path, u) for u in units.negation_units(one) if u.kind == "forget_vector")
    again = B.run(one, tmp_path, device="cpu", progress=False)
    df = df[df.scenario == "random_10"]
    key = ["setting", "scenario", "method", "pool_config", "metric", "seed"]
    a = df[df.method == "forget_vector"].sort_values(key).value.to_numpy()
    b = again[again.method == "forget_vector"].sort_values(key).value.to_numpy()
    np.testing.assert_allclose(a, b)


# ---------------------------------------------------------------- the regime check
def _regime_records(original_ua: float, retrain_ua: float) -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for method, ua in (("original", original_ua), ("retrain", retrain_ua)):
            rows.append({"setting": B.SETTING, "scenario": "random_10", "method": method, "pool_config": "",
                         "metric": "UA", "value": ua, "seed": seed})
    return pd.DataFrame(rows)


def test_regime_check_passes_a_memorising_original():
    r = B.regime(_regime_records(0.3, 10.0))
    assert r.memorises.all() and r.original_forget_acc.tolist() == [99.7, 99.7]
    assert B.regime_warnings(_regime_records(0.3, 10.0)) == []


def test_regime_check_warns_when_the_original_does_not_memorise():
    warnings = B.regime_warnings(_regime_records(9.0, 13.7))
    assert len(warnings) == 1 and "the Original does not memorise D_f: little to undo" in warnings[0]
    assert not B.regime(_regime_records(9.0, 13.7)).memorises.any()


def test_regime_is_computed_from_a_real_run(fv_run):
    _, _, df = fv_run
    r = B.regime(df)
    assert set(r.scenario) == {"random_10", "class_3"} and len(r) == 2
    assert (r.original_UA + r.original_forget_acc == 100).all()


# ---------------------------------------------------------------- paired statistics
def test_sign_flip_pvalue_known_cases():
    assert B.sign_flip_pvalue([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # the smallest p five seeds allow
    assert B.sign_flip_pvalue([1, 2, -0.1, 3, 4]) == pytest.approx(4 / 32)
    assert B.sign_flip_pvalue([1, -1, 1, -1]) == 1.0
    assert B.sign_flip_pvalue([0.5]) == 1.0


def test_sign_flip_pvalue_equals_brute_force_enumeration():
    d = np.array([0.7, -0.2, 1.3, 0.4, -0.9, 2.1])
    obs = abs(d.mean())
    flips = [abs((np.array(s) * d).mean()) >= obs - 1e-12 for s in itertools.product((1, -1), repeat=len(d))]
    assert B.sign_flip_pvalue(d) == pytest.approx(np.mean(flips))


def test_sign_flip_pvalue_refuses_bad_input():
    for bad in ([], [1.0, math.nan], list(range(21))):
        with pytest.raises(ValueError):
            B.sign_flip_pvalue(bad)


def test_paired_reports_a_p_value(fv_run):
    _, _, df = fv_run
    p = B.paired(df, "negmerge", ("forget_vector",))
    assert "p_value" in p.columns and p.p_value.between(0, 1).all()


# ---------------------------------------------------------------- K-sweep
def test_draw_subsets_are_distinct_seeded_and_sized():
    names = [f"m{i}" for i in range(6)]
    a = ksweep.draw_subsets(names, 3, 4, seed=7)
    assert a == ksweep.draw_subsets(names, 3, 4, seed=7) and len(set(a)) == 4 and all(len(s) == 3 for s in a)
    assert ksweep.draw_subsets(names, 6, 3, seed=0) == [tuple(names)]
    with pytest.raises(ValueError):
        ksweep.draw_subsets(names, 7, 1, seed=0)


def test_k_sweep_rows_and_full_pool_reuse_the_benchmark_negation(fv_run):
    run_dir, cfg, df = fv_run
    ks = ksweep.k_sweep(cfg, run_dir, ks=(1,), subsets=2, methods=("negmerge", "mean"), rules=("min_forget",),
                        device="cpu")
    assert list(ks.columns[:6]) == ["k", "subset", "seed", "method", "metric", "value"]
    assert sorted(set(ks.k)) == [1, 2] and len(ks[(ks.k == 1) & (ks.metric == "UA")]) == 4
    full = ks[(ks.k == 2) & (ks.method == "negmerge") & (ks.metric == "avg_gap")].value.iloc[0]
    bench = df[(df.method == "negmerge") & (df.scenario == "random_10") & (df.metric == "avg_gap")
               & (df.setting == B.SETTING) & (df.pool_config == "")].value.iloc[-1]
    assert full == pytest.approx(bench)
    again = ksweep.k_sweep(cfg, run_dir, ks=(1,), subsets=2, methods=("negmerge", "mean"), rules=("min_forget",),
                           device="cpu")  # read back from the per-seed cache
    pd.testing.assert_frame_equal(ks.reset_index(drop=True), again.reset_index(drop=True), check_dtype=False)


# ---------------------------------------------------------------- Original's and Retrain's metrics, once per scenario
def test_reference_metrics_are_computed_once_and_follow_the_weights(fv_run, monkeypatch):
    from negkit.benchmark import setup as S

    run_dir, cfg, _ = fv_run
    first = B.prepare(cfg, run_dir, "random_10", device="cpu", record=False)
    assert (run_dir / "seed_0" / "random_10" / S.REFERENCE_FILE).exists()
    monkeypatch.setattr(S, "unlearning_metrics", lambda *a, **k: pytest.fail("recomputed a cached metric"))
    again = B.prepare(cfg, run_dir, "random_10", device="cpu", record=False)
    assert again.original_metrics == first.original_metrics and again.retrain_metrics == first.retrain_metrics
    assert again.control_reference == first.control_reference
    # other weights: the digest changes, so the cache is not used
    with torch.no_grad():
        next(first.retrain.parameters()).add_(1.0)
    assert S._weights_digest(first.retrain) != S._weights_digest(again.retrain)


# ---------------------------------------------------------------- λ searches that found nothing to do
def test_coef_warnings_name_a_scenario_where_every_negation_chose_zero():
    from negkit.benchmark.config import EDGE, ZERO_COEF

    rows = [{"scenario": "class_3", "method": m, "metric": "UA", "coef": 0.0, "note": ZERO_COEF, "value": 0.0}
            for m in ("task_arithmetic", "negmerge", "mean")]
    warnings = B.coef_warnings(pd.DataFrame(rows))
    assert len(warnings) == 1 and "every negation chose λ = 0" in warnings[0] and "pool.epochs" in warnings[0]
    rows[1].update(coef=8.0, note=EDGE)
    warnings = B.coef_warnings(pd.DataFrame(rows))
    assert len(warnings) == 1 and "top of their range" in warnings[0] and "maximum" not in ZERO_COEF


def test_coef_warnings_are_per_rule_and_say_why_match_stays_at_zero():
    rows = [{"scenario": "random_10", "setting": s, "method": m, "metric": "UA", "coef": c, "note": "", "value": 0.0}
            for s, c in (("standard", 1.0), ("standard_match", 0.0)) for m in ("negmerge", "mean")]
    warnings = B.coef_warnings(pd.DataFrame(rows))
    assert len(warnings) == 1 and warnings[0].startswith("random_10, rule (b) match: every negation chose λ = 0")
    assert "closer to Retrain's" in warnings[0] and "pool.epochs" not in warnings[0]
