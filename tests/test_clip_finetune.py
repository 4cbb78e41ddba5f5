"""Fine-tuning the image encoder of a tiny CLIP: a few steps, frozen head, resume, pool configs."""
from __future__ import annotations

import pytest
import torch

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
