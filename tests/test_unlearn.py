"""Unlearning registry and the classic baselines: configs, random labels, saliency, masks, hooks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from negkit import unlearn
from negkit.unlearn import base
from negkit.unlearn.l1_sparse import l1_loss
from negkit.data import TensorImageDataset, labels_of
from negkit.evaluate import evaluate
from negkit.models import get as get_model


@pytest.fixture(scope="module")
def data(quadrant_forget_retain):
    return quadrant_forget_retain


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


def test_registry_lists_the_methods_and_rejects_unknown_names():
    assert unlearn.list_methods() == ["ft", "ga", "rl", "l1_sparse", "salun", "iu", "be", "bs", "neggrad_plus",
                                      "scrub", "ssd"]
    with pytest.raises(ValueError, match=r"unknown unlearning method 'sallun'.*'salun'.*did you mean 'salun'"):
        unlearn.get("sallun")
    with pytest.raises(ValueError, match=r"did you mean 'scrub'"):
        unlearn.default_config("scurb")
    with pytest.raises(ValueError, match=r"unknown unlearning method 'zzz'; valid methods are \['ft'.*'ssd'\]$"):
        unlearn.get("zzz")
    with pytest.raises(ValueError, match="already registered"):
        unlearn.register("ft")(lambda *a, **k: None)


def test_register_refuses_bad_names_and_non_callables():
    with pytest.raises(TypeError, match="must be a str, got int 3"):
        unlearn.register(3)
    for bad in ("", "two words", "1st"):
        with pytest.raises(ValueError, match=f"non-empty identifier.*{bad!r}"):
            unlearn.register(bad)
    with pytest.raises(TypeError, match="'not_callable' must be registered on a callable, got int 42"):
        unlearn.register("not_callable")(42)
    with pytest.raises(TypeError, match="must be UnlearnConfig or a subclass"):
        unlearn.register("bad_config", config=dict)
    with pytest.raises(ValueError, match=r"unknown UnlearnConfig key\(s\) \['alpha'\]"):
        unlearn.register("bad_defaults", defaults={"alpha": 1.0})
    assert "not_callable" not in unlearn.list_methods() and "bad_defaults" not in unlearn.list_methods()


def test_default_configs_and_bad_values():
    assert unlearn.default_config("salun").saliency_fraction == 0.5
    for name in ("ft", "ga", "rl", "l1_sparse", "salun"):  # SalUn's code: constant lr, wd 5e-4, no clipping
        cfg = unlearn.default_config(name)
        assert (cfg.schedule, cfg.weight_decay, cfg.grad_clip) == ("constant", 5e-4, None), name
        tc = base.train_config(cfg, 3)
        assert (tc.schedule, tc.weight_decay, tc.grad_clip, tc.epochs) == ("constant", 5e-4, None, 3)
    with pytest.raises(ValueError, match="schedule"):
        unlearn.UnlearnConfig(schedule="step")
    assert unlearn.default_config("ft", epochs=2).epochs == 2
    with pytest.raises(ValueError, match=r"unknown UnlearnConfig key\(s\) \['epoch'\]"):
        unlearn.default_config("ft", epoch=2)
    with pytest.raises(ValueError, match="saliency_fraction"):
        unlearn.default_config("salun", saliency_fraction=1.5)
    with pytest.raises(ValueError, match=r"unknown UnlearnConfig key\(s\) \['saliency_fraction'\]"):
        unlearn.default_config("rl", saliency_fraction=0.5)  # a field of another method's config
    assert type(unlearn.default_config("scrub")) is unlearn.config_class("scrub")
    with pytest.raises(ValueError, match="unknown unlearning method"):
        unlearn.default_config("nope")


def test_forget_then_retain_batches():
    gen = torch.Generator().manual_seed(0)
    sampler = unlearn.ForgetThenRetain(5, 7, 2, gen)
    batches = list(sampler)
    # D_f = indices 0..4 in batches 2, 2, 1 (a one-image last batch kept, as train's loader and the
    # reference's keep it), then D_r = 5..11 in 2, 2, 2, 1
    assert [len(b) for b in batches] == [2, 2, 1, 2, 2, 2, 1]
    assert len(sampler) == 7
    assert all(i < 5 for b in batches[:3] for i in b) and all(5 <= i < 12 for b in batches[3:] for i in b)
    assert sorted(i for b in batches for i in b) == list(range(12))  # every index once
    gen.manual_seed(0)
    assert list(sampler) == batches  # the order is the generator's
    gen.manual_seed(1)
    assert list(sampler) != batches
    assert [len(b) for b in unlearn.ForgetThenRetain(1, 5, 3, gen)] == [1, 3, 2]


def test_random_labels_are_drawn_per_batch_from_all_classes(original, data):
    forget, _ = data
    x = torch.stack([forget[i][0] for i in range(8)])
    true = torch.tensor([forget[i][1] for i in range(8)])
    marked = torch.tensor([-1] * 6 + [2, 3])  # six forget rows, two retain rows
    loss = base.random_label_loss(4)
    with torch.no_grad():
        torch.manual_seed(5)
        got = loss(original, x, marked, 0.0)
        torch.manual_seed(5)
        drawn = torch.randint(0, 4, (8,))
        want = F.cross_entropy(original(x), torch.where(marked < 0, drawn, marked))
        assert torch.equal(got, want)
        # retain batches use their labels and draw nothing
        state = torch.get_rng_state()
        assert torch.equal(loss(original, x, true, 0.0), F.cross_entropy(original(x), true))
        assert torch.equal(torch.get_rng_state(), state)
    # uniform over all classes, the true one included, and new labels at every call
    draws = torch.stack([torch.randint(0, 4, (16,)) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1, 2, 3}
    assert bool((draws == torch.as_tensor(labels_of(forget))).any())


def test_rl_epochs_are_a_forget_pass_then_a_retain_pass(original, data, monkeypatch):
    forget, retain = data
    seen, results = [], []
    real_loss, real_train = base.random_label_loss, base.train

    def spy_loss(num_classes):
        inner = real_loss(num_classes)

        def loss(model, x, y, frac):
            assert bool((y < 0).all()) or bool((y >= 0).all())  # batches never mix D_f and D_r
            seen.append(("F" if bool((y < 0).all()) else "R", len(y)))
            return inner(model, x, y, frac)
        return loss

    def spy_train(*args, **kwargs):
        results.append(real_train(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(base, "random_label_loss", spy_loss)
    monkeypatch.setattr(base, "train", spy_train)
    cfg = unlearn.default_config("rl", epochs=2, batch_size=6, lr=0.013)
    unlearn.get("rl")(original, forget, retain, cfg, device="cpu", progress=False)
    # |D_f| = 16 -> batches 6, 6, 4; |D_r| = 64 -> 10 batches of 6 and one of 4; twice
    epoch = [("F", 6), ("F", 6), ("F", 4)] + [("R", 6)] * 10 + [("R", 4)]
    assert seen == epoch * 2
    assert [h["lr"] for h in results[0].history] == [0.013, 0.013]  # constant learning rate


def test_saliency_mask_keeps_the_top_fraction_of_gradient_magnitudes(original, data):
    forget, _ = data
    mask = unlearn.saliency_mask(original, forget, 0.3, batch_size=5, device="cpu")
    params = dict(original.named_parameters())
    assert set(mask) == set(params)
    # Independent: the sum of the per-batch mean gradients of CE on D_f (16 images in
    # batches 5, 5, 5, 1: the single last image weighs 5x an image of a full batch), eval mode.
    # The batches come shuffled with the seed (0), as the reference's loader: the last image
    # of the seeded shuffle (a loader over the indices with the same generator) is up-weighted.
    model = original.eval()
    model.zero_grad()
    x = torch.stack([forget[i][0] for i in range(len(forget))])
    y = torch.tensor([forget[i][1] for i in range(len(forget))])
    order = torch.utils.data.DataLoader(range(len(forget)), batch_size=5, shuffle=True,
                                        generator=torch.Generator().manual_seed(0))
    last = int([b for b in order][-1][0])
    weights = torch.full((len(forget),), 1 / 5)
    weights[last] = 1.0
    (F.cross_entropy(model(x), y, reduction="none") * weights).sum().backward()
    g = torch.cat([params[n].grad.abs().flatten() for n in mask])
    m = torch.cat([mask[n].flatten() for n in mask])
    model.zero_grad()
    assert int(m.sum()) == int(0.3 * m.numel())  # ⌊0.3·N⌋
    assert g[m].min() >= g[~m].max() - 1e-6  # every salient |g| ≥ every non-salient |g|
    # The up-weighted last batch matters: the per-sample sum ranks the weights differently.
    model.zero_grad()
    F.cross_entropy(model(x), y, reduction="sum").backward()
    plain = torch.cat([params[n].grad.abs().flatten() for n in mask])
    model.zero_grad()
    assert not torch.equal(torch.topk(plain, int(m.sum())).indices.sort().values, m.nonzero().flatten())


def test_every_method_returns_a_changed_copy_and_leaves_the_original_alone(original, data):
    forget, retain = data
    before = _state(original)
    for name in unlearn.list_methods():
        extra = {"alpha": 1.0} if name == "ssd" else {}  # a low threshold: some weights are D_f-specific
        out = unlearn.get(name)(original, forget, retain, unlearn.default_config(name, epochs=1, **extra),
                                device="cpu", progress=False)
        assert out is not original
        after = out.state_dict()
        assert set(after) == set(before)
        assert any(not torch.equal(after[k], before[k]) for k in before), name
    assert all(torch.equal(original.state_dict()[k], v) for k, v in before.items())


def test_salun_changes_only_salient_weights_bitwise(original, data):
    forget, retain = data
    cfg = unlearn.default_config("salun", epochs=2, saliency_fraction=0.3, weight_decay=5e-3)
    mask = unlearn.saliency_mask(original, forget, 0.3, batch_size=cfg.batch_size, device="cpu")
    out = unlearn.get("salun")(original, forget, retain, cfg, device="cpu", progress=False)
    orig = dict(original.named_parameters())
    changed = 0
    for name, p in out.named_parameters():
        frozen = ~mask[name]
        assert torch.equal(p.detach()[frozen], orig[name].detach()[frozen]), name
        changed += int((p.detach()[mask[name]] != orig[name].detach()[mask[name]]).sum())
    assert changed > 0.5 * sum(int(m.sum()) for m in mask.values())


def test_ga_raises_the_forget_loss(original, data):
    forget, retain = data
    out = unlearn.get("ga")(original, forget, retain, unlearn.default_config("ga", epochs=5, lr=0.05),
                     device="cpu", progress=False)
    assert evaluate(out, forget)["loss"] > evaluate(original, forget)["loss"]


def test_rl_moves_the_forget_set_and_resumes_from_its_folder(original, data, tmp_path):
    forget, retain = data
    cfg = unlearn.default_config("rl", epochs=3)
    out = unlearn.get("rl")(original, forget, retain, cfg, device="cpu", progress=False, out_dir=tmp_path)
    assert (tmp_path / "unlearn" / "done.json").exists()
    # Random labels alone (a retain set of two images barely repairs) pull D_f off its labels.
    only = unlearn.get("rl")(original, forget, torch.utils.data.Subset(retain, [0, 1]),
                      unlearn.default_config("rl", epochs=5), device="cpu", progress=False)
    assert evaluate(only, forget)["acc"] < evaluate(original, forget)["acc"]
    # Rerun: loaded, not retrained, and the same weights.
    again = unlearn.get("rl")(original, forget, retain, cfg, device="cpu", progress=False, out_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), again.state_dict().values()))


def test_l1_strength_steps_down_per_epoch(original, data):
    forget, _ = data
    x = torch.stack([forget[i][0] for i in range(4)])
    y = torch.tensor([forget[i][1] for i in range(4)])
    loss = l1_loss(1e-3, epochs=4)
    with torch.no_grad():
        ce = F.cross_entropy(original(x), y)
        l1 = sum(p.abs().sum() for p in original.parameters())
        # progress 0 and 0.2 are epoch 0 (α), 0.25 epoch 1 (0.75α), 0.99 epoch 3 (0.25α)
        for frac, factor in ((0.0, 1.0), (0.2, 1.0), (0.25, 0.75), (0.5, 0.5), (0.74, 0.5), (0.99, 0.25)):
            want = (ce + factor * 1e-3 * l1).item()
            assert math.isclose(loss(original, x, y, frac).item(), want, rel_tol=1e-5), frac
        # exact epoch boundaries as train() computes them: (e·nb + 0) / (E·nb), nb = 7
        for e in range(4):
            want = (ce + (1 - e / 4) * 1e-3 * l1).item()
            assert math.isclose(loss(original, x, y, (e * 7) / (4 * 7)).item(), want, rel_tol=1e-5)


def test_empty_forget_set_is_refused(original, data):
    _, retain = data
    empty = TensorImageDataset(torch.zeros(0, 1, 8, 8), [])
    for name in ("ga", "rl", "salun", "iu", "be", "bs", "neggrad_plus", "scrub", "ssd"):
        with pytest.raises(ValueError, match="empty"):
            unlearn.get(name)(original, empty, retain, unlearn.default_config(name, epochs=1),
                              device="cpu", progress=False)


def test_methods_take_a_dict_of_overrides_or_a_plain_config(original):
    def config(cfg):
        return base.prepare(original, cfg, "scrub", unlearn.config_class("scrub"), {"lr": 5e-4, "alpha": 0.001},
                            None)[1]

    got = config({"alpha": 0.5})
    assert (got.lr, got.alpha) == (5e-4, 0.5)  # a dict overrides the method's defaults
    got = config(unlearn.UnlearnConfig(epochs=2))
    assert (got.epochs, got.lr, got.alpha) == (2, 0.01, 0.001)  # shared fields as given, its own at defaults
    with pytest.raises(ValueError, match=r"unknown SCRUBConfig key\(s\) \['saliency_fraction'\]"):
        config(unlearn.default_config("salun"))  # another method's config
