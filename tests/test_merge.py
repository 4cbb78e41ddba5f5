"""negkit.merge: hand-computed rules, invariants over the registry, streaming == in-memory, bad inputs."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import save_file

from negkit import merge
from negkit.taskvec import TaskVector

T = torch.tensor


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def _pool(k: int = 3, seed: int = 0, dtype=torch.float32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (4, 3, 3, 3), "fc.weight": (5, 7), "fc.bias": (5,)}
    pool = []
    for _ in range(k):
        tv = {n: torch.randn(s, generator=g).to(dtype) for n, s in shapes.items()}
        tv["fc.bias"][:2] = 0  # exact zeros must stay zeros
        pool.append(tv)
    # a shared sign pattern so that NegMerge keeps a non-trivial part
    for tv in pool[1:]:
        tv["fc.weight"][0] = pool[0]["fc.weight"][0].abs() + 0.5
    pool[0]["fc.weight"][0] = pool[0]["fc.weight"][0].abs() + 0.5
    return pool


def _write(tmp_path, pool, prefix="tv"):
    paths = []
    for i, tv in enumerate(pool):
        p = tmp_path / f"{prefix}{i}.safetensors"
        save_file({k: v.contiguous() for k, v in tv.items()}, str(p))
        paths.append(p)
    return paths


# ------------------------------------------------------------- hand values
A = {"w": T([1.0, -2.0, 3.0, 0.0, 5.0, 4.0])}
B = {"w": T([2.0, 2.0, -3.0, 0.0, 1.0, 0.0])}
C = {"w": T([3.0, -1.0, 6.0, 1.0, 3.0, 2.0])}


def test_negmerge_hand_values():
    # element 0: all +, mean 2; element 1: sign conflict; 3: zero in A and B; 5: zero in B
    assert torch.equal(merge.negmerge([A, C])["w"], T([2.0, -1.5, 4.5, 0.0, 4.0, 3.0]))
    assert torch.equal(merge.negmerge([A, B, C])["w"], T([2.0, 0.0, 0.0, 0.0, 3.0, 0.0]))
    assert torch.equal(merge.negmerge([A])["w"], A["w"])  # K=1: Task Arithmetic, zeros stay zero


def test_mean_and_sum_hand_values():
    assert torch.equal(merge.sum([A, B, C])["w"], T([6.0, -1.0, 6.0, 1.0, 9.0, 6.0]))
    assert torch.equal(merge.mean([A, B, C])["w"], T([2.0, -1 / 3, 2.0, 1 / 3, 3.0, 2.0]))
    assert torch.equal(merge.mean([B])["w"], B["w"]) and torch.equal(merge.sum([B])["w"], B["w"])


def test_magmax_hand_values_and_sign_ties():
    # idx 1: |-2| (A) ties |2| (B) -> the later one, +2
    assert torch.equal(merge.magmax([A, C])["w"], T([3.0, -2.0, 6.0, 1.0, 5.0, 4.0]))
    assert torch.equal(merge.magmax([A, B, C])["w"], T([3.0, 2.0, 6.0, 1.0, 5.0, 4.0]))
    assert torch.equal(merge.magmax([B, A, C])["w"], T([3.0, -2.0, 6.0, 1.0, 5.0, 4.0]))
    plus, minus = {"w": T([2.0, -2.0, 0.0])}, {"w": T([-2.0, 2.0, 0.0])}
    # equal |value| with opposite signs, default (the reference): the later vector wins
    assert torch.equal(merge.magmax([plus, minus])["w"], T([-2.0, 2.0, 0.0]))
    assert torch.equal(merge.magmax([minus, plus])["w"], T([2.0, -2.0, 0.0]))
    # tie="positive": the positive one wins, whatever the order
    assert torch.equal(merge.magmax([plus, minus], tie="positive")["w"], T([2.0, 2.0, 0.0]))
    assert torch.equal(merge.magmax([minus, plus], tie="positive")["w"], T([2.0, 2.0, 0.0]))
    for tie in ("last", "positive"):
        assert torch.equal(merge.magmax([minus], tie=tie)["w"], minus["w"])
        assert torch.equal(merge.magmax([A, B, C], tie=tie)["w"][[0, 2, 3, 4, 5]], T([3.0, 6.0, 1.0, 5.0, 4.0]))
    with pytest.raises(ValueError, match=r"tie='first' is not one of \['last', 'positive'\]"):
        merge.magmax([A], tie="first")


NEGKIT_TIES = dict(trim="exact", sign_tie="majority")


def test_ties_hand_values():
    a = {"w": T([1.0, -2.0, 3.0, 0.0, 5.0, 4.0])}
    b = {"w": T([2.0, 2.5, -3.5, 0.0, 1.0, 0.0])}
    # Reference trim, N = 6, density 0.5: keep |x| >= the (6 - int(3)) = 3rd smallest |x|,
    # i.e. the int(3) + 1 = 4 largest. A: [0, -2, 3, 0, 5, 4]; B: [2, 2.5, -3.5, 0, 1, 0].
    # idx 1: -2 + 2.5 > 0 -> mean {2.5}; idx 2: 3 - 3.5 < 0 -> {-3.5}; idx 4: mean(5, 1) = 3
    assert torch.equal(merge.ties([a, b], density=0.5)["w"], T([2.0, 2.5, -3.5, 0.0, 3.0, 4.0]))
    assert torch.equal(merge.ties([a], density=0.5)["w"], T([0.0, -2.0, 3.0, 0.0, 5.0, 4.0]))
    # Exact trim keeps round(0.5 * 6) = 3 largest. A: [0, 0, 3, 0, 5, 4]; B: [2, 2.5, -3.5, 0, 0, 0]
    assert torch.equal(merge.ties([a, b], density=0.5, **NEGKIT_TIES)["w"], T([2.0, 2.5, -3.5, 0.0, 5.0, 4.0]))
    # K=1: the trimmed vector
    assert torch.equal(merge.ties([a], density=0.5, trim="exact")["w"], T([0.0, 0.0, 3.0, 0.0, 5.0, 4.0]))
    # entries equal to the threshold are all kept: 4 entries of |value| 2 survive a top-3 trim
    c = {"w": T([2.0, -2.0, 2.0, 0.0, 1.0, -2.0])}
    for trim in ("reference", "exact"):
        assert torch.equal(merge.ties([c], density=0.5, trim=trim)["w"], c["w"] * T([1, 1, 1, 0, 0, 1]))
        # density 1 keeps every non-zero entry
        assert torch.equal(merge.ties([a], density=1.0, trim=trim)["w"], a["w"])


def test_ties_reference_trim_keeps_int_density_n_plus_one():
    w = {"w": torch.arange(10.0, 0.0, -1.0)}  # 10, 9, ..., 1
    # density 0.2, N = 10: the reference keeps int(2.0) + 1 = 3 entries, exact keeps round(2.0) = 2
    assert torch.equal(merge.ties([w], density=0.2)["w"], T([10.0, 9.0, 8.0] + [0.0] * 7))
    assert torch.equal(merge.ties([w], density=0.2, trim="exact")["w"], T([10.0, 9.0] + [0.0] * 8))
    # density 0.05: int(0.5) + 1 = 1 kept; exact rounds 0.5 up, also 1
    assert torch.equal(merge.ties([w], density=0.05)["w"], T([10.0] + [0.0] * 9))
    assert torch.equal(merge.ties([w], density=0.26, trim="exact")["w"], T([10.0, 9.0, 8.0] + [0.0] * 7))
    assert torch.equal(merge.ties([w], density=0.26)["w"], T([10.0, 9.0, 8.0] + [0.0] * 7))


def test_ties_zero_sum_takes_the_global_elected_sign():
    # idx 0 holds (+2, +2, -4): its trimmed values sum to exactly 0. idx 1 elects -, so the
    # sum of elected signs over the vector is 0 + (-1) < 0 and idx 0 takes -: mean {-4} = -4.
    # negkit's per-element majority elects + (two against one): mean(2, 2) = 2.
    tvs = [{"w": T([2.0, -1.0])}, {"w": T([2.0, -1.0])}, {"w": T([-4.0, -1.0])}]
    assert torch.equal(merge.ties(tvs, density=1.0)["w"], T([-4.0, -1.0]))
    assert torch.equal(merge.ties(tvs, density=1.0, sign_tie="majority")["w"], T([2.0, -1.0]))
    # The global sign counts every tensor of the vector: a "+" elsewhere outvotes idx 1.
    more = [dict(tv, b=T([1.0, 1.0])) for tv in tvs]
    assert torch.equal(merge.ties(more, density=1.0)["w"], T([2.0, -1.0]))
    # Elected signs summing to 0 over the vector: the reference's sign stays 0 and its
    # where(sign > 0, τ > 0, τ < 0) keeps the negative entries: mean {-4} = -4.
    even = [dict(tv, b=T([1.0])) for tv in tvs]
    assert torch.equal(merge.ties(even, density=1.0)["w"], T([-4.0, -1.0]))
    both = [{"w": T([1.0, -1.0])}, {"w": T([-1.0, 1.0])}]  # every sum 0, vector-wide vote 0
    assert torch.equal(merge.ties(both, density=1.0)["w"], T([-1.0, -1.0]))
    with pytest.raises(ValueError, match="sign_tie='vote' is not one of"):
        merge.ties(tvs, sign_tie="vote")
    with pytest.raises(ValueError, match="trim='top' is not one of"):
        merge.ties(tvs, trim="top")


def test_ties_zero_sum_uses_majority_sign_then_zero():
    a = {"w": T([1.0, 1.0, 1.0])}
    b = {"w": T([1.0, -1.0, 2.0])}
    c = {"w": T([-2.0, 0.5, -3.0])}
    # idx 0: 1 + 1 - 2 = 0 -> majority + (2 vs 1) -> mean(1, 1) = 1
    # idx 1: 1 - 1 + 0.5 = 0.5 > 0 -> mean(1, 0.5) = 0.75
    # idx 2: 1 + 2 - 3 = 0 -> majority + -> mean(1, 2) = 1.5
    assert torch.equal(merge.ties([a, b, c], density=1.0, sign_tie="majority")["w"], T([1.0, 0.75, 1.5]))
    # equal counts and zero sum: no elected sign -> 0
    pair = [{"w": T([1.0])}, {"w": T([-1.0])}]
    assert torch.equal(merge.ties(pair, density=1.0, sign_tie="majority")["w"], T([0.0]))
    # the reference rule: idx 1 is the only elected sign (+), so idx 0 and 2 take + as well
    assert torch.equal(merge.ties([a, b, c], density=1.0)["w"], T([1.0, 0.75, 1.5]))
    # no sign elected anywhere: the reference keeps the negative entries (sign 0 selects τ < 0)
    assert torch.equal(merge.ties(pair, density=1.0)["w"], T([-1.0]))


def test_ties_threshold_is_global_over_all_tensors():
    # Global top-2 of |values| are both in "big"; a per-tensor threshold would keep "small" too.
    tv = {"big": T([10.0, -9.0, 0.1]), "small": T([0.2, 0.3, -0.1])}
    out = merge.ties([tv], density=2 / 6, trim="exact")
    assert torch.equal(out["big"], T([10.0, -9.0, 0.0]))
    assert torch.equal(out["small"], torch.zeros(3))
    out = merge.ties([tv], density=2 / 6)  # the reference keeps one more: 0.3
    assert torch.equal(out["big"], T([10.0, -9.0, 0.0]))
    assert torch.equal(out["small"], T([0.0, 0.3, 0.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_kth_largest_abs_is_exact(dtype):
    pool = _pool(2, seed=3, dtype=dtype)
    pool[1]["fc.weight"][1:3] = 0.75  # duplicates around the threshold
    for k, tv in enumerate(pool):
        flat = torch.cat([t.flatten().abs().double() for t in tv.values()])
        for rank in (1, 7, 50, flat.numel()):
            key = merge.kth_largest_abs(pool, [rank] * len(pool))[k]
            want = torch.topk(flat, rank).values[-1]
            width = 64 if dtype == torch.float64 else 32
            got = torch.tensor([key], dtype=torch.int64 if width == 64 else torch.int32)
            got = got.view(torch.float64 if width == 64 else torch.float32).double()
            assert float(got) == float(want), (rank, float(got), float(want))


# ------------------------------------------------------------- invariants
METHODS = merge.list_methods()


@pytest.mark.parametrize("method", METHODS)
def test_keeps_keys_shapes_dtypes(method):
    pool = _pool(3)
    for tv in pool:
        tv["half"] = torch.ones(3, 2, dtype=torch.float16)
        tv["double"] = torch.ones(4, dtype=torch.float64)
    out = merge.get(method)(pool)
    assert list(out) == list(pool[0])
    for k, t in out.items():
        assert t.shape == pool[0][k].shape and t.dtype == pool[0][k].dtype


@pytest.mark.parametrize("method", METHODS)
def test_permutation_invariant(method):
    if method == "dare":  # its masks are seeded per member index: reorder the members, redraw the masks
        pytest.skip("DARE's random masks follow the member's position")
    pool = _pool(3, seed=1)
    ref = merge.get(method)(pool)
    for perm in itertools.permutations(range(3)):
        assert _close(merge.get(method)([pool[i] for i in perm]), ref)


@pytest.mark.parametrize("method", METHODS)
def test_zeros_in_zeros_out(method):
    zeros = [{k: torch.zeros_like(v) for k, v in tv.items()} for tv in _pool(3)]
    out = merge.get(method)(zeros)
    assert all(torch.count_nonzero(t) == 0 for t in out.values())


@pytest.mark.parametrize("method", METHODS)
def test_single_vector_is_task_arithmetic(method):
    tv = _pool(1, seed=5)[0]
    # DARE and Breadcrumbs sparsify every member: with nothing dropped they are the vector itself.
    identity = {"dare": {"p": 0.0}, "breadcrumbs": {"top": 0.0, "bottom": 0.0}}.get(method, {})
    out = merge.get(method)([tv], **identity)
    if method == "tsv":  # a full-rank SVD and back: equal up to rounding
        assert _close(out, tv)
    elif method == "ties":  # the trimmed vector: the top 20% |values| survive unchanged
        for k in tv:
            kept = out[k] != 0
            assert torch.equal(out[k][kept], tv[k][kept])
        n_kept = sum(int(torch.count_nonzero(t)) for t in out.values())
        assert n_kept == int(0.2 * sum(t.numel() for t in tv.values())) + 1
    else:
        assert _equal(out, tv)


@pytest.mark.parametrize("method", METHODS)
def test_accepts_task_vectors_and_does_not_modify_inputs(method):
    pool = _pool(2, seed=6)
    copies = [{k: v.clone() for k, v in tv.items()} for tv in pool]
    out = merge.get(method)([TaskVector(tv) for tv in pool])
    assert _equal(out, merge.get(method)(pool))
    assert all(_equal(a, b) for a, b in zip(pool, copies))


# ------------------------------------------------------------- streaming
@pytest.mark.parametrize("method", METHODS)
def test_streaming_equals_in_memory(method, tmp_path):
    pool = _pool(4, seed=7)
    paths = _write(tmp_path, pool)
    assert _equal(merge.merge_files(paths, method), merge.get(method)(pool))


@pytest.mark.parametrize("method, options", [("ties", NEGKIT_TIES), ("ties", dict(trim="exact")),
                                             ("ties", dict(sign_tie="majority")), ("magmax", dict(tie="positive"))])
def test_streaming_equals_in_memory_for_every_option(method, options, tmp_path):
    pool = _pool(4, seed=7)
    pool[2]["fc.bias"][3] = -pool[1]["fc.bias"][3]  # a +a/-a magnitude tie
    paths = _write(tmp_path, pool)
    assert _equal(merge.merge_files(paths, method, **options), merge.get(method)(pool, **options))


@pytest.mark.parametrize("method", METHODS)
def test_streaming_with_pretrained_equals_task_vectors(method, tmp_path):
    g = torch.Generator().manual_seed(8)
    pre = {"a.weight": torch.randn(6, 5, generator=g), "bn.running_mean": torch.randn(6, generator=g),
           "bn.num_batches_tracked": torch.tensor(7), "b.bias": torch.randn(6, generator=g)}
    fts = []
    for _ in range(3):
        ft = {k: (v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 1)
              for k, v in pre.items()}
        fts.append(ft)
    tvs = [TaskVector.from_state_dicts(pre, ft) for ft in fts]
    want = merge.get(method)(tvs)
    ft_paths = _write(tmp_path, fts, prefix="ft")
    pre_path = _write(tmp_path, [pre], prefix="pre")[0]
    assert _equal(merge.merge_files(ft_paths, method, pretrained=pre_path), want)
    assert _equal(merge.merge_files(ft_paths, method, pretrained=pre), want)
    assert "bn.running_mean" not in want
    with_bn = merge.merge_files(ft_paths, method, pretrained=pre_path, include_bn_stats=True)
    assert "bn.running_mean" in with_bn and "bn.num_batches_tracked" not in with_bn


def test_merge_files_out_path_writes_a_task_vector(tmp_path):
    pool = _pool(3, seed=9)
    paths = _write(tmp_path, pool)
    out = merge.merge_files(paths, "ties", density=0.3, out_path=tmp_path / "out" / "m.safetensors")
    tv = TaskVector.load(out)
    assert _equal(dict(tv), merge.ties(pool, density=0.3))
    assert tv.metadata["merge_method"] == "ties" and '"density": 0.3' in tv.metadata["merge_options"]
    assert "tv0.safetensors" in tv.metadata["merged_files"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.safetensors"]


def test_rule_without_fold_gets_lazy_mappings(tmp_path):
    name = "_test_first_vector"
    try:
        merge.register(name)(lambda tvs, **kw: {k: tvs[0][k] * 2 for k in tvs[0]})
        pool = _pool(2)
        got = merge.merge_files(_write(tmp_path, pool), name)
        assert _equal(got, {k: v * 2 for k, v in pool[0].items()})
        out = merge.merge_files(_write(tmp_path, pool), name, out_path=tmp_path / "o.safetensors")
        assert _equal(dict(TaskVector.load(out)), got)
        with pytest.raises(ValueError, match="already registered"):
            merge.register(name)(lambda tvs: {})
    finally:
        merge._RULES.pop(name, None)


# ------------------------------------------------------------- bad inputs
def test_unknown_method_lists_names(tmp_path):
    with pytest.raises(ValueError, match="negmerge"):
        merge.get("emr")
    with pytest.raises(ValueError, match="unknown merge method 'emr'"):
        merge.merge_files(_write(tmp_path, _pool(1)), "emr")


@pytest.mark.parametrize("method", METHODS)
def test_empty_pool_is_an_error(method, tmp_path):
    with pytest.raises(ValueError, match="K = 0"):
        merge.get(method)([])
    with pytest.raises(ValueError, match="K = 0"):
        merge.merge_files([], method)


@pytest.mark.parametrize("method", METHODS)
def test_key_mismatch_names_key_vector_and_fix(method, tmp_path):
    pool = _pool(3)
    del pool[2]["fc.bias"]
    with pytest.raises(ValueError, match=r"'fc\.bias' missing in tv\[2\].*strict=False"):
        merge.get(method)(pool)
    paths = _write(tmp_path, pool)
    with pytest.raises(ValueError, match=r"'fc\.bias' missing in tv\[2\] \(tv2\.safetensors\).*strict=False"):
        merge.merge_files(paths, method)
    with pytest.warns(UserWarning, match="skipping 1"):
        out = merge.get(method)(pool, strict=False)
    assert list(out) == ["conv.weight", "fc.weight"]
    with pytest.warns(UserWarning):
        assert _equal(merge.merge_files(paths, method, strict=False), out)
    pool = _pool(3)
    pool[2]["extra"] = torch.ones(1)
    with pytest.raises(ValueError, match=r"'extra' is in tv\[2\] but missing in tv\[0\].*strict=False"):
        merge.get(method)(pool)


@pytest.mark.parametrize("method", METHODS)
def test_shape_and_dtype_mismatch(method):
    pool = _pool(2)
    pool[1]["fc.bias"] = torch.zeros(6)
    with pytest.raises(ValueError, match=r"disagree on 'fc\.bias'.*tv\[1\]"):
        merge.get(method)(pool, names=["a", "b"])
    pool[1]["fc.bias"] = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'fc\.bias'.*float64 in tv\[1\] \(b\)"):
        merge.get(method)(pool, names=["a", "b"])
    with pytest.warns(UserWarning):
        assert "fc.bias" not in merge.get(method)(pool, strict=False)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(method, bad, tmp_path):
    pool = _pool(3)
    pool[1]["fc.weight"][2, 3] = bad
    with pytest.raises(ValueError, match=r"'fc\.weight' in tv\[1\] contains NaN or Inf"):
        merge.get(method)(pool)
    with pytest.raises(ValueError, match=r"'fc\.weight' in tv\[1\] \(tv1\.safetensors\) contains NaN"):
        merge.merge_files(_write(tmp_path, pool), method)


def test_other_bad_inputs(tmp_path):
    pool = _pool(2)
    with pytest.raises(ValueError, match="floating-point"):
        merge.mean([{"i": torch.ones(2, dtype=torch.int64)}])
    with pytest.raises(TypeError, match="sequence"):
        merge.negmerge(pool[0])
    with pytest.raises(ValueError, match="density"):
        merge.ties(pool, density=0.0)
    with pytest.raises(TypeError):
        merge.negmerge(pool, density=0.2)  # option of another rule
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        merge.merge_files([tmp_path / "nope.safetensors"])
    legacy = tmp_path / "tv.pt"
    torch.save(pool[0], legacy)
    with pytest.raises(ValueError, match="not a safetensors file.*save_state_dict"):
        merge.merge_files([legacy])
    with pytest.raises(TypeError, match="sequence"):
        merge.merge_files(tmp_path / "tv0.safetensors")
    paths = _write(tmp_path, pool)
    with pytest.raises(TypeError, match=r"tv\[0\] is a path.*merge_files"):  # rules do no I/O
        merge.mean(paths)


# ------------------------------------------------------- TaskVector producer
def test_merge_returns_a_task_vector_with_provenance():
    merged = merge.merge("ties", [A, B, C], density=1.0, names=["a", "b", "c"])
    assert isinstance(merged, TaskVector)
    assert _equal(dict(merged), merge.ties([A, B, C], density=1.0))
    assert torch.equal((-merged)["w"], -merge.ties([A, B, C], density=1.0)["w"])  # the arithmetic applies
    assert merged.metadata["merge_method"] == "ties"
    assert merged.metadata["merge_options"] == '{"density": 1.0}'
    assert merged.metadata["merged_names"] == '["a", "b", "c"]'
    pre = {"w": torch.ones(6)}
    assert torch.equal(merge.merge("negmerge", [A, C]).apply_to(pre, -1.0)["w"], 1 - T([2.0, -1.5, 4.5, 0.0, 4.0, 3.0]))
    with pytest.raises(ValueError, match="unknown merge method 'emr'"):
        merge.merge("emr", [A])


# ------------------------------------------------------ files in, files out
def test_merge_files_refuses_to_overwrite_an_input(tmp_path):
    pool = _pool(3)
    paths = _write(tmp_path, pool)
    before = paths[1].read_bytes()
    with pytest.raises(ValueError, match=r"out_path .*tv1\.safetensors is the input tv\[1\].*new file"):
        merge.merge_files(paths, "mean", out_path=paths[1])
    # the same file through another spelling of its path
    with pytest.raises(ValueError, match=r"is the input tv\[2\]"):
        merge.merge_files(paths, "mean", out_path=tmp_path / "sub" / ".." / "tv2.safetensors")
    pre = _write(tmp_path, [pool[0]], prefix="pre")[0]
    with pytest.raises(ValueError, match="is the input pretrained"):
        merge.merge_files(paths, "mean", pretrained=pre, out_path=pre)
    assert paths[1].read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_merge_files_names_a_damaged_file(damage, tmp_path):
    paths = _write(tmp_path, _pool(4))
    data = paths[2].read_bytes()
    if damage == "truncate":
        paths[2].write_bytes(data[:-40])
    else:  # valid length prefix and "{", broken JSON
        paths[2].write_bytes(data[:9] + b"#" + data[10:])
    with pytest.raises(ValueError, match=r"tv\[2\] \(.*tv2\.safetensors\) is a damaged safetensors file"):
        merge.merge_files(paths, "negmerge")
    with pytest.raises(ValueError, match=r"tv\[2\] .* is a damaged"):
        merge.merge_files(paths, "ties", out_path=tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("op", ["+", "-"])
def test_taskvec_key_mismatch_suggests_a_call_that_works(op):
    import negkit

    a, b = TaskVector({"x": T([1.0, 2.0]), "z": T([1.0])}), TaskVector({"x": T([3.0, 5.0])})
    with pytest.raises(KeyError) as err:
        a + b if op == "+" else a - b
    call = str(err.value).rstrip("\"'").split("shared keys with ")[1]
    with pytest.warns(UserWarning, match="skipping 1"):
        got = eval(call, {"negkit": negkit, "a": a, "b": b})  # noqa: S307 - the message's own suggestion
    assert torch.equal(got["x"], T([4.0, 7.0]) if op == "+" else T([-2.0, -3.0])) and "z" not in got
