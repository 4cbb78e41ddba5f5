"""Known answers of the toolkits' merge rules in negkit.merge (DARE, Breadcrumbs, consensus/TALL, TSV-M)."""
from __future__ import annotations

import pytest
import torch

from negkit import analysis, merge
from negkit.merge.consensus import tall_masks
from negkit.merge.dare import drop_mask
from negkit.merge.tsv import tsv_layer

T = torch.tensor


def test_the_new_rules_are_registered():
    assert {"dare", "breadcrumbs", "tsv", "consensus"} <= set(merge.list_methods())


# ---------------------------------------------------------------- DARE
def test_dare_is_the_mean_of_masked_rescaled_members():
    tvs = [{"w": T([1.0, 2.0, 3.0, 4.0])}, {"w": T([-1.0, 0.5, 2.0, -3.0])}]
    p = 0.5
    m0 = drop_mask(torch.Size([4]), p, seed=3, member=0, key="w")
    m1 = drop_mask(torch.Size([4]), p, seed=3, member=1, key="w")
    expect = (tvs[0]["w"] * m0 / (1 - p) + tvs[1]["w"] * m1 / (1 - p)) / 2
    assert torch.allclose(merge.get("dare")(tvs, p=p, seed=3)["w"], expect)
    assert torch.equal(merge.get("dare")(tvs, p=0.0)["w"], merge.get("mean")(tvs)["w"])


def test_dare_is_seeded_and_unbiased():
    tv = [{"w": torch.ones(20000)}]
    a, b = merge.get("dare")(tv, p=0.9, seed=1)["w"], merge.get("dare")(tv, p=0.9, seed=1)["w"]
    assert torch.equal(a, b) and not torch.equal(a, merge.get("dare")(tv, p=0.9, seed=2)["w"])
    assert all(v == 0.0 or v == pytest.approx(10.0) for v in a.unique().tolist())
    assert abs(float(a.mean()) - 1.0) < 0.1  # E[τ̃] = τ
    with pytest.raises(ValueError, match="drop rate"):
        merge.get("dare")(tv, p=1.0)


# ---------------------------------------------------------------- Breadcrumbs
def test_breadcrumbs_drops_the_largest_and_smallest_per_tensor():
    w = T([0.1, -5.0, 0.3, 0.2, -0.4, 0.6, 0.05, 0.7, -0.8, 0.9])  # |w| ranks: 0.05 < 0.1 < 0.2 < ... < 5
    out = merge.get("breadcrumbs")([{"w": w}], top=0.1, bottom=0.3)["w"]
    # top 10 % (1 element: -5) and bottom 30 % (0.05, 0.1, 0.2) dropped; the rest kept as is
    assert torch.equal(out, T([0.0, 0.0, 0.3, 0.0, -0.4, 0.6, 0.0, 0.7, -0.8, 0.9]))
    two = merge.get("breadcrumbs")([{"w": w}, {"w": -w}], top=0.1, bottom=0.3)["w"]
    assert torch.equal(two, torch.zeros(10))  # the mean of opposite masked vectors
    with pytest.raises(ValueError, match="top"):
        merge.get("breadcrumbs")([{"w": w}], top=0.5, bottom=0.5)


def test_breadcrumb_masks_are_per_tensor():
    tv = {"a": T([1.0, 2.0, 3.0, 4.0]), "b": T([100.0, 200.0, 300.0, 400.0])}
    out = merge.get("breadcrumbs")([tv], top=0.25, bottom=0.25)
    assert torch.equal(out["a"], T([0.0, 2.0, 3.0, 0.0])) and torch.equal(out["b"], T([0.0, 200.0, 300.0, 0.0]))


# ---------------------------------------------------------------- consensus / TALL masks
def test_consensus_keeps_elements_enough_members_rank_important():
    tvs = [{"w": T([1.0, 1.0, 0.1])}, {"w": T([1.0, -0.1, 0.1])}, {"w": T([1.0, 0.0, 5.0])}]
    # τ_MTL = [3, 0.9, 5.2]; mask_k: |τ_k| ≥ 0.4·|τ_MTL − τ_k|
    # elem 0: |1| ≥ 0.4·2 for all three -> 3 votes; elem 1: k0: 1 ≥ 0.4·0.1 yes, k1: 0.1 ≥ 0.4·1 no,
    # k2: 0 ≥ 0.4·0.9 no -> 1 vote; elem 2: k0: 0.1 ≥ 0.4·5.1 no, k1 no, k2: 5 ≥ 0.4·0.2 yes -> 1 vote
    mean = (tvs[0]["w"] + tvs[1]["w"] + tvs[2]["w"]) / 3
    assert torch.allclose(merge.get("consensus")(tvs)["w"], mean * T([1.0, 0.0, 0.0]))
    assert torch.allclose(merge.get("consensus")(tvs, m=1)["w"], mean)
    assert torch.allclose(merge.get("consensus")(tvs, m=3)["w"], mean * T([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="m must be"):
        merge.get("consensus")(tvs, m=4)


def test_tall_masks_by_hand():
    masks = tall_masks([T([2.0]), T([-1.0])], lam=1.0)  # τ_MTL = 1: |2| ≥ |−1|, |−1| ≥ |2| no
    assert masks.tolist() == [[True], [False]]


# ---------------------------------------------------------------- TSV-M
def test_tsv_of_orthogonal_rank_one_members_is_their_sum():
    # Rank-1 members along orthogonal directions, one direction kept each (fraction 1/4 of rank 4):
    # the concatenated bases are already orthonormal, so TSV-M returns the plain sum.
    e = torch.eye(4, dtype=torch.float64)
    a = 3.0 * torch.outer(e[0], e[1])
    b = 2.0 * torch.outer(e[2], e[3])
    out = tsv_layer([a, b], fraction=0.25)
    assert torch.allclose(out, a + b, atol=1e-10)


def test_tsv_orthogonalises_interfering_directions():
    # Two members along the same left direction: the concatenated U has two equal columns, its polar
    # factor is no longer a basis of one direction twice; the merged matrix has the kept singular values.
    u = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    a, b = torch.outer(u, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)), \
        torch.outer(u, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    out = tsv_layer([a, b])
    s = torch.linalg.svdvals(out)
    assert torch.allclose(s[:2], torch.ones(2, dtype=torch.float64), atol=1e-10)  # Σ = diag(1, 1) kept


def test_tsv_on_a_mapping_keeps_vectors_as_the_mean():
    tvs = [{"w": torch.randn(5, 4), "b": T([1.0, 3.0])}, {"w": torch.randn(5, 4), "b": T([3.0, 5.0])}]
    out = merge.get("tsv")(tvs)
    assert torch.equal(out["b"], T([2.0, 4.0])) and out["w"].shape == (5, 4)
    with pytest.raises(ValueError, match="fraction"):
        merge.get("tsv")(tvs, fraction=0.0)


# ---------------------------------------------------------------- the diagnostics see them
def test_every_new_rule_has_a_line_in_the_kept_fraction_diagnostic():
    torch.manual_seed(0)
    tvs = [{"w": torch.randn(50, 20)} for _ in range(4)]
    kept = analysis.kept_fraction(tvs, methods=("negmerge", "dare", "breadcrumbs", "consensus", "tsv"))
    assert set(kept.method) == {"negmerge", "dare", "breadcrumbs", "consensus", "tsv"}
    assert kept.set_index("method").loc["tsv", "kept"] == pytest.approx(1.0)  # dense
    assert 0 < kept.set_index("method").loc["dare", "kept"] < 1
