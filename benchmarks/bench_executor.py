"""Training units of the digits benchmark: one after another vs Ray tasks on local workers.

Both executors train the same units (:func:`negkit.benchmark.units.training_units`: per
seed Original, per scenario Retrain, the pool and the baselines) into fresh run folders;
the evaluation that follows (:func:`negkit.benchmark.run`) is the same for both and is
not timed. Ray's start-up is timed on its own and included in Ray's wall time. The
tensors the two produce are compared at the end (they must be identical).

With a GPU and ``--gpus-per-task`` (e.g. 0.25), the Ray run packs that many units per
GPU (fractional GPUs) and the sequential run trains on the GPU too.

Usage::

    python benchmarks/bench_executor.py --quick          # one scenario, smoke pool (~1-2 min on 2 cores)
    python benchmarks/bench_executor.py                  # one seed, both scenarios, the 27-member pool
    python benchmarks/bench_executor.py --workers 8 --gpus-per-task 0.25   # a GPU machine
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from negkit import benchmark as B
from negkit import executor, io
from negkit.benchmark import units


def _tensors_equal(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("model.safetensors"))
    if files != sorted(p.relative_to(b) for p in b.rglob("model.safetensors")):
        return False
    for rel in files:
        x, y = io.load_state_dict(a / rel), io.load_state_dict(b / rel)
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one scenario, the smoke pool (4 members), one baseline")
    p.add_argument("--workers", type=int, default=2, help="CPUs of the embedded Ray (one unit per CPU)")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPU share of each Ray unit (needs CUDA)")
    p.add_argument("--run-dir", help="where the two runs go (default: a temporary folder, deleted)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if args.quick:
        cfg = B.default_config(smoke=True, scenarios=("class_3",), baselines=("ga",))
    else:
        cfg = B.default_config(seeds=(0,), baseline_grid={})
    device = "cuda" if args.gpus_per_task > 0 else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--gpus-per-task needs a CUDA GPU")
    todo = units.training_units(cfg)
    kinds = {k: sum(u.kind == k for u in todo) for k in units.KINDS}
    print(f"digits, {len(cfg.seeds)} seed(s) × {len(cfg.scenarios)} scenario(s): {len(todo)} training units {kinds}")
    print(f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))

    root = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="bench_executor_"))
    seq_dir, ray_dir = root / "sequential", root / "ray"
    for d in (seq_dir, ray_dir):
        shutil.rmtree(d, ignore_errors=True)

    start = time.perf_counter()
    executor.run_units(cfg, seq_dir, executor="local", device=device, progress=False)
    t_seq = time.perf_counter() - start

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_init = time.perf_counter() - start
    try:
        executor.run_units(cfg, ray_dir, executor="ray", cpus_per_task=1, gpus_per_task=args.gpus_per_task,
                           device=device, progress=False)
    finally:
        ray.shutdown()
    t_ray = time.perf_counter() - start
    same = _tensors_equal(seq_dir, ray_dir)
    if not args.run_dir:
        shutil.rmtree(root, ignore_errors=True)

    ray_label = f"ray, {args.workers} workers" + (f", {args.gpus_per_task:g} GPU/unit" if args.gpus_per_task else "")
    print(f"{'executor':<28}{'wall s':>10}{'speedup':>10}")
    print(f"{'sequential (local)':<28}{t_seq:>10.1f}{1.0:>10.2f}")
    print(f"{ray_label:<28}{t_ray:>10.1f}{t_seq / t_ray:>10.2f}   (of which Ray start-up {t_init:.1f} s)")
    print(f"{'ray without start-up':<28}{t_ray - t_init:>10.1f}{t_seq / (t_ray - t_init):>10.2f}")
    print(f"identical tensors: {same}")


if __name__ == "__main__":
    main()
