"""Prediction, evaluation and the λ search helpers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from negkit.data import TensorImageDataset
from negkit.evaluate import (coef_grid, evaluate, negation_evaluator, predict, search_coef, select_coef, sweep_coefs,
                             true_class_confidence)


class _MeanBrightness(nn.Module):
    """Logits (−s·m, s·m) of the mean pixel m: class 1 when m > 0 (after an optional shift)."""

    def __init__(self, scale: float = 1.0, shift: float = 0.5) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        m = x.flatten(1).mean(1) - self.shift
        return torch.stack([-self.scale * m, self.scale * m], 1)


def _ds() -> TensorImageDataset:
    # 4 dark images labelled 0 and 4 bright ones labelled 1, except the last bright one (labelled 0).
    images = torch.cat([torch.full((4, 1, 2, 2), 0.2), torch.full((4, 1, 2, 2), 0.8)])
    return TensorImageDataset(images, [0, 0, 0, 0, 1, 1, 1, 0])


def test_predict_returns_ordered_logits_and_restores_training_mode():
    model = _MeanBrightness().train()
    logits, labels = predict(model, _ds(), batch_size=3, device="cpu")
    assert logits.shape == (8, 2) and labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert logits[:4, 0].gt(0).all() and logits[4:, 1].gt(0).all()
    assert model.training
    same, _ = predict(model, DataLoader(_ds(), batch_size=5), device="cpu")
    assert torch.equal(same, logits)


def test_input_transform_is_applied_to_raw_images_before_the_model():
    darken = lambda x: x - 0.7  # every image now looks dark (class 0)
    logits, _ = predict(_MeanBrightness(), _ds(), input_transform=darken, device="cpu")
    assert logits.argmax(1).tolist() == [0] * 8


def test_evaluate_reports_accuracy_in_percent_and_cross_entropy():
    res = evaluate(_MeanBrightness(scale=10.0), _ds(), device="cpu")
    assert res["acc"] == pytest.approx(100 * 7 / 8) and res["n"] == 8
    logits = torch.tensor([[3.0, -3.0]] * 4 + [[-3.0, 3.0]] * 3 + [[-3.0, 3.0]])
    expected = nn.functional.cross_entropy(logits, torch.tensor([0, 0, 0, 0, 1, 1, 1, 0])).item()
    assert res["loss"] == pytest.approx(expected, rel=1e-5)


def test_true_class_confidence_picks_the_softmax_of_the_label():
    logits = torch.tensor([[0.0, 0.0], [0.0, torch.log(torch.tensor(3.0))]])
    conf = true_class_confidence(logits, torch.tensor([1, 1]))
    assert conf.tolist() == pytest.approx([0.5, 0.75])
    with pytest.raises(ValueError, match="matching"):
        true_class_confidence(logits, torch.tensor([1]))


def test_coef_grid_is_inclusive_and_rounded():
    assert coef_grid(0.0, 1.0, 0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]
    grid = coef_grid()
    assert len(grid) == 21 and grid[-1] == 1.0 and grid[3] == 0.15
    assert coef_grid(0.5, 0.5, 0.1) == [0.5]
    with pytest.raises(ValueError):
        coef_grid(1.0, 0.0, 0.1)


def test_select_coef_keeps_control_accuracy_and_minimises_forget_accuracy():
    coefs = [0.0, 0.2, 0.4, 0.6, 0.8]
    forget = [90.0, 60.0, 30.0, 30.0, 5.0]
    control = [80.0, 79.0, 77.0, 76.5, 50.0]
    # 0.95 * 80 = 76: coefficient 0.8 breaks control; 0.4 and 0.6 tie on forget -> smaller wins.
    assert select_coef(coefs, forget, control, control_reference=80.0) == 0.4
    assert select_coef(coefs, forget, control, 80.0, threshold=0.6) == 0.8
    assert select_coef(coefs, forget, control, control_reference=100.0) is None
    with pytest.raises(ValueError, match="equal lengths"):
        select_coef(coefs, forget[:-1], control, 80.0)


def test_sweep_coefs_builds_one_model_per_coefficient_into_a_tidy_table():
    built = []

    def build(coef):
        built.append(coef)
        return _MeanBrightness(shift=0.5 + coef)  # larger coef -> more images look dark

    df = sweep_coefs(build, [0.0, 0.4], {"all": _ds(), "bright": torch.utils.data.Subset(_ds(), [4, 5, 6])},
                     device="cpu", progress=False)
    assert built == [0.0, 0.4] and list(df.columns) == ["coef", "split", "acc"] and len(df) == 4
    acc = df.set_index(["coef", "split"])["acc"]
    assert acc[(0.0, "bright")] == 100.0 and acc[(0.4, "bright")] == 0.0
    assert acc[(0.0, "all")] == pytest.approx(87.5) and acc[(0.4, "all")] == pytest.approx(62.5)


# ------------------------------------------------------------------------------ search_coef
class _Curves:
    """``evaluate_coefs`` over given functions of λ, counting the coefficients and the calls."""

    def __init__(self, forget, control):
        self.forget, self.control, self.seen, self.calls = forget, control, [], 0

    def __call__(self, coefs):
        self.calls += 1
        self.seen += list(coefs)
        return {"val_forget": [self.forget(c) for c in coefs], "val_control": [self.control(c) for c in coefs]}


def _grid_answer(curves, top, ref=80.0, **kw):
    grid = coef_grid(0.0, top, 0.05)
    return select_coef(grid, [curves.forget(c) for c in grid], [curves.control(c) for c in grid], ref, **kw)


def test_search_returns_the_grids_lambda_on_monotone_curves_with_far_fewer_evaluations():
    # control 80 − 10λ: admissible (≥ 76) up to λ = 0.4; forget falls 100 − 50λ.
    c = _Curves(lambda l: 100 - 50 * l, lambda l: 80 - 10 * l)
    res = search_coef(c, 80.0)
    assert res.coef == 0.4 == _grid_answer(c, 1.0)
    assert res.searched == (0.0, 1.0) and not res.hit_max and not res.exhaustive
    assert res.n_evaluated == len(set(c.seen)) == len(c.seen) <= 7  # of 21
    assert list(res.curve.columns) == ["coef", "split", "acc"] and len(res.curve) == 2 * res.n_evaluated
    assert res.curve.coef.is_monotonic_increasing
    # forget reaches 0 at λ = 0.2 and stays there: the tie goes to the smallest λ, 0.2.
    c = _Curves(lambda l: max(0.0, 100 - 500 * l), lambda l: 80 - 10 * l)
    assert search_coef(c, 80.0).coef == 0.2 == _grid_answer(c, 1.0)


def test_search_extends_the_range_past_one_and_records_reaching_the_maximum():
    c = _Curves(lambda l: 100 - 10 * l, lambda l: 80 - 1.0 * l)  # admissible up to λ = 4
    res = search_coef(c, 80.0)
    assert res.coef == 4.0 and res.searched == (0.0, 8.0) and not res.hit_max
    c = _Curves(lambda l: 100 - 10 * l, lambda l: 80 - 0.6 * l)  # admissible up to 6.65
    res = search_coef(c, 80.0)
    assert res.coef == 6.65 == _grid_answer(c, 8.0) and res.searched == (0.0, 8.0)
    c = _Curves(lambda l: 100 - 10 * l, lambda l: 80.0)  # never leaves the admissible set
    res = search_coef(c, 80.0, max_coef=3.0)
    assert res.coef == 3.0 and res.searched == (0.0, 3.0) and res.hit_max
    # 0, 1, 2, 3, then 2.95 (its higher forget accuracy rules out a tie below 3): nothing else is needed.
    assert c.seen == [0.0, 1.0, 2.0, 3.0, 2.95] and res.n_evaluated == 5


def test_search_evaluates_the_bracket_where_the_curve_is_not_monotone():
    # Control 80 − 5λ: admissible up to 0.8. Forget falls to 30 at λ = 0.5, then rises to 60 at
    # λ = 1 with a dip to 5 at λ = 0.7. The rise between the evaluated 0.5 and 1.0 breaks
    # monotonicity, so every grid point between them is evaluated and the dip is found.
    forget = {round(0.05 * i, 6): v for i, v in enumerate(
        [100, 95, 90, 80, 70, 60, 50, 45, 40, 35, 30, 35, 40, 20, 5, 45, 50, 55, 58, 59, 60])}
    c = _Curves(forget.get, lambda l: 80 - 5 * l)
    res = search_coef(c, 80.0)
    assert res.coef == 0.7 == _grid_answer(c, 1.0)
    assert set(coef_grid(0.5, 1.0, 0.05)) <= set(c.seen) and 0.25 not in c.seen
    ex = search_coef(_Curves(forget.get, lambda l: 80 - 5 * l), 80.0, max_coef=1.0, exhaustive=True)
    assert ex.exhaustive and ex.n_evaluated == 21 and ex.coef == 0.7 and not ex.hit_max


def test_search_match_rule_and_exhaustive_agree_with_select_coef():
    # Forget hits 55 at λ = 1.5; control 80 − 2λ is admissible up to 2, so the range grows to 0..4.
    c = _Curves(lambda l: 100 - 30 * l, lambda l: 80 - 2 * l)
    res = search_coef(c, 80.0, rule="match", target=55.0)
    assert res.coef == 1.5 == _grid_answer(c, 4.0, rule="match", target=55.0) and res.searched == (0.0, 4.0)
    ex = search_coef(c, 80.0, rule="match", target=55.0, exhaustive=True)
    assert ex.coef == 1.5 and ex.n_evaluated == 81 and ex.searched == (0.0, 4.0)
    assert res.n_evaluated < ex.n_evaluated / 3


def test_search_with_no_admissible_coefficient_returns_none():
    res = search_coef(_Curves(lambda l: 50.0, lambda l: 10.0), 80.0)
    assert res.coef is None and res.searched == (0.0, 1.0) and res.n_evaluated == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=95), "did you mean 0.95"),
    (dict(threshold=0.0), r"threshold must be a fraction in \(0, 1\]"),
    (dict(control_reference=math.nan), "control_reference must be a finite"),
    (dict(step=1e-9), "gives 8e\\+09 coefficients"),
    (dict(step=0.0), "step > 0"),
    (dict(stop=2.0, max_coef=1.0), "max_coef"),
    (dict(rule="closest"), "valid rules are"),
    (dict(rule="match"), "needs a finite target"),
    (dict(forget_split="forget"), "without 'forget'"),
])
def test_search_rejects_bad_input_before_evaluating(kwargs, match):
    c = _Curves(lambda l: 50.0, lambda l: 80.0)
    kwargs = {"control_reference": 80.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        search_coef(c, **kwargs)
    assert c.calls == (1 if "forget_split" in kwargs else 0)


def test_grid_and_select_coef_reject_bad_input_at_once():
    with pytest.raises(ValueError, match="coarser step"):
        coef_grid(0.0, 1.0, 1e-9)
    with pytest.raises(ValueError, match="finite"):
        coef_grid(0.0, math.nan, 0.1)
    with pytest.raises(ValueError, match="did you mean 0.95"):
        select_coef([0.0], [1.0], [1.0], 80.0, threshold=95)
    with pytest.raises(ValueError, match="finite"):
        select_coef([0.0], [1.0], [1.0], math.nan)
    with pytest.raises(ValueError, match="no coefficients"):
        select_coef([], [], [], 80.0)


# ------------------------------------------------------------------------ negation_evaluator
def test_negation_evaluator_equals_evaluate_on_each_negated_model():
    from negkit.models import get as get_model
    from negkit.taskvec import TaskVector

    torch.manual_seed(0)
    model = get_model("small_resnet", num_classes=3).eval()
    x = torch.rand(40, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the original model gets right, so negation lowers accuracy
    y[::4] = (y[::4] + 1) % 3
    sets = {"a": TensorImageDataset(x[:25], y[:25].tolist()), "b": TensorImageDataset(x[25:], y[25:].tolist())}
    pre = {k: v.clone() for k, v in model.state_dict().items()}
    tau = {k: torch.randn_like(v) * 0.3 for k, v in model.named_parameters()}
    coefs = [0.0, 0.5, 1.0, 2.0, 3.0]
    batched = negation_evaluator(model, tau, sets, device="cpu", batch_size=16, chunk=2)(coefs)
    assert set(batched) == {"a", "b"}
    for i, c in enumerate(coefs):
        model.load_state_dict(TaskVector(tau).apply_to(pre, -c))
        for split, data in sets.items():
            assert batched[split][i] == pytest.approx(evaluate(model, data, device="cpu", batch_size=7)["acc"])
        model.load_state_dict(pre)
    assert len({tuple(v) for v in batched.values()}) == 2 and len(set(batched["a"])) > 1
    assert all(torch.equal(v, pre[k]) for k, v in model.state_dict().items())  # θ_o untouched
    with pytest.raises(ValueError, match="not in the model"):
        negation_evaluator(model, {"nope": torch.zeros(1)}, sets)


# ---------------------------------------------------------------- numeric checks on public inputs
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_select_coef_refuses_a_non_finite_coefficient_naming_its_index(bad):
    with pytest.raises(ValueError, match=r"coefs\[1\] must be a finite number, got (nan|inf|-inf)"):
        select_coef([0.0, bad, 1.0], [50.0, 40.0, 30.0], [90.0, 90.0, 90.0], 90.0)


@pytest.mark.parametrize("bad", [-1.0, -1e-9, math.nan, math.inf])
def test_select_coef_refuses_a_negative_or_non_finite_reference(bad):
    with pytest.raises(ValueError, match="control_reference must be a finite accuracy ≥ 0"):
        select_coef([0.0, 1.0], [50.0, 30.0], [90.0, 90.0], bad)


@pytest.mark.parametrize("start", [-1, -0.05, math.nan, math.inf])
def test_search_coef_refuses_a_negative_or_non_finite_start(start):
    calls = []

    def evaluate_coefs(coefs):
        calls.append(coefs)
        return {"val_forget": [1.0] * len(coefs), "val_control": [1.0] * len(coefs)}

    with pytest.raises(ValueError, match=r"start must be a finite λ ≥ 0.*start=-?(1|0.05|nan|inf)"):
        search_coef(evaluate_coefs, 1.0, start=start)
    assert calls == []  # refused before any evaluation


def test_search_coef_still_accepts_start_zero():
    res = search_coef(lambda c: {"val_forget": [100 - 10 * x for x in c], "val_control": [90.0] * len(c)},
                      90.0, start=0, max_coef=1.0)
    assert res.coef == 1.0 and res.searched[0] == 0.0
