from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from pathlib import Path  # noqa: E402

from matplotlib.collections import LineCollection, QuadMesh  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from negkit import plotting  # noqa: E402
from negkit.analysis import consensus_by_layer_vs_k, consensus_vs_k, pairwise_agreement  # noqa: E402
from negkit.plotting import consensus, curves, figures, images, style, sweeps  # noqa: E402
from negkit.plotting import results as result_plots  # noqa: E402
from negkit.results import COLUMNS, Record  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _records(rows):
    base = dict(setting="clip", model="ViT-B-32/openai", dataset="cars", scenario="task", pool_config="",
                coef=math.nan, split="test", metric="acc", value=0.0, seed=0)
    df = pd.DataFrame([Record(**{**base, **r}).__dict__ for r in rows])
    assert list(df.columns) == list(COLUMNS)
    return df


def _pool(k=4):
    g = torch.Generator().manual_seed(0)
    return [{"visual.conv1.weight": torch.randn(4, 3, generator=g),
             "visual.transformer.resblocks.0.mlp.c_fc.weight": torch.randn(6, 2, generator=g),
             "visual.transformer.resblocks.1.mlp.c_fc.weight": torch.randn(6, 2, generator=g)} for _ in range(k)]


def _results():
    rows = []
    for seed in (0, 1):
        for m, base in (("negmerge", 10), ("ties", 20), ("retrain", 5)):
            for metric in ("UA", "RA", "TA", "MIA", "avg_gap"):
                rows.append(dict(method=m, metric=metric, value=base + seed, seed=seed, coef=0.3))
        for i, cfg in enumerate(("lr1e-5_rs10", "lr1e-5_rs2", "lr3e-5_rs2")):
            rows.append(dict(method="task_arithmetic", pool_config=cfg, metric="avg_gap", value=i, seed=seed))
    return _records(rows)


def _legend_outside(ax):
    fig = ax.get_figure()
    fig.canvas.draw()
    return ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


def test_package_reexports_every_public_name_of_its_modules():
    modules = (style, consensus, curves, result_plots, images, sweeps, figures)
    for module in modules:
        for name in module.__all__:
            assert getattr(plotting, name) is getattr(module, name), f"{module.__name__}.{name}"
    assert sorted(plotting.__all__) == sorted(n for m in modules for n in m.__all__)


# --------------------------------------------------------------------------- style


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = plotting.save_figure(ax, tmp_path / "figs" / "curve.v2")
    assert [p.name for p in paths] == ["curve.v2.png", "curve.v2.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["curve.v2.pdf", "curve.v2.png"]
    assert plotting.save_figure(fig, tmp_path / "x.png", formats=("png",)) == [tmp_path / "x.png"]
    with pytest.raises(TypeError, match="Figure or Axes"):
        plotting.save_figure("not a figure", tmp_path / "y")


def test_save_figure_leaves_no_temp_files_on_failure(tmp_path):
    fig, _ = plt.subplots()
    assert [p.name for p in plotting.save_figure(fig, tmp_path / "a")] == ["a.png", "a.pdf"]
    with pytest.raises(ValueError):
        plotting.save_figure(fig, tmp_path / "b", formats=("png", "nosuchformat"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pdf", "a.png", "b.png"]


# --------------------------------------------------------------------------- consensus


def test_consensus_heatmap_from_analysis_table():
    table = consensus_by_layer_vs_k(_pool(), ks=[2, 3, 4], draws=2)
    ax = plotting.consensus_heatmap(table)
    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(mesh) == 1 and mesh[0].get_array().size == 9
    assert [t.get_text() for t in ax.get_yticklabels()] == ["conv1", "resblocks.0", "resblocks.1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "3", "4"]
    assert len(ax.texts) == 9  # annotated cells
    # the long table of consensus_vs_k(by_group=True) draws the same cells
    long = consensus_vs_k(_pool(), ks=[2, 3, 4], draws=2, by_group=True)
    ax2 = plotting.consensus_heatmap(long)
    mesh2 = [c for c in ax2.collections if isinstance(c, QuadMesh)][0]
    np.testing.assert_allclose(mesh2.get_array(), mesh[0].get_array())


def test_consensus_heatmap_network_order_and_fixed_percent_scale():
    table = pd.DataFrame({1: [1.0, 1.0, 1.0], 2: [0.9, 0.8, 0.85], 3: [0.7, 0.6, 0.65]},
                         index=pd.Index(["fc", "layers.10", "stem"], name="group"))
    table.loc["layers.2"] = [1.0, 0.95, 0.9]
    ax = plotting.consensus_heatmap(table, draws=5)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stem", "layers.2", "layers.10", "fc"]
    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)][0]
    # A fixed 0-100 % scale: a few points of difference do not fill the whole colour map.
    assert mesh.get_clim() == (0.0, 100.0)
    assert np.nanmax(mesh.get_array()) == pytest.approx(100.0) and np.nanmin(mesh.get_array()) == pytest.approx(60.0)
    assert "mean over 5 random draws" in ax.collections[0].colorbar.ax.get_ylabel()
    assert plotting.network_order(["proj", "resblocks.1", "conv1", "resblocks.0", "ln_post"]) == [
        "conv1", "resblocks.0", "resblocks.1", "ln_post", "proj"]


def test_agreement_heatmap_wide_and_long():
    wide = pairwise_agreement(_pool(3), names=["a", "b", "c"])
    for data in (wide, pairwise_agreement(_pool(3), names=["a", "b", "c"], form="long")):
        ax = plotting.agreement_heatmap(data)
        mesh = [c for c in ax.collections if isinstance(c, QuadMesh)][0]
        np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(3, 3), 100 * wide.to_numpy())
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
        assert mesh.get_clim() == (0.0, 100.0) and "agreement" in ax.get_title(loc="left")


def test_agreement_heatmap_names_pool_members_by_their_hyperparameters():
    names = ["e4_wd1e-4_ls0", "e4_wd1e-4_ls0.1", "e6_wd1e-5_ls0"]
    ax = plotting.agreement_heatmap(pairwise_agreement(_pool(3), names=names))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["4 ep · wd 1e-4 · ls 0", "4 ep · wd 1e-4 · ls 0.1",
                                                            "6 ep · wd 1e-5 · ls 0"]


def test_consensus_curve_lines_and_bands():
    df = consensus_vs_k(_pool(), draws=3, by_group=True)
    ax = plotting.consensus_curve(df)
    assert len(ax.lines) == 1 and len(ax.collections) == 1
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3, 4])
    expected = 100 * df[df.group == "all"].groupby("k")["frac_consistent"].mean().to_numpy()  # in %
    np.testing.assert_allclose(ax.lines[0].get_ydata(), expected)
    ax = plotting.consensus_curve(df, groups=["resblocks.0", "resblocks.1"], spread="minmax")
    assert len(ax.lines) == 2 and ax.get_legend() is not None
    with pytest.raises(ValueError, match="no rows for group"):
        plotting.consensus_curve(df, groups=["nope"])
    high = pd.DataFrame({"group": "all", "k": [1, 2, 3], "draw": 0, "frac_consistent": [1.0, 0.97, 0.95]})
    lo, hi = plotting.consensus_curve(high).get_ylim()
    assert 90 < lo < 95 and 100 <= hi < 102  # the y range fits the data (in %), not 0..100


# --------------------------------------------------------------------------- curves


def _sweep():
    rows = []
    for seed in (0, 1):
        for lam in (0.0, 0.5, 1.0):
            rows.append(dict(method="negmerge", coef=lam, split="forget", value=80 - 60 * lam + seed, seed=seed))
            rows.append(dict(method="negmerge", coef=lam, split="control", value=60 - 10 * lam, seed=seed))
    rows.append(dict(method="zeroshot", split="control", value=60.0))
    return _records(rows)


def test_coef_curve_draws_curves_threshold_and_choice():
    one_seed = _sweep()
    one_seed = one_seed[one_seed.seed != 1]
    ax = plotting.coef_curve(one_seed, "negmerge", chosen=0.5)
    # forget, control, admissibility (reference read from the zeroshot row), chosen λ
    assert len(ax.lines) == 4
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [80, 50, 20])
    assert ax.lines[2].get_ydata()[0] == pytest.approx(0.95 * 60)
    assert ax.lines[3].get_xdata()[0] == 0.5
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "forget" and "chosen λ = 0.5" in labels
    ax = plotting.coef_curve(one_seed, "negmerge", control_reference=50, threshold=0.9)
    assert len(ax.lines) == 3 and ax.lines[2].get_ydata()[0] == pytest.approx(45)
    with pytest.raises(ValueError, match="swept methods: \\['negmerge'\\]"):
        plotting.coef_curve(_sweep(), "ties")


def test_coef_curve_draws_each_seed_and_every_seeds_choice_never_a_mean():
    ax = plotting.coef_curve(_sweep(), "negmerge", chosen={0: 0.5, 1: 1.0})
    forget = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert [list(ln.get_ydata()) for ln in forget] == [[80, 50, 20], [81, 51, 21]]  # one line per seed
    chosen = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert sorted(ln.get_xdata()[0] for ln in chosen) == [0.5, 1.0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "chosen λ per seed: 0.5 / 1 (median 0.75)" in labels and "forget (2 seeds, one line each)" in labels
    # The other panels of a figure keep the chosen-λ entry of their own legend.
    ax = plotting.coef_curve(_sweep(), "negmerge", chosen=0.5, legend="chosen")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chosen λ = 0.5"]


def test_sensitivity_points_and_reference_lines():
    ax = plotting.sensitivity(_results(), reference_methods=("negmerge", "mean", "ties"))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lr1e-5_rs2", "lr1e-5_rs10", "lr3e-5_rs2"]
    ref_lines = [ln for ln in ax.lines if len(ln.get_ydata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1]]
    assert sorted(ln.get_ydata()[0] for ln in ref_lines) == [10.5, 20.5]  # mean absent: skipped
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["NegMerge", "TIES", "Task Arithmetic (single fine-tune)"]
    other_seed = _records([dict(method="negmerge", metric="avg_gap", coef=0.9, value=1.5, seed=2)])
    ax = plotting.sensitivity(pd.concat([_results(), other_seed]), reference_methods=("negmerge",))
    assert [ln.get_ydata()[0] for ln in ax.lines if len(ln.get_ydata()) == 2] == [7.5]  # (10 + 11 + 1.5) / 3
    two_splits = pd.concat([_results(), _records([dict(method="negmerge", metric="avg_gap", split="val", value=1)])])
    with pytest.raises(ValueError, match="several splits"):
        plotting.sensitivity(two_splits)
    ax = plotting.sensitivity(two_splits, split="test", reference_methods=("negmerge",))
    assert [ln.get_ydata()[0] for ln in ax.lines if len(ln.get_ydata()) == 2] == [10.5]
    bad = pd.concat([_results(), _records([dict(method="negmerge", metric="avg_gap", coef=0.9, value=1)])])
    with pytest.raises(ValueError, match="2 coefficients"):
        plotting.sensitivity(bad)


def test_sensitivity_orders_pool_members_by_value_and_keeps_legend_outside():
    rows = [dict(method="task_arithmetic", pool_config=cfg, metric="avg_gap", value=i, coef=0.5)
            for i, cfg in enumerate(("e4_wd1e-4_ls0.1", "e4_wd1e-4_ls0.05", "e4_wd5e-5_ls0", "e10_wd1e-4_ls0"))]
    rows.append(dict(method="negmerge", metric="avg_gap", value=1.5, coef=0.5))
    df = _records(rows)
    ax = plotting.sensitivity(df)
    assert [t.get_text() for t in ax.get_xticklabels()] == [  # by value: 5e-5 < 1e-4, 0.05 < 0.1, 4 < 10
        "e4_wd5e-5_ls0", "e4_wd1e-4_ls0.05", "e4_wd1e-4_ls0.1", "e10_wd1e-4_ls0"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [2, 1, 0, 3])
    assert _legend_outside(ax)
    assert not ax.texts  # not degenerate: no note
    pool_order = ["e4_wd1e-4_ls0.1", "e4_wd1e-4_ls0.05", "e10_wd1e-4_ls0", "e4_wd5e-5_ls0", "unused"]
    ax = plotting.sensitivity(df, order=pool_order)
    assert [t.get_text() for t in ax.get_xticklabels()] == pool_order[:4]
    with pytest.raises(ValueError, match="order lacks 1 value"):
        plotting.sensitivity(df, order=pool_order[:3])


def test_sensitivity_grid_facets_by_hyperparameter():
    pool = pd.DataFrame([{"pool_config": f"e{e}_wd{wd}_ls{ls}", "epochs": e, "weight_decay": wd, "label_smoothing": ls}
                         for e in (4, 5) for wd in (1e-4, 5e-5) for ls in (0.0, 0.1)])
    rows = [dict(method="task_arithmetic", pool_config=p, metric="avg_gap", value=e + 10 * ls, coef=0.5)
            for p, e, ls in zip(pool.pool_config, pool.epochs, pool.label_smoothing)]
    rows += [dict(method=m, metric="avg_gap", value=3.0, coef=0.5) for m in ("negmerge", "mean")]  # coinciding lines
    axes = plotting.sensitivity_grid(_records(rows), pool)
    assert len(axes) == 2 and [a.get_title(loc="left") for a in axes] == ["epochs = 4", "epochs = 5"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["5e-05", "0.0001"]
    assert axes[0].get_xlabel() == "weight decay"
    pts = [ln for ln in axes[1].lines if ln.get_marker() == "o"]
    assert [list(ln.get_ydata()) for ln in pts] == [[5.0, 5.0], [6.0, 6.0]]  # one series per label smoothing
    assert pts[0].get_xdata()[0] != pts[1].get_xdata()[0]  # set apart, so equal values stay visible
    refs = [ln for ln in axes[0].lines if ln.get_label() in ("NegMerge", "Uniform merge")]
    assert len(refs) == 2 and refs[0].get_linewidth() > refs[1].get_linewidth()  # the wider one stays visible
    assert axes[0].get_legend() is None and axes[1].get_legend() is not None  # one legend per figure
    with pytest.raises(ValueError, match="pool lacks column"):
        plotting.sensitivity_grid(_records(rows), pool.drop(columns="epochs"))
    flat = [dict(r, value=0.79, coef=0.0) for r in rows]  # every method chose λ = 0: one value everywhere
    axes = plotting.sensitivity_grid(_records(flat), pool)
    assert any("every method chose λ = 0" in t.get_text() for t in axes[0].texts)


def test_sensitivity_degenerate_panel_says_so():
    rows = [dict(method="task_arithmetic", pool_config=f"m{i}", metric="avg_gap", value=0.787, coef=0.0)
            for i in range(3)]
    rows += [dict(method=m, metric="avg_gap", value=0.787, coef=0.0) for m in ("negmerge", "mean")]
    ax = plotting.sensitivity(_records(rows))
    assert [t.get_text() for t in ax.texts] == ["all single fine-tunes and merges: 0.787 (every method chose λ = 0)"]
    lo, hi = ax.get_ylim()
    assert lo == 0.0 and hi == pytest.approx(0.787 + 1)  # a visible band, not below zero
    ref = [ln for ln in ax.lines if len(ln.get_xdata()) == 2]
    assert len(ref) == 2 and ref[0].get_linestyle() != ref[1].get_linestyle()  # coinciding lines stay apart


# --------------------------------------------------------------------------- results


def _bar_containers(ax):
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() != "_nolegend_"
            and not any(p.get_hatch() for p in c)]


def test_results_bars_and_table():
    df = _results()
    ax = plotting.results_bars(df[df.pool_config == ""])
    gap = ax.negkit_gap_ax  # Avg. Gap in its own panel, not on the 0-100 accuracy axis
    bars, gap_bars = _bar_containers(ax), _bar_containers(gap)
    assert len(bars) == 4 and len(gap_bars) == 1
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Retrain", "TIES", "NegMerge"]
    heights = sorted(b.get_height() for c in bars for b in c)
    assert heights == [5.5] * 4 + [10.5] * 4 + [20.5] * 4  # mean over the two seeds
    assert sorted(b.get_height() for b in gap_bars[0]) == [5.5, 10.5, 20.5]
    assert ax.get_ylim() == (0, 105)
    # two seeds -> error bars of the std over seeds (0.71 for values x and x + 1)
    err = bars[0].errorbar.lines[2][0].get_segments()
    assert [round(float(s[1][1] - s[0][1]) / 2, 2) for s in err] == [0.71] * 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["UA", "RA", "TA", "MIA-efficacy"]
    assert gap.get_title(loc="left") == "Avg. Gap (%) ↓"
    table = plotting.results_table(df)
    assert list(table.index) == ["retrain", "task_arithmetic", "ties", "negmerge"]
    assert list(table.columns) == ["UA", "RA", "TA", "MIA", "avg_gap"]
    assert table.loc["negmerge", "UA"] == 10.5 and math.isnan(table.loc["task_arithmetic", "UA"])
    assert table.loc["task_arithmetic", "avg_gap"] == 1.0
    with pytest.warns(UserWarning, match=r"negmerge / UA has rows for several split values \['test', 'val'\]"):
        plotting.results_table(pd.concat([df, _records([dict(method="negmerge", metric="UA", split="val")])]))
    shown = plotting.results_table(df, metrics=("UA",), methods=["negmerge"], show_std=True)
    assert shown.loc["negmerge", "UA"] == "10.50 ± 0.71"


def test_results_bars_tell_missing_from_zero():
    rows = [dict(method="negmerge", metric=m, value=v, pool_config="") for m, v in (("UA", 0.0), ("RA", 50.0))]
    rows += [dict(method="ties", metric="RA", value=40.0, pool_config="")]  # ties has no UA at all
    ax = plotting.results_bars(_records(rows), metrics=("UA", "RA"))
    texts = [t for t in ax.texts if t.get_text() == "n/a"]
    assert len(texts) == 1 and texts[0].get_position()[0] == pytest.approx(-0.2)  # ties (x = 0), UA slot
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1
    stubs = [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and list(ln.get_ydata()) == [0, 0]]
    assert len(stubs) == 1 and stubs[0].get_xdata()[0] == pytest.approx(0.6)  # negmerge's UA = 0: a stub
    assert not _bar_containers(ax)[0].errorbar  # one seed: no error bars


def test_labels_come_from_one_place():
    assert [style.label(n) for n in ("negmerge", "mean", "avg_gap", "MIA", "val_forget")] == [
        "NegMerge", "Uniform merge", "Avg. Gap (%) ↓", "MIA-efficacy (%)", "forget (val.)"]
    assert style.label("class_3") == "class 3 forgotten" and style.label("class_3-8") == "classes 3, 8 forgotten"
    assert style.label("random_10") == "random 10 % forgotten"
    assert style.label("e4_wd1e-4_ls0.05") == "4 ep · wd 1e-4 · ls 0.05"
    assert style.label("custom_rule") == "custom_rule"
    assert style.method_color("negmerge") != style.method_color("mean")
    assert style.method_color("my_rule") == style.method_color("my_rule")  # stable for unknown names


def test_results_table_reads_benchmark_summary():
    from negkit.benchmark import summary

    df = _records([dict(method=m, scenario=sc, pool_config="", metric=k, value=v + (sc == "class_3"), seed=seed,
                        split="forget" if k == "UA" else "test", setting="standard", dataset="digits")
                   for sc in ("random_10", "class_3") for seed in (0, 1)
                   for m, v in (("negmerge", 10 + seed), ("retrain", 2.0)) for k in ("UA", "TA")])
    s = summary(df)
    assert "split" not in s.columns
    table = plotting.results_table(s[s.scenario == "class_3"])
    assert list(table.index) == ["retrain", "negmerge"] and list(table.columns) == ["UA", "TA"]
    assert table.loc["negmerge", "UA"] == 11.5 and table.loc["retrain", "TA"] == 3.0
    pd.testing.assert_frame_equal(table, plotting.results_table(df[df.scenario == "class_3"]))
    with pytest.warns(UserWarning, match="several scenario values \\['class_3', 'random_10'\\]"):
        plotting.results_table(s)
    with pytest.raises(ValueError, match="lacks column"):
        plotting.results_table(s.drop(columns="value"))


# --------------------------------------------------------------------------- images


def test_per_class_bars():
    acc = pd.DataFrame({"original": [100.0, 90.0, 80.0], "with δ": [99.0, 5.0, 70.0]}, index=[0, 1, 2])
    ax = plotting.per_class_bars(acc, forgotten=[1], classnames=["zero", "one", "two"])
    assert len(ax.containers) == 2
    np.testing.assert_allclose([b.get_height() for b in ax.containers[1]], [99, 5, 70])
    zero = plotting.per_class_bars(pd.DataFrame({"with δ": [0.0, 50.0]}))
    assert [list(ln.get_ydata()) for ln in zero.lines] == [[0, 0]]  # a 0 % class is a visible stub
    centres = [[b.get_x() + b.get_width() / 2 for b in c] for c in ax.containers]
    assert centres[0][1] < 1 < centres[1][1]  # the two bars of class 1 sit either side of its tick
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == ["zero", "one", "two"]
    assert [t.get_fontweight() for t in labels] == ["normal", "bold", "normal"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["original", "with δ"]
    assert _legend_outside(ax)
    ax = plotting.per_class_bars(acc["with δ"], columns=["with δ"])
    assert len(ax.containers) == 1 and ax.get_xlabel() == "class"
    with pytest.raises(ValueError, match="not in df"):
        plotting.per_class_bars(acc, columns=["fresh δ"])
    with pytest.raises(ValueError, match="forgotten classes \\[7\\]"):
        plotting.per_class_bars(acc, forgotten=[7])


def test_image_grid_scales_and_layout():
    deltas = torch.zeros(5, 1, 4, 4)
    deltas[0, 0, 0, 0] = 2.0
    deltas[1, 0, 1, 1] = -0.5
    axes = plotting.image_grid(deltas, titles=[f"class {i}" for i in range(5)], ncols=3)
    assert len(axes) == 6 and not axes[5].get_visible()
    assert [a.get_title() for a in axes[:5]] == [f"class {i}" for i in range(5)]
    assert axes[1].images[0].get_clim() == (-2.0, 2.0)  # symmetric, shared
    axes = plotting.image_grid(deltas[:2], shared_scale=False, colorbar=False)
    assert axes[1].images[0].get_clim() == (-0.5, 0.5)
    rgb = [torch.linspace(-1, 3, 48).reshape(3, 4, 4)]
    arr = plotting.image_grid(rgb)[0].images[0].get_array()
    assert arr.shape == (4, 4, 3) and arr.min() == 0.0 and arr.max() == 1.0
    with pytest.raises(ValueError, match="C in \\(1, 3\\)"):
        plotting.image_grid(torch.zeros(2, 2, 4, 4))


def test_image_grid_per_panel_scales_next_to_reference_images():
    deltas = torch.zeros(2, 1, 4, 4)
    deltas[0, 0, 0, 0], deltas[1, 0, 1, 1] = 0.4, -0.1
    means = torch.full((2, 1, 4, 4), 0.5)
    axes = plotting.image_grid(deltas, titles=["δ, class 3", "δ, class 5"], references=means, shared_scale=False,
                               reference_titles=["class 3: mean image", "class 5: mean image"])
    assert [a.get_title() for a in axes[:4]] == ["class 3: mean image", "δ, class 3", "class 5: mean image",
                                                 "δ, class 5"]
    assert min(a.title.get_fontsize() for a in axes[:4]) >= plotting.MIN_FONT  # readable at paper size
    plain = plotting.image_grid(deltas, titles=["δ, class 3", "δ, class 5"], references=means)
    assert plain[0].get_title() == "mean image"  # never the δ's title on the image it acts on
    assert axes[0].images[0].get_cmap().name == "gray" and axes[0].images[0].get_clim() == (0, 1.0)
    assert axes[1].images[0].get_clim() == pytest.approx((-0.4, 0.4))
    assert axes[3].images[0].get_clim() == pytest.approx((-0.1, 0.1))
    bars = [a for a in axes[0].get_figure().axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 2 and bars[0].get_ylabel() == "δ (own scale; pixels 0–1)"  # a colour scale per δ panel
    with pytest.raises(ValueError, match="1 references for 2 images"):
        plotting.image_grid(deltas, references=means[:1])


def test_save_figure_is_byte_reproducible(tmp_path):
    # Re-running make demo must not churn committed figures: same drawing -> same bytes (PDF too).
    import matplotlib.pyplot as plt

    from negkit.plotting import save_figure

    import time

    outputs = []
    for run in ("a", "b"):
        time.sleep(1.1)  # a PDF creation date has one-second resolution: make the two saves differ in time
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        paths = save_figure(fig, tmp_path / run / "fig")
        plt.close(fig)
        outputs.append([p.read_bytes() for p in paths])
    assert outputs[0] == outputs[1]


def test_sensitivity_grid_never_draws_a_one_value_axis():
    pool = pd.DataFrame({"pool_config": ["a", "b", "c", "d"], "epochs": [2, 2, 4, 4], "weight_decay": 5e-5,
                         "label_smoothing": [0.0, 0.1, 0.0, 0.1]})
    rows = [dict(method="task_arithmetic", pool_config=n, metric="avg_gap", value=float(i), coef=0.5)
            for i, n in enumerate(pool.pool_config)]
    axes = plotting.sensitivity_grid(_records(rows), pool)
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["0", "0.1"]
    assert axes[0].get_xlabel() == "label smoothing (weight decay 5e-05 throughout)"


# --------------------------------------------------------------------------- figures from their CSVs

FIGURES_DIR = Path(__file__).resolve().parents[1] / "figures"
DRAWN_CSVS = sorted(p for p in FIGURES_DIR.glob("*.csv") if plotting.figures._match(p))


def _expected_values(table: pd.DataFrame) -> np.ndarray:
    """Every number a figure of ``table`` may draw: means over seeds (per-seed tables) or the table's own values."""
    keys = [c for c in ("dataset", "setting", "scenario", "method", "metric", "k") if c in table.columns]
    if "seed" in table.columns and "value" in table.columns:
        per_seed = table.groupby(keys + ["seed"], dropna=False).value.mean()
        return per_seed.groupby(level=keys, dropna=False).mean().to_numpy(dtype=float)
    numeric = table.select_dtypes("number")
    return numeric.to_numpy(dtype=float).ravel()


def _bar_heights(fig) -> list[float]:
    return [p.get_height() for ax in fig.axes for p in ax.patches
            if isinstance(p, Rectangle) and p.get_fill() and p.get_height() != 0 and p.get_width() < 1]


def test_every_drawn_figure_has_a_csv():
    assert {"digits_results", "fashion_mnist_summary", "fashion_mnist_paired"} <= {p.stem for p in DRAWN_CSVS}


@pytest.mark.parametrize("csv", DRAWN_CSVS, ids=lambda p: p.stem)
def test_figure_numbers_equal_its_csv(csv: Path):
    stem, fig = plotting.draw(csv)
    table = pd.read_csv(csv)
    expected = _expected_values(table)
    expected = expected[np.isfinite(expected)]
    for h in _bar_heights(fig):  # each bar is a mean of the CSV, never one seed of it
        assert np.isclose(expected, h, rtol=0, atol=1e-9).any(), f"{stem}: a bar of {h} is not in {csv.name}"
    for ax in fig.axes:
        for text in ax.texts:
            if text.get_gid() == "negkit-value":  # numbers written on the figure
                assert np.isclose(np.round(expected, 1), float(text.get_text()), atol=1e-9).any(), text.get_text()
        for coll in ax.collections:  # error bars stay within the metric's range
            if isinstance(coll, LineCollection) and ax.get_ylabel().endswith(("(%)", "(%) ↓")):
                ys = np.concatenate([np.asarray(s)[:, 1] for s in coll.get_segments()]) if coll.get_segments() else []
                assert len(ys) == 0 or (np.min(ys) >= -1e-9 and np.max(ys) <= 100 + 1e-9), stem
    plt.close(fig)


def test_a_figure_shows_the_mean_over_seeds_not_seed_0():
    rows = [dict(setting="standard", dataset="d", scenario="random_10", method="forget_vector", metric="avg_gap",
                 value=v, seed=s) for s, v in enumerate((41.3, 44.0, 46.52))]
    rows += [dict(setting="standard", dataset="d", scenario="random_10", method=m, metric="avg_gap", value=v, seed=0)
             for m, v in (("original", 5.0), ("retrain", 0.0), ("negmerge", 4.0))]
    fig = plotting.results_figure(pd.DataFrame(rows))
    heights = _bar_heights(fig)
    assert any(np.isclose(h, 43.94) for h in heights) and not any(np.isclose(h, 41.3) for h in heights)
    gap_ax = fig.axes[0].negkit_gap_ax
    assert [t.get_text() for t in gap_ax.texts if t.get_gid() == "negkit-value"] == ["43.9"]  # the cut bar's value
    assert gap_ax.get_ylim()[1] < 43.94 and "axis cut" in gap_ax.get_ylabel()
    assert "Forget vector (n=3)" not in [t.get_text() for t in gap_ax.get_xticklabels()]
    assert "Original (n=1)" in [t.get_text() for t in gap_ax.get_xticklabels()]  # fewer seeds say so
    plt.close(fig)


def test_zero_bars_are_never_drawn_below_the_axis_and_error_bars_stop_at_100():
    rows = [dict(method=m, metric=k, value=v, seed=s) for s in (0, 1)
            for m, k, v in (("original", "UA", 0.0), ("retrain", "UA", 99.0 + s), ("original", "RA", 100.0))]
    ax = plotting.results_bars(_records(rows), metrics=("UA", "RA"))
    assert ax.get_ylim()[0] == 0
    zero_lines = [ln for ln in ax.lines if list(ln.get_ydata()) == [0, 0]]
    assert zero_lines and all(ln.get_clip_on() for ln in zero_lines)
    tops = [np.asarray(s)[:, 1].max() for c in ax.collections if isinstance(c, LineCollection)
            for s in c.get_segments()]
    assert tops and max(tops) <= 100 + 1e-9  # Retrain's UA 99.5 ± 0.7 stops at 100


def test_redraw_writes_the_figures_beside_their_csvs(tmp_path: Path):
    src = FIGURES_DIR / "digits_results.csv"
    (tmp_path / src.name).write_bytes(src.read_bytes())
    assert plotting.redraw(tmp_path) == []  # no figure there yet: none made unasked
    assert plotting.redraw(tmp_path, only_existing=False) == [tmp_path / "digits_results.png"]
    with pytest.raises(ValueError, match="no figure is drawn from notes.csv"):
        plotting.draw(tmp_path / "notes.csv")
