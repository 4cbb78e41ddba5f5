"""CIFAR bundles: SalUn's stratified validation split, clean splits, augmentation only in the training view."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from negkit import data
from negkit.data import labels_of
from negkit.data.augment import Augmented, random_crop_flip, training_view
from negkit.data.cifar import stratified_val_split
from negkit.data.splits import subset


@pytest.fixture()
def fake_cifar10(tmp_path, write_fake_cifar10):
    """torchvision's CIFAR-10 layout with 5 × 30 training images (labels 0..9, 15 of each) and 20 test images."""
    files = write_fake_cifar10(tmp_path, n_train=30, n_test=20)
    train_images = np.concatenate([files[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    return tmp_path, train_images.reshape(-1, 3, 32, 32)


def test_stratified_val_split_draws_class_by_class():
    labels = np.array([0, 1, 2] * 10 + [2] * 10)  # 10, 10 and 20 images
    train_idx, val_idx = stratified_val_split(labels, seed=0)
    # ⌊10 %⌋ of each class: 1, 1, 2
    assert np.bincount(labels[val_idx]).tolist() == [1, 1, 2]
    assert np.array_equal(np.union1d(train_idx, val_idx), np.arange(40)) and not np.intersect1d(train_idx, val_idx).size
    # the draw: one RandomState(seed), class 0 first, then 1, then 2
    rng = np.random.RandomState(0)
    want = [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in ((0, 1), (1, 1), (2, 2))]
    assert val_idx.tolist() == sorted(np.concatenate(want).tolist())
    assert stratified_val_split(labels, per_class=3, seed=0)[1].size == 9
    with pytest.raises(ValueError, match="class 0 has 10 images"):
        stratified_val_split(labels, per_class=10)


def test_cifar10_val_is_stratified_and_every_split_clean(fake_cifar10):
    root, raw = fake_cifar10
    b = data.get("cifar10", root=root)
    # 150 training images, 15 per class: ⌊1.5⌋ = 1 per class held out
    assert (len(b.train), len(b.val), len(b.test)) == (140, 10, 20)
    assert sorted(labels_of(b.val).tolist()) == list(range(10))
    assert "train_augmentation" not in b.meta and training_view(b, b.train) is b.train
    assert data.get("cifar10", root=root, val_size=20).meta["sizes"]["val"] == 20
    with pytest.raises(ValueError, match="multiple of the 10 classes"):
        data.get("cifar10", root=root, val_size=15)
    # augment=True: the splits are the same clean images; only the training view is augmented
    a = data.get("cifar10", root=root, augment=True)
    assert a.meta["train_augmentation"] == "random_crop_flip"
    _, val_idx = stratified_val_split(np.array(list(range(10)) * 15), seed=1)
    train_idx = np.setdiff1d(np.arange(150), val_idx)
    for i in (0, 7, 139):
        assert torch.equal(a.train[i][0], torch.from_numpy(raw[train_idx[i]]).float() / 255)
        assert torch.equal(a.train[i][0], b.train[i][0])
    forget = subset(a.train, [0, 1, 2, 3])
    view = training_view(a, forget)
    assert isinstance(view, Augmented) and np.array_equal(labels_of(view), labels_of(forget))
    torch.manual_seed(0)
    shown = torch.stack([view[i][0] for i in range(4)])
    assert shown.shape == (4, 3, 32, 32) and not torch.equal(shown, torch.stack([forget[i][0] for i in range(4)]))


def test_cifar10_default_split_is_salun_cifar10_dataloaders_default_seed_1(fake_cifar10):
    """SalUn's Original trains and validates on cifar10_dataloaders(seed=1): RandomState(1), class by class,
    rng.choice(class indices, int(0.1 * n), replace=False); the rest (in index order) trains."""
    root, _ = fake_cifar10
    labels = np.array(list(range(10)) * 15)
    rng = np.random.RandomState(1)
    ref_val = np.hstack([rng.choice(np.where(labels == c)[0], int(0.1 * 15), replace=False) for c in range(10)])
    ref_train = sorted(set(range(150)) - set(ref_val.tolist()))
    b = data.get("cifar10", root=root)
    assert b.meta["seed"] == 1 and b.meta["sizes"] == {"train": 140, "val": 10, "test": 20}
    train_idx, val_idx = stratified_val_split(labels)
    assert val_idx.tolist() == sorted(ref_val.tolist()) and train_idx.tolist() == ref_train
    assert labels_of(b.val).tolist() == labels[val_idx].tolist()
    assert stratified_val_split(labels, seed=0)[1].tolist() != val_idx.tolist()  # the seed matters here


def test_random_crop_flip_by_hand():
    img = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3)
    torch.manual_seed(1)
    out = random_crop_flip(img, padding=1)
    torch.manual_seed(1)
    top, left = torch.randint(0, 3, (2,)).tolist()
    flip = bool(torch.rand(()) < 0.5)
    want = F.pad(img, (1, 1, 1, 1))[:, top:top + 3, left:left + 3]
    assert torch.equal(out, want.flip(-1) if flip else want)
    # over many draws: every offset and both flips occur, nothing else
    seen = set()
    for s in range(200):
        torch.manual_seed(s)
        o = random_crop_flip(img, padding=1)
        seen.add(next((t, l, f) for t in range(3) for l in range(3) for f in (False, True)
                      if torch.equal(o, (lambda c: c.flip(-1) if f else c)(F.pad(img, (1,) * 4)[:, t:t + 3, l:l + 3]))))
    assert len(seen) == 18


def test_cifar10_config_trains_original_and_retrain_augmented_and_measures_clean(fake_cifar10, tmp_path,
                                                                                 monkeypatch):
    from negkit.benchmark import recipes as brecipes
    from negkit.benchmark import setup as bsetup

    root, _ = fake_cifar10
    cfg = brecipes.cifar10_config(str(root))
    assert cfg.data_options == {"augment": True}
    assert cfg.baseline_configs["rl"]["lr"] == cfg.baseline_configs["salun"]["lr"] == 0.013
    small = brecipes.cifar10_config(str(root), model="small_resnet", model_options={"widths": (4, 8)},
                                    original={"epochs": 1, "batch_size": 32}, scenarios=("random_10",))
    trained = []
    real_train = bsetup.train

    def spy(model, dataset, *args, **kwargs):
        trained.append(dataset)
        return real_train(model, dataset, *args, **kwargs)

    monkeypatch.setattr(bsetup, "train", spy)
    s = bsetup.prepare(small, tmp_path / "run", "random_10", device="cpu")
    assert len(trained) == 2 and all(isinstance(d, Augmented) for d in trained)
    assert len(trained[0]) == len(s.bundle.train) and len(trained[1]) == len(s.retain)
    assert not isinstance(s.forget, Augmented) and not isinstance(s.retain, Augmented)  # metrics: clean images


def test_cifar10_original_is_salun_multisteplr_and_cosine_stays_an_option(tmp_path):
    from negkit.benchmark import recipes as brecipes

    o = brecipes.cifar10_config(str(tmp_path)).original
    assert (o.epochs, o.batch_size, o.lr, o.weight_decay, o.momentum, o.optimizer) == (182, 256, 0.1, 5e-4, 0.9, "sgd")
    assert (o.schedule, o.milestones, o.gamma, o.warmup_steps) == ("multistep", (91, 136), 0.1, 0)
    cos = brecipes.cifar10_config(str(tmp_path), original={"schedule": "cosine"}).original
    assert (cos.schedule, cos.epochs, cos.lr, cos.batch_size) == ("cosine", 182, 0.1, 256)  # only the schedule changes
