"""Unlearning metrics on hand-made inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from negkit.data import TensorImageDataset
from negkit.evaluate import true_class_confidence
from negkit.metrics import (MIA_FEATURES, _balanced, accuracy, avg_gap, mia_efficacies, mia_efficacy, mia_features,
                           unlearning_metrics)


def test_accuracy_in_percent():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 75.0
    with pytest.raises(ValueError):
        accuracy(logits[:0], torch.tensor([], dtype=torch.long))


def test_mia_on_separable_confidences():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.95, 1.0, 200)  # retain: confident
    non_members = rng.uniform(0.1, 0.4, 100)  # test: unsure
    # A forget set that still looks like training data is caught (efficacy 0);
    # one that looks like unseen data is called non-member (efficacy 100).
    assert mia_efficacy(members, non_members, rng.uniform(0.96, 1.0, 50)) == 0.0
    assert mia_efficacy(members, non_members, rng.uniform(0.15, 0.35, 50)) == 100.0
    mixed = np.concatenate([rng.uniform(0.96, 1.0, 30), rng.uniform(0.15, 0.35, 10)])
    assert mia_efficacy(torch.tensor(members), torch.tensor(non_members), torch.tensor(mixed)) == 25.0


def test_mia_uses_only_as_many_retain_samples_as_test_samples():
    # The retain samples beyond len(test) look like non-members; they must not enter the attack.
    retain = np.concatenate([np.full(20, 0.99), np.full(50, 0.2)])
    test = np.linspace(0.1, 0.3, 20)
    assert mia_efficacy(retain, test, np.full(5, 0.99)) == 0.0


def test_mia_rejects_empty_inputs():
    with pytest.raises(ValueError, match="forget confidences are empty"):
        mia_efficacy([0.9, 0.8], [0.1], [])
    with pytest.raises(ValueError, match="retain confidences are empty"):
        mia_efficacy([], [0.1, 0.2], [0.5])


def test_mia_with_fewer_retain_than_test_samples_subsamples_the_test_side():
    # 10 members against 1000 non-members: without balancing, the SVC would call everything
    # a non-member. With a balanced subsample of 10 test points it separates the two groups.
    rng = np.random.default_rng(1)
    members = rng.uniform(0.95, 1.0, 10)
    non_members = rng.uniform(0.1, 0.4, 1000)
    assert mia_efficacy(members, non_members, rng.uniform(0.96, 1.0, 20)) == 0.0
    assert mia_efficacy(members, non_members, rng.uniform(0.15, 0.35, 20)) == 100.0
    # The subsample is the documented default_rng(seed) draw, kept in order.
    retain = np.full(4, 0.98)
    forget = np.array([0.2, 0.99])
    test = np.arange(12.0) / 12
    for seed in range(3):
        keep = np.sort(np.random.default_rng(seed).choice(12, size=4, replace=False))
        members, non_members = _balanced(retain[:, None], test[:, None], seed)
        np.testing.assert_array_equal(members[:, 0], retain)
        np.testing.assert_array_equal(non_members[:, 0], test[keep])
        assert mia_efficacy(retain, test, forget, seed=seed) == mia_efficacy(retain, test[keep], forget, seed=seed)
    # With more retain samples the members are the first len(test) of them (SalUn's Subset).
    members, non_members = _balanced(np.arange(5.0)[:, None], np.zeros((3, 1)), 0)
    np.testing.assert_array_equal(members[:, 0], [0.0, 1.0, 2.0])


def test_avg_gap_is_mean_absolute_difference():
    m = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 20.0}
    r = {"UA": 14.0, "RA": 92.0, "TA": 80.0, "MIA": 10.0, "extra": 1.0}
    assert avg_gap(m, r) == pytest.approx((4 + 2 + 0 + 10) / 4)
    assert avg_gap(m, r, keys=("UA",)) == 4.0
    with pytest.raises(KeyError, match="MIA"):
        avg_gap({"UA": 1.0, "RA": 1.0, "TA": 1.0}, r)


class _Lookup(nn.Module):
    """Puts logit 5·s on the class stored in an image's first pixel (s = second pixel), 0 elsewhere."""

    def forward(self, x):
        cls = x[:, 0, 0, 0].round().long()
        logits = torch.zeros(x.shape[0], 3)
        logits[torch.arange(x.shape[0]), cls] = 5.0 * x[:, 0, 0, 1]
        return logits


def _ds(predicted, true, strength):
    images = torch.zeros(len(true), 1, 1, 2)
    images[:, 0, 0, 0] = torch.tensor(predicted, dtype=torch.float)
    images[:, 0, 0, 1] = torch.tensor(strength, dtype=torch.float)
    return TensorImageDataset(images, true)


def _conf(predicted, true, strength):
    """Hand-computed softmax probability of the true class under _Lookup."""
    e = np.exp(5.0 * np.asarray(strength, dtype=float))
    return np.where(np.asarray(predicted) == np.asarray(true), e / (e + 2), 1 / (e + 2))


def test_unlearning_metrics_combines_the_four_numbers():
    sets = {
        "forget": ([0, 1, 1, 2, 0, 0], [0, 0, 0, 0, 0, 0], [0.1, 0.1, 0.2, 0.3, 0.2, 0.1]),  # 3/6 correct
        "retain": ([1] * 8, [1] * 8, [2.0] * 4 + [1.5] * 4),  # all correct, confident
        "test": ([2, 2, 2, 0], [2, 2, 0, 0], [0.2, 0.3, 0.1, 0.2]),  # 3/4 correct, unsure
    }
    ds = {k: _ds(*v) for k, v in sets.items()}
    res = unlearning_metrics(_Lookup(), ds["forget"], ds["retain"], ds["test"], device="cpu")
    assert res["UA"] == 50.0 and res["RA"] == 100.0 and res["TA"] == 75.0
    expected = mia_efficacy(*(_conf(*sets[k]) for k in ("retain", "test", "forget")))
    assert res["MIA"] == expected
    assert mia_efficacy(*(_conf(*sets[k]) for k in ("retain", "test", "retain"))) < expected
    # input_transform reaches every prediction: shifting the stored class to 1 makes TA 0 and RA 100.
    to_class_1 = lambda x: torch.cat([torch.ones_like(x[..., :1]), x[..., 1:]], -1)
    shifted = unlearning_metrics(_Lookup(), ds["forget"], ds["retain"], ds["test"], device="cpu",
                                 input_transform=to_class_1)
    assert shifted["TA"] == 0.0 and shifted["UA"] == 100.0 and shifted["RA"] == 100.0
    more = unlearning_metrics(_Lookup(), ds["forget"], ds["retain"], ds["test"], device="cpu",
                              mia_extra=("entropy", "correctness"))
    assert {k: more[k] for k in res} == res
    assert set(more) - set(res) == {"MIA_entropy", "MIA_correctness"}


def test_mia_features_by_hand():
    # p = softmax([0, ln 3]) = [1/4, 3/4]; sample 0 has label 1 (correct), sample 1 label 0 (wrong)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    labels = torch.tensor([1, 0])
    f = {name: mia_features(logits, labels, name) for name in MIA_FEATURES}
    assert f["correctness"].tolist() == [[1.0], [0.0]]
    np.testing.assert_allclose(f["confidence"][:, 0], [0.75, 0.25], rtol=1e-6)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(f["entropy"][:, 0], [h, h], rtol=1e-6)
    # label 1: -(1 - 3/4) ln 3/4 - 1/4 ln(1 - 1/4) = -1/2 ln 3/4
    # label 0: -(1 - 1/4) ln 1/4 - 3/4 ln(1 - 3/4) = -3/2 ln 1/4
    np.testing.assert_allclose(f["m_entropy"][:, 0], [-0.5 * math.log(0.75), -1.5 * math.log(0.25)], rtol=1e-6)
    np.testing.assert_allclose(f["prob"], [[0.25, 0.75], [0.25, 0.75]], rtol=1e-6)
    assert all(v.shape == (2, 2 if k == "prob" else 1) for k, v in f.items())
    # a one-hot prediction: entropy 0 (0·log 0 counts 0), m-entropy finite
    sure = mia_features(torch.tensor([[0.0, 200.0]]), torch.tensor([1]), "entropy")
    assert sure[0, 0] == 0.0
    assert np.isfinite(mia_features(torch.tensor([[0.0, 200.0]]), torch.tensor([0]), "m_entropy")).all()
    with pytest.raises(ValueError, match="unknown MIA feature 'loss'.*m_entropy"):
        mia_features(logits, labels, "loss")


def test_mia_efficacies_per_feature():
    g = torch.Generator().manual_seed(0)
    # members: confident and correct; non-members: unsure; forget: looks like non-members
    def sample(n, margin):
        labels = torch.randint(0, 3, (n,), generator=g)
        logits = torch.randn(n, 3, generator=g) * 0.1
        logits[torch.arange(n), labels] += margin
        return logits, labels
    retain, test, forget = sample(60, 8.0), sample(40, 0.5), sample(20, 0.5)
    res = mia_efficacies(retain, test, forget)
    assert set(res) == set(MIA_FEATURES)
    conf = [true_class_confidence(*d) for d in (retain, test, forget)]
    assert res["confidence"] == mia_efficacy(*conf)
    assert res["confidence"] >= 90 and res["entropy"] >= 90 and res["m_entropy"] >= 90 and res["prob"] >= 90
    # the attack calls a member-like forget set "member" on every feature
    res = mia_efficacies(retain, test, sample(20, 8.0), features=("confidence", "m_entropy", "prob"))
    assert list(res) == ["confidence", "m_entropy", "prob"] and max(res.values()) <= 10


# ---------------------------------------------------------------- labels must be class indices
@pytest.mark.parametrize("labels", [torch.tensor([0.0, 1.0]), torch.tensor([True, False]), np.array([0.5, 1.0])])
def test_accuracy_refuses_non_integer_labels(labels):
    with pytest.raises(TypeError, match="accuracy: labels must be integer class indices"):
        accuracy(torch.eye(2), labels)


def test_accuracy_still_takes_integer_labels():
    assert accuracy(torch.eye(2), torch.tensor([0, 0])) == 50.0


@pytest.mark.parametrize("feature", MIA_FEATURES)
def test_mia_features_refuses_negative_labels(feature):
    with pytest.raises(ValueError, match="labels must be class indices ≥ 0, got -100"):
        mia_features(torch.eye(3), torch.tensor([0, -100, 2]), feature)


def test_mia_features_refuses_labels_past_the_classes_and_float_labels():
    with pytest.raises(ValueError, match="label 3 is out of range for 3 classes"):
        mia_features(torch.eye(3), torch.tensor([0, 1, 3]), "confidence")
    with pytest.raises(TypeError, match="integer class indices, got a torch.float32"):
        mia_features(torch.eye(3), torch.tensor([0.0, 1.0, 2.0]), "confidence")
