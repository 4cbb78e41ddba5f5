"""The explorer's view logic, driven without a browser: set a control, read what is shown."""
from __future__ import annotations

import math
import re

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

from negkit.results import Record, ResultsLog  # noqa: E402
from negkit.widgets import (  # noqa: E402
    ConsensusState, ConsensusView, ForgetVectorState, ForgetVectorView, LiveNegation, NegationState,
    NegationView, RecordedCurves, RunKey, explorer,
)


def shown(view) -> dict[str, str]:
    """The numbers table of a view as {label: text}."""
    cells = re.findall(r"<td[^>]*>(.*?)</td><td[^>]*><b>(.*?)</b></td>", view.numbers.value)
    return {label: value for label, value in cells}


# --------------------------------------------------------------------------- results mode
def rec(method, split, coef, value, metric="acc", pool="", scenario="class_3", note=""):
    return Record(setting="standard", model="small_resnet", dataset="digits", scenario=scenario, method=method,
                  pool_config=pool, coef=coef, split=split, metric=metric, value=value, note=note)


CURVES = {  # method/pool -> (val_forget, val_control) at λ = 0, 0.5, 1
    ("negmerge", ""): ([90.0, 40.0, 10.0], [80.0, 78.0, 60.0]),
    ("task_arithmetic", "e1_ls0"): ([90.0, 70.0, 30.0], [80.0, 79.0, 77.0]),
    ("task_arithmetic", "e2_ls0"): ([90.0, 50.0, 5.0], [80.0, 70.0, 50.0]),
}


def records() -> list[Record]:
    out = []
    for (method, pool), (forget, control) in CURVES.items():
        for coef, f, c in zip((0.0, 0.5, 1.0), forget, control):
            out += [rec(method, "val_forget", coef, f, pool=pool), rec(method, "val_control", coef, c, pool=pool)]
    # Final metrics at the chosen λ (only negmerge and one member here), a curve-less merge, and
    # the benchmark's method-level Task Arithmetic row naming the validation-selected member.
    out += [rec("negmerge", "forget", 0.5, 55.0, metric="UA"), rec("negmerge", "test", 0.5, 77.5, metric="TA")]
    out += [rec("task_arithmetic", "forget", 1.0, 65.0, metric="UA", pool="e1_ls0")]
    out += [rec("mean", "forget", math.nan, math.nan, metric="UA", note="no admissible coefficient")]
    out += [rec("task_arithmetic", "forget", 1.0, 65.0, metric="UA", note="val-selected pool member e1_ls0")]
    out += [rec("ft", "forget", math.nan, 12.0, metric="UA")]  # a baseline: not a negation method
    return out


@pytest.fixture()
def results_dir(tmp_path):
    ResultsLog(tmp_path / "results.jsonl").append(records())
    return tmp_path


def test_results_mode_slider_updates_the_numbers(results_dir):
    view = NegationView(results_dir)
    assert view.message.value == ""
    assert view.state.method == "negmerge"  # NegMerge is shown first when recorded
    # λ starts at the chosen λ of the final records; the numbers are the curve there.
    assert view.slider.value == 0.5
    assert shown(view)["val_forget acc (%)"] == "40.00"
    assert shown(view)["UA at chosen λ"] == "55.00"
    view.slider.value = 1.0
    assert shown(view)["val_forget acc (%)"] == "10.00"
    assert shown(view)["val_control acc (%)"] == "60.00"
    view.slider.value = 0.0
    assert shown(view)["val_forget acc (%)"] == "90.00"
    assert shown(view)["chosen λ"] == "0.50"


def test_results_mode_chooses_lambda_on_the_curve_when_no_final_rows(results_dir):
    st = NegationState(RecordedCurves(results_dir))
    st.select(method="task_arithmetic", pool_config="e2_ls0")
    # control reference = curve at λ=0 (80); admissible: control ≥ 76 -> λ ∈ {0}; lowest forget there.
    assert st.control_reference() == 80.0
    assert st.chosen_coef() == 0.0
    st.select(pool_config="e1_ls0")
    assert st.chosen_coef() == 1.0  # from its final record
    with pytest.raises(ValueError, match="available"):
        st.select(method="ft")  # a baseline has no λ
    with pytest.raises(ValueError, match="unknown pool member"):
        st.select(pool_config="e9")
    assert st.pool_label("e1_ls0").endswith("val-selected")
    assert st.pool_configs() == ["e1_ls0", "e2_ls0"]  # method-level row (pool "") folded away


def test_results_mode_pool_dropdown_follows_method(results_dir):
    view = NegationView(results_dir)
    assert view.pool.disabled and view.pool.layout.display == "none"  # hidden for merges...
    assert view.run.layout.display != "none" and view.method.layout.display != "none"  # ...alone
    view.method.value = "task_arithmetic"
    assert not view.pool.disabled and view.pool.layout.display == "" and view.pool.value == "e1_ls0"
    view.pool.value = "e2_ls0"
    view.slider.value = 1.0
    assert shown(view)["val_forget acc (%)"] == "5.00"
    assert "ft" not in view.method.options and "mean" in view.method.options


def test_slider_range_follows_each_methods_grid(tmp_path):
    rows = records()
    for coef, f, c in ((2.0, 50.0, 79.0), (3.0, 20.0, 77.0), (4.0, 1.0, 40.0)):  # a scaled λ grid
        rows += [rec("ties", "val_forget", coef, f), rec("ties", "val_control", coef, c)]
    ResultsLog(tmp_path / "results.jsonl").append(rows)
    view = NegationView(tmp_path)
    view.method.value = "ties"
    assert (view.slider.min, view.slider.max, view.slider.step) == (2.0, 4.0, 1.0)
    view.slider.value = 3.0
    assert shown(view)["val_forget acc (%)"] == "20.00"
    view.method.value = "negmerge"
    assert (view.slider.min, view.slider.max, view.slider.step) == (0.0, 1.0, 0.5)


def test_method_without_curve_says_so_in_place(results_dir):
    view = NegationView(results_dir)
    view.method.value = "mean"
    assert "No λ curve recorded for mean" in view.message.value
    assert view.slider.disabled
    assert shown(view)["chosen λ"] == "none admissible"
    assert "no admissible coefficient" in shown(view)["note"]


@pytest.mark.parametrize("content", ["missing", "empty", "baselines only"])
def test_results_folder_without_records_says_so_in_place(tmp_path, content):
    if content == "empty":
        (tmp_path / "results.jsonl").write_text("")
    elif content == "baselines only":
        ResultsLog(tmp_path / "results.jsonl").append([rec("ft", "forget", math.nan, 12.0, metric="UA")])
    folder = tmp_path if content != "missing" else tmp_path / "nowhere"
    view = NegationView(folder)
    assert "No negation results in" in view.message.value and str(folder) in view.message.value
    assert view.numbers.value == "<table class='negkit-table'></table>"
    assert view.slider.disabled


def test_results_mode_reads_clip_task_negation_records(tmp_path):
    # negkit.clip.negation's layout: zero-shot rows, val curves, test accuracies at the chosen λ.
    base = dict(setting="clip", model="ViT-B-32/openai", dataset="cars", scenario="task", seed=0)
    rows = [Record(**base, method="zeroshot", pool_config="", coef=0.0, split="val_control", metric="acc", value=60.0)]
    for coef, f, c in ((0.0, 60.0, 61.0), (0.5, 30.0, 58.0), (1.0, 5.0, 50.0)):
        rows += [Record(**base, method="negmerge", pool_config="", coef=coef, split=s, metric="acc", value=v)
                 for s, v in (("val_forget", f), ("val_control", c))]
    rows += [Record(**base, method="negmerge", pool_config="", coef=0.5, split=s, metric="acc", value=v)
             for s, v in (("test_forget", 31.0), ("test_control", 57.5))]
    ResultsLog(tmp_path / "clip.jsonl").append(rows)
    view = NegationView(tmp_path)
    assert view.state.control_reference() == 60.0  # the zero-shot row, not the curve at λ=0 (61)
    assert view.slider.value == 0.5 and shown(view)["test_forget acc (%) at chosen λ"] == "31.00"
    view.slider.value = 1.0
    assert shown(view)["val_forget acc (%)"] == "5.00" and view.message.value == ""


def test_results_figure_marks_chosen_and_shown_lambda(results_dir):
    st = NegationState(RecordedCurves(results_dir))
    st.set_coef(1.0)
    fig = st.figure()
    vertical = {round(float(line.get_xdata()[0]), 3): line for line in fig.axes[0].lines
                if len(set(line.get_xdata())) == 1}
    assert {0.5, 1.0} <= set(vertical)  # vertical lines at the chosen λ and at the λ shown
    chosen, current = vertical[0.5], vertical[1.0]
    assert (chosen.get_linestyle(), chosen.get_linewidth()) != (current.get_linestyle(), current.get_linewidth())


# --------------------------------------------------------------------------- live mode
class Tiny(nn.Module):
    """Linear classifier on 1×2×2 images (weights [[1,0,0,0],[0,1,0,0]]: class = larger of pixels 0/1)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2, bias=False)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.fc(x.flatten(1)))


def tiny_setup():
    torch.manual_seed(0)
    model = Tiny().eval()
    pre = {k: v.clone() for k, v in model.state_dict().items()}
    pre["fc.weight"] = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    g = torch.Generator().manual_seed(1)

    def data(n, label_rule):
        x = torch.rand(n, 1, 2, 2, generator=g)
        return x, label_rule(x)

    truth = lambda x: (x[:, 0, 0, 1] > x[:, 0, 0, 0]).long()  # noqa: E731
    splits = {name: data(64, truth) for name in ("val_forget", "val_control", "forget", "retain", "test")}
    # τ pushes class-1 weight towards pixel 0: negating it (−λτ) damages the rule progressively.
    tv_a = {"fc.weight": torch.tensor([[0.0, 0, 0, 0], [-1.0, 1.0, 0, 0]])}
    tv_b = {"fc.weight": torch.tensor([[0.0, 0, 0, 0], [-1.0, 2.0, 0, 0]])}
    return model, pre, {"a": tv_a, "b": tv_b}, splits


def reference_accuracy(model, pre, tau, coef, x, y):
    m = Tiny().eval()
    m.load_state_dict({k: v - coef * tau[k] if k in tau else v for k, v in pre.items()})
    with torch.no_grad():
        return 100.0 * float((m(x).argmax(1) == y).float().mean())


def test_live_slider_reevaluates_the_negated_model():
    model, pre, tvs, splits = tiny_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    live = LiveNegation(model, pre, tvs, splits, methods=(), coefs=[0.0, 0.5, 1.0, 1.5], device="cpu")
    view = NegationView(live)
    view.method.value = "task_arithmetic"
    view.pool.value = "a"
    for coef in (0.0, 0.7, 1.3):
        view.slider.value = coef
        want = reference_accuracy(model, pre, tvs["a"], coef, *splits["val_forget"])
        assert shown(view)["val_forget acc (%)"] == f"{want:.2f}"
        assert shown(view)["UA"] == f"{100 - reference_accuracy(model, pre, tvs['a'], coef, *splits['forget']):.2f}"
        assert "MIA" in shown(view)
    assert shown(view)["val_forget acc (%)"] != "100.00"  # λ=1.3 changed the prediction of some images
    assert view.slider.step == 0.01  # live mode evaluates any λ, not just the grid
    for k, v in model.state_dict().items():  # the view never writes into the model
        assert torch.equal(v, before[k]), k


def test_live_numbers_show_retrain_as_the_target():
    model, pre, tvs, splits = tiny_setup()
    retrain = {"UA": 100.0, "RA": 90.0, "TA": 90.0, "MIA": 100.0}
    live = LiveNegation(model, pre, tvs, splits, methods=(), coefs=[0.0, 1.0], device="cpu", retrain_metrics=retrain)
    view = NegationView(live)
    view.method.value = "task_arithmetic"
    view.slider.value = 0.0  # θ_o: UA = 100 − forget accuracy
    got = shown(view)
    ua, ra = float(got["UA (Retrain 100.00)"]), float(got["RA (Retrain 90.00)"])
    ta, mia = float(got["TA (Retrain 90.00)"]), float(got["MIA (Retrain 100.00)"])
    want = (abs(ua - 100) + abs(ra - 90) + abs(ta - 90) + abs(mia - 100)) / 4
    assert float(got["Avg. Gap to Retrain ↓"]) == pytest.approx(want, abs=0.01)
    plain = NegationView(LiveNegation(model, pre, tvs, splits, methods=(), coefs=[0.0, 1.0], device="cpu"))
    assert "UA" in shown(plain) and not any(k.startswith("Avg. Gap") for k in shown(plain))  # no target, no gap


def test_live_chosen_lambda_follows_the_admissibility_rule():
    from negkit.evaluate import select_coef

    model, pre, tvs, splits = tiny_setup()
    grid = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    live = LiveNegation(model, pre, tvs, splits, methods=(), coefs=grid, device="cpu", mia=False)
    forget = [reference_accuracy(model, pre, tvs["b"], c, *splits["val_forget"]) for c in grid]
    control = [reference_accuracy(model, pre, tvs["b"], c, *splits["val_control"]) for c in grid]
    want = select_coef(grid, forget, control, control[0], threshold=0.95)
    st = NegationState(live)
    st.select(method="task_arithmetic", pool_config="b")
    assert st.chosen_coef() == want and st.coef == want
    assert st.figure() is not None


def test_live_lambda_search_matches_the_grid_over_the_range_it_searched():
    from negkit.evaluate import coef_grid, select_coef

    model, pre, tvs, splits = tiny_setup()
    # A loose threshold (0.5) keeps control admissible past the grid's top (0.5): the range grows.
    live = LiveNegation(model, pre, tvs, splits, methods=(), coefs=[0.0, 0.5], device="cpu", mia=False,
                        coef_max=4.0, threshold=0.5)
    res = live.search("task_arithmetic", "a")
    assert res.searched == (0.0, 2.0) and res.coef > 0.5
    grid = coef_grid(*res.searched, 0.5)  # step inferred from the coefs given
    forget = [reference_accuracy(model, pre, tvs["a"], c, *splits["val_forget"]) for c in grid]
    control = [reference_accuracy(model, pre, tvs["a"], c, *splits["val_control"]) for c in grid]
    assert res.coef == select_coef(grid, forget, control, control[0], threshold=0.5)
    assert set(res.curve.coef) <= set(live.coefs(live.run, "task_arithmetic", "a"))
    assert live.chosen_coef(live.run, "task_arithmetic", "a") == res.coef


def test_live_and_recorded_sources_share_one_view(results_dir):
    model, pre, tvs, splits = tiny_setup()
    live = LiveNegation(model, pre, tvs, splits, methods=(), coefs=[0.0, 1.0], device="cpu", mia=False,
                        run=RunKey("tiny", "live_demo"))
    view = NegationView([live, results_dir])
    labels = [label for label, _ in view.run.options]
    assert labels[0] == "tiny / live_demo (seed 0)" and any("class_3" in lbl for lbl in labels)
    assert view.slider.step == 0.01 and view.method.value == "task_arithmetic"
    view.run.value = view.run.options[1][1]  # the recorded run: its grid and pool; the method is kept
    assert view.slider.step == 0.5 and view.method.value == "task_arithmetic" and view.pool.value == "e1_ls0"
    assert shown(view)["val_forget acc (%)"] == "30.00"  # e1_ls0 at its chosen λ = 1


def test_live_merges_use_the_registry():
    from negkit import merge

    model, pre, tvs, splits = tiny_setup()
    live = LiveNegation(model, pre, tvs, splits, methods=("negmerge", "mean"), coefs=[0.0, 1.0], device="cpu")
    want = merge.get("negmerge")(list(tvs.values()))
    assert torch.equal(live.vector("negmerge")["fc.weight"], want["fc.weight"])
    with pytest.raises(ValueError, match="not offered"):
        live.vector("ties")
    with pytest.raises(ValueError):
        LiveNegation(model, pre, tvs, splits, methods=("no_such_rule",))


def test_live_bad_inputs_name_the_fix():
    model, pre, tvs, splits = tiny_setup()
    with pytest.raises(ValueError, match="val_control"):
        LiveNegation(model, pre, tvs, {"val_forget": splits["val_forget"]}, methods=())
    with pytest.raises(ValueError, match="no task vectors"):
        LiveNegation(model, pre, {}, splits, methods=())


# --------------------------------------------------------------------------- sign consensus
def pool3():
    # 'layer1.weight': 4 elements; signs over members a,b,c: (+,+,+) (+,-,+) (0,+,+) (-,-,-)
    # 'fc.weight':     2 elements; (+,+,-) (+,+,+)
    a = {"layer1.weight": torch.tensor([1.0, 1.0, 0.0, -1.0]), "fc.weight": torch.tensor([1.0, 2.0])}
    b = {"layer1.weight": torch.tensor([2.0, -1.0, 1.0, -2.0]), "fc.weight": torch.tensor([1.0, 1.0])}
    c = {"layer1.weight": torch.tensor([1.0, 3.0, 1.0, -1.0]), "fc.weight": torch.tensor([-1.0, 1.0])}
    return {"a": a, "b": b, "c": c}


def test_consensus_k_slider_updates_per_layer_rates():
    view = ConsensusView(pool3(), methods=("negmerge", "magmax"), draws=2, seed=0)
    t = view.state.layer_table().set_index("group")
    assert t.loc["layer1", "frac_consistent"] == pytest.approx(2 / 4)
    assert t.loc["fc", "frac_consistent"] == pytest.approx(1 / 2)
    assert shown(view)["sign consensus (%)"] == f"{100 * 3 / 6:.2f}"
    assert shown(view)["NegMerge keeps (%)"] == f"{100 * 3 / 6:.2f}"  # NegMerge keeps exactly the consensus
    assert shown(view)["members"] == "all 3"
    assert "<th>NegMerge keeps (%)</th>" in view.table.value and "<td>50.0</td>" in view.table.value  # % too
    view.k.value = 1  # a single member: everything non-zero is "consistent"
    members = view.state.subset()
    assert len(members) == 1
    nonzero = sum(int((v != 0).sum()) for v in pool3()[members[0]].values())
    assert shown(view)["sign consensus (%)"] == f"{100 * nonzero / 6:.2f}"
    view.rules.value = ("magmax",)
    assert "NegMerge keeps (%)" not in shown(view) and "MagMax keeps (%)" in shown(view)
    assert view.message.value == ""


def test_consensus_member_list_stays_short():
    st = ConsensusState({f"m{i}": {"w": torch.ones(2)} for i in range(27)}, methods=("negmerge",))
    assert st.members_text() == "all 27"
    st.set_k(10)
    text = st.members_text()
    assert text.count(",") == 3 and "(+7 more; draw 0)" in text
    st.set_k(2)
    assert st.members_text().count(",") == 1


def test_consensus_draws_are_seeded_and_bad_k_is_refused():
    st = ConsensusState(pool3(), methods=("negmerge",), seed=3)
    st.set_k(2)
    first = st.subset()
    again = ConsensusState(pool3(), methods=("negmerge",), seed=3)
    again.set_k(2)
    assert again.subset() == first and len(first) == 2
    draws = set()
    for d in range(20):
        st.set_draw(d)
        draws.add(tuple(st.subset()))
    assert len(draws) == 3  # the three 2-subsets of a 3-pool all come up
    with pytest.raises(ValueError, match="outside 1..3"):
        st.set_k(4)
    with pytest.raises(ValueError, match="not offered"):
        st.set_methods(["ties"])


# --------------------------------------------------------------------------- forget vectors
class PixelClassifier(nn.Module):
    """3 classes on 1×1×3 images: the class is the brightest pixel."""

    def forward(self, x):
        return x.flatten(1)


def test_forget_vector_view_per_class_accuracy():
    from negkit.forget_vectors import ForgetVector

    x = torch.eye(3).repeat(4, 1).reshape(12, 1, 1, 3) * 0.5  # 4 images per class, one-hot pixel
    y = torch.arange(3).repeat(4)
    # δ_0 moves class-0 images to class 2 (and leaves others alone); δ_1 moves class 1 to class 2.
    vectors = {0: ForgetVector(torch.tensor([[[-0.4, 0.0, 0.2]]])), 1: ForgetVector(torch.tensor([[[0.0, -0.4, 0.2]]]))}
    model = PixelClassifier()
    view = ForgetVectorView(model, vectors=vectors, data=(x, y), classnames=["zero", "one", "two"], device="cpu")
    t = view.state.per_class_accuracy().set_index("class")
    assert list(t["acc_without"]) == [100.0, 100.0, 100.0]
    assert list(t["acc_with"]) == [0.0, 100.0, 100.0]
    assert shown(view)["forgotten classes: acc with δ (%)"] == "0.00"
    view.classes.value = (0, 1)  # arithmetic δ_0 + δ_1 = [-0.4, -0.4, 0.4]: classes 0 and 1 -> 2
    assert shown(view)["forgotten classes: acc with δ (%)"] == "0.00"
    assert shown(view)["other classes: acc with δ (%)"] == "100.00"
    assert torch.allclose(view.state.combined().delta, torch.tensor([[[-0.4, -0.4, 0.4]]]))
    fig = view.state.figure(classes=(0, 1))  # a report figure of another selection...
    assert view.state.selected == (0, 1) and len(fig.axes) >= 3
    view.classes.value = (1,)
    view.state.figure(classes=(0, 1))
    assert view.state.selected == (1,)  # ...leaves the view's own selection alone
    view.classes.value = ()  # nothing selected: said in place, previous numbers kept
    assert "at least one class" in view.message.value
    with pytest.raises(ValueError, match="shape"):
        ForgetVectorState(model, {0: ForgetVector(torch.zeros(1, 2, 2))}, (x, y))


def test_explorer_tabs(results_dir):
    tab = explorer(negation=results_dir, consensus=pool3())
    assert list(tab.views) == ["Negation", "Sign consensus"] and len(tab.children) == 2
    labels = [lbl for lbl, _ in tab.views["Negation"].run.options]
    assert RunKey("digits", "class_3", "small_resnet", "standard").label in labels


def test_run_labels_name_their_lambda_rule():
    a = RunKey("digits", "random_10", "small_resnet", "standard", 0)
    b = RunKey("digits", "random_10", "small_resnet", "standard_match", 0)
    assert a.label == "digits / random_10 (small_resnet, seed 0, λ rule (a) min_forget)"
    assert b.label == "digits / random_10 (small_resnet, seed 0, λ rule (b) match)"
    assert RunKey("tiny", "live_demo").label == "tiny / live_demo (seed 0)"


def test_extreme_metrics_are_explained_where_they_occur():
    from negkit.widgets.negation import metric_notes

    notes = metric_notes({"UA": 100.0, "RA": 99.0, "MIA": 0.0})
    assert len(notes) == 2 and notes[0].startswith("UA 100: no image of D_f") and notes[1].startswith("MIA 0:")
    assert metric_notes({"UA": 97.0, "MIA": 40.0}) == []
