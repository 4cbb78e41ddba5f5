"""Benchmark: streaming ``negkit.merge.merge_files`` vs the naive load-and-stack merge.

K task vectors with the tensor shapes of a CLIP ViT-B/32 image encoder
(``open_clip.create_model("ViT-B-32").visual``, ~88M fp32 parameters, ~350 MB) are
written to a temporary folder; each (implementation, method, K) is then measured
in a fresh subprocess so that memory peaks do not contaminate each other:

* ``negkit`` returns the merged dict; ``negkit→file`` passes ``out_path`` so each
  merged tensor is written as soon as it is folded; ``naive`` is described below.
* wall time and throughput (GB of task-vector data per second: K x vector size / time;
  TIES reads the data three times, see ``negkit.merge.kth_largest_abs``),
* peak anonymous memory (``RssAnon``, sampled every 5 ms from /proc/self/status)
  minus the process baseline after imports, reported apart from the page cache
  mapped by the process (peak ``RssFile`` minus baseline, which already holds the
  shared libraries), and ``VmHWM`` (peak total RSS, libraries included).

The naive approach is the one found in research code: load all K state dicts,
flatten them into a (K, N) matrix, apply the rule, unflatten. It needs about
2K vectors of RAM and is skipped (and reported as such) when it would not fit.

Usage::

    python benchmarks/bench_merge.py            # K in {2, 8, 32}, negmerge and ties
    python benchmarks/bench_merge.py --quick    # small tensors, a few seconds
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GB = 1e9
MB = 2**20


# ------------------------------------------------------------ memory probe
def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                out[name] = int(rest.split()[0]) * 1024
    return out


class PeakSampler(threading.Thread):
    """Samples /proc/self/status every ``interval`` seconds and keeps the maxima."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, _status(), threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            s = _status()
            self.peak = {k: max(v, self.peak.get(k, 0)) for k, v in s.items()}
            time.sleep(self.interval)

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        s = _status()
        return {k: max(v, self.peak.get(k, 0)) for k, v in s.items()}


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------- the naive way
def naive_merge(paths: list[Path], method: str, density: float = 0.2) -> dict:
    """Load all K vectors, stack them into a (K, N) matrix, merge, unflatten."""
    import torch
    from safetensors.torch import load_file

    vecs = [load_file(str(p)) for p in paths]
    keys = list(vecs[0])
    shapes = [vecs[0][k].shape for k in keys]
    M = torch.stack([torch.cat([v[k].flatten() for k in keys]) for v in vecs])  # (K, N)
    del vecs
    K, N = M.shape
    if method == "negmerge":
        pos, neg = (M > 0).sum(0), (M < 0).sum(0)
        flat = torch.where((pos == K) | (neg == K), M.mean(0), torch.zeros(()))
    elif method == "ties":
        n_keep = min(N, max(1, int(density * N + 0.5)))
        thr = torch.stack([row.abs().kthvalue(N - n_keep + 1).values for row in M])  # (K,)
        mask = (M.abs() >= thr[:, None]) & (M != 0)
        trimmed = M * mask
        del M
        pos, neg = mask & (trimmed > 0), mask & (trimmed < 0)
        pos_sum, neg_sum = (trimmed * pos).sum(0), (trimmed * neg).sum(0)
        total = trimmed.sum(0)
        elected = torch.where(total != 0, torch.sign(total), torch.sign(pos.sum(0) - neg.sum(0)).float())
        flat = torch.where(elected > 0, pos_sum / pos.sum(0).clamp_min(1),
                           torch.where(elected < 0, neg_sum / neg.sum(0).clamp_min(1), torch.zeros(())))
    else:
        raise ValueError(f"naive merge implements negmerge and ties, not {method!r}")
    out, i = {}, 0
    for k, s in zip(keys, shapes):
        n = math.prod(s)
        out[k] = flat[i:i + n].view(s).clone()
        i += n
    return out


def naive_bytes(k: int, vec_bytes: int, method: str) -> int:
    """Rough peak of naive_merge: K loaded vectors + the (K, N) stack (+ masks and copies for TIES)."""
    # Measured: negmerge ~(3K + 5) vectors (K loaded + K stacked + masks, int64 sign
    # counts, the mean); ties ~(4.6K + 6) (additionally |M|, the trimmed copy).
    return int(((3 * k + 6) if method == "negmerge" else (4.6 * k + 8)) * vec_bytes + 0.5 * GB)


# ------------------------------------------------------------------ worker
def worker(args: argparse.Namespace) -> None:
    import torch

    from negkit import merge

    torch.set_num_threads(args.threads)
    paths = sorted(Path(args.dir).glob("tv*.safetensors"), key=lambda p: int(p.stem[2:]))[: args.k]
    base = _status()
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    opts = {"density": args.density} if args.method == "ties" else {}
    if args.impl == "negkit":
        out = merge.merge_files(paths, args.method, **opts)
    elif args.impl == "negkit→file":
        target = Path(args.dir) / "merged.safetensors"
        merge.merge_files(paths, args.method, out_path=target, **opts)
    else:
        out = naive_merge(paths, args.method, **opts)
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    if args.impl == "negkit→file":
        n_out = target.stat().st_size // 4
        target.unlink()
    else:
        n_out = sum(t.numel() for t in out.values())
    print(json.dumps({"wall_s": wall, "anon_base": base["RssAnon"], "anon_peak": peak["RssAnon"],
                      "file_base": base["RssFile"], "file_peak": peak["RssFile"], "hwm": peak["VmHWM"],
                      "n_out": n_out}))


# ------------------------------------------------------------------ driver
def vit_b32_shapes() -> dict[str, tuple[int, ...]]:
    import open_clip

    model = open_clip.create_model("ViT-B-32").visual  # random init: only the shapes matter
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if v.is_floating_point()}


def quick_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i in range(4):
        shapes.update({f"blocks.{i}.attn.in_proj_weight": (768, 256), f"blocks.{i}.attn.in_proj_bias": (768,),
                       f"blocks.{i}.mlp.c_fc.weight": (1024, 256), f"blocks.{i}.mlp.c_proj.weight": (256, 1024)})
    return shapes


def write_vectors(folder: Path, shapes: dict, k_max: int) -> int:
    import torch

    from negkit import io

    # A shared direction plus per-vector noise, so signs agree on part of the elements
    # as in a real pool. The shared part is drawn once; each vector adds its own noise.
    g = torch.Generator().manual_seed(0)
    shared = {n: torch.randn(s, generator=g) * 1e-3 for n, s in shapes.items()}
    for i in range(k_max):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(1000 + i)
        vec = {n: torch.randn(s, generator=g).mul_(7e-4).add_(shared[n]) for n, s in shapes.items()}
        io.save_state_dict(vec, folder / f"tv{i}.safetensors")
        del vec
        print(f"  wrote tv{i}.safetensors ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 4 * sum(math.prod(s) for s in shapes.values())


def measure(args: argparse.Namespace, folder: Path, impl: str, method: str, k: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--method", method, "--k", str(k),
           "--dir", str(folder), "--density", str(args.density), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small tensors (~3M params), K in {2, 4, 8}")
    p.add_argument("--ks", type=int, nargs="+", help="pool sizes (default 2 8 32; quick: 2 4 8)")
    p.add_argument("--methods", nargs="+", default=["negmerge", "ties"])
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-naive", action="store_true", help="measure negkit only")
    p.add_argument("--tmpdir", default=None, help="where to write the task vectors (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the written task vectors")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--mem-fraction", type=float, default=0.5,
                   help="run the naive merge only if its estimated peak is below this fraction of MemAvailable")
    # worker-only arguments
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    ks = args.ks or ([2, 4, 8] if args.quick else [2, 8, 32])
    shapes = quick_shapes() if args.quick else vit_b32_shapes()
    folder = Path(tempfile.mkdtemp(prefix="negkit-bench-", dir=args.tmpdir))
    try:
        need = 4 * sum(math.prod(s) for s in shapes.values()) * max(ks)
        free = shutil.disk_usage(folder).free
        if need > 0.9 * free:
            sys.exit(f"need {need / GB:.1f} GB of disk in {folder}, only {free / GB:.1f} GB free; pass --tmpdir")
        print(f"writing {max(ks)} task vectors ({len(shapes)} tensors, "
              f"{sum(math.prod(s) for s in shapes.values()) / 1e6:.1f}M params each) to {folder}", flush=True)
        vec_bytes = write_vectors(folder, shapes, max(ks))
        rows = []
        for method in args.methods:
            for k in ks:
                for impl in ("negkit", "negkit→file") + (() if args.no_naive else ("naive",)):
                    row = {"method": method, "K": k, "impl": impl}
                    if impl == "naive" and naive_bytes(k, vec_bytes, method) > args.mem_fraction * _mem_available():
                        row["note"] = (f"skipped: needs ~{naive_bytes(k, vec_bytes, method) / GB:.1f} GB, "
                                       f"{_mem_available() / GB:.1f} GB available")
                    else:
                        row.update(measure(args, folder, impl, method, k))
                        if "wall_s" in row:
                            passes = 3 if (method == "ties" and impl == "negkit") else 1
                            row["GB_per_s"] = k * vec_bytes / GB / row["wall_s"]
                            row["anon_delta_x_vec"] = (row["anon_peak"] - row["anon_base"]) / vec_bytes
                            row["passes"] = passes
                    rows.append(row)
                    print(_fmt_row(row, vec_bytes), flush=True)
        print(f"\nOne task vector = {vec_bytes / MB:.0f} MiB; threads = {args.threads}; "
              f"page cache warm (files just written).\n")
        print(_table(rows, vec_bytes))
        if args.quick:
            _check_equal(folder, ks[0], args.density)
        if args.json:
            Path(args.json).write_text(json.dumps({"vec_bytes": vec_bytes, "rows": rows}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def _fmt_row(r: dict, vec_bytes: int) -> str:
    if "wall_s" not in r:
        return f"| {r['method']} | {r['K']} | {r['impl']} | {r.get('note') or r.get('error')} | | | | |"
    return (f"| {r['method']} | {r['K']} | {r['impl']} | {r['wall_s']:.2f} | {r['GB_per_s']:.2f} | "
            f"{(r['anon_peak'] - r['anon_base']) / MB:.0f} ({r['anon_delta_x_vec']:.2f}x) | "
            f"{(r['file_peak'] - r['file_base']) / MB:.0f} | {r['hwm'] / MB:.0f} |")


def _table(rows: list[dict], vec_bytes: int) -> str:
    head = ("| method | K | impl | wall s | GB/s | peak anon − base MiB (x vector) | peak RssFile − base MiB | VmHWM MiB |\n"
            "|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_fmt_row(r, vec_bytes) for r in rows])


def _check_equal(folder: Path, k: int, density: float) -> None:
    import torch

    from negkit import merge

    paths = sorted(folder.glob("tv*.safetensors"), key=lambda p: int(p.stem[2:]))[:k]
    for method in ("negmerge", "ties"):
        a, b = merge.merge_files(paths, method, density=density) if method == "ties" else \
            merge.merge_files(paths, method), naive_merge(paths, method, density)
        ok = all(torch.allclose(a[n], b[n], atol=1e-9) for n in a)
        print(f"check K={k} {method}: negkit == naive (allclose): {ok}")


if __name__ == "__main__":
    main()
