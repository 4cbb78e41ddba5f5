from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from negkit import analysis
from negkit.analysis import (
    ALL, by_layer, consensus_by_layer_vs_k, consensus_vs_k, layer_group, pairwise_agreement, sign_consensus,
)

# Three tiny task vectors with hand-checked signs:
#   a.weight: (+,+,+) ✓  (−,−,−) ✓  (0,+,+) ✗  (+,−,+) ✗      -> 2/4 consistent
#   b:        (+,+,+) ✓  (+,−,+) ✗  (−,−,−) ✓  (+,+,+) ✓      -> 3/4 consistent
TVS = [
    {"a.weight": torch.tensor([1.0, -2.0, 0.0, 3.0]), "b": torch.tensor([[1.0, 1.0], [-1.0, 2.0]])},
    {"a.weight": torch.tensor([2.0, -1.0, 1.0, -3.0]), "b": torch.tensor([[2.0, -1.0], [-1.0, 1.0]])},
    {"a.weight": torch.tensor([5.0, -1.0, 1.0, 1.0]), "b": torch.tensor([[1.0, 1.0], [-3.0, 4.0]])},
]


def _consensus_rule(tvs, **_):
    """Hand-written NegMerge-like rule: mean where all signs agree (non-zero), else 0."""
    out = {}
    for k in tvs[0]:
        x = torch.stack([tv[k] for tv in tvs])
        s = torch.sign(x)
        keep = (s[0] != 0) & (s == s[0]).all(0)
        out[k] = torch.where(keep, x.mean(0), torch.zeros_like(x[0]))
    return out


def _files(tmp_path, tvs):
    paths = []
    for i, tv in enumerate(tvs):
        p = tmp_path / f"ft{i}.safetensors"
        save_file({k: v.contiguous() for k, v in tv.items()}, str(p))
        paths.append(p)
    return paths


def _random_pool(k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = {"visual.conv1.weight": (6, 3, 2, 2), "visual.transformer.resblocks.0.attn.in_proj_weight": (9, 5),
            "visual.transformer.resblocks.10.mlp.c_fc.bias": (7,), "visual.transformer.resblocks.2.ln_1.weight": (5,),
            "visual.proj": (5, 3)}
    pool = []
    for _ in range(k):
        # Integer-valued entries in {-1, 0, 1, 2}: frequent zeros and ties in sign.
        pool.append({n: torch.randint(-1, 3, s, generator=g).float() for n, s in keys.items()})
    return pool


@pytest.mark.parametrize("key, group", [
    ("visual.transformer.resblocks.3.attn.in_proj_weight", "resblocks.3"),
    ("blocks.11.mlp.fc1.weight", "blocks.11"),
    ("layer2.1.conv1.weight", "layer2.1"),
    ("visual.layer4.0.downsample.0.weight", "layer4.0"),
    ("transformer.resblocks.5.ln_1.bias", "resblocks.5"),  # ClipBackbone.visual_state_dict() keys
    ("layers.2.shortcut.1.weight", "layers.2"),  # negkit small_resnet
    ("backbone.layer1.0.bn1.bias", "layer1.0"),
    ("backbone.fc.weight", "fc"),
    ("normalize.mean", "normalize"),
    ("visual.conv1.weight", "conv1"),
    ("fc.bias", "fc"),
    ("module.model.bn1.running_mean", "bn1"),
    ("visual.proj", "proj"),
])
def test_layer_group(key, group):
    assert layer_group(key) == group


def test_layer_group_custom_patterns():
    assert layer_group("encoder.stage3.conv.weight", patterns=[r"stage\d+"]) == "stage3"
    assert layer_group("encoder.stage3.conv.weight", patterns=[]) == "encoder"


def test_sign_consensus_hand_computed():
    df = sign_consensus(TVS, methods={"consensus": _consensus_rule})
    assert list(df["key"]) == ["a.weight", "b"]
    assert list(df["group"]) == ["a", "b"]
    assert list(df["numel"]) == [4, 4]
    assert df["frac_consistent"].tolist() == [0.5, 0.75]
    assert df["mean_abs"].tolist() == pytest.approx([21 / 12, 19 / 12])
    assert df["frac_kept_consensus"].tolist() == [0.5, 0.75]


def test_sign_consensus_groups_mapping_and_callable():
    df = sign_consensus(TVS, methods=(), groups={"b": "head"})
    assert list(df["group"]) == ["a", "head"]
    df = sign_consensus(TVS, methods=(), groups=lambda k: "all")
    assert set(df["group"]) == {"all"}
    assert not any(c.startswith("frac_kept") for c in df.columns)


def test_by_layer_weights_by_numel():
    df = pd.DataFrame({"key": ["x.0", "x.1", "y"], "group": ["x", "x", "y"], "numel": [1, 3, 2],
                       "frac_consistent": [1.0, 0.0, 0.5], "mean_abs": [2.0, 6.0, 1.0]})
    out = by_layer(df)
    assert list(out["group"]) == ["x", "y"]
    assert out["n_tensors"].tolist() == [2, 1] and out["numel"].tolist() == [4, 2]
    assert out["frac_consistent"].tolist() == [0.25, 0.5]
    assert out["mean_abs"].tolist() == [5.0, 1.0]


def test_pairwise_agreement_hand_computed():
    wide = pairwise_agreement(TVS, names=["p", "q", "r"])
    expected = torch.tensor([[7, 5, 7], [5, 8, 6], [7, 6, 8]], dtype=torch.float64) / 8
    assert list(wide.index) == ["p", "q", "r"] and list(wide.columns) == ["p", "q", "r"]
    assert torch.allclose(torch.tensor(wide.to_numpy()), expected)
    long = pairwise_agreement(TVS, names=["p", "q", "r"], form="long")
    assert list(long.columns) == ["a", "b", "agreement"] and len(long) == 9
    assert long.set_index(["a", "b"]).loc[("q", "r"), "agreement"] == 6 / 8
    with pytest.raises(ValueError, match="form"):
        pairwise_agreement(TVS, form="square")


def test_consensus_vs_k_hand_computed():
    df = consensus_vs_k(TVS, draws=5, seed=0, by_group=True)
    overall = df[df["group"] == ALL]
    # C(3,1)=3 and C(3,2)=3 are <= draws: every subset once; k=3 has one subset.
    assert overall.groupby("k").size().to_dict() == {1: 3, 2: 3, 3: 1}
    assert overall[overall.k == 3]["frac_consistent"].item() == 5 / 8
    pairs = dict(zip(overall[overall.k == 2]["members"], overall[overall.k == 2]["frac_consistent"]))
    assert pairs == {"tv0+tv1": 5 / 8, "tv0+tv2": 7 / 8, "tv1+tv2": 6 / 8}
    singles = overall[overall.k == 1]["frac_consistent"].tolist()
    assert singles == [7 / 8, 1.0, 1.0]  # k = 1: the non-zero fraction
    full = df[df.k == 3].set_index("group")["frac_consistent"]
    assert full["a"] == 0.5 and full["b"] == 0.75


def test_consensus_vs_k_draws_are_distinct_and_seeded():
    pool = _random_pool(k=5)
    df = consensus_vs_k(pool, ks=[2], draws=4, seed=3)
    assert len(df) == 4 and df["members"].nunique() == 4
    assert df.equals(consensus_vs_k(pool, ks=[2], draws=4, seed=3))
    with pytest.raises(ValueError, match="outside 1..5"):
        consensus_vs_k(pool, ks=[6])


@pytest.mark.parametrize("k_total", [5, 70])  # bit-mask path (< 64 vectors) and plain fallback
def test_consensus_vs_k_matches_direct_count(k_total):
    g = torch.Generator().manual_seed(k_total)
    pool = [{"w": torch.randint(-1, 3, (300,), generator=g).float() + 0.0} for _ in range(k_total)]
    df = consensus_vs_k(pool, ks=[1, 2, 3, k_total], draws=3, seed=1)
    x = torch.stack([tv["w"] for tv in pool])
    for members, frac in zip(df["members"], df["frac_consistent"]):
        idx = [int(n[2:]) for n in members.split("+")]
        assert frac == ((x[idx] > 0).all(0) | (x[idx] < 0).all(0)).sum().item() / 300


def test_consensus_by_layer_vs_k_table():
    pool = _random_pool(k=4)
    table = consensus_by_layer_vs_k(pool, ks=[2, 4], draws=3, seed=0)
    assert list(table.columns) == [2, 4]
    assert list(table.index) == ["conv1", "proj", "resblocks.0", "resblocks.2", "resblocks.10"]
    # k = K has one subset, so the table entry equals the per-tensor consensus of that group.
    per_key = sign_consensus(pool, methods=())
    assert table.loc["proj", 4] == per_key.set_index("group").loc["proj", "frac_consistent"]
    assert (table[4] <= table[2] + 1e-12).all()  # adding vectors can only lose consensus


def test_streaming_matches_in_memory(tmp_path):
    pool = _random_pool(k=4, seed=1)
    paths = _files(tmp_path, pool)
    methods = {"consensus": _consensus_rule}
    mem = sign_consensus(pool, methods=methods)
    for chunk in (10**6, 4):  # whole tensors, and row slices through safetensors' get_slice
        pd.testing.assert_frame_equal(mem, sign_consensus(paths, methods=methods, chunk_size=chunk))
        pd.testing.assert_frame_equal(
            pairwise_agreement(pool, names=[p.stem for p in paths]), pairwise_agreement(paths, chunk_size=chunk))
        pd.testing.assert_frame_equal(
            consensus_vs_k(pool, names=[p.stem for p in paths], by_group=True),
            consensus_vs_k(paths, by_group=True, chunk_size=chunk))
    assert list(mem["key"])[-1] == "visual.transformer.resblocks.10.mlp.c_fc.bias"  # natural order
    assert (mem["frac_kept_consensus"] == mem["frac_consistent"]).all()


def test_empty_tensors_are_skipped_and_generators_accepted():
    pool = ({**tv, "empty": torch.zeros(0, 3)} for tv in TVS)
    df = sign_consensus(pool, methods=())
    assert list(df["key"]) == ["a.weight", "b"]


def test_key_and_shape_mismatch_errors(tmp_path):
    bad = [TVS[0], {"a.weight": TVS[1]["a.weight"]}]
    with pytest.raises(ValueError, match=r"'b' missing in tv\[1\].*strict=False"):
        sign_consensus(bad, methods=())
    with pytest.warns(UserWarning, match="shared by all"):
        df = sign_consensus(bad, methods=(), strict=False)
    assert list(df["key"]) == ["a.weight"]
    mismatched = [TVS[0], {**TVS[1], "b": torch.zeros(3)}]
    with pytest.raises(ValueError, match=r"disagree on 'b': shape \(2, 2\).* but \(3,\).* in tv\[1\]"):
        pairwise_agreement(mismatched)
    with pytest.warns(UserWarning, match="skipping 1"):  # strict=False analyses the keys that do agree
        assert list(pairwise_agreement(mismatched, strict=False, form="long")["agreement"]) == [0.75, 0.5, 0.5, 1.0]
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        pairwise_agreement([tmp_path / "nope.safetensors", tmp_path / "nope.safetensors"])
    with pytest.raises(TypeError, match="sequence"):
        pairwise_agreement(TVS[0])
    with pytest.raises(ValueError, match="K = 0"):
        consensus_vs_k([])


def test_frac_kept_uses_the_merge_registry(tmp_path):
    from negkit import merge
    assert "negmerge" in merge.list_methods()
    pool = _random_pool(k=3, seed=2)
    df = sign_consensus(pool)  # default methods=("negmerge",)
    assert (df["frac_kept_negmerge"] == df["frac_consistent"]).all()
    methods = [m for m in ("negmerge", "ties", "mean") if m in merge.list_methods()]
    paths = _files(tmp_path, pool)
    mem = sign_consensus(pool, methods=methods, names=[p.stem for p in paths])
    pd.testing.assert_frame_equal(mem, sign_consensus(paths, methods=methods))
    for m in methods:
        assert ((mem[f"frac_kept_{m}"] >= 0) & (mem[f"frac_kept_{m}"] <= 1)).all()
    assert not math.isnan(mem["frac_kept_negmerge"].sum())
    assert analysis.ALL == "all"

