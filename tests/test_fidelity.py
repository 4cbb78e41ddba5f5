"""Defaults that reproduce the reference code (NegMerge's CLIP release, SalUn's classification code)."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from negkit import benchmark as B
from negkit import unlearn
from negkit.clip import datasets as cd
from negkit.clip import negation
from negkit.clip import transforms as ct
from negkit.evaluate import search_coef
from negkit.train import TrainConfig, lr_factor, train


# ---------------------------------------------------------------- CLIP: the release's λ grid
def test_clip_negation_defaults_to_the_release_grid_linspace_0_1_21():
    sig = inspect.signature(negation.run_task_negation).parameters
    assert (sig["coef_max"].default, sig["coef_search"].default, sig["coef_step"].default) == (1.0, "grid", 0.05)
    seen = []

    def evaluate(coefs):
        seen.extend(coefs)
        return {"val_forget": [50.0 - c for c in coefs], "val_control": [80.0] * len(coefs)}

    res = search_coef(evaluate, 80.0, threshold=0.95, step=0.05, max_coef=1.0, exhaustive=True)
    assert sorted(set(seen)) == pytest.approx(list(np.linspace(0, 1, 21)))
    assert res.n_evaluated == 21 and res.coef == pytest.approx(1.0) and res.searched[1] == pytest.approx(1.0)


# ---------------------------------------------------------------- CLIP: single-channel images
@pytest.mark.parametrize("make", [lambda: ct.timm_train_transform(32, 9, 2), lambda: ct.clip_train_transform(32)],
                         ids=["randaugment", "open_clip_train"])
def test_single_channel_images_pass_the_full_training_transform(make):
    torch.manual_seed(0)
    img = Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8), mode="L")
    out = make()(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and 0 <= float(out.min()) <= float(out.max()) <= 1


def test_to_rgb_converts_and_resizes_single_channel_only():
    grey = Image.new("L", (28, 28), 7)
    rgb = ct.ToRGB(64)(grey)
    assert rgb.mode == "RGB" and rgb.size == (64, 64) and rgb.getpixel((0, 0)) == (7, 7, 7)
    colour = Image.new("RGB", (28, 28))
    assert ct.ToRGB(64)(colour) is colour


def test_open_clip_training_preprocess_is_a_random_resized_crop_from_0_9():
    crops = [t for t in ct.clip_train_transform(32).transforms if type(t).__name__ == "RandomResizedCrop"]
    assert len(crops) == 1 and tuple(crops[0].scale) == (0.9, 1.0)


def test_sun397_image_folder_accepts_val_for_its_test_images(tmp_path):
    base = tmp_path / "sun397"
    (base / "train").mkdir(parents=True)
    (base / "val").mkdir()
    assert cd._imagefolder_split("sun397", base, "test") == base / "val"
    (base / "test").mkdir()
    assert cd._imagefolder_split("sun397", base, "test") == base / "test"


# ---------------------------------------------------------------- classification: SalUn's recipe
def test_training_defaults_to_fp32():
    assert TrainConfig().amp is False


def test_multistep_schedule_is_multisteplr_stepped_per_epoch():
    f = [lr_factor(s, 182 * 10, "multistep", milestones=(91, 136), gamma=0.1, steps_per_epoch=10)
         for s in (0, 909, 910, 1359, 1360, 1819)]
    assert f == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(schedule="multistep")
    with pytest.raises(ValueError, match="increasing"):
        TrainConfig(schedule="multistep", milestones=(136, 91))


def test_cifar10_original_uses_salun_multistep_schedule(tmp_path):
    cfg = B.cifar10_config(tmp_path)
    o = cfg.original
    assert (o.epochs, o.lr, o.schedule, o.milestones, o.gamma) == (182, 0.1, "multistep", (91, 136), 0.1)
    assert all(tc.schedule == "cosine" for _, tc in B.pool_configs(cfg))  # the pool keeps the paper's cosine


def test_a_last_batch_of_one_image_is_kept():
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(33, 1, 4, 4), torch.randint(0, 3, (33,)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    res = train(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.1), device="cpu", progress=False)
    assert res.metrics["steps"] == 2
    dropped = train(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.1, drop_last=True), device="cpu",
                    progress=False)
    assert dropped.metrics["steps"] == 1


def test_saliency_gradients_come_from_a_seeded_shuffled_loader():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    forget = TensorDataset(torch.rand(10, 1, 4, 4, generator=g), torch.randint(0, 3, (10,), generator=g))
    masks = [unlearn.saliency_mask(model, forget, 0.3, batch_size=3, device="cpu", seed=s) for s in range(6)]
    same = [unlearn.saliency_mask(model, forget, 0.3, batch_size=3, device="cpu", seed=0)]
    assert all(torch.equal(masks[0][k], same[0][k]) for k in masks[0])  # seeded: reproducible
    # the short last batch's images weigh more, so the batch order (the shuffle) changes the ranking
    assert any(not all(torch.equal(m[k], masks[0][k]) for k in m) for m in masks[1:])
    # one batch holding all of D_f: the order cannot matter
    full = [unlearn.saliency_mask(model, forget, 0.3, batch_size=10, device="cpu", seed=s) for s in range(2)]
    assert all(torch.equal(full[0][k], full[1][k]) for k in full[0])


def test_baselines_unlearn_on_the_training_augmentation(monkeypatch, tmp_path):
    from negkit.benchmark import units

    seen = []
    real = units.training_view

    def view(bundle, dataset):
        seen.append(len(dataset))
        return real(bundle, dataset)

    captured = {}

    def fake_method(model, forget, retain, cfg, **kw):
        captured["sizes"] = (len(forget), len(retain))
        return model

    monkeypatch.setattr(units, "training_view", view)
    cfg = B.default_config(smoke=True, scenarios=("class_3",), baselines=("ga",))
    for u in units.training_units(cfg):
        if u.kind == "original":
            units.run_unit(cfg, tmp_path, u, device="cpu")
    monkeypatch.setattr(unlearn, "get", lambda name: fake_method)
    seen.clear()
    unit = next(u for u in units.training_units(cfg) if u.kind == "baseline")
    units.run_unit(cfg, tmp_path, unit, device="cpu")
    assert seen[-2:] == list(captured["sizes"])  # D_f and D_r went through training_view
