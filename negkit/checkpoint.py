"""Run folders of :func:`negkit.train.train`: resumable checkpoints and done-markers.

A run folder holds, while training, one ``checkpoint.safetensors`` rewritten
atomically after every epoch, and once finished the final files::

    checkpoint.safetensors   # while running; deleted when the run finishes
    model.safetensors        # final weights (metadata: format, config as JSON)
    config.json  metrics.json  history.json
    done.json                # {"done": true, "epochs": E, "steps": S}: the run is finished

The checkpoint is a single safetensors file (no pickle) whose tensors are

* ``model.<name>``: the model's state dict;
* ``optim.<param id>.<name>``: the optimiser's per-parameter tensors (momentum
  buffers, Adam moments and step counts);
* ``rng.torch``, ``rng.numpy_keys`` and ``rng.cuda.<i>``: the global RNG states;

and whose metadata entry ``negkit_checkpoint`` is a JSON object with the
:class:`TrainingState` fields (``epoch``, ``step``, ``history``, ``seconds``,
``config``), the optimiser's non-tensor per-parameter entries (``optim_scalars``)
and ``param_groups``, and the scalar parts of numpy's and python's RNG states
(``rng``). The learning-rate schedule is a pure function of ``step``
(:func:`negkit.train.lr_factor`), so ``step`` is its whole state. Restoring model,
optimiser, RNGs and step makes a resumed run bitwise identical on CPU to one that
never stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from negkit import io as nkio

__all__ = ["CHECKPOINT", "MODEL_FILE", "DONE_FILE", "TrainingState", "save_training_state",
           "read_training_state", "load_training_state", "check_config", "is_finished", "save_finished",
           "load_finished"]

CHECKPOINT = "checkpoint.safetensors"
MODEL_FILE = "model.safetensors"
DONE_FILE = "done.json"
_META_KEY = "negkit_checkpoint"


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """Where a run stands after an epoch (everything but the tensors).

    Attributes:
        epoch: Epochs completed.
        step: Optimiser steps taken (the position in the learning-rate schedule).
        history: One dict per completed epoch.
        seconds: Training time so far.
        config: The run's config as a dict (``negkit.config.to_dict``).
    """

    epoch: int
    step: int
    history: list[dict[str, Any]]
    seconds: float
    config: dict[str, Any]


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Global torch / CUDA / numpy / python RNG states as tensors plus JSON-able scalars."""
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(),
               "rng.numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    scalars = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
               "python": [py[0], list(py[1]), py[2]]}
    return tensors, scalars


def _set_rng_state(tensors: Mapping[str, torch.Tensor], scalars: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.split(".")[-1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])
    name, pos, has_gauss, gauss = scalars["numpy"]
    np.random.set_state((name, tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_next = scalars["python"]
    random.setstate((version, tuple(state), gauss_next))


def save_training_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                        state: TrainingState) -> Path:
    """Write model, optimiser, global RNG states and ``state`` to one safetensors file, atomically.

    Args:
        path: Destination, usually ``<run folder>/checkpoint.safetensors``.
        model: Its state dict is saved under ``model.``.
        optimizer: Its state dict is split into tensors (``optim.<pid>.<name>``) and JSON.
        state: Epoch, step, history, seconds and config.

    Returns:
        The destination path.
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in osd["state"].items():
        for k, v in pstate.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                opt_scalars.setdefault(str(pid), {})[k] = v
    rng_tensors, rng_scalars = _rng_state()
    tensors.update(rng_tensors)
    meta = {**dataclasses.asdict(state), "optim_scalars": opt_scalars, "param_groups": osd["param_groups"],
            "rng": rng_scalars}
    return nkio.save_state_dict(tensors, path, metadata={_META_KEY: json.dumps(meta)})


def _read_meta(path: str | os.PathLike) -> dict[str, Any]:
    raw = nkio.read_metadata(path).get(_META_KEY)
    if raw is None:
        raise ValueError(f"{path} is not a negkit training checkpoint (no {_META_KEY!r} metadata); "
                         "delete it to train that run from the start")
    return json.loads(raw)


def read_training_state(path: str | os.PathLike) -> TrainingState:
    """The :class:`TrainingState` of a checkpoint, read from its metadata only (no tensors loaded)."""
    meta = _read_meta(path)
    return TrainingState(**{f.name: meta[f.name] for f in dataclasses.fields(TrainingState)})


def load_training_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                        config: Mapping[str, Any] | None = None, ignore: Iterable[str] = ()) -> TrainingState:
    """Restore a checkpoint into ``model`` and ``optimizer`` (in place) and the global RNGs.

    Args:
        path: A file written by :func:`save_training_state`.
        model: Same architecture as the saved one.
        optimizer: Built over the same parameters, in the same order, as the saved one.
        config: If given, compared with the saved config *before* anything is touched
            (see :func:`check_config`).
        ignore: Config fields allowed to differ (runtime-only settings).

    Returns:
        The saved :class:`TrainingState`.

    Raises:
        ValueError: The file is no training checkpoint, or its config differs from ``config``.
    """
    meta = _read_meta(path)
    if config is not None:
        check_config(meta["config"], config, Path(path).parent, ignore=ignore)
    tensors = nkio.load_state_dict(path)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    per_param: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            per_param.setdefault(int(pid), {})[name] = v
    for pid, scalars in meta["optim_scalars"].items():
        per_param.setdefault(int(pid), {}).update(scalars)
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    _set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, meta["rng"])
    return TrainingState(**{f.name: meta[f.name] for f in dataclasses.fields(TrainingState)})


def check_config(saved: Mapping[str, Any], now: Mapping[str, Any], where: str | os.PathLike, *,
                 ignore: Iterable[str] = ()) -> None:
    """Refuse to resume or reuse a run folder made with another config.

    Args:
        saved: The config stored in the run folder.
        now: The config of the current call.
        where: The run folder (named in the error).
        ignore: Fields that change how a run executes but not what it computes.

    Raises:
        ValueError: Naming the differing fields and both values.
    """
    ignore = set(ignore)
    diff = sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"{where} holds a run with a different TrainConfig (differs in {diff}: saved "
            f"{ {k: saved.get(k) for k in diff} }, now { {k: now.get(k) for k in diff} }); "
            "use another out_dir or delete that folder to retrain"
        )


def is_finished(out: str | os.PathLike) -> bool:
    """True when the run folder holds final weights and its done-marker."""
    out = Path(out)
    return (out / MODEL_FILE).exists() and (out / DONE_FILE).exists()


def save_finished(out: str | os.PathLike, model: nn.Module, config: Mapping[str, Any], metrics: Mapping[str, Any],
                  history: list[dict[str, Any]]) -> None:
    """Write the final files of a run, the done-marker last, then delete the checkpoint.

    Args:
        out: The run folder.
        model: The trained model (its state dict is saved on CPU).
        config: The run's config as a dict; ``config["epochs"]`` goes into ``done.json``.
        metrics: Final metrics; must hold ``steps``.
        history: One dict per epoch.
    """
    out = Path(out)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    nkio.save_state_dict(sd, out / MODEL_FILE, metadata={"format": "negkit.train", "config": json.dumps(dict(config))})
    nkio.save_json(dict(config), out / "config.json")
    nkio.save_json(dict(metrics), out / "metrics.json")
    nkio.save_json(history, out / "history.json")
    # Written last: a folder with done.json is complete even if the process dies right after.
    nkio.save_json({"done": True, "epochs": config["epochs"], "steps": metrics["steps"]}, out / DONE_FILE)
    (out / CHECKPOINT).unlink(missing_ok=True)


def load_finished(out: str | os.PathLike, model: nn.Module, config: Mapping[str, Any], *,
                  ignore: Iterable[str] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load a finished run's weights into ``model`` after checking its config.

    Args:
        out: A run folder for which :func:`is_finished` holds.
        model: Same architecture as the trained one; loaded in place.
        config: The current config; must match the saved one (see :func:`check_config`).
        ignore: Config fields allowed to differ.

    Returns:
        ``(metrics, history)`` as saved (history ``[]`` if the folder has none).

    Raises:
        ValueError: The saved config differs.
    """
    out = Path(out)
    check_config(nkio.load_json(out / "config.json"), config, out, ignore=ignore)
    model.load_state_dict(nkio.load_state_dict(out / MODEL_FILE))
    metrics = nkio.load_json(out / "metrics.json")
    history = nkio.load_json(out / "history.json") if (out / "history.json").exists() else []
    return metrics, history
