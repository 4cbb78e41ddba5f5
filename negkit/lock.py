"""One writer per run dir: an exclusive lock, orphan clean-up and the recorded run environment.

Every runner that writes a run dir (``negkit.benchmark.run``, the CLIP protocol,
forget-vector runs, pool fine-tuning) holds :func:`lock_run_dir` while it works,
usually through the :func:`locks_run_dir` decorator. The lock is an exclusive
``fcntl.flock`` on ``<run dir>/.negkit.lock``:

* a second process that opens the same run dir fails at once with
  :class:`RunDirLocked`, naming the PID and host of the holder (written into the
  lock file);
* the kernel drops a flock when its holder dies, so a lock left by a killed
  process never blocks anyone; the leftover holder record is reported as stale
  and replaced;
* the same process may re-enter a run dir it holds (a runner calling another).

Opening a run dir also removes the temporary files of writes that a killed
process left behind (:func:`negkit.atomic.clean_orphans`), and records the run
environment (thread count, torch and negkit versions, device) in
``environment.json``: a resume under another environment warns, because results
are bitwise deterministic only at a fixed thread count, device and version.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar, Union

import torch

from negkit import __version__, atomic
from negkit.evaluate import resolve_device

__all__ = ["RunDirLocked", "lock_run_dir", "locks_run_dir", "holder", "environment", "check_environment",
           "register_worker", "live_workers", "LOCK_FILE", "ENV_FILE", "WORKERS_DIR"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".negkit.lock"
WORKERS_DIR = ".negkit.workers"  # one record per live local worker process (register_worker)
ENV_FILE = "environment.json"
F = TypeVar("F", bound=Callable[..., Any])
#: How a decorated runner names its run dir: an argument name, or a function of the bound arguments.
RunDirOf = Union[str, Callable[[Mapping[str, Any]], Any]]

_held: dict[str, int] = {}  # run dirs this process holds -> nesting depth
_held_guard = threading.Lock()


class RunDirLocked(RuntimeError):
    """Another process holds the run dir's lock."""


def holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The holder record in a run dir's lock file (``pid``, ``host``, ``since``), or None if there is none."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8")
        info = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refusal(run_dir: Path, info: dict[str, Any] | None) -> RunDirLocked:
    if not info:
        return RunDirLocked(f"{run_dir} is in use by another process (its lock file {LOCK_FILE} names no holder "
                            "yet); wait for that run to finish or use another run dir")
    pid, host = info.get("pid"), info.get("host")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"])) if "since" in info else "?"
    text = f"{run_dir} is in use by PID {pid} on host {host} (since {since})"
    if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        text += (f"; PID {pid} is no longer running, but a process it started still holds the lock "
                 "(a DataLoader worker or a child it forked); stop that process")
    else:
        text += "; wait for that run to finish, stop it, or use another run dir"
    return RunDirLocked(text)


@contextlib.contextmanager
def lock_run_dir(run_dir: str | os.PathLike, *, device: Any = None, clean: bool = True) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the duration of the block.

    On entry (not when this process already holds it): temporary files of
    interrupted writes under ``run_dir`` are removed and the run environment is
    recorded or compared with the recorded one (a difference warns).

    Args:
        run_dir: The run folder.
        device: The device the run computes on (recorded in ``environment.json``);
            None: cuda if available, else cpu.
        clean: Remove orphaned temporary files.

    Yields:
        ``run_dir`` as a Path.

    Raises:
        RunDirLocked: Another process holds the lock (the message names its PID and host), or
            a worker process of an earlier run is still alive (:func:`live_workers`; named too).
        OSError: The file system does not support locks (the message says so).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run dir {run_dir} is a file; pass a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield run_dir
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _refusal(run_dir, holder(run_dir)) from None
            raise OSError(e.errno, f"cannot lock {run_dir / LOCK_FILE} ({e.strerror}); the file system may not "
                                   "support locks: use a run dir on a local disk") from e
        live = live_workers(run_dir)  # a worker of a killed run may still be writing (its parent held the lock)
        if live:
            pids = ", ".join(str(w["pid"]) for w in live)
            raise RunDirLocked(f"{run_dir} is still being written by worker process(es) {pids} of an earlier run "
                               f"on this host (recorded in {WORKERS_DIR}/); wait for them to exit or stop them "
                               f"(kill {pids}), then resume")
        stale = holder(run_dir)
        if stale:
            logger.warning("%s: taking over the stale lock of PID %s on host %s (that process ended without "
                           "releasing it)", run_dir, stale.get("pid"), stale.get("host"))
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode("utf-8"), 0)
        with _held_guard:
            _held[key] = 1
        try:
            if clean:
                removed = atomic.clean_orphans(run_dir)
                if removed:
                    logger.info("%s: removed %d temporary file(s) of interrupted writes", run_dir, len(removed))
            check_environment(run_dir, device=device)
            yield run_dir
        finally:
            with _held_guard:
                _held.pop(key, None)
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (``/proc/<pid>/stat`` field 22), to tell a reused PID apart.

    None off Linux or when ``pid`` is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def register_worker(run_dir: str | os.PathLike) -> Path:
    """Record this process as a worker writing ``run_dir`` (``<run dir>/.negkit.workers/<pid>.json``).

    A worker process does not hold the run dir's lock (its parent does); the record lets a
    later :func:`lock_run_dir` refuse while a worker of a killed run is still alive.

    Returns:
        The record's path (removed by :func:`live_workers` once the process is gone).
    """
    pid = os.getpid()
    info = {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid), "parent": os.getppid()}
    return atomic.save_json(info, Path(run_dir) / WORKERS_DIR / f"{pid}.json")


def live_workers(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Recorded workers of ``run_dir`` still running on this host; the records of ended ones are removed.

    A record counts as live when its PID exists (``os.kill(pid, 0)``) with the recorded start
    time (a PID the system reused for another process does not count). Records of other
    hosts cannot be checked here and are left alone.
    """
    folder, here, live = Path(run_dir) / WORKERS_DIR, socket.gethostname(), []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = atomic.load_json(path)
            pid = int(info["pid"])
        except (OSError, ValueError, TypeError, KeyError):
            info, pid = None, None
        if info is not None and info.get("host") != here:
            continue
        if pid is not None and pid != os.getpid() and _alive(pid) and info.get("start") == _start_time(pid):
            live.append(info)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty: no worker left to wait for
    return live


def locks_run_dir(run_dir_of: RunDirOf = "run_dir") -> Callable[[F], F]:
    """Decorate a runner so that it holds :func:`lock_run_dir` on its run dir while it runs.

    Args:
        run_dir_of: The name of the argument holding the run dir, or a function of
            the bound arguments (a dict) returning it. A run dir of None takes no lock.
            An argument named ``device`` (or a ``device`` among ``**kwargs``) is
            recorded as the run's device.
    """
    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:
                return fn(*args, **kwargs)  # let the call raise its own, clearer error
            bound.apply_defaults()
            a = bound.arguments
            run_dir = a.get(run_dir_of) if isinstance(run_dir_of, str) else run_dir_of(a)
            if run_dir is None:
                return fn(*args, **kwargs)
            extra = a.get("kwargs") if isinstance(a.get("kwargs"), Mapping) else {}
            with lock_run_dir(run_dir, device=a.get("device", extra.get("device"))):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def environment(device: Any = None) -> dict[str, Any]:
    """What a run's bitwise results depend on besides its config: threads, versions, device type."""
    kind = resolve_device(device).type
    return {"threads": torch.get_num_threads(), "torch": torch.__version__.split("+")[0], "negkit": __version__,
            "python": ".".join(map(str, sys.version_info[:2])), "device": kind}


def check_environment(run_dir: str | os.PathLike, *, device: Any = None) -> dict[str, Any]:
    """Record the environment in ``run_dir/environment.json``, or warn when it differs from the recorded one.

    Returns:
        The fields that differ, ``{name: (recorded, now)}`` (empty on the first run).
    """
    path = Path(run_dir) / ENV_FILE
    now = environment(device)
    if not path.exists():
        atomic.save_json(now, path)
        return {}
    try:
        saved = atomic.load_json(path)
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        warnings.warn(f"{path} is not an environment record; rewriting it", RuntimeWarning, stacklevel=3)
        atomic.save_json(now, path)
        return {}
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        warnings.warn(f"{run_dir} was started in another environment ({text}); results of the resumed run may "
                      "differ from an uninterrupted one (e.g. set torch.set_num_threads to the recorded value)",
                      RuntimeWarning, stacklevel=3)
    return diff
