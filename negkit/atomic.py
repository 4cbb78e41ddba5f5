"""Atomic file writes: every file the kit writes appears whole or not at all.

:func:`atomic_write` yields a temporary path in the destination folder; once the
block has written it, the file is flushed to disk and renamed over the destination
(``os.replace`` is atomic on POSIX and Windows), so an interrupted run never leaves a
half-written checkpoint, results table or figure behind. A failed write removes its
temporary and raises an ``OSError`` (same errno) that names the destination and the
fix. Temporaries left by a killed process are removed by :func:`clean_orphans`.

:func:`save_text` and :func:`save_json` are the text writers built on it;
:func:`load_json` is their reader. Safetensors checkpoints are written through the
same context manager by :mod:`negkit.io`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "atomic_write",
    "clean_orphans",
    "save_text",
    "save_json",
    "load_json",
    "TMP_PREFIX",
]

PathLike = str | os.PathLike
#: Temporary files of :func:`atomic_write` are named ``.tmp-<12 hex digits>-<destination name>``.
TMP_PREFIX = ".tmp-"
_TMP_RE = re.compile(r"\.tmp-[0-9a-f]{12}-")
_NAME_MAX = 255  # bytes in a file name on common file systems


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path, then move it into place.

    The temporary file lives in the destination folder (so the final rename never
    crosses file systems) and ends with the destination's file name, so writers
    that infer the format from the extension (``savefig``) keep working.

    Example::

        with atomic_write("runs/fig.png") as tmp:
            fig.savefig(tmp)

    Args:
        path: Final destination. Parent folders are created.

    Yields:
        The temporary path to write to.

    Raises:
        FileNotFoundError: The block finished without creating the temporary file.
        OSError: Writing, syncing or renaming failed (disk full, a name too long...): the
            temporary file is removed and the error (same errno) names ``path`` and the fix.
    """
    dest = Path(path)
    try:
        if dest.is_dir():
            raise IsADirectoryError(f"atomic_write({dest}): the destination is a folder; pass a file path")
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _named(e, dest) from e
    tmp = dest.with_name(_tmp_name(dest.name))
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(
                f"atomic_write({dest}): nothing was written to the temporary path {tmp}; "
                "write the content to the path the context manager yields"
            )
        # Writers differ (safetensors creates 0600 files, open() 0666 & ~umask): one mode for every file.
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except OSError as e:  # disk full, quota, a name too long: no temporary file stays, the error names dest
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _named(e, dest) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


def _named(err: OSError, dest: Path) -> OSError:
    """``err`` as an OSError (same errno, so the same subclass) whose message names ``dest`` and the fix."""
    if err.errno is None or (err.strerror or "").startswith("could not write"):
        return err
    hint = {errno.ENOSPC: "free disk space and rerun (finished work is kept)",
            errno.EDQUOT: "free space within your quota and rerun",
            errno.ENAMETOOLONG: f"a file name may have at most {_NAME_MAX} bytes; choose a shorter name",
            errno.EROFS: "the file system is read-only; write somewhere else",
            errno.EACCES: "you may not write there; choose another path"}.get(err.errno, "nothing was written there")
    return OSError(err.errno, f"could not write {dest}: {err.strerror or err}; {hint}", str(dest))


def _tmp_name(name: str) -> str:
    """``.tmp-<hex>-<name>``, shortening the stem (never the suffix) so it fits a file name's 255 bytes."""
    prefix = f"{TMP_PREFIX}{secrets.token_hex(6)}-"
    if len((prefix + name).encode("utf-8")) <= _NAME_MAX:
        return prefix + name
    suffix = Path(name).suffix if len(Path(name).suffix) < 32 else ""
    stem = name[: len(name) - len(suffix)]
    while stem and len((prefix + stem + suffix).encode("utf-8")) > _NAME_MAX:
        stem = stem[:-1]
    return prefix + stem + suffix


def _umask() -> int:
    """The process umask, read without changing it where the platform allows (changing it races with threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform, so best effort.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def clean_orphans(folder: PathLike) -> list[Path]:
    """Remove the temporary files that writes interrupted by a killed process left under ``folder``.

    Only files named like :func:`atomic_write`'s temporaries are removed. Call it
    only while no other process writes there (:func:`negkit.lock.lock_run_dir` does,
    holding the run dir's lock).

    Returns:
        The removed paths.
    """
    removed = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if _TMP_RE.match(name):
                p = Path(root) / name
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


def save_text(text: str, path: PathLike) -> Path:
    """Write a UTF-8 text file atomically (CSV, Markdown, logs...)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # tensors (on any device, with or without grad), numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"save_json: cannot encode {type(obj).__name__} ({obj!r:.80}) as JSON")


def save_json(obj: Any, path: PathLike, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON, atomically. Paths, tensors and numpy values are converted."""
    text = json.dumps(obj, indent=indent, default=_json_default, allow_nan=True)
    return save_text(text + "\n", path)


def load_json(path: PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
