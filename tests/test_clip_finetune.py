"""Fine-tuning the image encoder of a tiny CLIP: a few steps, frozen head, resume, pool configs."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import negkit.train
from negkit import io as nkio
from negkit.clip import finetune as cf
from negkit.clip import model as cm
from negkit.clip.datasets import write_digits_imagefolder
from negkit.config import to_dict


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftdata")
    write_digits_imagefolder(root, name="mnist", size=32, per_class=8)
    torch.manual_seed(0)
    backbone = cm.load_clip(cm.TINY_MODEL, None, device="cpu")
    return root, backbone


def _cfg(**kw):
    base = dict(name="m", epochs=2, lr=1e-3, batch_size=16, warmup_steps=2, fused=False)
    return cf.PoolConfig(**{**base, **kw})


def _kw(root, tmp_path):
    return dict(data_root=root, data_kw={"source": "imagefolder"}, head_cache=tmp_path / "heads", device="cpu",
                progress=False)


def test_paper_pool_is_30_randaugment_members():
    pool = cf.paper_pool("cars")
    assert len(pool) == 30 and len({p.name for p in pool}) == 30
    assert {(p.rand_m, p.rand_n) for p in pool} == {(m, n) for m in range(1, 11) for n in range(1, 4)}
    assert all(p.epochs == 70 and p.lr == 1e-5 and p.weight_decay == 0.1 and p.rand_mstd == 0.5 for p in pool)
    (noaug,) = cf.paper_pool("svhn", augment=False, lr=3e-5)
    assert noaug.epochs == 4 and noaug.rand_m is None and noaug.lr == 3e-5
    tc = pool[0].train_config()
    assert (tc.optimizer, tc.weight_decay, tc.warmup_steps, tc.grad_clip, tc.schedule) == ("adamw", 0.1, 500, 1.0, "cosine")
    with pytest.raises(ValueError, match="valid datasets"):
        cf.paper_pool("cifar10")
    with pytest.raises(ValueError, match="unknown PoolConfig key"):
        cf.paper_pool("mnist", learning_rate=1)
    with pytest.raises(ValueError, match="rand_m and rand_n"):
        cf.PoolConfig(rand_m=3)
    assert cf.PoolConfig(batch_size=128, grad_accum=4).train_config().batch_size == 32
    # the reference's defaults: fp32, attention as the release (frozen in standard mode), timm's crop + flip +
    # RandAugment, standard fine-tuning
    assert (pool[0].precision, pool[0].train_attention, pool[0].augment, pool[0].finetuning_mode) == (
        "fp32", None, "timm", "standard")
    assert tc.amp is False and cf.PoolConfig(precision="bf16").train_config().amp is True
    for field, bad in [("precision", "fp16"), ("augment", "mixup"), ("finetuning_mode", "tangent")]:
        with pytest.raises(ValueError, match=f"unknown {field} '{bad}'"):
            cf.PoolConfig(**{field: bad})


def test_finetune_changes_only_the_image_encoder(setup, tmp_path):
    root, backbone = setup
    before = backbone.visual_state_dict()
    text_before = backbone.model.token_embedding.weight.clone()
    path = cf.finetune(backbone, "mnist", _cfg(epochs=1, rand_m=5, rand_n=2), out_dir=tmp_path / "m",
                       **_kw(root, tmp_path))
    sd = nkio.load_state_dict(path)
    assert set(sd) == set(before)  # keys of model.visual: what task vectors are made of
    assert any(not torch.equal(sd[k], before[k]) for k in sd)
    # the backbone itself is untouched (its encoder was copied)
    assert all(torch.equal(v, backbone.model.visual.state_dict()[k]) for k, v in before.items())
    assert torch.equal(text_before, backbone.model.token_embedding.weight)
    saved = nkio.load_json(tmp_path / "m" / "pool_config.json")
    assert saved["rand_m"] == 5 and saved["dataset"] == "mnist" and saved["model"] == backbone.name
    # done: a second call returns the file without training
    mtime = path.stat().st_mtime_ns
    assert cf.finetune(backbone, "mnist", _cfg(epochs=1, rand_m=5, rand_n=2), out_dir=tmp_path / "m",
                       **_kw(root, tmp_path)) == path
    assert path.stat().st_mtime_ns == mtime


def test_resume_after_interruption_gives_the_same_weights(setup, tmp_path, monkeypatch):
    root, backbone = setup
    ref = nkio.load_state_dict(cf.finetune(backbone, "mnist", _cfg(), out_dir=tmp_path / "ref", **_kw(root, tmp_path)))

    real_step, calls = negkit.train._optimizer_step, {"n": 0}
    steps_per_epoch = 4  # 54 training images, batch 16

    def crash_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 2:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(negkit.train, "_optimizer_step", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        cf.finetune(backbone, "mnist", _cfg(), out_dir=tmp_path / "run", **_kw(root, tmp_path))
    assert (tmp_path / "run" / "train" / negkit.train.CHECKPOINT).exists()
    assert not (tmp_path / "run" / cf.VISUAL_FILE).exists()
    monkeypatch.setattr(negkit.train, "_optimizer_step", real_step)
    resumed = nkio.load_state_dict(cf.finetune(backbone, "mnist", _cfg(), out_dir=tmp_path / "run",
                                               **_kw(root, tmp_path)))
    for k in ref:
        torch.testing.assert_close(resumed[k], ref[k], rtol=0, atol=0)
    history = nkio.load_json(tmp_path / "run" / "train" / "history.json")
    assert [h["epoch"] for h in history] == [1, 2]


def test_finetune_pool_names_folders(setup, tmp_path):
    root, backbone = setup
    pool = [to_dict(_cfg(name="a", epochs=1)), _cfg(name="b", epochs=1, rand_m=1, rand_n=1)]
    paths = cf.finetune_pool(backbone, "mnist", pool, out_dir=tmp_path / "pool", **_kw(root, tmp_path))
    assert list(paths) == ["a", "b"] and all(p.parent.name == n for n, p in paths.items())
    with pytest.raises(ValueError, match="unique"):
        cf.finetune_pool(backbone, "mnist", [_cfg(name="a"), _cfg(name="a")], out_dir=tmp_path / "x")


def _attention(keys):
    return {k for k in keys if ".attn.in_proj_" in k or ".attn.out_proj." in k}


@pytest.mark.parametrize("train_attention", [False, True])
def test_attention_frozen_by_default_so_its_task_vector_is_exactly_zero(setup, tmp_path, train_attention):
    root, backbone = setup
    before = backbone.visual_state_dict()
    path = cf.finetune(backbone, "mnist", _cfg(epochs=1, train_attention=train_attention), out_dir=tmp_path / "m",
                       **_kw(root, tmp_path))
    sd = nkio.load_state_dict(path)
    attn = _attention(sd)
    assert len(attn) == 8  # 2 layers x (in_proj weight/bias, out_proj weight/bias)
    assert attn == {f"transformer.resblocks.{i}.attn.{n}" for i in range(2)
                    for n in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")}
    moved = {k for k in sd if not torch.equal(sd[k], before[k])}
    assert (moved & attn == attn) if train_attention else not (moved & attn)
    assert moved - attn  # the rest of the encoder trains either way
    saved = nkio.load_json(tmp_path / "m" / "pool_config.json")
    assert saved["train_attention"] is train_attention


def test_precision_is_recorded_in_the_run_config(setup, tmp_path):
    root, backbone = setup
    path = cf.finetune(backbone, "mnist", _cfg(epochs=1, precision="bf16"), out_dir=tmp_path / "m",
                       **_kw(root, tmp_path))
    saved = nkio.load_json(tmp_path / "m" / "pool_config.json")
    # asked for bf16; on CPU the loop does not autocast, and says so
    assert saved["precision"] == "bf16" and saved["autocast"] == "fp32"
    assert nkio.read_metadata(path)["autocast"] == "fp32"
    assert nkio.load_json(tmp_path / "m" / "train" / "config.json")["amp"] is True


def test_seed_pool_repeats_members_under_each_seed():
    pool = cf.seed_pool(cf.paper_pool("mnist", augment=False), range(3))
    assert [(p.name, p.seed) for p in pool] == [("mnist_noaug_s0", 0), ("mnist_noaug_s1", 1), ("mnist_noaug_s2", 2)]
    assert len({dataclasses.replace(p, name="x", seed=0) for p in pool}) == 1  # nothing else differs
    two = cf.resolve_pool("paper", "svhn", seeds=[7, 8], epochs=1)
    assert len(two) == 60 and two[0].name == "svhn_m1_n1_s7" and two[1].seed == 8 and two[0].epochs == 1
    assert cf.resolve_pool("paper-noaug", "svhn") == cf.paper_pool("svhn", augment=False)
    smoke = cf.resolve_pool("smoke", "mnist", finetuning_mode="linear")
    assert [p.name for p in smoke] == ["m1_n1", "m2_n2", "m3_n3"] and {p.finetuning_mode for p in smoke} == {"linear"}
    with pytest.raises(ValueError, match="distinct"):
        cf.seed_pool([_cfg()], [1, 1])


def test_seed_changes_the_fine_tune(setup, tmp_path):
    root, backbone = setup
    a, b = (nkio.load_state_dict(p) for p in cf.finetune_pool(
        backbone, "mnist", cf.seed_pool([_cfg(epochs=1)], [0, 1]), out_dir=tmp_path / "pool",
        **_kw(root, tmp_path)).values())
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same recipe, other data order


@pytest.mark.parametrize("mode,train_attention,trained", [("standard", None, False), ("linear", None, True),
                                                          ("standard", True, True), ("linear", False, False)])
def test_attention_trains_in_linear_mode_as_the_release_and_is_frozen_in_standard_mode(setup, mode, train_attention,
                                                                                       trained):
    _, backbone = setup
    model = cm.ImageClassifier.from_backbone(backbone, torch.nn.Linear(32, 10), finetuning_mode=mode)
    cfg = cf.PoolConfig(finetuning_mode=mode, train_attention=train_attention)
    names = set(cf.trainable_names(model, cfg))
    attn = {f"visual.{n}" for n in cm.attention_parameter_names(model.visual)}
    assert len(attn) == 8 and (attn <= names if trained else not attn & names)
    assert {n for n, _ in model.named_parameters() if n.startswith("visual.")} - attn <= names
    assert not any(n.startswith("head.") for n in names)


def _grey_digit() -> Image.Image:
    """A 28×28 single-channel image, as torchvision's MNIST returns."""
    return Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8), mode="L")


@pytest.mark.parametrize("member", [{}, {"rand_m": 9, "rand_n": 3}, {"rand_m": 9, "rand_n": 3, "augment": "center"}],
                         ids=["open_clip_train", "timm_randaugment", "center_randaugment"])
def test_every_members_training_transform_takes_single_channel_images(setup, member):
    _, backbone = setup
    tf = cf.PoolConfig(**member).train_transform(backbone)
    for seed in range(8):  # RandAugment draws other ops per seed; timm's fill colours need RGB
        random.seed(seed)
        torch.manual_seed(seed)
        out = tf(_grey_digit())
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) <= float(out.max()) <= 1.0
    if not member:  # Grayscale(3): the three channels are equal
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_plain_members_train_on_open_clips_own_training_preprocess(setup):
    _, backbone = setup
    tf = cf.PoolConfig().train_transform(backbone)
    assert tf.transforms[1:] == backbone.train_preprocess.transforms  # taken from the backbone, not rebuilt
    _, train_pp, _ = open_clip.create_model_and_transforms(cm.TINY_MODEL, pretrained=None)
    assert [repr(t) for t in tf.transforms[1:]] == [repr(t) for t in train_pp.transforms
                                                     if type(t).__name__ != "Normalize"]
    crop = tf.transforms[1]
    assert type(crop).__name__ == "RandomResizedCrop" and tuple(crop.scale) == (0.9, 1.0) and crop.size == (32, 32)
