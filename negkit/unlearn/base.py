"""Machinery the unlearning methods share: their config, the training stage, samplers, markers.

Every method of :mod:`negkit.unlearn` trains only through the kit's one loop,
:func:`negkit.train.train` (:func:`run_stage`), with its hooks: ``loss_fn`` for the
objective, ``param_mask`` for weight saliency and ``batch_sampler`` for epochs that
pass over D_f and D_r in a fixed order (:class:`PassSampler`, :class:`PairedSampler`).
Forget-set items travel through a shared loader marked by their label (:class:`Marked`:
y ↦ −1 − y), so a loss can tell D_f from D_r and still read the true label.
Training-free methods (IU, SSD) store their result with :func:`save_result` and
:func:`load_result`, so a rerun with the same ``out_dir`` skips the work too.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, Sampler

from negkit import checkpoint
from negkit import io as nkio
from negkit.config import check, from_dict, to_dict
from negkit.train import TrainConfig, train

log = logging.getLogger(__name__)

__all__ = ["UnlearnConfig", "train_config", "run_stage", "prepare", "check_run_dir", "save_result", "load_result",
           "Marked", "split_marked", "PassSampler", "ForgetThenRetain", "PairedSampler", "num_classes_of", "frozen",
           "random_label_loss", "random_label_unlearning"]

#: File in a method's ``out_dir`` holding the config the run was made with.
CONFIG_FILE = "unlearn_config.json"


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
    """Hyperparameters every unlearning method shares (methods with more subclass it).

    Attributes:
        epochs: Epochs E (what one epoch passes over is the method's; training-free
            methods ignore it).
        lr: SGD learning rate.
        batch_size: Mini-batch size (also of gradient and importance passes).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        schedule: ``"constant"`` (the reference) or ``"cosine"`` learning rate.
        grad_clip: Gradient-norm clip (None, the reference: no clipping).
        seed: Seed for data order, random labels and sampled subsets.
    """

    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    grad_clip: float | None = None
    seed: int = 0

    RANGES = {"epochs": ">= 1", "lr": ">= 0", "batch_size": ">= 1", "momentum": "[0, 1)", "weight_decay": ">= 0",
              "grad_clip": "> 0", "seed": ">= 0"}

    def __post_init__(self) -> None:
        check(self)  # types and RANGES (negkit.config)
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"{type(self).__name__}.schedule must be 'constant' or 'cosine', got {self.schedule!r}")


def train_config(cfg: UnlearnConfig, epochs: int, batch_size: int | None = None) -> TrainConfig:
    """The :class:`~negkit.train.TrainConfig` of one stage: SGD at ``cfg``'s rate, no label smoothing."""
    return from_dict(TrainConfig, dict(
        epochs=epochs, batch_size=batch_size or cfg.batch_size, lr=cfg.lr, optimizer="sgd",
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, label_smoothing=0.0,
        schedule=cfg.schedule, grad_clip=cfg.grad_clip, seed=cfg.seed,
    ))


def run_stage(
    model: nn.Module, dataset: Dataset, cfg: UnlearnConfig, epochs: int, *, device: Any,
    out_dir: str | Path | None, stage: str, progress: bool, loss_fn: Callable | None = None,
    param_mask: Mapping[str, Tensor] | None = None,
    batch_sampler: Callable[[torch.Generator], Sampler[list[int]]] | None = None,
) -> nn.Module:
    """One call of the kit's training loop (in ``out_dir/stage`` when given); returns the trained model.

    Raises:
        ValueError: An empty dataset (the message names the stage).
    """
    if len(dataset) == 0:
        raise ValueError(f"unlearning stage {stage!r} got an empty dataset")
    sub = None if out_dir is None else Path(out_dir) / stage
    result = train(model, dataset, train_config(cfg, epochs), device=device, out_dir=sub, loss_fn=loss_fn,
                   param_mask=param_mask, progress=progress, batch_sampler=batch_sampler)
    return result.model


def check_run_dir(out_dir: str | Path | None, method: str, cfg: UnlearnConfig) -> None:
    """Record ``cfg`` in ``out_dir``, or refuse a folder made by another method or config.

    The training stages check only what :class:`~negkit.train.TrainConfig` holds, so a
    method's own hyperparameters (SCRUB's α, SSD's λ, ...) are checked here.

    Raises:
        ValueError: ``out_dir`` holds a run of another method or config (both named).
    """
    if out_dir is None:
        return
    path = Path(out_dir) / CONFIG_FILE
    now = {"method": method, **to_dict(cfg)}
    if path.exists():
        saved = nkio.load_json(path)
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            raise ValueError(f"{out_dir} holds an unlearning run with another config (differs in {diff}: saved "
                             f"{ {k: saved.get(k) for k in diff} }, now { {k: now.get(k) for k in diff} }); "
                             "use another out_dir or delete that folder")
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    nkio.save_json(now, path)


def save_result(out_dir: str | Path | None, stage: str, model: nn.Module, cfg: UnlearnConfig,
                metrics: Mapping[str, Any]) -> None:
    """Store a training-free method's result as a finished run (``out_dir/stage``)."""
    if out_dir is not None:
        out = Path(out_dir) / stage
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.save_finished(out, model, to_dict(cfg), {"steps": 0, **metrics}, [])


def load_result(out_dir: str | Path | None, stage: str, model: nn.Module, cfg: UnlearnConfig) -> bool:
    """Load a stored result into ``model`` when ``out_dir/stage`` holds one (config checked)."""
    if out_dir is None or not checkpoint.is_finished(Path(out_dir) / stage):
        return False
    checkpoint.load_finished(Path(out_dir) / stage, model, to_dict(cfg))
    log.info("unlearn: %s is finished; loaded instead of recomputed", Path(out_dir) / stage)
    return True


def prepare(model: nn.Module, cfg: UnlearnConfig | Mapping[str, Any] | None, method: str,
            config_cls: type[UnlearnConfig], defaults: Mapping[str, Any],
            out_dir: str | Path | None) -> tuple[nn.Module, Any]:
    """A deep copy of ``model`` and the method's config, checked against ``out_dir``.

    ``cfg`` may be the method's config, None (its defaults), a dict (overrides of its
    defaults), or a plain :class:`UnlearnConfig` given to a method with its own config
    class (the shared fields as given, the method's own fields at their defaults).
    """
    if type(cfg) is config_cls:
        pass
    elif isinstance(cfg, UnlearnConfig):
        cfg = from_dict(config_cls, {**defaults, **to_dict(cfg)})
    else:
        cfg = from_dict(config_cls, {**defaults, **dict(cfg or {})})
    check_run_dir(out_dir, method, cfg)
    return copy.deepcopy(model), cfg


# --------------------------------------------------------------------------- data
class Marked(Dataset):
    """A forget set whose labels are marked: item ``(x, y)`` becomes ``(x, −1 − y)``.

    Mixed into one loader with D_r (``ConcatDataset([Marked(forget), retain])``), the
    sign tells a loss which rows come from D_f; :func:`split_marked` undoes the mark.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.dataset[i]
        return x, -1 - int(y)


def split_marked(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(is_forget, true_labels)`` of a batch's labels, some marked by :class:`Marked`."""
    forget = labels < 0
    return forget, torch.where(forget, -1 - labels, labels)


def _start_epoch(generator: torch.Generator) -> None:
    """Take the draw ``DataLoader`` takes from its generator (a worker base seed) before shuffling.

    After it, a ``randperm`` of ``generator`` is the order ``train``'s own shuffled loader
    would use in that epoch, so a sampler's first pass matches plain training batch for batch.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    """Batches of ``n`` items, the last one short (a one-image batch too, as ``train``'s loader)."""
    return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])


class PassSampler(Sampler[list[int]]):
    """Shuffled passes over parts of a ``ConcatDataset``, in a fixed plan.

    Part ``p`` is the index range ``parts[p] = (start, n)``; ``plan`` lists the parts to
    pass over, in order, each pass a fresh permutation drawn from ``generator`` and cut
    into batches of ``batch_sizes[p]`` (the last one short). The first pass of an epoch is
    ordered as ``train``'s own shuffled loader would order that part alone.

    Args:
        parts: ``(start, n)`` of every part.
        plan: Part indices, one per pass.
        batch_sizes: Batch size of each part.
        generator: Draws the orders; ``train`` re-seeds it before every epoch.
    """

    def __init__(self, parts: Sequence[tuple[int, int]], plan: Sequence[int], batch_sizes: Sequence[int],
                 generator: torch.Generator) -> None:
        self.parts, self.plan, self.batch_sizes, self.generator = list(parts), list(plan), list(batch_sizes), generator

    def _sizes(self, p: int) -> list[int]:
        return _batch_sizes(self.parts[p][1], self.batch_sizes[p])

    def __iter__(self) -> Iterator[list[int]]:
        _start_epoch(self.generator)
        for p in self.plan:
            start, n = self.parts[p]
            order = (start + torch.randperm(n, generator=self.generator)).tolist()
            i = 0
            for size in self._sizes(p):
                yield order[i:i + size]
                i += size

    def __len__(self) -> int:
        return sum(len(self._sizes(p)) for p in self.plan)


class ForgetThenRetain(PassSampler):
    """Batches of one RL epoch over ``ConcatDataset([forget, retain])``: D_f, then D_r.

    Each part is shuffled with ``generator`` and cut into batches of ``batch_size``;
    every forget batch comes before every retain batch (SalUn's CIFAR-10 RL loop). A
    short last batch is kept, a one-image one too (as :func:`negkit.train.train` does).

    Args:
        n_forget: Size of D_f (indices ``0..n_forget-1``).
        n_retain: Size of D_r.
        batch_size: Images per batch.
        generator: Draws the order; ``train`` re-seeds it before every epoch.
    """

    def __init__(self, n_forget: int, n_retain: int, batch_size: int, generator: torch.Generator) -> None:
        super().__init__([(0, n_forget), (n_forget, n_retain)], [0, 1], [batch_size, batch_size], generator)


class PairedSampler(Sampler[list[int]]):
    """One epoch of D_r batches, each joined by a D_f batch, over ``ConcatDataset([retain, Marked(forget)])``.

    The D_r batches are exactly those of ``train``'s own shuffled loader over D_r alone
    (the same draws from ``generator``, cut into ``batch_size`` batches), so a loss that
    ignores the D_f rows trains as plain fine-tuning. D_f is shuffled once per epoch
    (drawn after D_r), cut into ``forget_batch_size`` batches and cycled: the reference's
    ``zip(retain_loader, cycle(forget_loader))``, whose cycle replays its first pass.

    Args:
        n_retain: Size of D_r (indices ``0..n_retain-1``).
        n_forget: Size of D_f (the indices after).
        batch_size: D_r images per batch.
        forget_batch_size: D_f images per batch.
        generator: Draws the orders; ``train`` re-seeds it before every epoch.
    """

    def __init__(self, n_retain: int, n_forget: int, batch_size: int, forget_batch_size: int,
                 generator: torch.Generator) -> None:
        self.n_retain, self.n_forget = n_retain, n_forget
        self.batch_size, self.forget_batch_size, self.generator = batch_size, forget_batch_size, generator

    def __iter__(self) -> Iterator[list[int]]:
        _start_epoch(self.generator)
        retain = torch.randperm(self.n_retain, generator=self.generator).tolist()
        order = (self.n_retain + torch.randperm(self.n_forget, generator=self.generator)).tolist()
        starts = range(0, self.n_forget, self.forget_batch_size)
        forget = [order[s:s + self.forget_batch_size] for s in starts]
        i = 0
        for b, size in enumerate(_batch_sizes(self.n_retain, self.batch_size)):
            yield retain[i:i + size] + forget[b % len(forget)]
            i += size

    def __len__(self) -> int:
        return len(_batch_sizes(self.n_retain, self.batch_size))


def num_classes_of(model: nn.Module, dataset: Dataset) -> int:
    """Number of outputs of ``model`` on one item of ``dataset`` (the model is left as it was)."""
    x = dataset[0][0]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x.unsqueeze(0).to(param.device))
    model.train(was_training)
    return int(out.shape[-1])


def frozen(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``model`` on ``device`` in eval mode with no parameter requiring gradients (a teacher)."""
    out = copy.deepcopy(model).to(device).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def random_label_loss(num_classes: int) -> Callable[[nn.Module, Tensor, Tensor, float], Tensor]:
    """CE with a fresh label, uniform over all classes, for every marked (D_f) row; true labels elsewhere."""
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, progress_frac: float) -> Tensor:
        forget = y < 0  # the Marked rows
        if bool(forget.any()):
            # Redrawn every time a forget batch is seen (y' = y possible). The global torch RNG
            # is seeded by train() and restored on resume.
            drawn = torch.randint(0, num_classes, y.shape).to(y.device)
            y = torch.where(forget, drawn, y)
        return F.cross_entropy(model(x), y)
    return loss_fn


def random_label_unlearning(
    model: nn.Module, forget: Dataset, retain: Dataset, cfg: UnlearnConfig, *, device: Any,
    out_dir: str | Path | None, progress: bool, param_mask: Mapping[str, Tensor] | None,
) -> nn.Module:
    """RL epochs (one pass over D_f with random labels, then one over D_r), optionally on masked weights only."""
    if len(forget) == 0:
        raise ValueError("random-label unlearning got an empty forget set")
    num_classes = num_classes_of(model, forget)
    data = ConcatDataset([Marked(forget), retain])
    return run_stage(model, data, cfg, cfg.epochs, device=device, out_dir=out_dir, stage="unlearn",
                     progress=progress, loss_fn=random_label_loss(num_classes), param_mask=param_mask,
                     batch_sampler=lambda gen: ForgetThenRetain(len(forget), len(retain), cfg.batch_size, gen))
