"""Benchmark: the adaptive λ search against the exhaustive grid, and one-data-pass evaluation.

1. **Search vs grid.** Every recorded negation curve that covers its whole grid
   (λ = 0, step, …, top: a benchmark run with ``coef_search="grid"``) is replayed as an
   oracle: :func:`negkit.evaluate.search_coef` asks it for the λ it wants, and the
   exhaustive grid (``exhaustive=True``) over the same maximum range gives the
   reference λ. P and G count the coefficients each evaluated. Sources: every
   ``results.jsonl`` under ``--runs`` (the digits benchmark, Fashion-MNIST runs once
   they exist); when none holds complete curves, a digits run without baselines is
   made first under ``<runs>/bench_coef_search/`` (reused afterwards). Synthetic
   monotone and noisy curves are reported on their own lines. Where the λ differ on a
   recorded curve, the Avg. Gap of both λ is measured on the run's models.
2. **One data pass vs one λ at a time**, wall time of a 21-λ sweep: the small ResNet on
   digits; the tiny open_clip model reading an ImageFolder of PNGs through the CLIP
   preprocessing; on a GPU, ViT-B/32 (random weights: timing does not depend on them).

The last line reads ``coef search: <P> passes vs grid <G> (<ratio>), same λ on <A>/<N> curves``.

Usage::

    python benchmarks/bench_coef_search.py            # full digits run if needed, larger timing sets
    python benchmarks/bench_coef_search.py --quick    # within a minute on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from negkit import benchmark as B
from negkit import merge
from negkit.coefs import coef_grid, negation_evaluator, search_coef
from negkit.evaluate import evaluate
from negkit.results import read_results
from negkit.taskvec import TaskVector

VAL = ("val_forget", "val_control")
KEY = ["setting", "dataset", "scenario", "method", "pool_config", "seed"]


# ------------------------------------------------------------------------- oracle curves
@dataclasses.dataclass
class Curve:
    name: str
    coefs: list[float]
    forget: list[float]
    control: list[float]
    reference: float
    threshold: float = 0.95
    run_dir: Path | None = None
    key: tuple = ()

    @property
    def step(self) -> float:
        return round(min(b - a for a, b in zip(self.coefs, self.coefs[1:])), 6)

    def oracle(self):
        table = {round(c, 6): (f, k) for c, f, k in zip(self.coefs, self.forget, self.control)}

        def evaluate_coefs(coefs):
            missing = [c for c in coefs if round(c, 6) not in table]
            if missing:
                raise KeyError(f"{self.name}: λ {missing[:3]} not recorded")
            return {"val_forget": [table[round(c, 6)][0] for c in coefs],
                    "val_control": [table[round(c, 6)][1] for c in coefs]}
        return evaluate_coefs


def recorded_curves(runs: Path, *, smoke: bool = True) -> tuple[list[Curve], int]:
    """Complete min_forget curves of every results.jsonl under ``runs`` (and how many were incomplete).

    ``smoke=False`` leaves out runs of smoke configs (coarse grids, a few epochs).
    """
    out, incomplete = [], 0
    for path in sorted(runs.rglob("results.jsonl")):
        cfg_path = path.parent / "benchmark_config.json"
        saved = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        if saved.get("smoke") and not smoke:
            continue
        df = read_results(path)
        threshold = saved.get("threshold", 0.95)
        acc = df[(df.metric == "acc") & df.split.isin(VAL) & df.coef.notna() & df.setting.eq("standard")]
        for key, g in acc.groupby(KEY):
            wide = g.drop_duplicates(["coef", "split"], keep="last").pivot(index="coef", columns="split",
                                                                             values="value").dropna()
            coefs = [round(float(c), 6) for c in wide.index]
            if len(coefs) < 3 or coefs[0] != 0.0:
                incomplete += 1
                continue
            step = round(min(b - a for a, b in zip(coefs, coefs[1:])), 6)
            if coefs != coef_grid(0.0, coefs[-1], step):
                incomplete += 1
                continue
            out.append(Curve(f"{path.parent.name}/{'/'.join(map(str, key[1:]))}", coefs,
                             wide.val_forget.tolist(), wide.val_control.tolist(),
                             reference=float(wide.val_control.iloc[0]), threshold=threshold,
                             run_dir=path.parent, key=key))
    return out, incomplete


def synthetic_curves(n: int, noisy: bool, seed: int = 0) -> list[Curve]:
    """Sigmoid-shaped falls of forget and control accuracy on 0..top by 0.05, quantised to 1/300."""
    rng = np.random.default_rng(seed + noisy)
    out = []
    for i in range(n):
        top = float(rng.choice([1.0, 2.0, 4.0, 8.0]))
        grid = np.array(coef_grid(0.0, top, 0.05))
        f_mid, c_mid = rng.uniform(0.1, 0.8) * top, rng.uniform(0.3, 1.5) * top
        forget = 100 / (1 + np.exp((grid - f_mid) / rng.uniform(0.02, 0.3) / top)) + rng.uniform(0, 10)
        control = 90 - 60 / (1 + np.exp(-(grid - c_mid) / rng.uniform(0.05, 0.3) / top))
        if noisy:
            forget = forget + rng.normal(0, 1.0, grid.size)
            control = control + rng.normal(0, 0.5, grid.size)
        q = lambda a: np.round(np.clip(a, 0, 100) * 3) / 3  # noqa: E731 - accuracy on 300 images
        forget, control = q(forget), q(control)
        out.append(Curve(f"{'noisy' if noisy else 'monotone'}#{i}", grid.round(6).tolist(), forget.tolist(),
                         control.tolist(), reference=float(control[0])))
    return out


def replay(curves: list[Curve]) -> list[dict]:
    rows = []
    for c in curves:
        kw = dict(threshold=c.threshold, step=c.step, start=0.0, stop=min(1.0, c.coefs[-1]), max_coef=c.coefs[-1])
        s = search_coef(c.oracle(), c.reference, **kw)
        g = search_coef(c.oracle(), c.reference, exhaustive=True, **kw)
        rows.append({"curve": c, "P": s.n_evaluated, "G": g.n_evaluated, "lam": s.coef, "lam_grid": g.coef})
    return rows


def summarise(label: str, rows: list[dict]) -> tuple[int, int, int, int]:
    p, g = sum(r["P"] for r in rows), sum(r["G"] for r in rows)
    same = sum(r["lam"] == r["lam_grid"] for r in rows)
    if rows:
        print(f"  {label:<22} {len(rows):4d} curves  P={p:6d}  G={g:6d}  P/G={p / g:.3f}  same λ {same}/{len(rows)}")
    return p, g, same, len(rows)


# ------------------------------------------------------------------- producing curves
def make_digits_curves(runs: Path, quick: bool) -> Path:
    """A digits run with exhaustive grids and no baselines (skipped where already done)."""
    fields = {f.name for f in dataclasses.fields(B.BenchmarkConfig)}
    over = dict(baselines=(), coef_search="grid")
    if "seeds" in fields:
        over["seeds"] = (0,)
    if quick:
        over["scenarios"] = ("class_3",)
    cfg = B.default_config(smoke=quick, **over)
    run_dir = runs / "bench_coef_search" / ("digits_smoke" if quick else "digits")
    B.run(cfg, run_dir, device="cpu", progress=False)
    return run_dir


def avg_gap_difference(curve: Curve, lam: float | None, lam_grid: float | None) -> float | None:
    """Avg. Gap at the search's λ minus at the grid's λ, measured on the run's models (None if unavailable)."""
    if lam is None or lam_grid is None or curve.run_dir is None:
        return None
    cfg = B.make_config(json.loads((curve.run_dir / "benchmark_config.json").read_text()))
    _, dataset, scenario, method, member, seed = curve.key
    if "seeds" in {f.name for f in dataclasses.fields(B.BenchmarkConfig)}:
        cfg = dataclasses.replace(cfg, seeds=(int(seed),))
    setup = B.prepare(cfg, curve.run_dir, scenario, device="cpu", progress=False)
    tvs = B.pool_task_vectors(setup)
    if method == "task_arithmetic":
        tau = tvs[member]
    else:
        names = list(tvs)
        tau = merge.get(method)([tvs[n] for n in names], names=names, **cfg.merge_options.get(method, {}))
    from negkit.metrics import avg_gap
    gaps = [avg_gap(B.negated_metrics(setup, tau, lam_), setup.retrain_metrics) for lam_ in (lam, lam_grid)]
    return gaps[0] - gaps[1]


# ------------------------------------------------------------------------------ timing
def _time(fn, repeat: int = 1) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def compare(label: str, model: torch.nn.Module, tau: dict, data, coefs: list[float], device: str,
            batch_size: int, prefix: str = "", load_into: torch.nn.Module | None = None) -> None:
    """Wall time of a λ sweep: one-data-pass evaluator vs loading θ_o − λτ and evaluating per λ."""
    target = load_into if load_into is not None else model
    pre = {k: v.clone() for k, v in target.state_dict().items()}
    tv = TaskVector({k: v for k, v in tau.items()})
    per = []

    def one_at_a_time():
        per.clear()
        for c in coefs:
            target.load_state_dict(tv.apply_to(pre, -c))
            per.append(evaluate(model, data, device=device, batch_size=batch_size)["acc"])
        target.load_state_dict(pre)

    ev = negation_evaluator(model, {prefix + k: v for k, v in tau.items()}, {"val": data}, device=device,
                            batch_size=batch_size)
    out = {}

    def one_pass():
        out.update(ev(coefs))

    t_one = _time(one_pass)
    t_per = _time(one_at_a_time)
    diff = max(abs(a - b) for a, b in zip(out["val"], per))
    print(f"  {label:<46} one pass {t_one:7.2f} s   one λ at a time {t_per:7.2f} s   "
          f"speed-up {t_per / t_one:5.1f}×   max |Δacc| {diff:.2g} pts")


def time_small_resnet(quick: bool, coefs: list[float]) -> None:
    from negkit.data import get as get_dataset
    from negkit.models import get as get_model

    bundle = get_dataset("digits", size=8)
    torch.manual_seed(0)
    model = get_model("small_resnet", num_classes=bundle.num_classes).eval()
    tau = {k: 0.05 * torch.randn_like(v) for k, v in model.named_parameters()}
    data = torch.utils.data.Subset(bundle.val, range(min(len(bundle.val), 200 if quick else len(bundle.val))))
    compare(f"small ResNet, digits val ({len(data)} images)", model, tau, data, coefs, "cpu", 512)


def time_clip_imagefolder(quick: bool, coefs: list[float], device: str, model_name: str | None = None) -> None:
    import negkit.data
    from negkit.clip import model as cm
    from negkit.clip.datasets import write_digits_imagefolder
    from negkit.clip.heads import get_head

    with tempfile.TemporaryDirectory() as tmp:
        per_class = 10 if quick else 60
        # PNGs larger than the model's input, as in the real datasets: decoding and resizing cost.
        write_digits_imagefolder(tmp, name="mnist", size=224, per_class=per_class)
        torch.manual_seed(0)
        if model_name is None:
            backbone = cm.load_clip(cm.TINY_MODEL, None, device=device)
            size = 32
        else:
            backbone = cm.load_clip(model_name, None, device=device)
            size = 224
        bundle = negkit.data.get("mnist", root=tmp, source="imagefolder", image_size=size)
        head = get_head(backbone, "mnist", cache_dir=Path(tmp) / "heads", classnames=bundle.classnames,
                        device=device)
        clf = cm.ImageClassifier.from_backbone(backbone, head).to(device).eval()
        tau = {k: 0.02 * torch.randn_like(v) for k, v in clf.encoder.named_parameters()}
        prefix = next(f"{n}." for n, m in clf.named_modules() if m is clf.encoder)
        label = f"{model_name or 'tiny open_clip'}, ImageFolder PNGs ({len(bundle.test)} images, {device})"
        compare(label, clf, tau, bundle.test, coefs, device, 256, prefix=prefix, load_into=clf.encoder)


# --------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sets; within a minute on 2 cores")
    ap.add_argument("--runs", default="runs", help="folder searched for results.jsonl (default: runs)")
    ap.add_argument("--no-timing", action="store_true", help="skip the one-data-pass timings")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = Path(args.runs)

    print("== λ search vs exhaustive grid (replayed curves)")
    curves, incomplete = recorded_curves(runs, smoke=args.quick) if runs.exists() else ([], 0)
    if not curves:
        print(f"  no complete recorded curves under {runs}/; making a digits run with exhaustive grids")
        make_digits_curves(runs, args.quick)
        curves, incomplete = recorded_curves(runs, smoke=args.quick)
    print(f"  ({incomplete} recorded curves skipped: not a complete grid from λ = 0, e.g. adaptive runs)")
    n_syn = 100 if args.quick else 1000
    summarise("synthetic monotone", replay(synthetic_curves(n_syn, noisy=False)))
    summarise("synthetic noisy", replay(synthetic_curves(n_syn, noisy=True)))
    rows = replay(curves)
    for dataset in sorted({r["curve"].key[1] for r in rows}):
        summarise(f"recorded {dataset}", [r for r in rows if r["curve"].key[1] == dataset])
    for r in rows:
        if r["lam"] != r["lam_grid"]:
            gap = None if args.quick else avg_gap_difference(r["curve"], r["lam"], r["lam_grid"])
            gap_txt = "not measured (--quick)" if args.quick else (
                "n/a" if gap is None else f"{gap:+.2f} pts (search − grid)")
            print(f"  differs: {r['curve'].name}: λ {r['lam']} vs grid {r['lam_grid']}; Avg. Gap {gap_txt}")

    if not args.no_timing:
        coefs = coef_grid(0.0, 1.0, 0.05)
        print(f"== one data pass vs one λ at a time ({len(coefs)} λ, 1 thread)")
        time_small_resnet(args.quick, coefs)
        time_clip_imagefolder(args.quick, coefs, "cpu")
        if torch.cuda.is_available():
            time_clip_imagefolder(args.quick, coefs, "cuda", model_name="ViT-B-32")
        else:
            print("  ViT-B/32 on GPU: no GPU here")

    p, g, same, n = (sum(r["P"] for r in rows), sum(r["G"] for r in rows),
                     sum(r["lam"] == r["lam_grid"] for r in rows), len(rows))
    print(f"coef search: {p} passes vs grid {g} ({p / max(g, 1):.3f}), same λ on {same}/{n} curves")


if __name__ == "__main__":
    main()
