"""Dataset registry, digits, CIFAR loading (fake on-disk data) and forget splits."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset

import negkit.data as data
from negkit.data import DatasetBundle, TensorImageDataset, labels_of
from negkit.data.splits import ForgetSplit, class_mask, make_forget_split, subset, without_classes


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return data.get("digits")


# --- registry -------------------------------------------------------------------------------

def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"digits", "cifar10", "cifar100"} <= set(data.list_datasets())
    with pytest.raises(ValueError, match="registered datasets are .*digits"):
        data.get("mnistt")


def test_register_dataset_adds_a_builder_and_refuses_a_second_one_under_the_same_name():
    @data.register_dataset("_test_tiny")
    def tiny(root=None, n=4):
        ds = TensorImageDataset(torch.rand(n, 1, 2, 2), [0, 1] * (n // 2))
        return DatasetBundle("_test_tiny", ds, ds, ds, ("a", "b"), (0.5,), (0.5,))

    try:
        bundle = data.get("_test_tiny", n=6)
        assert bundle.num_classes == 2 and bundle.input_shape == (1, 2, 2) and len(bundle.train) == 6
        with pytest.raises(ValueError, match="already registered"):
            data.register_dataset("_test_tiny")(lambda root=None: None)
    finally:
        data._REGISTRY.pop("_test_tiny")


# --- digits ---------------------------------------------------------------------------------

def test_digits_splits_are_disjoint_stratified_and_in_unit_range(digits):
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sizes == [1077, 180, 540] and sum(sizes) == 1797
    assert digits.classnames == tuple(str(i) for i in range(10)) and digits.input_shape == (1, 8, 8)
    img, label = digits.train[0]
    assert img.dtype == torch.float32 and isinstance(label, int)
    every = torch.cat([digits.train.tensors[0], digits.val.tensors[0], digits.test.tensors[0]])
    assert every.min() >= 0 and every.max() <= 1 and every.max() > 0.99
    # No image of one split appears in another (digits has a few exact duplicates, so compare counts).
    assert torch.unique(every.flatten(1), dim=0).shape[0] >= 1797 - 5
    for split in (digits.train, digits.val, digits.test):  # stratified: every class present, ~10 % each
        counts = np.bincount(labels_of(split), minlength=10) / len(split)
        assert counts.min() > 0.08 and counts.max() < 0.12


def test_digits_is_deterministic_per_seed_and_differs_across_seeds(digits):
    again = data.get("digits")
    assert torch.equal(again.train.tensors[0], digits.train.tensors[0])
    other = data.get("digits", seed=1)
    assert not torch.equal(other.train.tensors[0], digits.train.tensors[0])


def test_digits_resizes_repeats_channels_and_computes_train_statistics(digits):
    big = data.get("digits", size=16, channels=3)
    assert big.input_shape == (3, 16, 16) and len(big.mean) == 3 and big.mean[0] == big.mean[2]
    x = digits.train.tensors[0]
    assert digits.mean[0] == pytest.approx(x.mean().item(), rel=1e-5)
    assert digits.std[0] == pytest.approx(x.std().item(), rel=1e-5)
    with pytest.raises(ValueError, match="channels"):
        data.get("digits", channels=2)


# --- labels_of / TensorImageDataset ------------------------------------------------------------

class _NoLabels(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(1, 2, 2), [2, 0, 1][i]


def test_labels_of_follows_targets_subsets_concat_and_falls_back_to_iterating(digits):
    lab = labels_of(digits.train)
    assert lab.dtype == np.int64 and np.array_equal(lab, digits.train.targets.numpy())
    assert np.array_equal(labels_of(subset(digits.train, [5, 1])), lab[[5, 1]])
    assert np.array_equal(labels_of(ConcatDataset([subset(digits.train, [3]), _NoLabels()])),
                          [lab[3], 2, 0, 1])


def test_tensor_image_dataset_converts_uint8_and_validates_shapes():
    ds = TensorImageDataset(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), [1, 0])
    img, label = ds[0]
    assert img.dtype == torch.float32 and img.max() == 1.0 and label == 1
    with pytest.raises(ValueError, match="one label each"):
        TensorImageDataset(torch.rand(2, 3, 4, 4), [1])


# --- CIFAR ----------------------------------------------------------------------------------

def test_cifar_without_data_says_what_to_download_and_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no cifar-10-batches-py/.*cifar-10-python\.tar\.gz.*data_batch_1"):
        data.get("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        data.get("cifar100")


def test_cifar10_loads_torchvision_on_disk_format(tmp_path, write_fake_cifar10):
    files = write_fake_cifar10(tmp_path)

    b = data.get("cifar10", root=tmp_path, val_size=10, seed=0)
    assert (len(b.train), len(b.val), len(b.test)) == (90, 10, 20)
    assert b.classnames[3] == "c3" and b.input_shape == (3, 32, 32) and b.num_classes == 10
    img, label = b.test[1]
    raw = files["test_batch"]["data"][1].reshape(3, 32, 32)
    assert label == 1 and torch.equal(img, torch.from_numpy(raw).float() / 255)
    assert len(set(b.meta["sizes"].values())) == 3
    aug = data.get("cifar10", root=tmp_path, val_size=10, augment=True)
    assert aug.train[0][0].shape == (3, 32, 32) and aug.val.transform is None


# --- forget splits --------------------------------------------------------------------------

def test_random_split_is_seeded_disjoint_and_covers_the_training_set():
    labels = np.arange(200) % 10
    s = make_forget_split(labels, "random", fraction=0.1, seed=3)
    assert s.name == "random_10" and len(s.forget_idx) == 20
    assert np.intersect1d(s.forget_idx, s.retain_idx).size == 0
    assert np.array_equal(np.union1d(s.forget_idx, s.retain_idx), np.arange(200))
    assert np.array_equal(make_forget_split(labels, fraction=0.1, seed=3).forget_idx, s.forget_idx)
    assert not np.array_equal(make_forget_split(labels, fraction=0.1, seed=4).forget_idx, s.forget_idx)
    assert make_forget_split(labels, fraction=0.025).name == "random_2.5"
    d = s.to_dict()
    assert d["name"] == "random_10" and d["forget_idx"] == s.forget_idx.tolist()


def test_class_split_forgets_exactly_the_given_classes():
    labels = np.array([0, 1, 2, 7, 1, 7, 3])
    s = make_forget_split(labels, "class", classes=(7, 1))
    assert s.name == "class_1-7" and s.classes == (1, 7)
    assert s.forget_idx.tolist() == [1, 3, 4, 5] and s.retain_idx.tolist() == [0, 2, 6]
    assert s.fraction == pytest.approx(4 / 7)
    assert class_mask(labels, [3]).tolist() == [False] * 6 + [True]


@pytest.mark.parametrize("kwargs, match", [
    (dict(scenario="random", fraction=0.0), "fraction"),
    (dict(scenario="random", fraction=1.5), "fraction"),
    (dict(scenario="random", fraction=0.01), "empty forget"),
    (dict(scenario="class", classes=(11,)), "unknown class"),
    (dict(scenario="class", classes=(11,), num_classes=12), "empty"),
    (dict(scenario="class", classes=tuple(range(10))), "every class"),
    (dict(scenario="class"), "needs classes"),
    (dict(scenario="random", classes=(1,)), "scenario='class'"),
    (dict(scenario="sharded"), "unknown scenario"),
])
def test_split_errors_name_the_problem(kwargs, match):
    labels = np.arange(20) % 10
    with pytest.raises(ValueError, match=match):
        make_forget_split(labels, **kwargs)


def test_without_classes_drops_forgotten_classes_from_a_test_set(digits):
    kept = without_classes(digits.test, [3])
    lab = labels_of(kept)
    assert 3 not in lab and len(kept) == len(digits.test) - int((labels_of(digits.test) == 3).sum())
    assert isinstance(make_forget_split(labels_of(digits.train), "class", classes=[3]), ForgetSplit)
    with pytest.raises(IndexError):
        subset(digits.test, [len(digits.test)])


def test_clip_tasks_are_registered_without_importing_negkit_clip_first():
    # negkit.data loads the CLIP dataset module on first need, so a notebook can ask for "cars" directly.
    import negkit.data as data

    assert {"cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn", "imagenet"} <= set(data.list_datasets())


# --- MNIST-format IDX datasets (fashion_mnist, mnist, kmnist) ---------------------------------

def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    import gzip
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    head = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if gz else open
    with opener(str(path) + (".gz" if gz else ""), "wb") as fh:
        fh.write(head + array.tobytes())


def _fake_idx(folder, n_train=60, n_test=20, gz=True):
    """Tiny IDX files: image i is filled with the value i % 256, label i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = np.stack([np.full((28, 28), i % 256, np.uint8) for i in range(n)])
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", imgs, gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)


def test_read_idx_reads_header_and_values_and_refuses_a_truncated_file(tmp_path):
    from negkit.data.mnist import read_idx
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", arr, gz=False)
    _write_idx(tmp_path / "b", arr, gz=True)
    assert np.array_equal(read_idx(tmp_path / "a"), arr) and np.array_equal(read_idx(tmp_path / "b.gz"), arr)
    (tmp_path / "c").write_bytes((tmp_path / "a").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"\x1f\x8b\x08\x00rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "d")


@pytest.mark.parametrize("layout,gz", [("torchvision", True), ("flat", False)])
def test_fashion_mnist_reads_both_layouts_and_splits_stratified(tmp_path, layout, gz):
    folder = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    _fake_idx(folder, gz=gz)
    b = data.get("fashion_mnist", root=tmp_path, val_size=10)
    assert (len(b.train), len(b.val), len(b.test)) == (50, 10, 20) and b.input_shape == (1, 28, 28)
    assert b.classnames[0] == "T-shirt/top" and b.num_classes == 10
    assert np.bincount(labels_of(b.val), minlength=10).tolist() == [1] * 10  # stratified
    # Train and val partition the official training set: the pixel value identifies the image.
    ids = [int(round(float(ds[i][0][0, 0, 0]) * 255)) for ds in (b.train, b.val) for i in range(len(ds))]
    assert sorted(ids) == list(range(60))
    img, label = b.test[13]
    assert label == 3 and torch.allclose(img, torch.full((1, 28, 28), 13 / 255))
    again = data.get("fashion_mnist", root=tmp_path, val_size=10)
    assert torch.equal(again.val.tensors[0], b.val.tensors[0])  # seeded
    other = data.get("fashion_mnist", root=tmp_path, val_size=10, seed=1)
    assert not torch.equal(other.val.tensors[0], b.val.tensors[0])


def test_fashion_mnist_options_subset_resize_channels(tmp_path):
    _fake_idx(tmp_path / "FashionMNIST" / "raw")
    b = data.get("fashion_mnist", root=tmp_path, val_size=10, train_size=20, size=14, channels=3)
    assert len(b.train) == 20 and b.input_shape == (3, 14, 14) and b.meta["sizes"]["train"] == 20
    assert np.bincount(labels_of(b.train), minlength=10).tolist() == [2] * 10
    assert torch.allclose(b.test[7][0], torch.full((3, 14, 14), 7 / 255))  # resizing a flat image keeps it
    with pytest.raises(ValueError, match="train_size"):
        data.get("fashion_mnist", root=tmp_path, val_size=10, train_size=51)
    with pytest.raises(ValueError, match="val_size"):
        data.get("fashion_mnist", root=tmp_path, val_size=60)


def test_mnist_format_datasets_explain_missing_files(tmp_path):
    from negkit.data.mnist import idx_bundle
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*FashionMNIST\(root="):
        data.get("fashion_mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"torchvision.datasets.KMNIST"):
        data.get("kmnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="pass root="):
        data.get("kmnist")
    _fake_idx(tmp_path / "MNIST" / "raw", gz=False)
    assert len(idx_bundle("mnist", root=tmp_path, val_size=10).test) == 20
    with pytest.raises(ValueError, match="valid names"):
        idx_bundle("emnist", root=tmp_path)
    assert {"fashion_mnist", "kmnist"} <= set(data.list_datasets())
