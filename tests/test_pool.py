"""negkit.pool: one reader for K task vectors, in memory or on disk; memory == files bit for bit."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from negkit.pool import Pool, open_pool
from negkit.taskvec import TaskVector


def _pool(k: int = 3, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (5, 3, 2, 2), "fc.weight": (7, 4), "fc.bias": (7,), "scale": ()}
    return [{n: torch.randn(s, generator=g) for n, s in shapes.items()} for _ in range(k)]


def _write(tmp_path, pool, prefix="tv"):
    paths = []
    for i, tv in enumerate(pool):
        paths.append(tmp_path / f"{prefix}{i}.safetensors")
        save_file({k: v.contiguous() for k, v in tv.items()}, str(paths[-1]))
    return paths


def test_memory_and_files_read_the_same(tmp_path):
    pool = _pool(3)
    paths = _write(tmp_path, pool)
    with open_pool(pool) as mem, open_pool(paths) as disk:
        assert mem.K == disk.K == 3
        assert mem.keys == list(pool[0])  # order of the first vector
        assert sorted(disk.keys) == sorted(mem.keys) and disk.shapes == mem.shapes and disk.dtypes == mem.dtypes
        assert mem.shapes["scale"] == () and mem.dtypes["fc.weight"] == torch.float32
        for k in range(3):
            for key in mem.keys:
                assert torch.equal(mem.get(k, key), pool[k][key]) and torch.equal(disk.get(k, key), pool[k][key])
                if mem.shapes[key]:
                    assert torch.equal(disk.get(k, key, slice(1, 3)), pool[k][key][1:3])
                    assert torch.equal(mem.get(k, key, slice(1, 3)), pool[k][key][1:3])
    with pytest.raises(Exception, match="closed"):  # leaving the block closes the files
        disk.get(0, "fc.bias")


@pytest.mark.parametrize("size", [1, 10, 28, 10**6])
def test_blocks_cover_each_tensor_in_row_slices(size, tmp_path):
    pool = _pool(3, seed=1)
    paths = _write(tmp_path, pool)
    with open_pool(pool) as mem, open_pool(paths) as disk:
        for key in mem.keys:
            got = list(mem.blocks(key, size))
            assert all(torch.equal(a, b) for a, b in zip(got, disk.blocks(key, size)))
            want = torch.stack([tv[key].reshape(-1) for tv in pool])
            assert torch.equal(torch.cat(got, dim=1), want)
            row = math.prod(mem.shapes[key][1:]) if mem.shapes[key] else 1
            assert all(b.shape[0] == 3 and b.shape[1] <= max(size, row) for b in got)
        assert next(mem.blocks("fc.weight", 10**6, dtype=torch.float64)).dtype == torch.float64


def test_pretrained_forms_task_vectors_on_the_fly(tmp_path):
    g = torch.Generator().manual_seed(2)
    pre = {"w": torch.randn(4, 3, generator=g, dtype=torch.float64), "bn.running_var": torch.rand(4, generator=g),
           "bn.num_batches_tracked": torch.tensor(3)}
    fts = [{"w": (pre["w"] + torch.randn(4, 3, generator=g, dtype=torch.float64)).float(),
            "bn.running_var": torch.rand(4, generator=g), "bn.num_batches_tracked": torch.tensor(9)} for _ in range(2)]
    tvs = [TaskVector.from_state_dicts(pre, ft) for ft in fts]
    pre_path, ft_paths = _write(tmp_path, [pre], "pre")[0], _write(tmp_path, fts, "ft")
    for p in (pre, pre_path):
        with open_pool(ft_paths, pretrained=p) as pool:
            assert pool.keys == ["w"] and pool.dtypes["w"] == torch.float64  # τ takes θ_pre's dtype
            for k in range(2):
                assert torch.equal(pool.get(k, "w"), tvs[k]["w"])
                assert torch.equal(pool.get(k, "w", slice(1, 3)), tvs[k]["w"][1:3])
    with open_pool(fts, pretrained=pre, include_bn_stats=True) as pool:  # in-memory checkpoints too
        assert sorted(pool.keys) == ["bn.running_var", "w"]  # never the integer counter
        assert torch.equal(pool.get(1, "bn.running_var"), fts[1]["bn.running_var"] - pre["bn.running_var"])
    with pytest.raises(ValueError, match=r"shape mismatch for 'w'.*tv\[0\] \(ft0\.safetensors\).*pretrained"):
        open_pool(ft_paths, pretrained={**pre, "w": torch.zeros(3, 4, dtype=torch.float64)})
    extra = [{**ft, "head": torch.ones(2)} for ft in fts]
    with pytest.raises(ValueError, match=r"'head' of tv\[0\] is not in the pretrained checkpoint.*strict=False"):
        open_pool(extra, pretrained=pre)
    with open_pool(extra, pretrained=pre, strict=False) as pool:
        assert pool.keys == ["w"]


def test_names_and_labels(tmp_path):
    pool = _pool(2)
    paths = _write(tmp_path, pool)
    with open_pool(pool) as p:
        assert p.names == ["tv0", "tv1"] and p.label(1) == "tv[1]"
    with open_pool(paths) as p:
        assert p.names == ["tv0", "tv1"] and p.label(1) == "tv[1] (tv1.safetensors)"
    with open_pool([pool[0], paths[1]], names=["a", "a"]) as p:  # mixed sources; duplicate names made unique
        assert p.names == ["a#0", "a#1"] and p.label(0) == "tv[0] (a)"
    with pytest.raises(ValueError, match="got 1 names for 2 task vectors"):
        open_pool(pool, names=["a"])


def test_wrapped_vectors_and_generators_are_accepted():
    class Run:  # an object carrying its task vector, as experiment records do
        def __init__(self, vector, name):
            self.vector, self.name = vector, name

    pool = _pool(2)
    with open_pool(Run(tv, f"run{i}") for i, tv in enumerate(pool)) as p:
        assert p.names == ["run0", "run1"] and torch.equal(p.get(1, "fc.bias"), pool[1]["fc.bias"])


def test_key_shape_dtype_validation(tmp_path):
    pool = _pool(3)
    del pool[2]["fc.bias"]
    paths = _write(tmp_path, pool)
    with pytest.raises(ValueError, match=r"'fc\.bias' missing in tv\[2\] \(tv2\.safetensors\).*strict=False"):
        open_pool(paths)
    with pytest.warns(UserWarning, match=r"using the 3 keys shared by all.*skipping 1 \(first: 'fc\.bias'\)") as rec:
        with open_pool(paths, strict=False) as p:
            assert sorted(p.keys) == ["conv.weight", "fc.weight", "scale"]
    assert rec[0].filename == __file__  # the warning points at the caller, not at negkit
    pool = _pool(2)
    pool[0]["extra"] = torch.ones(1)
    with pytest.raises(ValueError, match=r"'extra' missing in tv\[1\]"):
        open_pool(pool)
    pool = _pool(2)
    pool[1]["fc.bias"] = pool[1]["fc.bias"].double()
    with pytest.raises(ValueError, match=r"disagree on 'fc\.bias'.*float32 in tv\[0\] \(x\) but .*float64 in tv\[1\]"):
        open_pool(pool, names=["x", "y"])
    with pytest.warns(UserWarning, match="skipping 1"):
        assert "fc.bias" not in open_pool(pool, strict=False).keys
    with pytest.raises(ValueError, match="share no key"), pytest.warns(UserWarning):
        open_pool([{"a": torch.ones(1)}, {"b": torch.ones(1)}], strict=False)
    with pytest.raises(ValueError, match=r"'i' in tv\[0\] is torch\.int64; .*floating-point"):
        open_pool([{"i": torch.ones(2, dtype=torch.int64)}])
    with pytest.raises(TypeError, match=r"'w' in tv\[0\] is a list, not a tensor"):
        open_pool([{"w": [1.0]}])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_values_are_refused_where_read(bad, tmp_path):
    pool = _pool(2)
    pool[1]["fc.weight"][5, 2] = bad
    paths = _write(tmp_path, pool)
    with open_pool(paths) as p:  # opening reads no data; reading the tensor fails
        assert torch.equal(p.get(1, "fc.weight", slice(0, 5)), pool[1]["fc.weight"][:5])  # rows without it
        with pytest.raises(ValueError, match=r"'fc\.weight' in tv\[1\] \(tv1\.safetensors\) contains NaN or Inf"):
            p.get(1, "fc.weight", slice(4, 7))
        with pytest.raises(ValueError, match="NaN or Inf"):
            list(p.blocks("fc.weight", 8))
        with pytest.raises(ValueError, match="NaN or Inf"):
            p.get(1, "fc.weight")


def test_bad_sources(tmp_path):
    pool = _pool(2)
    paths = _write(tmp_path, pool)
    with pytest.raises(ValueError, match="K = 0"):
        open_pool([])
    for single in (pool[0], paths[0], str(paths[0]), torch.ones(2)):
        with pytest.raises(TypeError, match="sequence"):
            open_pool(single)
    with pytest.raises(TypeError, match=r"tv\[1\] is a Tensor; expected a Mapping"):
        open_pool([pool[0], torch.ones(2)])
    with pytest.raises(TypeError, match=r"tv\[1\] is a path .*in memory.*merge_files"):
        open_pool([pool[0], paths[1]], files=False)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        open_pool([paths[0], tmp_path / "nope.safetensors"])
    legacy = tmp_path / "tv.pt"
    torch.save(pool[0], legacy)
    with pytest.raises(ValueError, match="not a safetensors file.*save_state_dict"):
        open_pool([legacy])


def test_failed_open_releases_files(tmp_path, monkeypatch):
    paths = _write(tmp_path, _pool(2))
    closed = []
    real_close = Pool.close
    monkeypatch.setattr(Pool, "close", lambda self: (closed.append(self), real_close(self)))
    with pytest.raises(FileNotFoundError):
        open_pool([*paths, tmp_path / "nope.safetensors"])
    assert len(closed) == 1  # the two handles opened before the failure were released


def test_lazy_mappings_read_through_the_pool(tmp_path):
    pool = _pool(2)
    with open_pool(_write(tmp_path, pool)) as outer:
        views = outer.mappings()
        assert len(views[1]) == 4 and list(views[1]) == outer.keys
        assert torch.equal(views[1]["fc.bias"], pool[1]["fc.bias"])
        with pytest.raises(KeyError):
            views[0]["nope"]
        reads = []
        real_get = outer.get
        outer.get = lambda k, key, rows=None: (reads.append(key), real_get(k, key, rows))[1]
        with open_pool(views) as inner:  # validated from the outer pool's specs: no tensor read
            assert reads == [] and inner.shapes == outer.shapes
            assert torch.equal(inner.get(0, "conv.weight"), pool[0]["conv.weight"]) and reads == ["conv.weight"]
