"""U-LiRA: the per-example likelihood-ratio attack on unlearning (Hayes et al. 2024).

"Inexact unlearning needs more careful evaluations to avoid a false sense of privacy"
(Hayes, Shumailov, Triantafillou, Khalifa, Papernot): an attacker who holds the unlearned
model asks, for each forgotten example x, whether the model looks like one that was
trained on x and then *unlearned* it, or like one *retrained* without x. Population
attacks (SalUn's SVC, :func:`negkit.metrics.mia_efficacy`) use one threshold for every
example; U-LiRA fits one pair of distributions per example, which the paper shows to
be much stronger.

Per example the statistic is the logit-scaled confidence of LiRA (Carlini et al. 2022)::

    φ(x, y) = log(p_y / (1 − p_y)) = z_y − log Σ_{j≠y} exp(z_j)        (z: logits)

**Shadows.** S shadow forget splits come in S/2 complementary pairs: pair k draws |D_f|
further pool examples, R_k, and splits the candidates D_f ∪ R_k at random into halves
A_k and B_k of |D_f| each. Per pair one shadow Original is trained on the whole pool;
per half H ∈ {A_k, B_k} a shadow Retrain is trained on pool ∖ H and a shadow unlearned
model is made from that Original by the unlearning method under test with forget set H.
Every target example x ∈ D_f is thus forgotten by exactly one shadow of each pair,
giving S/2 samples of φ under "unlearned" (IN) and S/2 under "retrained" (OUT).

**Attack.** Per example, Gaussians N(μ_in(x), σ_in²) and N(μ_out(x), σ_out²) are fitted
(with ``fixed_variance`` one σ per side pooled over examples, LiRA's choice for few
shadows); the score of a model on x is the log likelihood ratio
Λ(x) = log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²) (> 0: "unlearned"). The target
model's scores on D_f are the positives, a model retrained without D_f (the benchmark's
Retrain) gives the negatives; :class:`ULiRAResult` holds the attack's ROC AUC and its
balanced accuracy at Λ = 0. Both are 0.5 when the unlearned model cannot be told from
Retrain on D_f — perfect unlearning as far as this attack sees.

**Cost.** 3S/2 trainings of the Original's recipe (S/2 shadow Originals, S shadow Retrains)
plus S runs of the unlearning method, and one evaluation of each on D_f. Measured on the
quick Fashion-MNIST config (:func:`negkit.benchmark.fashion_mnist_config` ``(quick=True)``:
14×14 images, 5,000 training images, widths (8, 16, 32), 8 epochs) on 2 CPU cores: one
Original trains in 9 s, and the default S = 16 shadows (8 Originals, 16 Retrains) took
155 s in all, plus 16 runs of the unlearning method (tens of seconds each for a merge with
its pool and λ search): well under 30 minutes. There, random 10 % (|D_f| = 500), the
attack tells the Original (``unlearn_fn=None``) from Retrain with AUC 0.64 — that
Original barely memorises D_f — and Retrain from itself with 0.5. ``out_dir`` keeps every
shadow, so a second method scored against the same shadows only pays for its own
unlearning runs.

Deviations: the paper trains many more shadows on random halves of the data; here every
shadow Original sees the whole pool, as the benchmark's Original does, and the pairs are
complementary so that each target example has the same number of IN and OUT samples.
The attack targets random forgetting: with class-wise D_f the shadow splits mix classes.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import Dataset

from negkit import io
from negkit.config import check, from_dict, to_dict
from negkit.data.splits import subset
from negkit.evaluate import InputTransform, predict
from negkit.train import TrainConfig, train

__all__ = ["ULiRAConfig", "ULiRAResult", "ShadowStats", "logit_confidence", "shadow_statistics", "ulira_scores",
           "ulira"]

log = logging.getLogger(__name__)

#: ``(original, forget, retain, seed) -> unlearned model``: the unlearning method under attack.
UnlearnFn = Callable[[nn.Module, Dataset, Dataset, int], nn.Module]
#: ``seed -> freshly initialised model`` of the architecture the shadows share.
ModelFn = Callable[[int], nn.Module]


@dataclasses.dataclass(frozen=True)
class ULiRAConfig:
    """Options of :func:`ulira`.

    Attributes:
        n_shadows: Shadow forget splits S (even: S/2 complementary pairs; each target example
            gets S/2 IN and S/2 OUT samples). The default fits the quick Fashion-MNIST config
            on 2 CPU cores in well under 30 minutes (module docstring).
        seed: Seeds the shadow splits and the shadows' training (pair k trains with seed
            ``seed + 1000 · (k + 1)``, apart from the benchmark's own seeds).
        fixed_variance: One σ per side pooled over examples (LiRA's choice for few shadows);
            False: a σ per example.
        eval_batch_size: Batch size of the φ passes.
    """

    n_shadows: int = 16
    seed: int = 0
    fixed_variance: bool = True
    eval_batch_size: int = 512

    RANGES = {"n_shadows": ">= 4", "seed": ">= 0", "eval_batch_size": ">= 1"}

    def __post_init__(self) -> None:
        check(self)
        if self.n_shadows % 2:
            raise ValueError(f"n_shadows must be even (complementary pairs of forget splits), got {self.n_shadows}; "
                             f"use {self.n_shadows + 1}")


@dataclasses.dataclass
class ShadowStats:
    """φ of every target example under the shadows (from :func:`shadow_statistics`).

    Attributes:
        phi_in: (S/2, |D_f|): φ of the shadow unlearned model that forgot the example, per pair.
        phi_out: (S/2, |D_f|): φ of the shadow Retrain trained without it, per pair.
    """

    phi_in: np.ndarray
    phi_out: np.ndarray


@dataclasses.dataclass
class ULiRAResult:
    """What :func:`ulira` returns.

    Attributes:
        auc: ROC AUC of Λ separating the target (positives) from the reference (negatives) on D_f.
        accuracy: Balanced accuracy of the decision Λ > 0 on those two sets.
        scores: Λ of the target model per D_f example, shape (|D_f|,).
        reference_scores: Λ of the reference (retrained) model per D_f example.
        n_shadows: S.
    """

    auc: float
    accuracy: float
    scores: np.ndarray
    reference_scores: np.ndarray
    n_shadows: int


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """φ = log(p_y / (1 − p_y)) = z_y − logsumexp_{j≠y} z_j per row, in float64 (no underflow at p_y ≈ 1).

    Raises:
        ValueError: Not (N, C) logits with N labels, or fewer than two classes.
    """
    z = torch.as_tensor(logits).detach().cpu().double()
    y = torch.as_tensor(labels).detach().cpu().long()
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[1] < 2:
        raise ValueError(f"need (N, C >= 2) logits and N labels; got {tuple(z.shape)} and {tuple(y.shape)}")
    z_y = z.gather(1, y.view(-1, 1)).squeeze(1)
    others = z.scatter(1, y.view(-1, 1), -math.inf)
    return (z_y - torch.logsumexp(others, dim=1)).numpy()


def _phi(model: nn.Module, data: Dataset, *, device: str | torch.device | None, batch_size: int,
         input_transform: InputTransform | None = None) -> np.ndarray:
    logits, labels = predict(model, data, device=device, batch_size=batch_size, input_transform=input_transform)
    return logit_confidence(logits, labels)


def _pair_split(n_pool: int, forget_idx: np.ndarray, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair k's complementary forget splits A, B: D_f plus |D_f| other pool examples, halved at random."""
    rng = np.random.default_rng([seed, k])
    others = np.setdiff1d(np.arange(n_pool), forget_idx)
    candidates = np.concatenate([forget_idx, rng.choice(others, size=len(forget_idx), replace=False)])
    perm = rng.permutation(len(candidates))
    half = len(forget_idx)
    return np.sort(candidates[perm[:half]]), np.sort(candidates[perm[half:]])


def shadow_statistics(pool: Dataset, forget_idx: Sequence[int], *, make_model: ModelFn, recipe: TrainConfig | dict,
                      unlearn_fn: UnlearnFn | None = None, config: ULiRAConfig | None = None,
                      train_pool: Dataset | None = None, device: str | torch.device | None = None,
                      out_dir: str | Path | None = None) -> ShadowStats:
    """Train the shadows of the module docstring and collect φ of every D_f example.

    Args:
        pool: The training pool (clean images), indexed like ``forget_idx``.
        forget_idx: Indices of D_f in ``pool``; at most half the pool.
        make_model: ``seed -> model``; Original and Retrain of a pair share the initialisation.
        recipe: The Original's training recipe (its ``seed`` is replaced per pair).
        unlearn_fn: ``(original, forget, retain, seed) -> unlearned``, the method under attack
            (it must not modify ``original``). None: no unlearning, the shadow Original itself
            (the attack then asks whether the target still looks trained on D_f).
        config: :class:`ULiRAConfig` (None: defaults).
        train_pool: The view of ``pool`` the shadows train on (e.g. with augmentation; same
            indexing); None: ``pool``.
        device: None: cuda if available.
        out_dir: Keep every shadow's training run (and the pairs' splits) here, so a rerun
            or a second unlearning method reuses them; None trains in memory.

    Raises:
        ValueError: D_f is empty, repeats an index, lies outside the pool or is more than half of it.
    """
    cfg = config or ULiRAConfig()
    forget_idx = np.asarray(forget_idx, dtype=np.int64)
    n = len(pool)
    if (forget_idx.size == 0 or len(np.unique(forget_idx)) != forget_idx.size or forget_idx.min() < 0
            or forget_idx.max() >= n or 2 * forget_idx.size > n):
        raise ValueError(f"forget_idx must hold 1 to {n // 2} distinct indices of the {n}-example pool (the shadow "
                         f"splits add as many other examples); got {forget_idx.size} in "
                         f"[{forget_idx.min(initial=0)}, {forget_idx.max(initial=0)}]")
    train_pool = pool if train_pool is None else train_pool
    out = None if out_dir is None else Path(out_dir)
    where = {int(i): j for j, i in enumerate(forget_idx)}  # pool index -> column of D_f
    phi_in = np.full((cfg.n_shadows // 2, forget_idx.size), np.nan)
    phi_out = np.full_like(phi_in, np.nan)
    for k in range(cfg.n_shadows // 2):
        seed = cfg.seed + 1000 * (k + 1)
        shadow_recipe = from_dict(TrainConfig, {**to_dict(from_dict(TrainConfig, recipe)), "seed": seed})
        halves = _pair_split(n, forget_idx, cfg.seed, k)
        pair_dir = None if out is None else out / f"pair_{k}"
        if pair_dir is not None:
            io.save_json({"config": to_dict(cfg), "A": halves[0].tolist(), "B": halves[1].tolist()},
                         pair_dir / "split.json")
        original = train(make_model(seed), train_pool, shadow_recipe, device=device, progress=False,
                         out_dir=None if pair_dir is None else pair_dir / "original").model.eval()
        for name, forget in zip("AB", halves):
            retain = np.setdiff1d(np.arange(n), forget)
            retrain = train(make_model(seed), subset(train_pool, retain), shadow_recipe, device=device,
                            progress=False, out_dir=None if pair_dir is None else pair_dir / f"retrain_{name}").model
            unlearned = original if unlearn_fn is None else unlearn_fn(
                original, subset(train_pool, forget), subset(train_pool, retain), seed)
            mine = np.array([i for i in forget if int(i) in where], dtype=np.int64)  # D_f ∩ this half
            cols = [where[int(i)] for i in mine]
            kw = dict(device=device, batch_size=cfg.eval_batch_size)
            phi_in[k, cols] = _phi(unlearned, subset(pool, mine), **kw)
            phi_out[k, cols] = _phi(retrain.eval(), subset(pool, mine), **kw)
        log.info("ulira: shadow pair %d of %d done", k + 1, cfg.n_shadows // 2)
    assert np.isfinite(phi_in).all() and np.isfinite(phi_out).all()  # each example in exactly one half per pair
    return ShadowStats(phi_in=phi_in, phi_out=phi_out)


def _gaussian(samples: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and standard deviation of (K, N) samples (K ≥ 2), σ floored at 1e-3."""
    mu = samples.mean(0)
    resid = samples - mu
    if fixed_variance:
        sd = np.full_like(mu, math.sqrt((resid ** 2).sum() / (resid.size - mu.size)))
    else:
        sd = resid.std(0, ddof=1)
    return mu, np.maximum(sd, 1e-3)


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


def ulira_scores(phi: np.ndarray, stats: ShadowStats, *, fixed_variance: bool = True) -> np.ndarray:
    """Λ(x) = log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²) per D_f example (> 0: looks unlearned)."""
    phi = np.asarray(phi, dtype=np.float64)
    if phi.shape != stats.phi_in.shape[1:]:
        raise ValueError(f"φ has shape {phi.shape}; the shadows describe {stats.phi_in.shape[1]} D_f examples")
    mu_in, sd_in = _gaussian(stats.phi_in, fixed_variance)
    mu_out, sd_out = _gaussian(stats.phi_out, fixed_variance)
    return _log_normal(phi, mu_in, sd_in) - _log_normal(phi, mu_out, sd_out)


def ulira(target: nn.Module, reference: nn.Module, pool: Dataset, forget_idx: Sequence[int], *,
          make_model: ModelFn, recipe: TrainConfig, unlearn_fn: UnlearnFn | None = None,
          config: ULiRAConfig | None = None, train_pool: Dataset | None = None,
          device: str | torch.device | None = None, out_dir: str | Path | None = None,
          input_transform: InputTransform | None = None, stats: ShadowStats | None = None) -> ULiRAResult:
    """U-LiRA of an unlearned model: can its D_f be told from a retrained model's, example by example?

    Trains the shadows (:func:`shadow_statistics`; the cost is in the module docstring) unless
    ``stats`` are given, scores ``target`` and ``reference`` on D_f and measures how well the
    scores separate them. 0.5 (AUC and accuracy) is perfect unlearning for this attack; the
    Original itself, scored with ``unlearn_fn=None``, is detected when it memorises D_f.

    Args:
        target: The unlearned model under attack.
        reference: A model retrained without D_f (the benchmark's Retrain): the negatives.
        pool, forget_idx, make_model, recipe, unlearn_fn, config, train_pool, device, out_dir:
            As in :func:`shadow_statistics`; ``unlearn_fn`` should be the method that made ``target``.
        input_transform: Applied to the target's batches (forget vectors add δ); not to ``reference``.
        stats: Shadows computed before (skips their training).

    Returns:
        A :class:`ULiRAResult`.
    """
    cfg = config or ULiRAConfig()
    if stats is None:
        stats = shadow_statistics(pool, forget_idx, make_model=make_model, recipe=recipe, unlearn_fn=unlearn_fn,
                                  config=cfg, train_pool=train_pool, device=device, out_dir=out_dir)
    forget = subset(pool, np.asarray(forget_idx, dtype=np.int64))
    kw = dict(device=device, batch_size=cfg.eval_batch_size)
    pos = ulira_scores(_phi(target, forget, input_transform=input_transform, **kw), stats,
                       fixed_variance=cfg.fixed_variance)
    neg = ulira_scores(_phi(reference, forget, **kw), stats, fixed_variance=cfg.fixed_variance)
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    auc = float(roc_auc_score(labels, np.concatenate([pos, neg])))
    acc = 0.5 * (float((pos > 0).mean()) + float((neg <= 0).mean()))
    return ULiRAResult(auc=auc, accuracy=acc, scores=pos, reference_scores=neg, n_shadows=cfg.n_shadows)
