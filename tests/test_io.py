"""negkit.io: atomic writes, safetensors round trips, refusing pickled code, JSON."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from negkit import io


class _Payload:
    """Unpickling this object creates a marker file: stands in for malicious code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_with_metadata(tmp_path):
    w = torch.randn(4, 3)
    state = {"w": w, "tied": w, "view": w[1:], "t": w.t(), "half": torch.ones(2, dtype=torch.bfloat16),
             "steps": torch.arange(3)}
    path = io.save_state_dict(state, tmp_path / "sub" / "ck.safetensors", metadata={"arch": "x", "seed": "3"})
    got = io.load_state_dict(path)
    assert got.keys() == state.keys()
    for k, v in state.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)
    assert io.read_metadata(path) == {"arch": "x", "seed": "3"}
    assert _leftovers(tmp_path / "sub") == ["ck.safetensors"]
    io.save_state_dict({"a": torch.zeros(1)}, tmp_path / "plain.safetensors")
    assert io.read_metadata(tmp_path / "plain.safetensors") == {}


def test_bad_metadata_and_values(tmp_path):
    with pytest.raises(TypeError, match="'seed'"):
        io.save_state_dict({"a": torch.zeros(1)}, tmp_path / "a.safetensors", metadata={"seed": 3})
    with pytest.raises(TypeError, match="'b' is a list"):
        io.save_state_dict({"b": [1, 2]}, tmp_path / "b.safetensors")
    assert _leftovers(tmp_path) == []


def test_atomic_write_interrupted_leaves_nothing(tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_write(dest) as tmp:
            tmp.write_bytes(b"half")
            assert tmp.parent == tmp_path and tmp.name.endswith("out.bin") and tmp != dest
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []
    # an existing destination stays untouched
    dest.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_write(dest) as tmp:
            tmp.write_bytes(b"new")
            raise KeyboardInterrupt
    assert dest.read_bytes() == b"old" and _leftovers(tmp_path) == ["out.bin"]
    with io.atomic_write(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and _leftovers(tmp_path) == ["out.bin"]


def test_atomic_write_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with io.atomic_write(tmp_path / "x.txt"):
            pass
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["torch_save", "raw_pickle"])
@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    payload = {"state_dict": {"w": torch.zeros(2), "x": _Payload(marker)}}
    if how == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=f"evil{suffix}") as err:
        io.load_state_dict(path)
    assert not marker.exists()
    msg = str(err.value)
    assert "refusing" in msg or "not a" in msg
    if suffix != ".safetensors":
        assert "pickled code" in msg and "state_dict()" in msg and "save_state_dict" in msg
    # the payload is live: an ordinary unpickle would have run it
    if how == "raw_pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_whole_pickled_module_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"refusing to load .*model\.pt.*Linear.*torch\.save\(model\.state_dict\(\)"):
        io.load_state_dict(path)


def test_legacy_state_dicts_are_unwrapped(tmp_path):
    w = torch.randn(3)
    for i, obj in enumerate([{"w": w}, {"state_dict": {"module.w": w}, "epoch": 3},
                             {"model": {"w": w}}, {"model_state_dict": {"module.w": w}}]):
        path = tmp_path / f"ck{i}.pth"
        torch.save(obj, path)
        assert torch.equal(io.load_state_dict(path)["w"], w)
        assert io.read_metadata(path) == {}
    # a prefix on only some keys is a real name, not a DataParallel wrapper
    torch.save({"module.w": w, "v": w}, tmp_path / "mixed.pt")
    assert set(io.load_state_dict(tmp_path / "mixed.pt")) == {"module.w", "v"}


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt is not a checkpoint"):
        io.load_state_dict(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="not a checkpoint"):
        io.read_metadata(tmp_path / "notes.txt")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors"):
        io.load_state_dict(tmp_path / "empty.safetensors")
    good = io.save_state_dict({"a": torch.zeros(100)}, tmp_path / "trunc.safetensors")
    good.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(ValueError, match="trunc.safetensors"):
        io.load_state_dict(good)
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "opt.pt")
    with pytest.raises(ValueError, match=r"opt\.pt: entries \['lr', 'epoch'\] are not tensors"):
        io.load_state_dict(tmp_path / "opt.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        io.load_state_dict(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        io.load_state_dict(tmp_path / "missing.safetensors")


def test_json_round_trip(tmp_path):
    obj = {"a": 1, "p": Path("x/y"), "np": np.float32(0.5), "arr": np.arange(3), "t": torch.tensor([1.5]),
           "nested": {"s": {3, 1}}, "tup": (1, 2)}
    path = io.save_json(obj, tmp_path / "d" / "r.json")
    assert io.load_json(path) == {"a": 1, "p": "x/y", "np": 0.5, "arr": [0, 1, 2], "t": [1.5],
                                  "nested": {"s": [1, 3]}, "tup": [1, 2]}
    with pytest.raises(TypeError, match="object"):
        io.save_json({"bad": object()}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists() and _leftovers(tmp_path) == ["d"]
    io.save_text("a,b\n1,2\n", tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,2\n"


def test_safetensors_writer_streams_a_standard_file(tmp_path):
    sd = {"a": torch.randn(3, 4), "b": torch.ones(2, dtype=torch.bfloat16), "c": torch.tensor(2.5, dtype=torch.float64),
          "empty": torch.zeros(0, 3), "t": torch.randn(4, 3).t()}
    specs = {k: (v.shape, v.dtype) for k, v in sd.items()}
    with io.safetensors_writer(tmp_path / "w.safetensors", specs, metadata={"m": "x"}) as write:
        for k, v in sd.items():
            write(k, v)
    got = io.load_state_dict(tmp_path / "w.safetensors")
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in sd.items())
    assert io.read_metadata(tmp_path / "w.safetensors") == {"m": "x"}
    assert _leftovers(tmp_path) == ["w.safetensors"]


def test_safetensors_writer_refuses_bad_streams_and_leaves_nothing(tmp_path):
    specs = {"a": ((2,), torch.float32), "b": ((3,), torch.float32)}
    with pytest.raises(ValueError, match="got 'b', expected 'a'"):
        with io.safetensors_writer(tmp_path / "x.safetensors", specs) as write:
            write("b", torch.zeros(3))
    with pytest.raises(ValueError, match=r"'a' is \(3,\), torch.float32; specs say \(2,\)"):
        with io.safetensors_writer(tmp_path / "x.safetensors", specs) as write:
            write("a", torch.zeros(3))
    with pytest.raises(ValueError, match="'b' and 0 more tensors were never written"):
        with io.safetensors_writer(tmp_path / "x.safetensors", specs) as write:
            write("a", torch.zeros(2))
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- a failed write leaves the old file and no temporary
import errno  # noqa: E402

import negkit.checkpoint as _ck  # noqa: E402


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_full_safetensors_write_removes_its_temporary_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "model.safetensors"
    io.save_state_dict({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(io, "save_file", _no_space)
    with pytest.raises(OSError) as info:
        io.save_state_dict({"w": torch.zeros(3)}, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert f"could not write {path}" in str(info.value) and "free disk space" in str(info.value)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]


def test_a_disk_full_training_checkpoint_leaves_no_temporary(tmp_path, monkeypatch):
    from torch import nn

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = _ck.TrainingState(epoch=1, step=3, history=[], seconds=1.0, config={"epochs": 3})
    monkeypatch.setattr(io, "save_file", _no_space)
    target = tmp_path / "run" / _ck.CHECKPOINT
    with pytest.raises(OSError, match=re.escape(str(target))) as info:
        _ck.save_training_state(target, model, opt, state)
    assert info.value.errno == errno.ENOSPC
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.parametrize("fail", ["write", "fsync", "replace"])
def test_a_failing_streamed_write_sync_or_rename_removes_the_temporary(tmp_path, monkeypatch, fail):
    path = tmp_path / "merged.safetensors"
    specs = {"a": ((2,), torch.float32)}
    if fail == "write":
        with pytest.raises(OSError, match=re.escape(str(path))) as info:
            with io.safetensors_writer(path, specs) as write:
                _no_space()
                write("a", torch.ones(2))
    else:
        monkeypatch.setattr(io.os, fail, _no_space)
        with pytest.raises(OSError, match=re.escape(str(path))) as info:
            with io.safetensors_writer(path, specs) as write:
                write("a", torch.ones(2))
        monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_name_too_long_is_an_oserror_naming_the_path(tmp_path):
    path = tmp_path / ("n" * 300 + ".safetensors")
    with pytest.raises(OSError, match="could not write") as info:
        io.save_state_dict({"w": torch.ones(1)}, path)
    assert info.value.errno == errno.ENAMETOOLONG and info.value.filename == str(path)
    assert "at most 255 bytes" in str(info.value) and list(tmp_path.iterdir()) == []
