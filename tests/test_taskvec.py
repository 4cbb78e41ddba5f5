"""negkit.taskvec: τ = θ_ft − θ_pre, arithmetic laws, apply_to, save/load."""
from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import torch

import negkit
import negkit.models as models
from negkit import io
from negkit.taskvec import TaskVector, is_bn_stat


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 4 * 4, 5))
    m.train()
    m(torch.randn(8, 3, 6, 6))  # moves the BatchNorm running statistics away from their init
    return m


@pytest.fixture()
def pre_ft():
    return _model(0).state_dict(), _model(1).state_dict()


def _equal(a: Mapping, b: Mapping) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _close(a: Mapping, b: Mapping) -> bool:
    return set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_from_state_dicts_skips_buffers_and_bn_stats(pre_ft):
    pre, ft = pre_ft
    tv = TaskVector.from_state_dicts(pre, ft)
    assert sorted(tv) == ["0.bias", "0.weight", "1.bias", "1.weight", "3.bias", "3.weight"]
    for k in tv:
        assert torch.equal(tv[k], ft[k] - pre[k])
    with_bn = TaskVector.from_state_dicts(pre, ft, include_bn_stats=True)
    assert set(with_bn) - set(tv) == {"1.running_mean", "1.running_var"}  # num_batches_tracked is an int
    assert is_bn_stat("layer.bn1.running_var") and not is_bn_stat("running_var_proj.weight")


def test_from_state_dicts_mismatches_name_the_key(pre_ft):
    pre, ft = pre_ft
    with pytest.raises(KeyError, match="'head.weight' is only in the fine-tuned"):
        TaskVector.from_state_dicts(pre, {**ft, "head.weight": torch.zeros(2)})
    with pytest.raises(KeyError, match="'3.bias' is only in the pretrained"):
        TaskVector.from_state_dicts(pre, {k: v for k, v in ft.items() if k != "3.bias"})
    with pytest.raises(ValueError, match=r"shape mismatch for '3\.bias'"):
        TaskVector.from_state_dicts(pre, {**ft, "3.bias": torch.zeros(6)})
    with pytest.raises(TypeError, match="'n' is torch.int64"):
        TaskVector({"n": torch.ones(2, dtype=torch.int64)})


def test_apply_to_recovers_finetuned_and_keeps_the_rest(pre_ft):
    pre, ft = pre_ft
    tv = TaskVector.from_state_dicts(pre, ft)
    theta = tv.apply_to(pre, coef=1.0)
    assert set(theta) == set(pre)
    for k in tv:
        assert torch.allclose(theta[k], ft[k], atol=1e-6)
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert theta[k] is pre[k]  # untouched: negating running statistics would break the model
    neg = tv.apply_to(pre, coef=-0.5)
    assert _close({k: neg[k] for k in tv}, {k: pre[k] - 0.5 * tv[k] for k in tv})
    assert _close((-tv).apply_to(pre, 0.5), neg)
    model = _model(2)
    model.load_state_dict(neg)  # a loadable state dict
    assert theta is not pre and torch.equal(pre["0.weight"], _model(0).state_dict()["0.weight"])  # no in-place


def test_apply_to_keeps_dtype_and_checks_keys():
    pre = {"w": torch.ones(3, dtype=torch.float16), "n": torch.tensor(1)}
    tv = TaskVector({"w": torch.tensor([1.0, -1.0, 0.5])})
    out = tv.apply_to(pre, coef=2.0)
    assert out["w"].dtype == torch.float16 and torch.equal(out["w"], torch.tensor([3.0, -1.0, 2.0]).half())
    with pytest.raises(KeyError, match="'extra'"):
        TaskVector({"extra": torch.ones(1)}).apply_to(pre)
    with pytest.raises(ValueError, match="shape mismatch for 'w'"):
        TaskVector({"w": torch.ones(4)}).apply_to(pre)


def test_arithmetic_laws():
    g = torch.Generator().manual_seed(0)
    a, b, c = (TaskVector({"x": torch.randn(4, 3, generator=g), "y": torch.randn(5, generator=g)})
               for _ in range(3))
    assert _equal(-(-a), a)
    assert _equal(a + b, b + a)
    assert _close((a + b) + c, a + (b + c))
    assert _equal(a - b, a + (-b))
    assert _equal(2 * a, a * 2) and _equal(2 * a, a + a)
    assert _close(a / 4, 0.25 * a)
    assert _close(sum([a, b, c]), a + b + c)
    assert _equal(sum([a]), a)
    assert all(torch.count_nonzero(t) == 0 for t in (a - a).values())
    assert _equal(a + dict(b), a + b) and _equal(dict(b) + a, a + b) and _equal(dict(a) - b, a - b)
    assert isinstance(a + b, TaskVector) and isinstance(torch.tensor(3.0) * a, TaskVector)


def test_arithmetic_refuses_mismatched_vectors():
    a = TaskVector({"x": torch.ones(2), "y": torch.ones(3)})
    with pytest.raises(KeyError, match="'y' is missing from the right"):
        _ = a + TaskVector({"x": torch.ones(2)})
    with pytest.raises(KeyError, match="'z' is missing from the left.*strict=False"):
        _ = a - TaskVector({"x": torch.ones(2), "y": torch.ones(3), "z": torch.ones(1)})
    with pytest.raises(ValueError, match="'y' has shape"):
        _ = a + {"x": torch.ones(2), "y": torch.ones(4)}
    with pytest.raises(TypeError):
        _ = a * a
    with pytest.raises(TypeError):
        _ = a + 1


def test_mapping_access_numel_norm():
    tv = TaskVector({"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])})
    assert isinstance(tv, Mapping) and len(tv) == 2 and list(tv.keys()) == ["a", "b"] and "a" in tv
    assert tv.vector["a"] is tv["a"] and dict(tv.items()).keys() == {"a", "b"}
    assert tv.numel() == 3 and tv.norm() == pytest.approx(5.0)
    assert tv != TaskVector(dict(tv))  # identity equality; compare tensors explicitly
    assert "2 tensors" in repr(tv)


def test_save_load_with_metadata(tmp_path, pre_ft):
    tv = TaskVector.from_state_dicts(*pre_ft)
    path = tv.save(tmp_path / "tv.safetensors", architecture="ViT-B-32", pretrained="openai",
                   config={"lr": 1e-5, "epochs": 3}, metadata={"dataset": "cars"})
    back = TaskVector.load(path)
    assert _equal(back, tv)
    assert back.metadata["architecture"] == "ViT-B-32" and back.metadata["pretrained"] == "openai"
    assert back.metadata["negkit_version"] == negkit.__version__ and back.metadata["dataset"] == "cars"
    assert back.config == {"lr": 1e-5, "epochs": 3}
    assert json.loads(io.read_metadata(path)["finetune_config"]) == {"epochs": 3, "lr": 1e-5}
    assert all(isinstance(v, str) for v in back.metadata.values())


def test_from_files_reads_safetensors_and_legacy(tmp_path, pre_ft):
    pre, ft = pre_ft
    io.save_state_dict(pre, tmp_path / "pre.safetensors")
    torch.save({"state_dict": ft}, tmp_path / "ft.pt")
    tv = TaskVector.from_files(tmp_path / "pre.safetensors", tmp_path / "ft.pt")
    assert _equal(tv, TaskVector.from_state_dicts(pre, ft))
    assert tv.metadata["finetuned_file"] == "ft.pt"


def test_keys_restricts_tau_by_names_or_predicate(pre_ft):
    pre, ft = pre_ft
    by_name = TaskVector.from_state_dicts(pre, ft, keys=["3.weight", "0.bias"])
    assert list(by_name) == ["0.bias", "3.weight"]  # pretrained's order
    assert torch.equal(by_name["3.weight"], ft["3.weight"] - pre["3.weight"])
    by_pred = TaskVector.from_state_dicts(pre, ft, keys=lambda k: k.startswith("1."))
    assert list(by_pred) == ["1.weight", "1.bias"]  # the predicate still skips BN statistics
    both = TaskVector.from_state_dicts(pre, ft, keys=lambda k: k.startswith("1."), include_bn_stats=True)
    assert list(both) == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    # Unselected entries need not match: a new head is left out instead of dropped by hand.
    new_head = {**ft, "3.weight": torch.zeros(7, 64), "head.weight": torch.ones(2)}
    body = TaskVector.from_state_dicts(pre, new_head, keys=lambda k: not k.startswith(("3.", "head.")))
    assert sorted(body) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    with pytest.raises(KeyError, match="'head.weight' is only in the fine-tuned.*keys="):
        TaskVector.from_state_dicts(pre, new_head, keys=lambda k: not k.startswith("3."))


def test_keys_named_explicitly_must_exist_and_be_weights(pre_ft):
    pre, ft = pre_ft
    with pytest.raises(KeyError, match="'fc.weight', which is not in the pretrained"):
        TaskVector.from_state_dicts(pre, ft, keys=["0.weight", "fc.weight"])
    with pytest.raises(KeyError, match="'0.weight', which is not in the fine-tuned"):
        TaskVector.from_state_dicts(pre, {k: v for k, v in ft.items() if k != "0.weight"}, keys=["0.weight"])
    with pytest.raises(ValueError, match="'1.running_var', which is a BatchNorm.*include_bn_stats=True"):
        TaskVector.from_state_dicts(pre, ft, keys=["1.running_var"])
    stat = TaskVector.from_state_dicts(pre, ft, keys=["1.running_var"], include_bn_stats=True)
    assert list(stat) == ["1.running_var"]
    with pytest.raises(ValueError, match="'1.num_batches_tracked', which is a torch.int64"):
        TaskVector.from_state_dicts(pre, ft, keys=["1.num_batches_tracked"], include_bn_stats=True)
    with pytest.raises(TypeError, match=r"single string.*keys=\['0.weight'\]"):
        TaskVector.from_state_dicts(pre, ft, keys="0.weight")


def test_from_models_leaves_constant_buffers_out():
    """A Normalize layer's mean/std are float buffers that never train: from_state_dicts gives all-zero entries."""
    torch.manual_seed(0)
    pre = models.get("small_resnet", 3, in_channels=1, mean=(0.5,), std=(0.25,), widths=(4, 8))
    ft = models.get("small_resnet", 3, in_channels=1, mean=(0.5,), std=(0.25,), widths=(4, 8))  # other init
    buffers = {k for k, _ in pre.named_buffers()}
    constant = [k for k, v in pre.state_dict().items() if k in buffers and v.is_floating_point() and not is_bn_stat(k)]
    assert constant  # the model does carry constant float buffers ...
    everything = TaskVector.from_state_dicts(pre.state_dict(), ft.state_dict())
    assert all(torch.count_nonzero(everything[k]) == 0 for k in constant)  # ... which become zeros in τ
    tv = TaskVector.from_models(pre, ft)
    assert list(tv) == [k for k, _ in pre.named_parameters()]
    assert _equal(tv, {k: everything[k] for k in tv})
    assert tv.numel() == sum(p.numel() for p in pre.parameters()) < everything.numel()
    assert all(t.device.type == "cpu" for t in tv.values())
    assert _equal(TaskVector.from_models(pre, ft, params_only=False), everything)
    with_bn = TaskVector.from_models(pre, ft, params_only=False, include_bn_stats=True)
    assert any(is_bn_stat(k) for k in with_bn)
    with pytest.raises(ValueError, match="params_only=False"):
        TaskVector.from_models(pre, ft, include_bn_stats=True)
    with pytest.raises(ValueError, match=r"not the same architecture \(only in pretrained: \['layers.1"):
        TaskVector.from_models(pre, models.get("small_resnet", 3, in_channels=1, widths=(4,)))


def test_from_files_accepts_keys(tmp_path, pre_ft):
    pre, ft = pre_ft
    io.save_state_dict(pre, tmp_path / "pre.safetensors")
    io.save_state_dict(ft, tmp_path / "ft.safetensors")
    tv = TaskVector.from_files(tmp_path / "pre.safetensors", tmp_path / "ft.safetensors", keys=["3.bias"])
    assert list(tv) == ["3.bias"] and torch.equal(tv["3.bias"], ft["3.bias"] - pre["3.bias"])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_an_integer_fine_tuned_tensor_is_refused_naming_the_key(dtype):
    pre = {"w": torch.zeros(3), "b": torch.zeros(2)}
    ft = {"w": torch.ones(3, dtype=dtype), "b": torch.ones(2)}
    with pytest.raises(TypeError, match=rf"fine-tuned entry 'w' is a {dtype} tensor where the pretrained one is "
                                        r"torch.float32"):
        TaskVector.from_state_dicts(pre, ft)
