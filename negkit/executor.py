"""Executors: who runs the benchmark's units — this process, or Ray tasks on a cluster.

:func:`run_benchmark` checks the config and the run folder, runs every unit of
:func:`negkit.benchmark.units.training_units` and then of
:func:`~negkit.benchmark.units.negation_units` (the λ searches) that is not done yet,
then calls the ordinary :func:`negkit.benchmark.run`, which finds every model trained
and every negation's outcome saved, and writes the records. Both executors call the
same unit functions into the same folders with the same done-markers, so they give
the same records, and a run started by one resumes under the other.

- ``"local"``: the units one after another in this process, or with ``workers > 1`` in
  that many worker processes (spawned; each keeps this process's thread count), a unit
  starting once every unit it waits for is finished. Units write separate folders and
  are deterministic at a fixed thread count, so the records are the same as with one.
- ``"ray"``: one Ray task per unit, each asking for ``cpus_per_task`` CPUs and
  ``gpus_per_task`` GPUs (a fraction packs several small models on one GPU); a task
  that fails is retried ``retries`` times. Pool members and baselines wait for
  Original; a negation waits for Original, Retrain and the pool members it negates.
  Without ``address`` an embedded Ray starts on this machine's CPUs; with
  ``address`` (``"auto"`` or ``"<head-ip>:6379"``) the units run on that cluster, and
  ``run_dir`` and the data root must be on storage every node sees at the same path.

Ray is optional (``pip install 'negkit[ray]'``) and only imported when asked for.

Example::

    from negkit import benchmark, executor
    df = executor.run_benchmark(benchmark.default_config(smoke=True), "runs/smoke", executor="ray")
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from negkit.benchmark import BenchmarkConfig, run
from negkit.benchmark import units as U
from negkit.evaluate import resolve_device
from negkit.lock import live_workers, lock_run_dir, register_worker

log = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "UnitFailed", "run_benchmark", "run_units"]

EXECUTORS = ("local", "ray")


class UnitFailed(RuntimeError):
    """A unit raised; the message names the unit and carries its traceback."""

    def __init__(self, unit: str, detail: str) -> None:
        super().__init__(f"training unit {unit!r} failed: {detail}")
        self.unit = unit


def run_benchmark(cfg: BenchmarkConfig, run_dir: str | Path, *, executor: str = "local",
                  address: str | None = None, num_cpus: int | None = None, cpus_per_task: float = 1,
                  gpus_per_task: float = 0, retries: int = 2, device: str | None = None,
                  progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Run every unit with ``executor``, then record with :func:`negkit.benchmark.run`.

    Args:
        cfg: The benchmark's configuration.
        run_dir: Folder of the run (shared storage on a cluster).
        executor: ``"local"`` or ``"ray"``.
        address: Ray only: an existing cluster to join; None starts an embedded one.
        num_cpus: Ray only, embedded: CPUs it may use (None: all of this machine's).
        cpus_per_task: Ray only: CPUs each unit asks for.
        gpus_per_task: Ray only: GPUs each unit asks for (0.25: four units share a GPU).
        retries: Ray only: further attempts of a failed unit.
        device: Device of the units (None: ``"cuda"`` for Ray units given a GPU, else
            ``"cpu"``; locally cuda when available) and of the evaluation in this process.
        progress: One overall progress bar (plus Original/Retrain/evaluation bars of ``run``).
        workers: Local only: processes that run independent units at once (1: one after
            another in this process). Each keeps this process's thread count, so give
            ``workers × threads`` no more than the CPUs at hand. The processes are spawned:
            a script that asks for them needs the ``if __name__ == "__main__":`` guard.

    Returns:
        The records of ``run_dir/results.jsonl``, as :func:`negkit.benchmark.run` returns them.

    Raises:
        ValueError: Unknown executor, bad resources (``workers`` with Ray), or anything :func:`units.validate` refuses.
        UnitFailed: A unit still failed after its retries (names it; carries its traceback).
        ImportError: ``executor="ray"`` without Ray installed.
    """
    _check(executor, address, num_cpus, cpus_per_task, gpus_per_task, retries, workers, device)
    U.validate(cfg, run_dir)  # before the lock creates run_dir
    with lock_run_dir(run_dir, device=device):  # one lock over training and evaluation
        run_units(cfg, run_dir, executor=executor, address=address, num_cpus=num_cpus,
                  cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, retries=retries, device=device,
                  progress=progress, workers=workers)
        return run(cfg, run_dir, device=device, progress=progress)


def _check(executor: str, address: str | None, num_cpus: int | None, cpus_per_task: float, gpus_per_task: float,
           retries: int, workers: int, device: str | None = None) -> None:
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; valid executors are {list(EXECUTORS)}")
    if cpus_per_task <= 0 or gpus_per_task < 0 or retries < 0:
        raise ValueError(f"need cpus_per_task > 0, gpus_per_task >= 0 and retries >= 0; got "
                         f"{cpus_per_task}, {gpus_per_task}, {retries}")
    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"num_cpus must be >= 1 (or None for all CPUs), got {num_cpus}")
    if executor == "local" and address is not None:
        raise ValueError("address joins a Ray cluster; pass executor='ray' with it")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 (1: one unit after another), got {workers!r}")
    if executor == "local" and gpus_per_task:
        raise ValueError(f"gpus_per_task={gpus_per_task:g} asks Ray for GPUs, but executor='local' does not use "
                         "Ray; pass executor='ray' (--executor ray), or device='cuda' (--device cuda) for the "
                         "local one")
    if device is not None:
        resolve_device(device)  # a GPU this machine lacks fails here, before any unit starts
    if executor != "local" and workers != 1:
        raise ValueError(f"workers={workers} is for the local executor; Ray runs as many units at once as "
                         "num_cpus / cpus_per_task allow")


def run_units(cfg: BenchmarkConfig, run_dir: str | Path, *, executor: str = "local", address: str | None = None,
              num_cpus: int | None = None, cpus_per_task: float = 1, gpus_per_task: float = 0,
              retries: int = 2, device: str | None = None, progress: bool = True, workers: int = 1) -> list[str]:
    """Only the units of :func:`run_benchmark`, training and λ searches (same arguments).

    Returns:
        Names of the units that were run (those not done before).
    """
    _check(executor, address, num_cpus, cpus_per_task, gpus_per_task, retries, workers, device)
    U.validate(cfg, run_dir)
    with lock_run_dir(run_dir, device=device):  # the units' workers write under this process's lock
        return _run_units(cfg, Path(run_dir), executor, address=address, num_cpus=num_cpus,
                          cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, retries=retries,
                          device=device, progress=progress, workers=workers)


def _run_units(cfg: BenchmarkConfig, run_dir: Path, executor: str, *, address: str | None, num_cpus: int | None,
               cpus_per_task: float, gpus_per_task: float, retries: int, device: str | None,
               progress: bool, workers: int) -> list[str]:
    every = U.training_units(cfg) + U.negation_units(cfg)  # negations after what they need
    todo = [u for u in every if not U.is_done(cfg, run_dir, u)]
    log.info("%d units to run (%d already done)", len(todo), len(every) - len(todo))
    if todo:
        desc = f"units ({executor}" + (f", {workers} workers)" if workers > 1 else ")")
        bar = tqdm(total=len(todo), desc=desc, unit="unit", disable=not progress)
        with bar:
            if executor == "local" and workers > 1:
                _processes(cfg, run_dir, todo, device, bar, workers)
            elif executor == "local":
                _local(cfg, run_dir, todo, device, bar)
            else:
                _ray(cfg, run_dir, todo, bar, address=address, num_cpus=num_cpus,
                     cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, retries=retries, device=device)
    return [u.name for u in todo]


def _local(cfg: BenchmarkConfig, run_dir: Path, todo: list[U.Unit], device: str | None, bar: tqdm) -> None:
    for unit in todo:
        bar.set_postfix_str(unit.name)
        start = time.perf_counter()
        try:
            U.run_unit(cfg, run_dir, unit, device=device)
        except Exception as err:
            raise UnitFailed(unit.name, "\n" + traceback.format_exc()) from err
        log.info("unit %s done in %.1f s", unit.name, time.perf_counter() - start)
        bar.update()


def _worker_init(threads: int, parent: int | None = None, run_dir: str | None = None) -> None:
    """Start of a local worker process: this process's thread count, and tied to its parent's life.

    A worker must not outlive the process that handed it units (it would go on writing
    into a run dir a resumed run also writes). On Linux the kernel kills it when its parent
    dies (``PR_SET_PDEATHSIG``); everywhere a watchdog thread exits it once the parent is
    gone. Ctrl-C is the parent's to handle: the worker ignores SIGINT and is terminated.
    With ``run_dir`` the worker records its PID there (:func:`negkit.lock.register_worker`),
    so that a resume refuses while it is still alive.
    """
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except OSError:  # no libc by that name: the watchdog below still works
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="negkit-parent-watch").start()
    if run_dir is not None:
        register_worker(run_dir)


def _watch_parent(parent: int, every: float = 1.0) -> None:
    """Exit this worker as soon as ``parent`` is no longer its parent (it died; init adopted us)."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)


def _processes(cfg: BenchmarkConfig, run_dir: Path, todo: list[U.Unit], device: str | None, bar: tqdm,
               workers: int) -> None:
    """The units in ``workers`` spawned processes; a unit is handed out once the units it waits for are done.

    At most ``workers`` units are out at a time, picked in ``todo``'s order among the ready
    ones, so a seed's Original and its dependants go before the next seed's work. After a
    failure nothing new starts; the units still running finish (their folders stay resumable).
    """
    import torch

    unfinished = {u.name for u in todo}  # units done before are not waited for
    waiting = list(todo)
    running: dict[cf.Future, U.Unit] = {}
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    try:
        with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                    initargs=(torch.get_num_threads(), os.getpid(), str(run_dir))) as pool:
            try:
                _hand_out(pool, cfg, run_dir, waiting, running, unfinished, device, bar, workers)
            except (KeyboardInterrupt, SystemExit):  # Ctrl-C or a kill: no worker may go on writing the run dir
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        live_workers(run_dir)  # drops the records of the workers that have exited


def _hand_out(pool: cf.ProcessPoolExecutor, cfg: BenchmarkConfig, run_dir: Path, waiting: list[U.Unit],
              running: dict[cf.Future, U.Unit], unfinished: set[str], device: str | None, bar: tqdm,
              workers: int) -> None:
    """The scheduling loop of :func:`_processes`: hand out ready units, collect results, fail on the first error."""
    while waiting or running:
        for unit in [u for u in waiting if not unfinished.intersection(u.after)][:workers - len(running)]:
            waiting.remove(unit)
            running[pool.submit(_remote_unit, cfg, str(run_dir), unit, device)] = unit
        if not running:  # cannot happen for the units' lists; guards against a dependency cycle
            raise RuntimeError(f"units wait for units that never run: {[u.name for u in waiting]}")
        finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for future in finished:
            unit = running.pop(future)
            try:
                info = future.result()
            except Exception as err:  # the worker's RuntimeError from _remote_unit carries its traceback
                detail = str(err) if isinstance(err, RuntimeError) else f"{type(err).__name__}: {err}"
                raise UnitFailed(unit.name, f"in a worker process, {detail}") from None
            unfinished.discard(unit.name)
            log.info("unit %s done in %.1f s (pid %d)", unit.name, info["seconds"], info["pid"])
            bar.set_postfix_str(f"{len(running)} running; last: {unit.name}")
            bar.update()


def _remote_unit(cfg: BenchmarkConfig, run_dir: str, unit: U.Unit, device: str | None, *after: Any) -> dict:
    """Body of a Ray task or a local worker process; ``after`` are the results of the units it waits for (unused)."""
    start, host = time.perf_counter(), os.uname().nodename
    try:
        U.run_unit(cfg, run_dir, unit, device=device)
    except Exception as err:
        # The traceback as the worker saw it, in plain text, whatever Ray does to the exception on its way back.
        raise RuntimeError(f"on {host} (pid {os.getpid()}):\n{traceback.format_exc()}") from err
    return {"unit": unit.name, "seconds": time.perf_counter() - start, "host": host, "pid": os.getpid()}


def _cancel(ray: Any, refs: list) -> None:
    """Cancel queued and running Ray tasks (force: a running unit's worker is killed; it resumes next time)."""
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception as err:  # already finished, or the cluster is gone: nothing left to stop
            log.debug("cancelling %s: %s", ref, err)


def _ray(cfg: BenchmarkConfig, run_dir: Path, todo: list[U.Unit], bar: tqdm, *, address: str | None,
         num_cpus: int | None, cpus_per_task: float, gpus_per_task: float, retries: int,
         device: str | None) -> None:
    try:
        import ray
    except ImportError as err:
        raise ImportError("executor='ray' needs Ray: pip install 'negkit[ray]' (make install includes it)") from err
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(_remote_unit)
        resources = dict(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=retries, retry_exceptions=True)
        device = device or ("cuda" if gpus_per_task > 0 else "cpu")
        # Units run in the list's order of submission; a unit's refs to the units it waits for
        # make Ray hold it back until they are finished (units done earlier are not waited for).
        refs: dict[str, Any] = {}
        names: dict[Any, str] = {}
        for unit in todo:
            deps = [refs[a] for a in unit.after if a in refs]
            ref = task.options(name=unit.name, **resources).remote(cfg, str(run_dir), unit, device, *deps)
            refs[unit.name], names[ref] = ref, unit.name
        pending = list(names)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                name = names[ready[0]]
                try:
                    info = ray.get(ready[0])
                except Exception as err:  # RayTaskError; its cause is the worker's RuntimeError from _remote_unit
                    cause = getattr(err, "cause", None)
                    detail = str(cause) if isinstance(cause, RuntimeError) else f"{type(err).__name__}: {err}"
                    raise UnitFailed(name, f"after {retries + 1} attempt(s) on Ray, {detail}") from None
                log.info("unit %s done in %.1f s on %s", name, info["seconds"], info["host"])
                bar.set_postfix_str(f"{len(pending)} queued or running; last: {name}")
                bar.update()
        except BaseException:  # a failed unit, Ctrl-C or any error: nothing of this run keeps running
            _cancel(ray, pending)
            raise
    finally:
        if started:
            ray.shutdown()
