"""The ready benchmark recipes: digits (the default), Fashion-MNIST and ResNet-18 on CIFAR-10.

Each recipe is a function returning a :class:`~negkit.benchmark.config.BenchmarkConfig`
(the config machinery lives in :mod:`negkit.benchmark.config`); :func:`dataset_config`
picks one by dataset name and :func:`list_configs` names them.

The digits default runs three seeds inside ``make demo``'s budget with a
2 × 2 × 2 corner of the paper's pool and the epochs divided by 10 ({4, 6} × weight decay
{1e-4, 1e-5} × label smoothing {0, 0.1}): the digits forget set (~110 images, 4 batches
of 32) is ~40× smaller than CIFAR-10's. Its weight-decay pairs are near-duplicates
(:func:`negkit.analysis.distinct_members` finds 4 distinct vectors among the 8), which
the full 27-member grid hides in a bigger heatmap.
"""
from __future__ import annotations

from typing import Any

from negkit import unlearn
from negkit.benchmark.config import BenchmarkConfig, make_config, on_top
from negkit.config import to_dict

__all__ = ["default_config", "cifar10_config", "fashion_mnist_config", "dataset_config", "list_configs",
           "DIGITS_BASELINE_GRID", "FASHION_BASELINE_GRID", "FASHION_QUICK_BASELINE_GRID", "FASHION_BASELINE_EPOCHS",
           "FASHION_MERGES"]


def default_config(*, smoke: bool = False, **overrides: Any) -> BenchmarkConfig:
    """The digits default, or its shrunken smoke version for CI (``smoke=True``).

    Default (``make demo``): digits at native 8×8, small ResNet, original/Retrain 10
    epochs, an 8-member corner of the paper's pool with epochs /10 (module docstring),
    λ searched from 0..1 by 0.05
    (the range doubling up to 8 while control holds), both scenarios, all four merges
    and five baselines, each baseline's setting chosen on validation from
    :data:`DIGITS_BASELINE_GRID` (RL and SalUn 3 epochs); seeds 0, 1, 2. Smoke: one seed, 4 pool members
    (epochs {1, 2} × label smoothing {0, 0.1}), λ step 0.25, 3 epochs for
    Original/Retrain, one-epoch baselines without a grid.

    ``dataset=`` naming another dataset with a ready config (``"fashion_mnist"``) returns
    :func:`dataset_config` of that dataset, so a notebook's ``dataset`` parameter picks
    its recipe.
    """
    if overrides.get("dataset", "digits") != "digits":
        return dataset_config(overrides.pop("dataset"), smoke=smoke, **overrides)
    if smoke:
        smoke_values: dict[str, Any] = dict(
            seeds=(0,), original={"epochs": 3}, pool={"epochs": (1, 2), "weight_decays": (1e-4,),
                                                      "label_smoothings": (0.0, 0.1)},
            coefs=(0.0, 0.25, 0.5, 0.75, 1.0), coef_step=0.25,
            baseline_configs={m: {"epochs": 1} for m in unlearn.list_methods()}, smoke=True,
        )
        return make_config(on_top(smoke_values, overrides))
    digits: dict[str, Any] = dict(
        original={"epochs": 10}, baseline_grid=DIGITS_BASELINE_GRID,
        baseline_configs={"rl": {"epochs": 3}, "salun": {"epochs": 3}},  # each epoch passes D_f and D_r
        pool={"epochs": (4, 6), "weight_decays": (1e-4, 1e-5), "label_smoothings": (0.0, 0.1)})
    return make_config(on_top(digits, overrides))


#: Baseline settings tried on digits: the learning rate around :func:`negkit.unlearn.default_config`'s
#: (FT and ℓ1-sparse only fine-tune on D_r and forget nothing at its default).
DIGITS_BASELINE_GRID: dict[str, dict[str, tuple]] = {
    "ft": {"lr": (0.02, 0.1)},
    "ga": {"lr": (1e-3, 3e-3)},
    "rl": {"lr": (0.01, 0.05)},
    "l1_sparse": {"lr": (0.02, 0.1)},
    "salun": {"lr": (0.01, 0.05)},
}

#: Baseline settings tried on the quick Fashion-MNIST config (two to four candidates each).
FASHION_QUICK_BASELINE_GRID: dict[str, dict[str, tuple]] = {
    "ft": {"lr": (0.02, 0.1), "epochs": (2, 4)},
    "ga": {"lr": (1e-4, 1e-3), "epochs": (2, 5)},
    "rl": {"lr": (0.005, 0.02)},
    "l1_sparse": {"lr": (0.02, 0.1), "epochs": (2, 4)},
    "salun": {"lr": (0.005, 0.02)},
}

#: Baseline settings tried on the memorising Fashion-MNIST config: two learning rates each
#: (the same number of candidates for every baseline), epochs fixed in ``baseline_configs``.
FASHION_BASELINE_GRID: dict[str, dict[str, tuple]] = {
    "ft": {"lr": (0.02, 0.1)},
    "ga": {"lr": (1e-4, 1e-3)},
    "rl": {"lr": (0.005, 0.02)},
    "l1_sparse": {"lr": (0.02, 0.1)},
    "salun": {"lr": (0.005, 0.02)},
    # The paper's table's other three and the toolkits' three, two candidates each from their GRIDS.
    "iu": {"alpha": (1.0, 10.0)},
    "be": {"lr": (1e-3, 1e-2)},
    "bs": {"lr": (1e-3, 1e-2)},
    "neggrad_plus": {"beta": (0.95, 0.99)},
    "scrub": {"lr": (5e-3, 2e-2)},
    "ssd": {"alpha": (1.0, 10.0)},
}
#: Epochs of each trained baseline on the memorising Fashion-MNIST config (each epoch passes D_r, or
#: D_f for GA, BE and BS; D_r ∪ D_f for NegGrad+; SCRUB's min steps pass D_r). IU and SSD take no epochs.
FASHION_BASELINE_EPOCHS: dict[str, int] = {"ft": 3, "ga": 3, "rl": 2, "l1_sparse": 3, "salun": 2,
                                           "be": 10, "bs": 10, "neggrad_plus": 3, "scrub": 3}


#: Merge rules negated on the memorising Fashion-MNIST config: the paper's four and the toolkits' four.
FASHION_MERGES = ("mean", "ties", "magmax", "negmerge", "dare", "breadcrumbs", "consensus", "tsv")


def fashion_mnist_config(*, full: bool = False, quick: bool = False, data_root: str | None = None,
                         **overrides: Any) -> BenchmarkConfig:
    """Fashion-MNIST in the paper's regime: the Original memorises its training set (2 CPU cores).

    Default (``make bench-fashion``): 28×28 images (no resize), a stratified 12,000-image
    training subset (random 10 % forgetting: D_f 1,200 images), a stratified 2,000-image
    validation split, the official 10,000 test images; the small ResNet at widths
    (8, 16, 32); Original/Retrain 30 epochs of SGD (lr 0.1, batch 64, no weight decay,
    cosine), which fit the training set (measured: 99.3 % training accuracy, 89.5 % test:
    the Original's UA on D_f is below 1 % while Retrain errs on ~10 % of it, as on unseen
    data); a 6-member pool (epochs {2, 4} × label smoothing {0, 0.05, 0.1}, weight decay
    5e-5); both scenarios (random 10 %, class 0 — T-shirt/top) and both λ rules; the paper's
    four merges and DARE, Breadcrumbs, consensus masks and TSV-M (:data:`FASHION_MERGES`); eleven
    baselines (the classic five, IU, BE, BS, NegGrad+, SCRUB, SSD), each tuned on validation over two
    candidates (:data:`FASHION_BASELINE_GRID`, epochs :data:`FASHION_BASELINE_EPOCHS`); forget
    vectors with the reference's defaults per scenario (random: four settings
    lr {0.01, 0.1} × β {1, 5}, class-wise: its own defaults, 10 epochs; δ kept after every
    epoch, all on clean images since the Original trained on clean ones), chosen on
    validation by each rule; seeds 0–4.

    Quick (``quick=True``, smoke runs and CI): 14×14 images, 5,000 training images, 8
    Original epochs with weight decay 5e-4 — the Original does *not* memorise there
    (UA on D_f ≈ 9 % against Retrain's ≈ 14 %), which makes it the contrast case —
    a 9-member pool, :data:`FASHION_QUICK_BASELINE_GRID`, seeds 0–2, forget vectors as above.

    Full (``full=True``, e.g. ``device="cuda"``): all 55,000 training images at 28×28,
    widths (16, 32, 64), Original/Retrain 30 epochs and the paper's 27-member pool
    (epochs {10, 15, 20}, the paper's three weight decays and label smoothings).

    Args:
        full: The whole training set and the paper-sized pool.
        quick: The 14×14, non-memorising configuration.
        data_root: Folder of the IDX files (None: Debian's ``/usr/share/datasets/fashion-mnist``).
        **overrides: Any :class:`BenchmarkConfig` field (nested dicts allowed).

    Raises:
        ValueError: Both ``full`` and ``quick``.
    """
    if full and quick:
        raise ValueError("choose one of full=True (GPU-sized) and quick=True (14×14 smoke size), not both")
    if full:
        values: dict[str, Any] = dict(
            data_options={"size": 28}, model_options={"widths": (16, 32, 64)},
            original={"epochs": 30, "batch_size": 128, "lr": 0.05, "weight_decay": 5e-4},
            pool={"epochs": (10, 15, 20), "batch_size": 64, "lr": 0.01},
            baseline_grid={m: {**g, "epochs": tuple(2 * e for e in g.get("epochs", (5,)))}
                           for m, g in FASHION_QUICK_BASELINE_GRID.items()},
            eval_batch_size=1024, seeds=(0, 1, 2, 3, 4),
        )
    elif quick:
        values = dict(
            data_options={"size": 14, "train_size": 5000}, model_options={"widths": (8, 16, 32)},
            original={"epochs": 8, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4},
            pool={"epochs": (2, 3, 4), "weight_decays": (5e-5,), "batch_size": 32, "lr": 0.01},
            baseline_configs={m: {"batch_size": 64} for m in unlearn.list_methods()},
            baseline_grid=FASHION_QUICK_BASELINE_GRID, eval_batch_size=1000, forget_vectors=True,
            forget_vector_configs={"random": {"augment": "none"}, "class": {"augment": "none", "epochs": 10}},
            forget_vector_grid={"random": {"lr": (0.01, 0.1), "beta": (1.0, 5.0)}},
        )
    else:
        values = dict(
            data_options={"size": 28, "train_size": 12000, "val_size": 2000}, model_options={"widths": (8, 16, 32)},
            original={"epochs": 30, "batch_size": 64, "lr": 0.1, "weight_decay": 0.0},
            pool={"epochs": (2, 4), "weight_decays": (5e-5,), "label_smoothings": (0.0, 0.05, 0.1),
                  "batch_size": 32, "lr": 0.01},
            baselines=tuple(FASHION_BASELINE_GRID),
            baseline_configs={m: {"batch_size": 64, **({"epochs": FASHION_BASELINE_EPOCHS[m]}
                                                       if m in FASHION_BASELINE_EPOCHS else {})}
                              for m in FASHION_BASELINE_GRID},
            baseline_grid=FASHION_BASELINE_GRID, eval_batch_size=1000, seeds=(0, 1, 2, 3, 4),
            forget_vectors=True,
            forget_vector_configs={"random": {"augment": "none"}, "class": {"augment": "none", "epochs": 10}},
            forget_vector_grid={"random": {"lr": (0.01, 0.1), "beta": (1.0, 5.0)}},
            merge_methods=FASHION_MERGES,
        )
    values.update(dataset="fashion_mnist", data_root=None if data_root is None else str(data_root),
                  scenarios=("random_10", "class_0"))
    return make_config(on_top(values, overrides))


_CONFIGS = {"digits": default_config, "fashion_mnist": fashion_mnist_config}


def list_configs() -> list[str]:
    """Datasets with a ready benchmark config (:func:`dataset_config`)."""
    return sorted([*_CONFIGS, "cifar10"])


def dataset_config(dataset: str = "digits", *, smoke: bool = False, **overrides: Any) -> BenchmarkConfig:
    """The benchmark config of ``dataset`` (``"digits"``, ``"fashion_mnist"``, ``"cifar10"``).

    ``smoke=True`` gives the digits smoke config's sizes on that dataset (one seed, a
    4-member pool, one-epoch baselines, no baseline grid) for CI and notebook checks.

    Raises:
        ValueError: No config for ``dataset``; the message lists the ones there are.
    """
    if dataset == "cifar10":
        return cifar10_config(**overrides)
    if dataset not in _CONFIGS:
        raise ValueError(f"no benchmark config for dataset {dataset!r}; there are {list_configs()}")
    if dataset == "digits":
        return default_config(smoke=smoke, **overrides)
    if smoke and dataset == "fashion_mnist":
        overrides.setdefault("quick", True)  # the 14×14 size: smoke runs and CI
    cfg = _CONFIGS[dataset](**overrides)
    if smoke:
        smoke_cfg = default_config(smoke=True)
        cfg = make_config(cfg, seeds=smoke_cfg.seeds, original={**to_dict(cfg.original), "epochs": 1},
                          pool=to_dict(smoke_cfg.pool), coefs=smoke_cfg.coefs, coef_step=smoke_cfg.coef_step,
                          baseline_configs=smoke_cfg.baseline_configs, baseline_grid={}, smoke=True,
                          data_options={**cfg.data_options, "train_size": 500, "val_size": 500})
    return cfg


def cifar10_config(data_root: str | None = None, **overrides: Any) -> BenchmarkConfig:
    """ResNet-18 on CIFAR-10 with the paper's 27-member pool (GPU-sized; same code path as digits).

    Pool: epochs {40, 50, 60} × weight decay {1e-4, 5e-5, 1e-5} × label smoothing
    {0, 0.05, 0.1}, SGD momentum 0.9, cosine (NegMerge paper). The original recipe is
    SalUn's: 182 epochs, SGD lr 0.1, weight decay 5e-4, MultiStepLR ×0.1 at epochs 91
    and 136 (``original={"schedule": "cosine"}`` is the kit's earlier cosine option); the
    baselines' epochs follow the SalUn setup as far as we know it; the pool's learning rate (0.01) and batch sizes
    are our choice. Validation is SalUn's class-stratified 500 per class. Original and
    Retrain train on randomly cropped (padding 4) and flipped images, as SalUn's; every
    metric is computed on clean images (``data_options={"augment": True}``, see
    :mod:`negkit.data.augment`). RL and SalUn use the reference's example lr 0.013.

    Args:
        data_root: Folder holding ``cifar-10-batches-py/``.
        **overrides: Any :class:`BenchmarkConfig` field (nested dicts allowed); ``original``
            fields apply on top of this recipe.
    """
    if data_root is None:
        raise ValueError("the cifar10 benchmark needs data_root: the folder holding cifar-10-batches-py/ "
                         "(pass --data-root DIR, data_root: DIR in the config file, or data_root= in Python)")
    values: dict[str, Any] = dict(
        dataset="cifar10", data_options={"augment": True}, data_root=str(data_root), model="resnet18",
        original={"epochs": 182, "batch_size": 256, "lr": 0.1, "weight_decay": 5e-4, "schedule": "multistep",
                  "milestones": (91, 136), "gamma": 0.1},
        pool={"epochs": (40, 50, 60), "batch_size": 256, "lr": 0.01},
        baseline_configs={"ft": {"epochs": 10, "lr": 0.01, "batch_size": 256},
                          "ga": {"epochs": 5, "lr": 1e-4, "batch_size": 256},
                          "rl": {"epochs": 10, "lr": 0.013, "batch_size": 256},
                          "l1_sparse": {"epochs": 10, "lr": 0.01, "l1_gamma": 5e-5, "batch_size": 256},
                          "salun": {"epochs": 10, "lr": 0.013, "batch_size": 256}},
        eval_batch_size=1024,
    )
    return make_config(on_top(values, overrides))
