"""CLIP task negation end to end on a tiny random-init CLIP and digit ImageFolders."""
from __future__ import annotations

import math

import pytest
import torch

import negkit.data
import negkit.merge
from negkit import io as nkio
from negkit.clip import finetune as cf
from negkit.clip import model as cm
from negkit.clip import negation as cn
from negkit.clip.datasets import write_digits_imagefolder
from negkit.clip.heads import get_head
from negkit.evaluate import evaluate, select_coef
from negkit.results import ResultsLog
from negkit.taskvec import TaskVector

COEFS = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("neg")
    write_digits_imagefolder(tmp / "data", name="mnist", size=32, per_class=12)
    write_digits_imagefolder(tmp / "data", name="imagenet", size=32, per_class=12, invert=True, test_split="val",
                             seed=1)
    torch.manual_seed(0)
    backbone = cm.load_clip(cm.TINY_MODEL, None, device="cpu")
    kw = dict(root=tmp / "data", source="imagefolder", image_size=32)
    forget, control = negkit.data.get("mnist", **kw), negkit.data.get("imagenet", **kw)
    pool = [cf.PoolConfig(name=f"m{i}", epochs=1, lr=2e-3, batch_size=16, warmup_steps=1, fused=False, seed=i)
            for i in range(2)]
    paths = cf.finetune_pool(backbone, "mnist", pool, out_dir=tmp / "ft", data_root=tmp / "data",
                             data_kw={"source": "imagefolder"}, head_cache=tmp / "heads", device="cpu",
                             progress=False)
    return dict(tmp=tmp, backbone=backbone, forget=forget, control=control, paths=paths)


def _run(world, log, **kw):
    args = dict(methods=["negmerge", "mean"], coefs=COEFS, head_cache=world["tmp"] / "heads", device="cpu")
    return cn.run_task_negation(world["backbone"], world["forget"], world["control"], world["paths"], log,
                                **{**args, **kw})


def test_visual_task_vectors_cover_the_image_encoder(world):
    pre = world["backbone"].visual_state_dict()
    taus = cn.visual_task_vectors(pre, world["paths"])
    assert list(taus) == ["m0", "m1"]
    ft = nkio.load_state_dict(world["paths"]["m0"])
    assert set(taus["m0"]) == {k for k, v in pre.items() if v.is_floating_point()}
    torch.testing.assert_close(taus["m0"]["conv1.weight"], ft["conv1.weight"] - pre["conv1.weight"])


def test_negation_records_selection_and_resume(world, tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    summary = _run(world, log)
    df = log.read()
    assert set(df.method) == {"zeroshot", "negmerge", "mean", "task_arithmetic"}
    assert (df.setting == "clip").all() and (df.scenario == "task").all() and (df.dataset == "mnist").all()
    assert (df.model == world["backbone"].name).all()
    assert set(df.metric) == {"acc", "n_coefs", "coef_max_searched"}
    # zero-shot + per candidate (3 λ × 2 val, 2 test, λ count and range searched)
    assert len(df) == 4 + 4 * (2 * len(COEFS) + 2 + 2)
    assert (df[df.metric == "n_coefs"].value == len(COEFS)).all()
    assert set(zip(summary.method, summary.pool_config)) == {("negmerge", ""), ("mean", ""),
                                                             ("task_arithmetic", "m0"), ("task_arithmetic", "m1")}
    # one row per (method, member, λ, split): no duplicates
    assert not df.duplicated(["method", "pool_config", "coef", "split", "metric"]).any()
    zs = df[df.method == "zeroshot"].set_index("split").value
    for (method, member), rows in df[df.method != "zeroshot"].groupby(["method", "pool_config"]):
        vf = rows[rows.split == "val_forget"].set_index("coef").value
        vc = rows[rows.split == "val_control"].set_index("coef").value
        assert vf[0.0] == zs["val_forget"] and vc[0.0] == zs["val_control"]  # λ = 0 is the zero-shot model
        expected = select_coef(COEFS, vf[COEFS].tolist(), vc[COEFS].tolist(), zs["val_control"], 0.95)
        got = rows[rows.split == "test_forget"].coef.iloc[0]
        assert (expected is None and math.isnan(got)) or got == expected

    # the recorded test accuracy is that of θ_pre − λ τ, rebuilt independently here
    row = df[(df.pool_config == "m1") & (df.split == "test_forget")].iloc[0]
    assert not math.isnan(row.coef)  # λ = 0 always keeps 100 % of the zero-shot control accuracy
    b = world["backbone"]
    tau = TaskVector.from_state_dicts(b.visual_state_dict(), nkio.load_state_dict(world["paths"]["m1"]))
    clf = cm.ImageClassifier.from_backbone(b, get_head(b, "mnist", cache_dir=world["tmp"] / "heads",
                                                       classnames=world["forget"].classnames))
    clf.visual.load_state_dict((-tau).apply_to(b.visual_state_dict(), row.coef))
    assert evaluate(clf, world["forget"].test, device="cpu")["acc"] == pytest.approx(row.value)

    # resume: a second run measures nothing new and reports the same
    again = _run(world, log)
    assert len(log.read()) == len(df)
    pd_cols = ["method", "pool_config", "coef", "test_forget", "test_control"]
    assert again[pd_cols].sort_values(pd_cols[:2]).reset_index(drop=True).equals(
        summary[pd_cols].sort_values(pd_cols[:2]).reset_index(drop=True))


def test_partial_sweep_is_completed_not_duplicated(world, tmp_path):
    log = ResultsLog(tmp_path / "r.jsonl")
    _run(world, log, methods=["mean"], single=False, coefs=[0.0, 0.5])
    df = log.read()
    # drop the test rows as if the run had stopped after the sweep, then widen the grid
    partial = df[df.split.isin(["val_forget", "val_control"]) | (df.method == "zeroshot")]
    log2 = ResultsLog(tmp_path / "r2.jsonl")
    from negkit.results import Record
    log2.append([Record(**r) for r in partial.to_dict("records")])
    _run(world, log2, methods=["mean"], single=False, coefs=COEFS)
    df2 = log2.read()
    assert not df2.duplicated(["method", "pool_config", "coef", "split", "metric"]).any()
    assert sorted(df2[(df2.method == "mean") & (df2.split == "val_forget")].coef) == COEFS


def test_lambda_search_records_what_it_evaluated_and_resumes(world, tmp_path):
    log = ResultsLog(tmp_path / "s.jsonl")
    summary = _run(world, log, methods=["mean"], single=False, coefs=None, coef_max=2.0)
    df = log.read()
    rows = df[df.method == "mean"]
    lams = sorted(rows[rows.split == "val_forget"].coef)
    n = rows[rows.metric == "n_coefs"].value.iloc[0]
    top = rows[rows.metric == "coef_max_searched"].value.iloc[0]
    assert n == len(lams) == len(set(lams)) and lams[0] == 0.0 and top in (1.0, 2.0) and 1.0 in lams
    assert all(abs(c / 0.05 - round(c / 0.05)) < 1e-6 for c in lams)
    vf = rows[rows.split == "val_forget"].set_index("coef").value
    vc = rows[rows.split == "val_control"].set_index("coef").value
    zs = df[(df.method == "zeroshot") & (df.split == "val_control")].value.iloc[0]
    assert summary.coef.iloc[0] == select_coef(lams, vf[lams].tolist(), vc[lams].tolist(), zs, 0.95)
    _run(world, log, methods=["mean"], single=False, coefs=None, coef_max=2.0)
    assert len(log.read()) == len(df)  # resumed: nothing evaluated or written again


def test_no_admissible_coefficient_is_recorded_not_raised(world, tmp_path):
    log = ResultsLog(tmp_path / "none.jsonl")
    # A recorded zero-shot control accuracy no negated model can reach (100.5 %), and λ = 0 left out.
    from negkit.results import Record
    log.append(Record(setting="clip", model=world["backbone"].name, dataset="mnist", scenario="task",
                      method="zeroshot", pool_config="", coef=0.0, split="val_control", metric="acc", value=100.5))
    summary = _run(world, log, methods=["mean"], single=False, threshold=1.0, coefs=[0.5, 1.0])
    assert math.isnan(summary.coef.iloc[0]) and math.isnan(summary.test_forget.iloc[0])
    rows = log.read()
    test = rows[(rows.method == "mean") & (rows.split == "test_forget")]
    assert len(test) == 1 and test.note.iloc[0] == cn.NO_COEF_NOTE


def test_unknown_merge_method_lists_valid(world, tmp_path):
    with pytest.raises(ValueError, match="unknown merge method 'avg'.*negmerge"):
        _run(world, ResultsLog(tmp_path / "x.jsonl"), methods=["avg"])
    with pytest.raises(ValueError, match="did you mean 0.95"):
        _run(world, ResultsLog(tmp_path / "x.jsonl"), threshold=95)


def test_paper_table(world, tmp_path):
    log = ResultsLog(tmp_path / "t.jsonl")
    _run(world, log)
    table = cn.paper_table(log.read())
    assert list(table.columns) == [("mnist", "forget"), ("mnist", "control"), ("avg", "forget"), ("avg", "control")]
    assert set(table.index) == {"zeroshot", "negmerge", "mean", "task_arithmetic"}
    df = log.read()
    zs = df[(df.method == "zeroshot") & (df.split == "test_control")].value.iloc[0]
    assert table.loc["zeroshot", ("avg", "control")] == pytest.approx(zs)
    ta = df[(df.method == "task_arithmetic") & (df.split == "test_forget")].value.mean()
    assert table.loc["task_arithmetic", ("mnist", "forget")] == pytest.approx(ta, nan_ok=True)
    with pytest.raises(ValueError, match="no CLIP task-negation"):
        cn.paper_table(df[df.setting == "standard"])


def test_saved_task_vectors_and_streamed_merge_match_in_memory(world, tmp_path):
    b = world["backbone"]
    files = cn.save_task_vectors(b, world["paths"], tmp_path / "tv")
    taus = cn.visual_task_vectors(b.visual_state_dict(), world["paths"])
    for name, path in files.items():
        loaded = TaskVector.load(path)
        assert loaded.metadata["architecture"] == cm.TINY_MODEL
        for k in taus[name]:
            torch.testing.assert_close(loaded[k], taus[name][k], rtol=0, atol=0)
    merged = negkit.merge.get("negmerge")(list(taus.values()))
    streamed = negkit.merge.merge_files(list(files.values()), "negmerge")
    for k in merged:
        torch.testing.assert_close(streamed[k], merged[k], rtol=0, atol=0)


def test_paper_table_task_arithmetic_member_chosen_on_validation():
    # "best" picks the member with the lowest *test* forget accuracy (an oracle); "val" must pick the
    # member whose selected λ gives the lowest *validation* forget accuracy, as the protocol allows.
    import dataclasses

    import pandas as pd

    from negkit.results import Record

    base = dict(setting="clip", model="tiny", dataset="mnist", scenario="task", metric="acc", seed=0)
    rows = [Record(**base, method="negmerge", pool_config="", coef=0.5, split=s, value=v)
            for s, v in (("test_forget", 30.0), ("test_control", 60.0))]
    # member: (chosen λ, val forget at λ, val control at λ, test forget, test control)
    members = {"m0": (0.5, 10.0, 58.0, 25.0, 59.0), "m1": (1.0, 20.0, 58.0, 5.0, 50.0),
               "m2": (0.5, 10.0, 57.0, 1.0, 40.0)}
    for name, (lam, vf, vc, tf, tc) in members.items():
        for coef in (0.0, 0.5, 1.0):
            rows += [Record(**base, method="task_arithmetic", pool_config=name, coef=coef, split="val_forget",
                            value=vf if coef == lam else 90.0),
                     Record(**base, method="task_arithmetic", pool_config=name, coef=coef, split="val_control",
                            value=vc if coef == lam else 61.0)]
        rows += [Record(**base, method="task_arithmetic", pool_config=name, coef=lam, split="test_forget", value=tf),
                 Record(**base, method="task_arithmetic", pool_config=name, coef=lam, split="test_control", value=tc)]
    df = pd.DataFrame([dataclasses.asdict(r) for r in rows])
    val = cn.paper_table(df, task_arithmetic="val")
    assert (val.loc["task_arithmetic", ("mnist", "forget")], val.loc["task_arithmetic", ("mnist", "control")]) == (
        25.0, 59.0)  # m0: lowest val forget, tie with m2 broken by higher val control
    assert cn.paper_table(df, task_arithmetic="best").loc["task_arithmetic", ("mnist", "forget")] == 1.0
    assert cn.paper_table(df).loc["task_arithmetic", ("mnist", "forget")] == pytest.approx(31.0 / 3)
    with pytest.raises(ValueError, match="'mean', 'val' or 'best'"):
        cn.paper_table(df, task_arithmetic="oracle")


def test_default_search_is_the_release_grid_linspace_0_1_21_and_says_so(world, tmp_path):
    log = ResultsLog(tmp_path / "grid.jsonl")
    _run(world, log, methods=["mean"], single=False, coefs=None)
    rows = log.read()
    rows = rows[rows.method == "mean"]
    lams = sorted(rows[rows.split == "val_forget"].coef)
    assert lams == pytest.approx([i / 20 for i in range(21)], abs=1e-12)  # exhaustive, no growth past 1
    n, top = (rows[rows.metric == m].iloc[0] for m in ("n_coefs", "coef_max_searched"))
    assert (n.value, top.value) == (21.0, 1.0) and n.note == top.note == "grid: linspace(0, 1, 21)"
    adaptive = ResultsLog(tmp_path / "adaptive.jsonl")
    _run(world, adaptive, methods=["mean"], single=False, coefs=None, coef_search="adaptive", coef_max=2.0)
    df = adaptive.read()
    n, top = (df[df.metric == m].iloc[0] for m in ("n_coefs", "coef_max_searched"))
    assert n.note == f"adaptive: {int(n.value)} λ of the step-0.05 grid on [0, {top.value:g}]"
