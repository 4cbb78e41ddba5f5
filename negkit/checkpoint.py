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
and ``param_groups``, the scalar parts of numpy's and python's RNG states
(``rng``), and the run environment (``environment``: thread count, torch and
negkit versions, device; a resume in another environment warns). The learning-rate schedule is a pure function of ``step``
(:func:`negkit.train.lr_factor`), so ``step`` is its whole state. Restoring model,
optimiser, RNGs and step makes a resumed run bitwise identical on CPU to one that
never stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from negkit import io as nkio
from negkit.lock import environment

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
            "rng": rng_scalars, "environment": environment(_device_of(model))}
    return nkio.save_state_dict(tensors, path, metadata={_META_KEY: json.dumps(meta)})


def _device_of(model: nn.Module) -> torch.device | None:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else None


def _read_meta(path: str | os.PathLike) -> dict[str, Any]:
    raw = nkio.read_metadata(path).get(_META_KEY)
    if raw is None:
        raise ValueError(f"{path} is not a negkit training checkpoint (no {_META_KEY!r} metadata); "
                         "delete it to train that run from the start")
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    missing = [f.name for f in dataclasses.fields(TrainingState)] if not isinstance(meta, dict) else \
        [k for k in (*[f.name for f in dataclasses.fields(TrainingState)], "optim_scalars", "param_groups", "rng")
         if k not in meta]
    if missing:
        raise ValueError(f"{path}: damaged training checkpoint metadata (missing {missing}); "
                         "delete it to train that run from the start")
    return meta


def _state_of(meta: Mapping[str, Any], path: str | os.PathLike, *, epochs: int | None = None,
              steps_per_epoch: int | None = None) -> TrainingState:
    """The :class:`TrainingState` in ``meta``, range-checked, so a tampered resume fails before any training."""
    st = TrainingState(**{f.name: meta[f.name] for f in dataclasses.fields(TrainingState)})
    problems = []
    if not (isinstance(st.epoch, int) and not isinstance(st.epoch, bool) and st.epoch >= 0):
        problems.append(f"epoch={st.epoch!r} (must be an int >= 0)")
    elif epochs is not None and st.epoch > epochs:
        problems.append(f"epoch={st.epoch} is beyond the config's {epochs} epochs")
    if not (isinstance(st.step, int) and not isinstance(st.step, bool) and st.step >= 0):
        problems.append(f"step={st.step!r} (must be an int >= 0)")
    elif steps_per_epoch is not None and isinstance(st.epoch, int) and st.step != st.epoch * steps_per_epoch:
        problems.append(f"step={st.step} does not match epoch {st.epoch} × {steps_per_epoch} steps per epoch")
    if not isinstance(st.history, list) or (isinstance(st.epoch, int) and len(st.history) != st.epoch):
        problems.append(f"history has {len(st.history) if isinstance(st.history, list) else 'no'} entries "
                        f"for epoch={st.epoch!r}")
    if not (isinstance(st.seconds, (int, float)) and math.isfinite(st.seconds) and st.seconds >= 0):
        problems.append(f"seconds={st.seconds!r}")
    if not isinstance(st.config, dict):
        problems.append(f"config is a {type(st.config).__name__}, not a dict")
    if problems:
        raise ValueError(f"{path}: inconsistent training checkpoint ({'; '.join(problems)}); "
                         "delete it to train that run from the start")
    return st


def read_training_state(path: str | os.PathLike) -> TrainingState:
    """The :class:`TrainingState` of a checkpoint, read from its metadata only (no tensors loaded).

    Raises:
        ValueError: The metadata is missing, damaged or out of range.
    """
    return _state_of(_read_meta(path), path)


def load_training_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                        config: Mapping[str, Any] | None = None, ignore: Iterable[str] = (),
                        steps_per_epoch: int | None = None,
                        defaults: Mapping[str, Any] | None = None) -> TrainingState:
    """Restore a checkpoint into ``model`` and ``optimizer`` (in place) and the global RNGs.

    Args:
        path: A file written by :func:`save_training_state`.
        model: Same architecture as the saved one.
        optimizer: Built over the same parameters, in the same order, as the saved one.
        config: If given, compared with the saved config *before* anything is touched
            (see :func:`check_config`).
        ignore: Config fields allowed to differ (runtime-only settings).
        steps_per_epoch: If given, the saved ``step`` must equal ``epoch × steps_per_epoch``.

    Returns:
        The saved :class:`TrainingState`.

    Raises:
        ValueError: The file is no training checkpoint, its epoch/step/history are
            inconsistent, or its config differs from ``config``.

    Warns:
        RuntimeWarning: The checkpoint was written with another thread count, device
            or torch/negkit version: the resumed run may differ from an uninterrupted one.
    """
    meta = _read_meta(path)
    if config is not None:
        check_config(meta["config"], config, Path(path).parent, ignore=ignore, defaults=defaults)
    epochs = config.get("epochs") if isinstance(config, Mapping) else None
    state = _state_of(meta, path, epochs=epochs if isinstance(epochs, int) else None, steps_per_epoch=steps_per_epoch)
    _check_resume_environment(meta.get("environment"), model, path)
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
    return state


def _check_resume_environment(saved: Any, model: nn.Module, path: str | os.PathLike) -> None:
    if not isinstance(saved, dict):
        return  # written before environments were recorded
    now = environment(_device_of(model))
    diff = {k: (saved.get(k), v) for k, v in now.items() if k in saved and saved[k] != v}
    if diff:
        text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        warnings.warn(f"resuming {path} in another environment ({text}); the result will differ from an "
                      "uninterrupted run (set e.g. torch.set_num_threads to the recorded value)",
                      RuntimeWarning, stacklevel=3)


def check_config(saved: Mapping[str, Any], now: Mapping[str, Any], where: str | os.PathLike, *,
                 ignore: Iterable[str] = (), defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume or reuse a run folder made with another config.

    Args:
        saved: The config stored in the run folder.
        now: The config of the current call.
        where: The run folder (named in the error).
        ignore: Fields that change how a run executes but not what it computes.
        defaults: The config class's defaults: a field the saved config lacks (the kit gained it
            after the run was made) counts as saved at its default.

    Raises:
        ValueError: Naming the differing fields and both values.
    """
    ignore = set(ignore)
    saved = {**{k: v for k, v in (defaults or {}).items() if k not in saved}, **saved}
    diff = sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"{where} holds a run with a different TrainConfig (differs in {diff}: saved "
            f"{ {k: saved.get(k) for k in diff} }, now { {k: now.get(k) for k in diff} }); "
            "use another out_dir or delete that folder to retrain"
        )


def is_finished(out: str | os.PathLike) -> bool:
    """True when the run folder holds final weights and a done-marker saying ``{"done": true, ...}``.

    Raises:
        ValueError: ``done.json`` exists but is not a done-marker (the message says to delete it).
    """
    out = Path(out)
    marker = out / DONE_FILE
    if not ((out / MODEL_FILE).exists() and marker.exists()):
        return False
    try:
        done = nkio.load_json(marker)
    except (OSError, ValueError) as e:
        raise ValueError(f"{marker} is not a done-marker ({e}); delete it to retrain that run") from e
    if not isinstance(done, dict) or not isinstance(done.get("done"), bool):
        raise ValueError(f"{marker} holds {done!r:.80}, not {{\"done\": true, ...}}; delete it to retrain that run")
    return done["done"]


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
                  ignore: Iterable[str] = (),
                  defaults: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
    saved = nkio.load_json(out / "config.json")
    if not isinstance(saved, dict):
        raise ValueError(f"{out / 'config.json'} holds a {type(saved).__name__}, not a config object; "
                         "delete that run folder to retrain")
    check_config(saved, config, out, ignore=ignore, defaults=defaults)
    model.load_state_dict(nkio.load_state_dict(out / MODEL_FILE))
    metrics = nkio.load_json(out / "metrics.json")
    history = nkio.load_json(out / "history.json") if (out / "history.json").exists() else []
    return metrics, history
