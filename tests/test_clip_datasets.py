"""CLIP dataset registry entries: ImageFolder path end to end, split rules, clear missing-data errors."""
from __future__ import annotations

import builtins
import random

import numpy as np
import pytest
import torch

import negkit.data
from negkit.clip import datasets as cd
from negkit.clip import transforms as ct


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipdata")
    cd.write_digits_imagefolder(root, name="mnist", size=20, per_class=20)
    return root


def test_all_nine_registered():
    assert set(cd.CLIP_DATASETS) <= set(negkit.data.list_datasets())
    assert len(cd.CLIP_DATASETS) == 9


def test_imagefolder_bundle(digits_root):
    b = negkit.data.get("mnist", root=digits_root, source="imagefolder", image_size=32)
    assert b.classnames == tuple(str(i) for i in range(10))
    # 20 per class, 6 test per class -> 140 train images, 10 % held out as mnistVal
    assert b.meta["sizes"] == {"train": 126, "val": 14, "test": 60}
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1 and isinstance(y, int)
    assert b.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    # train and val are disjoint parts of the same training images
    assert not set(b.train.indices) & set(b.val.indices)
    assert set(b.train.indices) | set(b.val.indices) == set(range(140))
    # the split is seeded: same seed same val, another seed another val
    again = negkit.data.get("mnist", root=digits_root / "mnist", source="imagefolder", image_size=32)
    assert again.val.indices == b.val.indices
    other = negkit.data.get("mnist", root=digits_root, source="imagefolder", image_size=32, seed=1)
    assert other.val.indices != b.val.indices


def test_holdout_split_cap():
    rest, val = cd.holdout_split(1_281_167, 0.1, 5000, seed=0)
    assert len(val) == 5000 and len(rest) == 1_276_167 and not np.intersect1d(rest, val).size
    with pytest.raises(ValueError, match="cannot hold out"):
        cd.holdout_split(5, 0.01, 5000, seed=0)


def test_randaugment_changes_training_images_only(digits_root):
    train_tf = ct.randaugment_transform(ct.clip_transform(32), magnitude=9, num_ops=3)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names.index("RandAugment") < names.index("MaybeToTensor")
    torch.manual_seed(0)
    b = negkit.data.get("mnist", root=digits_root, source="imagefolder", image_size=32, train_transform=train_tf)
    plain = b.train.dataset.__class__(b.train.dataset.root, transform=ct.clip_transform(32))
    i, v = b.train.indices[0], b.val.indices[0]
    assert any(not torch.equal(b.train[0][0], plain[i][0]) for _ in range(5))
    assert torch.equal(b.val[0][0], plain[v][0])  # {dataset}Val is never augmented


def test_missing_data_errors_say_what_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cars not found at root=.*source='torchvision'.*Stanford Cars"):
        negkit.data.get("cars", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"folder .*dtd.*train does not exist"):
        negkit.data.get("dtd", root=tmp_path, source="imagefolder")
    with pytest.raises(FileNotFoundError, match="no root given"):
        negkit.data.get("svhn")
    with pytest.raises(FileNotFoundError, match=r"resisc45-train.txt does not exist.*NWPU-RESISC45"):
        negkit.data.get("resisc45", root=tmp_path)
    with pytest.raises(ValueError, match="unknown source 'web'.*torchvision"):
        negkit.data.get("mnist", root=tmp_path, source="web")


def test_hf_source_without_package_says_how_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="pip install datasets"):
        negkit.data.get("eurosat", root=tmp_path, source="hf")


def test_randaugment_low_magnitude_posterize_gives_black_image_not_error():
    from PIL import Image

    img = Image.new("RGB", (8, 8), (200, 100, 50))
    assert ct._posterize(img, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert ct._posterize(img, 8) is img
    assert ct._posterize(img, 1).getpixel((0, 0)) == (128, 0, 0)
    tf = ct.randaugment_transform(ct.clip_transform(16), magnitude=1, num_ops=3)
    ra = next(t for t in tf.transforms if type(t).__name__ == "RandAugment")
    assert sum(op.aug_fn is ct._posterize for op in ra.ops) == 1
    random.seed(0)
    np.random.seed(0)
    for _ in range(60):  # Posterize (0 bits at m=1) is drawn in about one call in ten
        assert tf(img).shape == (3, 16, 16)


def test_hf_source_reads_the_local_cache_offline(tmp_path, monkeypatch):
    """A stand-in `datasets` module records how load_dataset is called (the real package is optional)."""
    import sys
    import types

    import huggingface_hub.constants as hub

    calls, before = [], hub.HF_HUB_OFFLINE

    class FakeSplit(list):
        features = {"label": types.SimpleNamespace(names=["cat", "dog"])}

        def __getitem__(self, key):
            if key == "label":
                return [row["label"] for row in self]
            return list.__getitem__(self, key)

    def load_dataset(hid, config, split, cache_dir):
        calls.append((hid, config, split, cache_dir, hub.HF_HUB_OFFLINE, fake.config.HF_DATASETS_OFFLINE))
        if hid == "missing/id":
            raise FileNotFoundError("not in cache")
        from PIL import Image
        return FakeSplit({"image": Image.new("L", (20, 20), 255), "label": i % 2} for i in range(20))

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset
    fake.config = types.SimpleNamespace(HF_DATASETS_OFFLINE=False)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    b = negkit.data.get("svhn", root=tmp_path, source="hf", image_size=16)
    assert b.classnames == ("cat", "dog") and b.meta["sizes"] == {"train": 18, "val": 2, "test": 20}
    x, y = b.test[0]
    assert x.shape == (3, 16, 16) and float(x.min()) == 1.0 and y == 0
    assert calls[0][:4] == ("ufldl-stanford/svhn", "cropped_digits", "train", str(tmp_path))
    assert all(c[4] is True and c[5] is True for c in calls)  # offline while loading ...
    assert hub.HF_HUB_OFFLINE == before and fake.config.HF_DATASETS_OFFLINE is False  # ... and restored after
    negkit.data.get("svhn", root=tmp_path, source="hf", image_size=16, download=True)
    assert calls[-1][4] == before and calls[-1][5] is False  # download=True: no offline switch
    with pytest.raises(FileNotFoundError, match="could not load 'missing/id'.*download=True"):
        negkit.data.get("svhn", root=tmp_path, source="hf", hf_id="missing/id")


def test_training_images_scanned_once_without_augmentation(digits_root, monkeypatch):
    calls = []
    load = cd._load
    monkeypatch.setattr(cd, "_load", lambda name, source, root, train, *a: calls.append(train) or load(
        name, source, root, train, *a))
    b = negkit.data.get("mnist", root=digits_root, source="imagefolder", image_size=32)
    assert calls == ["train", "test"]  # train folder once (train and val share it), test folder once
    assert b.train.dataset is b.val.dataset
    calls.clear()
    train_tf = ct.randaugment_transform(ct.clip_transform(32), magnitude=1, num_ops=1)
    b = negkit.data.get("mnist", root=digits_root, source="imagefolder", image_size=32, train_transform=train_tf)
    assert calls == ["train", "train", "test"] and b.train.dataset is not b.val.dataset


def test_reference_val_split_is_task_vectors_random_split():
    from torch.utils.data import random_split

    from negkit.data.splits import reference_val_split

    train, val = reference_val_split(60_000)  # MNIST: 6,000 capped at 5,000
    assert (len(train), len(val)) == (55_000, 5_000) and train[0] == 36044
    assert not np.intersect1d(train, val).size and len(np.union1d(train, val)) == 60_000
    for n, fraction, cap, seed in [(57, 0.1, 5000, 0), (140, 0.25, 20, 3)]:
        v = min(int(fraction * n), cap)  # floor, as the reference: int(len * val_fraction)
        ref = random_split(range(n), [n - v, v], generator=torch.Generator().manual_seed(seed))
        got = reference_val_split(n, fraction, cap, seed)
        assert got[0].tolist() == ref[0].indices and got[1].tolist() == ref[1].indices
    assert len(reference_val_split(19, 0.1)[1]) == 1  # floor(1.9) = 1, where round() would hold out 2
    with pytest.raises(ValueError, match="cannot hold out 0 of 9"):
        reference_val_split(9)


def _folder_images(folder, per_class, names=None):
    from PIL import Image

    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = names(c, i) if names else f"{c}{i}.png"
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / c / name)


def test_reference_layouts_eurosat_dtd_resisc45(tmp_path):
    kw = dict(image_size=8)
    # EuroSAT: EuroSAT_splits/{train,val,test}; validation is its own folder and all of train fine-tunes.
    for split, k in [("train", 5), ("val", 2), ("test", 3)]:
        _folder_images(tmp_path / "EuroSAT_splits" / split, k)
    b = negkit.data.get("eurosat", root=tmp_path, source="imagefolder", **kw)
    assert b.meta["sizes"] == {"train": 10, "val": 4, "test": 6}
    assert b.val.root.endswith("EuroSAT_splits/val") and "val folder" in b.meta["val"]
    # DTD: the reference tests on dtd/val (a dtd/test folder is not read).
    for split, k in [("train", 10), ("val", 3), ("test", 4)]:
        _folder_images(tmp_path / "dtd" / split, k)
    b = negkit.data.get("dtd", root=tmp_path, source="imagefolder", **kw)
    assert b.test.root.endswith("dtd/val") and b.meta["sizes"] == {"train": 18, "val": 2, "test": 6}
    # RESISC45: the images named in resisc45-{train,test}.txt, the rest of the folder ignored.
    res = tmp_path / "resisc45"
    _folder_images(res / "NWPU-RESISC45", 12, names=lambda c, i: f"{c}_{i:03d}.jpg")
    (res / "resisc45-train.txt").write_text("".join(f"{c}_{i:03d}.jpg\n" for c in "ab" for i in range(10)))
    (res / "resisc45-test.txt").write_text("a_010.jpg\nb_011.jpg\n")
    b = negkit.data.get("resisc45", root=tmp_path, **kw)
    assert b.meta["sizes"] == {"train": 18, "val": 2, "test": 2} and b.classnames == ("a", "b")
    assert [p.rsplit("/", 1)[1] for p, _ in b.test.samples] == ["a_010.jpg", "b_011.jpg"]


def test_timm_train_transform_is_the_reference_recipe():
    from PIL import Image

    tf = ct.timm_train_transform(16, magnitude=9, num_ops=2)
    to_rgb, rrc, flip, ra = tf.transforms[:4]
    assert isinstance(to_rgb, ct.ToRGB)  # single-channel images become RGB first, as in the release
    assert type(rrc).__name__ == "RandomResizedCropAndInterpolation" and rrc.scale == (0.08, 1.0)
    assert rrc.size == (16, 16) and len(rrc.interpolation) == 2  # bilinear or bicubic, drawn per image
    assert isinstance(flip, ct.T.RandomHorizontalFlip) and flip.p == 0.5
    assert type(ra).__name__ == "RandAugment" and ra.num_layers == 2
    assert {op.magnitude for op in ra.ops} == {9} and {op.magnitude_std for op in ra.ops} == {0.5}
    assert sum(op.aug_fn is ct._posterize for op in ra.ops) == 1
    assert not any(isinstance(t, ct.T.Normalize) for t in tf.transforms)  # the model normalises
    # RandAugment fills uncovered pixels with the CLIP mean (0-255), not ImageNet's
    assert ra.ops[0].hparams["img_mean"] == (123, 117, 104)
    random.seed(0)
    torch.manual_seed(0)
    img = Image.new("RGB", (24, 20), (255, 255, 255))
    outs = [tf(img) for _ in range(8)]
    assert all(x.dtype == torch.float32 and x.shape == (3, 16, 16) for x in outs)
    assert all(0.0 <= float(x.min()) and float(x.max()) <= 1.0 for x in outs)
    assert any(float(x.max()) == 1.0 for x in outs)  # 255 -> 1.0: scaled like ToTensor, not left at 255


def test_single_channel_datasets_reach_the_transforms_as_L_images_from_every_source(digits_root, tmp_path):
    """MNIST is single-channel whatever the files hold (torchvision's MNIST class gives "L" images);
    an RGB dataset is RGB. The training transform's ToRGB then makes 3 channels at the model's size."""
    mode = negkit.data.get("mnist", root=digits_root, source="imagefolder", transform=lambda img: img.mode)
    assert {mode.train[i][0] for i in range(5)} == {mode.test[0][0]} == {"L"}  # the files are RGB PNGs
    cd.write_digits_imagefolder(tmp_path, name="svhn", size=20, per_class=4, invert=True)
    assert negkit.data.get("svhn", root=tmp_path, source="imagefolder", transform=lambda img: img.mode).test[0][0] == "RGB"
    b = negkit.data.get("mnist", root=digits_root, source="imagefolder", image_size=32,
                        train_transform=ct.timm_train_transform(32, 9, 3))
    for seed in range(4):
        random.seed(seed)
        x, _ = b.train[seed]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert b.test[0][0].shape == (3, 32, 32)  # the evaluation transform converts to RGB itself


def test_to_rgb_keeps_the_colours_of_palette_images():
    from PIL import Image

    pal = Image.new("RGB", (8, 8), (200, 10, 30)).convert("P")
    out = ct.ToRGB(16)(pal)
    colour = pal.convert("RGB").getpixel((0, 0))
    assert len(set(colour)) == 3 and out.mode == "RGB" and out.size == (8, 8) and out.getpixel((0, 0)) == colour


def test_sun397_image_folder_logs_and_records_which_folder_holds_its_test_images(tmp_path, caplog):
    base = tmp_path / "sun397"
    for split in ("train", "val"):
        cd.write_digits_imagefolder(tmp_path, name="sun397", size=20, per_class=3, test_split=split)
    assert not (base / "test").exists()
    with caplog.at_level("INFO", logger="negkit.clip.datasets"):
        b = negkit.data.get("sun397", root=tmp_path, source="imagefolder", image_size=16)
    assert b.meta["test"] == "the sun397/val folder" and any("sun397/val" in r.getMessage() for r in caplog.records)
    assert len(b.test) == len(list((base / "val").rglob("*.png")))
