"""Checkpoints as safetensors: saving, streaming and safe loading of state dicts.

:func:`save_state_dict` and :func:`safetensors_writer` write safetensors files
atomically (through :func:`negkit.atomic.atomic_write`), the latter tensor by
tensor so that a merged vector never has to be in memory as a whole.

:func:`load_state_dict` is the one loader for any checkpoint. safetensors files
are read directly; legacy ``.pt``/``.pth``/``.bin`` files only through
``torch.load(weights_only=True)``, whose restricted unpickler refuses to build
arbitrary Python objects. A file that holds a whole pickled ``nn.Module`` (the
format of the original task_vectors / NegMerge releases) is therefore refused
instead of executed; convert it once in an environment you trust.

The atomic writers of :mod:`negkit.atomic` (``atomic_write``, ``save_json``,
``load_json``, ``save_text``, ``clean_orphans``, ``TMP_PREFIX``) are re-exported
here, so ``negkit.io`` stays the one import for reading and writing artefacts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from negkit.atomic import TMP_PREFIX, PathLike, atomic_write, clean_orphans, load_json, save_json, save_text

__all__ = [
    "atomic_write",
    "as_device",
    "save_state_dict",
    "load_state_dict",
    "read_metadata",
    "save_json",
    "load_json",
    "save_text",
    "is_safetensors",
    "safetensors_writer",
    "clean_orphans",
    "TMP_PREFIX",
]

logger = logging.getLogger(__name__)

LEGACY_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_RESERVED = "__metadata__"  # the safetensors header key of the metadata; no tensor may use it
# Wrappers written by common training scripts: {"state_dict": {...}, "epoch": 3, ...}.
_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "module")
_CONVERT_HINT = (
    "Convert it once in an environment you trust: load it there and save only the weights with "
    "`torch.save(model.state_dict(), 'weights.pt')` or "
    "`negkit.io.save_state_dict(model.state_dict(), 'weights.safetensors')`."
)


def _check_names(names: Mapping[str, Any], path: PathLike) -> None:
    bad = [k for k in names if not isinstance(k, str) or not k]
    if bad:
        raise TypeError(f"{path}: tensor names must be non-empty strings; got {bad[:3]}")
    if _RESERVED in names:
        raise ValueError(f"{path}: a tensor may not be named {_RESERVED!r}, the safetensors header key of the file's "
                         "metadata (the file would be unreadable); rename that entry")


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    bad = {k: type(v).__name__ for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        raise TypeError(
            f"safetensors metadata must map str to str; offending entries (key: value type) {bad}. "
            "Encode other values with json.dumps first."
        )
    return dict(metadata)


def save_state_dict(
    state: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save a state dict as safetensors, atomically.

    Tensors are detached, moved to CPU and made contiguous. Tensors that share
    storage with another entry (tied weights) or are views of a larger buffer
    are cloned, since safetensors stores every entry separately.

    Args:
        state: Mapping of names to tensors.
        path: Destination ``.safetensors`` file.
        metadata: Optional ``str -> str`` metadata stored in the file header.

    Returns:
        The destination path.

    Raises:
        TypeError: A value is not a tensor or the metadata is not ``str -> str``.
    """
    meta = _check_metadata(metadata)
    _check_names(state, path)
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"save_state_dict: entry {name!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().to("cpu")
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        whole = storage.nbytes() == t.numel() * t.element_size()
        if ptr in seen or not whole or not t.is_contiguous():
            t = t.contiguous().clone()
        elif t.numel() > 0:
            seen.add(ptr)
        out[name] = t
    with atomic_write(path) as tmp:
        save_file(out, str(tmp), metadata=meta)
    return Path(path)


_ST_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}


@contextlib.contextmanager
def safetensors_writer(
    path: PathLike,
    specs: Mapping[str, tuple[Sequence[int], torch.dtype]],
    metadata: Mapping[str, str] | None = None,
) -> Iterator[Callable[[str, torch.Tensor], None]]:
    """Write a safetensors file tensor by tensor, atomically, without holding the state dict.

    The header (names, dtypes, shapes, offsets) is written first from ``specs``;
    the yielded ``write(name, tensor)`` then appends each tensor's bytes, in the
    order of ``specs``. Used by :func:`negkit.merge.merge_files` so that a merged
    vector never has to be in memory as a whole. The file is a standard
    safetensors file (readable by :func:`load_state_dict` and ``safe_open``).

    Args:
        path: Destination ``.safetensors`` file.
        specs: ``{name: (shape, dtype)}`` in the order the tensors will be written.
        metadata: Optional ``str -> str`` header metadata.

    Yields:
        ``write(name, tensor)``.

    Raises:
        ValueError: A tensor arrives out of order, with another shape or dtype, or
            the block ends before every tensor was written (nothing is left on disk).
    """
    _check_names(specs, path)
    header: dict[str, Any] = {}
    offset = 0
    for name, (shape, dtype) in specs.items():
        if dtype not in _ST_CODES:
            raise TypeError(f"safetensors_writer: {name!r} has unsupported dtype {dtype}")
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    meta = _check_metadata(metadata)
    if meta:
        header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8 bytes with spaces
    order = list(specs)
    done = 0
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)

        def write(name: str, tensor: torch.Tensor) -> None:
            nonlocal done
            if done >= len(order) or name != order[done]:
                want = order[done] if done < len(order) else "nothing (all written)"
                raise ValueError(f"safetensors_writer({path}): got {name!r}, expected {want!r}; "
                                 "write the tensors in the order of specs")
            shape, dtype = specs[name]
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ValueError(f"safetensors_writer({path}): {name!r} is {tuple(tensor.shape)}, {tensor.dtype}; "
                                 f"specs say {tuple(shape)}, {dtype}")
            flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(flat.numpy().data)  # little-endian raw bytes, as safetensors stores them
            done += 1

        yield write
        if done != len(order):
            raise ValueError(f"safetensors_writer({path}): {order[done]!r} and {len(order) - done - 1} more "
                             "tensors were never written; nothing was saved")


def is_safetensors(path: PathLike) -> bool:
    """True when ``path`` starts with a plausible safetensors header.

    The format is an 8-byte little-endian header length followed by a JSON object.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= n <= os.path.getsize(path) - 8


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save zip archives start with "PK\x03\x04"; legacy pickles with the PROTO opcode 0x80.
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_state_dict(path: PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors without executing anything stored in it.

    Args:
        path: A ``.safetensors`` file, or a legacy ``.pt``/``.pth``/``.bin`` file
            holding a (possibly nested) dict of tensors.
        device: Where to put the tensors.

    Returns:
        A flat ``{name: tensor}`` dict. ``{"state_dict": ...}``/``{"model": ...}``
        wrappers and a ``module.`` prefix on every key (DataParallel) are removed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a checkpoint, holds pickled code (e.g. a whole
            ``nn.Module``) or holds non-tensor entries; the message says how to convert it.
    """
    p = _existing_file(path)
    device = as_device(device)
    if p.suffix == ".safetensors" or is_safetensors(p):
        logger.debug("loading safetensors %s", p)
        try:
            return load_file(str(p), device=str(device))
        except (SafetensorError, ValueError, OSError) as e:
            raise ValueError(f"{p} is not a readable safetensors checkpoint: corrupt or truncated ({e})") from e
    if not _looks_like_torch_file(p):
        raise ValueError(
            f"{p} is not a checkpoint: neither safetensors nor a torch.save file. "
            "Pass a .safetensors file or a torch.save()d state dict."
        )
    damage = _damage(p)
    if damage:
        raise ValueError(f"{p} is corrupt or truncated ({damage}); it is not a complete torch.save file. "
                         "Copy or download it again")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        if not _refused_global(e):
            raise ValueError(f"{p} is corrupt or truncated: torch.load failed with {_reason(e)}. "
                             "Copy or download it again") from e
        raise ValueError(
            f"refusing to load {p}: it is not a plain dict of tensors and loading it would run "
            f"pickled code (torch.load weights_only=True said: {_reason(e)}). {_CONVERT_HINT}"
        ) from e
    except Exception as e:  # corrupt archives raise assorted errors
        raise ValueError(f"{p} is corrupt or truncated: torch.load failed with {type(e).__name__}: {e}. "
                         "Copy or download it again") from e
    state = _unwrap(obj, p)
    return {k: v.to(device) for k, v in state.items()}


def _existing_file(path: PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder, not a checkpoint file; pass a file inside it "
                                "(e.g. model.safetensors)")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return p


def as_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device``, or a ``ValueError`` that names it and lists valid ones
    (:func:`negkit.evaluate.resolve_device` adds the ``None`` → cuda-if-available default)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:0' or 'mps'") from e


def _damage(path: Path) -> str | None:
    """Why a torch.save file is structurally broken (None when it looks complete): checked before unpickling."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f"zip archive unreadable: {e}"
        if not any(n.endswith("data.pkl") for n in names):
            return "zip archive without data.pkl"
        return None
    # Legacy (non-zip) pickles: every complete pickle ends with the STOP opcode '.'.
    size = path.stat().st_size
    if size < 2:
        return f"{size} bytes"
    return None


def _refused_global(e: Exception) -> bool:
    """True when torch.load(weights_only=True) refused the file's content (code), not its bytes."""
    text = str(e)
    markers = ("Unsupported global", "Unsupported operand", "GLOBAL", "Trying to load unsupported",
               "Unsupported class", "not an allowed global", "REDUCE", "BUILD")
    broken = ("truncated", "EOF", "unpickling stack underflow", "invalid load key", "failed finding central",
              "PytorchStreamReader failed")
    if any(b in text for b in broken):
        return False
    return any(m in text for m in markers) or isinstance(e, pickle.UnpicklingError) and "Weights only" in text


def _reason(e: Exception) -> str:
    # torch's message is long; the line naming the refused global is the useful part.
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    useful = [ln for ln in lines if "Unsupported" in ln or "GLOBAL" in ln]
    return (useful or [ln for ln in lines if ln] or [type(e).__name__])[0].split(". Please use")[0]


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        nested = [k for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)]
        if not nested:
            break
        obj = obj[nested[0]]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a dict of tensors. {_CONVERT_HINT}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{path}: entries {bad[:5]} are not tensors; expected a state dict "
            f"(optionally wrapped as {{'state_dict': ...}} or {{'model': ...}}). {_CONVERT_HINT}"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_metadata(path: PathLike) -> dict[str, str]:
    """Header metadata of a safetensors file (``{}`` when it has none).

    Legacy torch files carry no metadata; ``{}`` is returned for them without
    loading their content.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a checkpoint.
    """
    p = _existing_file(path)
    if p.suffix == ".safetensors" or is_safetensors(p):
        try:
            with safe_open(str(p), framework="pt") as f:
                return dict(f.metadata() or {})
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{p} is not a readable safetensors checkpoint: corrupt or truncated ({e})") from e
    if _looks_like_torch_file(p):
        return {}
    raise ValueError(f"{p} is not a checkpoint: neither safetensors nor a torch.save file")
