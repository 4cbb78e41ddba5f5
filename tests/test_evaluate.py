"""Prediction, evaluation and the λ search helpers."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from negkit.data import TensorImageDataset
from negkit.evaluate import coef_grid, evaluate, predict, select_coef, sweep_coefs, true_class_confidence


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
