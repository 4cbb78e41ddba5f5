"""U-LiRA on a tiny memorising problem: a retrained model scores near chance, the Original is detected."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from negkit import metrics
from negkit.data import TensorImageDataset
from negkit.data.splits import subset
from negkit.train import TrainConfig, train
from negkit.ulira import (ShadowStats, ULiRAConfig, _pair_split, logit_confidence, shadow_statistics, ulira,
                          ulira_scores)

# 160 noise images with random labels: only memorisation fits them, so a model that saw an
# example is far more confident on it than one that did not.
N, N_FORGET = 160, 40
RECIPE = TrainConfig(epochs=60, batch_size=32, lr=0.05, weight_decay=0.0, schedule="constant")


def _pool() -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.rand(N, 1, 4, 4, generator=g), torch.randint(0, 4, (N,), generator=g))


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 4))


def _fit(data, seed: int) -> nn.Module:
    return train(_model(seed), data, {**RECIPE.__dict__, "seed": seed}, device="cpu", progress=False).model.eval()


def test_logit_confidence_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    # p_y = e²/(e² + 2) -> log(p/(1−p)) = 2 − log 2; uniform over 3 -> log(1/2)
    np.testing.assert_allclose(logit_confidence(logits, torch.tensor([0, 1])), [2 - math.log(2), -math.log(2)])
    assert logit_confidence(torch.tensor([[60.0, -60.0]]), torch.tensor([0]))[0] == pytest.approx(120.0)


def test_pairs_are_complementary_and_hold_every_forget_example_once():
    forget = np.arange(0, 40, 2)
    a, b = _pair_split(100, forget, seed=0, k=3)
    assert len(a) == len(b) == 20 and not set(a) & set(b)
    assert set(forget) <= set(a) | set(b)
    with pytest.raises(ValueError, match="even"):
        ULiRAConfig(n_shadows=5)


def test_scores_follow_the_fitted_gaussians():
    stats = ShadowStats(phi_in=np.array([[4.0, 1.0], [6.0, 3.0]]), phi_out=np.array([[-1.0, 0.0], [1.0, 2.0]]))
    # Means (5, 2) IN and (0, 1) OUT; residuals ±1, pooled over 4 samples with one mean per example
    # (2 degrees of freedom): σ² = 4 / 2 = 2 on both sides, so Λ = ((φ−μ_out)² − (φ−μ_in)²) / (2 σ²).
    phi = np.array([5.0, 1.0])
    np.testing.assert_allclose(ulira_scores(phi, stats), [(25 - 0) / 4, (0 - 1) / 4])
    # A σ per example: IN (√2, √2), OUT (√2, √2) here too; with unequal spreads the log σ terms count.
    np.testing.assert_allclose(ulira_scores(phi, stats, fixed_variance=False), [(25 - 0) / 4, (0 - 1) / 4])
    wide = ShadowStats(phi_in=stats.phi_in, phi_out=np.array([[-2.0, 0.0], [2.0, 2.0]]))  # σ_out = (2√2, √2)
    lam0 = -0.5 * 0 / 2 - math.log(math.sqrt(2)) + 0.5 * 25 / 8 + math.log(2 * math.sqrt(2))
    assert ulira_scores(phi, wide, fixed_variance=False)[0] == pytest.approx(lam0)


@pytest.fixture(scope="module")
def shadows():
    pool = _pool()
    forget_idx = np.random.default_rng(1).choice(N, N_FORGET, replace=False)
    retain = subset(pool, np.setdiff1d(np.arange(N), forget_idx))
    cfg = ULiRAConfig(n_shadows=8, seed=3)
    stats = metrics.ulira(_fit(pool, 0), _fit(retain, 0), pool, forget_idx, make_model=_model, recipe=RECIPE,
                          config=cfg, device="cpu")
    return pool, forget_idx, retain, cfg, stats


def test_ulira_detects_the_original_and_not_a_retrained_model(shadows, tmp_path):
    pool, forget_idx, retain, cfg, original_result = shadows
    # The Original saw D_f: its confidences look like the shadow Originals' (unlearn_fn=None), not the Retrains'.
    assert original_result.auc > 0.9 and original_result.accuracy > 0.75
    # Another model retrained without D_f (a different seed from the reference) is at chance.
    reference = _fit(retain, 0)
    stats = shadow_statistics(pool, forget_idx, make_model=_model, recipe=RECIPE, config=cfg, device="cpu",
                              out_dir=tmp_path)
    other = ulira(_fit(retain, 7), reference, pool, forget_idx, make_model=_model, recipe=RECIPE, config=cfg,
                  stats=stats)
    assert abs(other.auc - 0.5) < 0.15 and abs(other.accuracy - 0.5) < 0.15
    # The reference against itself is exactly at chance.
    same = ulira(reference, reference, pool, forget_idx, make_model=_model, recipe=RECIPE, config=cfg, stats=stats)
    assert same.auc == pytest.approx(0.5) and same.accuracy == 0.5
    # The shadows were kept: a rerun with the same out_dir loads them and gives the same statistics.
    assert (tmp_path / "pair_0" / "original" / "model.safetensors").exists()
    again = shadow_statistics(pool, forget_idx, make_model=_model, recipe=RECIPE, config=cfg, device="cpu",
                              out_dir=tmp_path)
    np.testing.assert_array_equal(again.phi_in, stats.phi_in)
    np.testing.assert_array_equal(again.phi_out, stats.phi_out)
