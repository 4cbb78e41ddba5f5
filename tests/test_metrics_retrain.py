"""Output-level metrics against Retrain (KL, JS, ZRF) and the relearn time, on hand-made inputs."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from negkit.data import TensorImageDataset
from negkit.evaluate import evaluate
from negkit.metrics import js_divergence, js_to_retrain, kl_divergence, kl_to_retrain, relearn_epochs, zrf


class FixedLogits(nn.Module):
    """Returns the logits of a lookup table, row i for an image whose first pixel is i."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.flatten(1)[:, 0].round().long()]


def _index_images(n: int) -> TensorImageDataset:
    return TensorImageDataset(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), [0] * n)


def test_two_class_kl_and_js_by_hand():
    # (1/2, 1/2) and (3/4, 1/4), in float64 so that log 3 is exact to 1e-16
    p, q = torch.tensor([[0.0, 0.0]], dtype=torch.float64), torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qp = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    m = (5 / 8, 3 / 8)
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) \
        + 0.5 * (0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1]))
    assert kl_divergence(p, q).item() == pytest.approx(kl_pq, abs=1e-12)
    assert kl_divergence(q, p).item() == pytest.approx(kl_qp, abs=1e-12)
    assert js_divergence(p, q).item() == pytest.approx(js, abs=1e-12)
    assert js_divergence(q, p).item() == pytest.approx(js, abs=1e-12)
    # Opposite one-hot outputs: JS reaches its bound ln 2; no NaN from 0 · log 0.
    far = js_divergence(torch.tensor([[200.0, -200.0]]), torch.tensor([[-200.0, 200.0]]))
    assert far.item() == pytest.approx(math.log(2.0), abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence(p, torch.zeros(1, 3))


def test_dataset_means_against_retrain():
    # predict() returns float32 logits: log 3 is exact to ~1e-7 there
    table_r = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # Retrain: (1/2, 1/2), (3/4, 1/4)
    table_m = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])  # model: (3/4, 1/4) twice
    retrain, model, data = FixedLogits(table_r), FixedLogits(table_m), _index_images(2)
    # KL(p_Retrain ‖ p_model): row 0 as computed by hand above, row 1 zero.
    expected_kl = (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) / 2
    assert kl_to_retrain(model, retrain, data, device="cpu") == pytest.approx(expected_kl, abs=1e-6)
    assert js_to_retrain(model, retrain, data, device="cpu") == pytest.approx(
        js_divergence(table_r[:1], table_m[:1]).item() / 2, abs=1e-6)
    # Identical models give 0; the transform acts on the model's inputs only (here: row 1 -> row 0).
    assert kl_to_retrain(retrain, copy.deepcopy(retrain), data, device="cpu") == 0.0
    assert js_to_retrain(retrain, retrain, data, device="cpu") == pytest.approx(0.0, abs=1e-12)
    shift = kl_to_retrain(retrain, retrain, data, device="cpu", input_transform=lambda x: x * 0)
    assert shift == pytest.approx(kl_divergence(table_r[1:], table_r[:1]).item() / 2, abs=1e-6)


def test_zrf_of_the_incompetent_teacher_itself_is_one():
    teacher = FixedLogits(torch.tensor([[0.0, 0.0], [1.0, -1.0]]))
    data = _index_images(2)
    assert zrf(teacher, teacher, data, device="cpu") == pytest.approx(1.0, abs=1e-12)
    confident = FixedLogits(torch.tensor([[50.0, -50.0], [50.0, -50.0]]))
    expected = 1.0 - js_divergence(torch.tensor([[50.0, -50.0]] * 2), teacher.table).mean().item()
    assert zrf(confident, teacher, data, device="cpu") == pytest.approx(expected, abs=1e-9)
    assert 1 - math.log(2) <= zrf(confident, teacher, data, device="cpu") < 1.0


def _separable(n: int = 64) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    x = torch.randn(n, 1, 2, 2, generator=g) * 0.1 + (labels.float() * 2 - 1).view(n, 1, 1, 1)
    return TensorImageDataset(x, labels)


def _linear(weight_sign: float = 0.0) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[1] += weight_sign  # class 1 where the pixels are positive
        model[1].weight[0] -= weight_sign
    return model


def test_relearn_epochs_counts_until_the_reference_is_back():
    data = _separable()
    # Already at the reference: nothing to relearn.
    assert relearn_epochs(_linear(1.0), data, 100.0, device="cpu") == 0
    # A model that predicts class 0 everywhere (50 %) needs at least one epoch to get back to 100 %.
    blank = _linear(0.0)
    before = copy.deepcopy(blank.state_dict())
    assert evaluate(blank, data, device="cpu")["acc"] == 50.0
    epochs = relearn_epochs(blank, data, 100.0, lr=0.1, batch_size=16, max_epochs=10, device="cpu")
    assert 1 <= epochs <= 10
    assert all(torch.equal(before[k], v) for k, v in blank.state_dict().items())  # the model is not modified
    # A lower target is reached no later; a learning rate of 0 never relearns: the cap's sentinel.
    assert relearn_epochs(blank, data, 50.0, device="cpu") == 0
    assert relearn_epochs(blank, data, 100.0, lr=0.0, max_epochs=3, device="cpu") == 4
    assert relearn_epochs(blank, data, 100.0, lr=0.0, max_epochs=3, tolerance=50.0, device="cpu") == 0


def test_relearn_epochs_refuses_bad_arguments():
    with pytest.raises(ValueError, match="max_epochs"):
        relearn_epochs(_linear(), _separable(), 100.0, max_epochs=0, device="cpu")
    with pytest.raises(ValueError, match="reference_acc"):
        relearn_epochs(_linear(), _separable(), 120.0, device="cpu")
