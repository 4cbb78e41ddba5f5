"""Classic unlearning baselines: registry, configs, random labels, saliency, masks, hooks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from negkit import unlearn
from negkit.data import TensorImageDataset, labels_of
from negkit.evaluate import evaluate
from negkit.models import get as get_model


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    # 4 classes of 8x8 one-channel images: class c lights up quadrant c, plus noise.
    n = 80
    y = torch.arange(n) % 4
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 0.8
    forget = TensorImageDataset(x[:16], y[:16])
    retain = TensorImageDataset(x[16:], y[16:])
    return forget, retain


@pytest.fixture(scope="module")
def original(data):
    from negkit.train import train

    torch.manual_seed(0)
    model = get_model("small_resnet", num_classes=4, in_channels=1, widths=(4, 8), mean=(0.3,), std=(0.3,))
    forget, retain = data
    train(model, torch.utils.data.ConcatDataset([forget, retain]),
          dict(epochs=8, batch_size=16, lr=0.05), progress=False)
    return model.eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_registry_lists_the_five_baselines_and_rejects_unknown_names():
    assert unlearn.list_methods() == ["ft", "ga", "rl", "l1_sparse", "salun"]
    with pytest.raises(ValueError, match=r"unknown unlearning method 'sallun'.*'salun'"):
        unlearn.get("sallun")
    with pytest.raises(ValueError, match="already registered"):
        unlearn.register("ft")(lambda *a, **k: None)


def test_default_configs_and_bad_values():
    assert unlearn.default_config("salun").saliency_fraction == 0.5
    assert unlearn.default_config("ga").grad_clip == 1.0
    assert unlearn.default_config("ft", epochs=2).epochs == 2
    with pytest.raises(ValueError, match=r"unknown UnlearnConfig key\(s\) \['epoch'\]"):
        unlearn.default_config("ft", epoch=2)
    with pytest.raises(ValueError, match="saliency_fraction"):
        unlearn.UnlearnConfig(saliency_fraction=1.5)
    with pytest.raises(ValueError, match="unknown unlearning method"):
        unlearn.default_config("nope")


def test_random_labels_are_wrong_fixed_and_in_range(data):
    forget, _ = data
    a = unlearn.RandomLabels(forget, num_classes=4, seed=3)
    b = unlearn.RandomLabels(forget, num_classes=4, seed=3)
    true = labels_of(forget)
    assert np.array_equal(a.targets, b.targets)
    assert np.all(a.targets != true) and a.targets.min() >= 0 and a.targets.max() < 4
    assert np.array_equal(labels_of(a), a.targets)
    x, y = a[0]
    assert torch.equal(x, forget[0][0]) and y == a.targets[0]
    with pytest.raises(ValueError, match="at least 2 classes"):
        unlearn.RandomLabels(forget, num_classes=1)


def test_saliency_mask_keeps_the_top_fraction_of_gradient_magnitudes(original, data):
    forget, _ = data
    mask = unlearn.saliency_mask(original, forget, 0.25, device="cpu")
    params = dict(original.named_parameters())
    assert set(mask) == set(params)
    # Independent gradient of the summed CE on D_f, in eval mode.
    model = original.eval()
    model.zero_grad()
    x = torch.stack([forget[i][0] for i in range(len(forget))])
    y = torch.tensor([forget[i][1] for i in range(len(forget))])
    F.cross_entropy(model(x), y, reduction="sum").backward()
    g = torch.cat([params[n].grad.abs().flatten() for n in mask])
    m = torch.cat([mask[n].flatten() for n in mask])
    model.zero_grad()
    assert int(m.sum()) == round(0.25 * m.numel())
    assert g[m].min() >= g[~m].max() - 1e-6  # every salient |g| ≥ every non-salient |g|


def test_every_method_returns_a_changed_copy_and_leaves_the_original_alone(original, data):
    forget, retain = data
    before = _state(original)
    for name in unlearn.list_methods():
        out = unlearn.get(name)(original, forget, retain, unlearn.default_config(name, epochs=1),
                                device="cpu", progress=False)
        assert out is not original
        after = out.state_dict()
        assert set(after) == set(before)
        assert any(not torch.equal(after[k], before[k]) for k in before), name
    assert all(torch.equal(original.state_dict()[k], v) for k, v in before.items())


def test_salun_changes_only_salient_weights_bitwise(original, data):
    forget, retain = data
    cfg = unlearn.default_config("salun", epochs=2, retain_epochs=1, saliency_fraction=0.3, weight_decay=5e-3)
    mask = unlearn.saliency_mask(original, forget, 0.3, device="cpu")
    out = unlearn.salun(original, forget, retain, cfg, device="cpu", progress=False)
    orig = dict(original.named_parameters())
    changed = 0
    for name, p in out.named_parameters():
        frozen = ~mask[name]
        assert torch.equal(p.detach()[frozen], orig[name].detach()[frozen]), name
        changed += int((p.detach()[mask[name]] != orig[name].detach()[mask[name]]).sum())
    assert changed > 0.5 * sum(int(m.sum()) for m in mask.values())


def test_ga_raises_the_forget_loss(original, data):
    forget, retain = data
    out = unlearn.ga(original, forget, retain, unlearn.default_config("ga", epochs=5, lr=0.05),
                     device="cpu", progress=False)
    assert evaluate(out, forget)["loss"] > evaluate(original, forget)["loss"]


def test_rl_trains_on_wrong_labels_then_retain(original, data, tmp_path):
    forget, retain = data
    cfg = unlearn.default_config("rl", epochs=3, retain_epochs=1)
    out = unlearn.rl(original, forget, retain, cfg, device="cpu", progress=False, out_dir=tmp_path)
    assert (tmp_path / "forget" / "done.json").exists() and (tmp_path / "retain" / "done.json").exists()
    # The forget stage alone (no repair pass) must pull D_f away from its true labels.
    only = unlearn.rl(original, forget, retain, unlearn.default_config("rl", epochs=5, retain_epochs=0),
                      device="cpu", progress=False)
    assert evaluate(only, forget)["acc"] < evaluate(original, forget)["acc"]
    # Rerun: both stages are loaded, not retrained, and give the same weights.
    again = unlearn.rl(original, forget, retain, cfg, device="cpu", progress=False, out_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), again.state_dict().values()))


def test_l1_penalty_decays_linearly_to_zero(original, data):
    forget, _ = data
    x = torch.stack([forget[i][0] for i in range(4)])
    y = torch.tensor([forget[i][1] for i in range(4)])
    loss = unlearn._l1_loss(1e-3)
    with torch.no_grad():
        ce = F.cross_entropy(original(x), y)
        l1 = sum(p.abs().sum() for p in original.parameters())
        assert math.isclose(loss(original, x, y, 0.0).item(), (ce + 1e-3 * l1).item(), rel_tol=1e-5)
        assert math.isclose(loss(original, x, y, 0.5).item(), (ce + 0.5e-3 * l1).item(), rel_tol=1e-5)
        assert math.isclose(loss(original, x, y, 1.0).item(), ce.item(), rel_tol=1e-6)


def test_empty_forget_set_is_refused(original, data):
    _, retain = data
    empty = TensorImageDataset(torch.zeros(0, 1, 8, 8), [])
    for name in ("ga", "rl", "salun"):
        with pytest.raises(ValueError, match="empty"):
            unlearn.get(name)(original, empty, retain, unlearn.default_config(name, epochs=1),
                              device="cpu", progress=False)
