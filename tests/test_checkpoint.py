"""negkit.checkpoint: the run folder's files, the checkpoint's on-disk format, RNG and optimiser restore."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from negkit import checkpoint as ck
from negkit import io as nkio


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    return torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-2)


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _draws() -> tuple:
    return torch.rand(3), np.random.rand(3), random.random()


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


STATE = ck.TrainingState(epoch=2, step=10, history=[{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.3}],
                         seconds=1.5, config={"epochs": 4, "lr": 0.1})


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_round_trip_restores_model_optimizer_and_rngs(tmp_path, kind):
    model = _net()
    opt = _optimizer(model, kind)
    for s in range(3):
        _step(model, opt, s)
    torch.manual_seed(11), np.random.seed(12), random.seed(13)
    path = ck.save_training_state(tmp_path / ck.CHECKPOINT, model, opt, STATE)
    expected = _draws()
    _step(model, opt, 99)  # the run that never stopped takes one more step

    other = _net(seed=5)
    other_opt = _optimizer(other, kind)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # perturbed: load must restore them
    state = ck.load_training_state(path, other, other_opt)
    assert state == STATE
    got = _draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    _step(other, other_opt, 99)  # same optimiser state (momentum / moments / step counts): same update
    assert _same(other, model)


def test_on_disk_layout(tmp_path):
    model = _net()
    opt = _optimizer(model, "sgd")
    _step(model, opt, 0)
    path = ck.save_training_state(tmp_path / ck.CHECKPOINT, model, opt, STATE)
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file, scalars as JSON metadata
        keys = set(f.keys())
        meta = json.loads(f.metadata()["negkit_checkpoint"])
    assert {f"model.{k}" for k in model.state_dict()} <= keys
    n_params = len(list(model.parameters()))
    assert {f"optim.{i}.momentum_buffer" for i in range(n_params)} <= keys
    assert {"rng.torch", "rng.numpy_keys"} <= keys
    assert len(keys) == len(model.state_dict()) + n_params + 2 + torch.cuda.device_count()
    assert list(meta) == ["epoch", "step", "history", "seconds", "config", "optim_scalars", "param_groups", "rng",
                          "environment"]
    assert meta["environment"]["threads"] == torch.get_num_threads() and meta["environment"]["device"] == "cpu"
    assert meta["epoch"] == 2 and meta["config"] == {"epochs": 4, "lr": 0.1}
    assert meta["param_groups"][0]["momentum"] == 0.9 and set(meta["rng"]) == {"numpy", "python"}
    assert ck.read_training_state(path) == STATE


def test_reads_a_checkpoint_written_directly_in_the_documented_format(tmp_path):
    """The reader depends on the format, not on this module's writer (run folders outlive code versions)."""
    src = _net()
    opt = _optimizer(src, "sgd")
    _step(src, opt, 0)
    tensors = {f"model.{k}": v.contiguous() for k, v in src.state_dict().items()}
    for pid, s in opt.state_dict()["state"].items():
        tensors[f"optim.{pid}.momentum_buffer"] = s["momentum_buffer"]
    torch.manual_seed(21)
    np_state, py_state = np.random.get_state(), random.getstate()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {"epoch": 1, "step": 3, "history": [{"epoch": 1}], "seconds": 0.25, "config": {"epochs": 2},
            "optim_scalars": {}, "param_groups": opt.state_dict()["param_groups"],
            "rng": {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
                    "python": [py_state[0], list(py_state[1]), py_state[2]]}}
    save_file(tensors, str(tmp_path / "ckpt.safetensors"), metadata={"negkit_checkpoint": json.dumps(meta)})
    expected = _draws()

    model = _net(seed=3)
    new_opt = _optimizer(model, "sgd")
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    state = ck.load_training_state(tmp_path / "ckpt.safetensors", model, new_opt)
    assert (state.epoch, state.step, state.seconds, state.config) == (1, 3, 0.25, {"epochs": 2})
    got = _draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert _same(model, src)
    _step(model, new_opt, 7), _step(src, opt, 7)
    assert _same(model, src)


def test_config_is_checked_before_anything_is_touched(tmp_path):
    path = ck.save_training_state(tmp_path / ck.CHECKPOINT, _net(), _optimizer(_net(), "sgd"), STATE)
    untouched = _net(seed=5)
    with pytest.raises(ValueError, match=r"different TrainConfig \(differs in \['lr'\].*delete that folder"):
        ck.load_training_state(path, untouched, _optimizer(untouched, "sgd"), config={"epochs": 4, "lr": 0.5})
    assert _same(untouched, _net(seed=5))
    ck.check_config({"epochs": 4, "num_workers": 0}, {"epochs": 4, "num_workers": 8}, tmp_path, ignore=["num_workers"])
    with pytest.raises(ValueError, match=r"differs in \['num_workers', 'seed'\]"):
        ck.check_config({"epochs": 4, "num_workers": 0}, {"epochs": 4, "num_workers": 8, "seed": 1}, tmp_path)
    nkio.save_state_dict({"w": torch.ones(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="plain.safetensors is not a negkit training checkpoint"):
        ck.read_training_state(tmp_path / "plain.safetensors")


def test_finished_run_files_and_reload(tmp_path):
    model, cfg = _net(), {"epochs": 3, "lr": 0.1, "num_workers": 0}
    (tmp_path / ck.CHECKPOINT).write_bytes(b"stale")
    assert not ck.is_finished(tmp_path)
    ck.save_finished(tmp_path, model, cfg, {"train_loss": 0.1, "steps": 12}, [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
    assert ck.is_finished(tmp_path) and not (tmp_path / ck.CHECKPOINT).exists()
    assert nkio.load_json(tmp_path / ck.DONE_FILE) == {"done": True, "epochs": 3, "steps": 12}
    assert nkio.load_json(tmp_path / "config.json") == cfg
    assert json.loads(nkio.read_metadata(tmp_path / ck.MODEL_FILE)["config"]) == cfg

    other = _net(seed=4)
    with pytest.raises(ValueError, match=r"differs in \['epochs'\]"):
        ck.load_finished(tmp_path, other, {**cfg, "epochs": 4})
    assert _same(other, _net(seed=4))
    metrics, history = ck.load_finished(tmp_path, other, {**cfg, "num_workers": 4}, ignore=["num_workers"])
    assert _same(other, model) and metrics["steps"] == 12 and len(history) == 3
    (tmp_path / "history.json").unlink()
    assert ck.load_finished(tmp_path, _net(), cfg)[1] == []
    (tmp_path / ck.DONE_FILE).unlink()  # weights without the done-marker: an unfinished run
    assert not ck.is_finished(tmp_path)
