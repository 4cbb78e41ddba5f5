"""The Fashion-MNIST benchmark: the paper's protocol over seeds, then its tables and diagnostics.

Two steps, run by ``make bench-fashion`` around notebooks 02-05:

    python benchmarks/fashion_mnist.py run    [--run-dir runs/fashion_mnist] [--full] [--device cuda]
    python benchmarks/fashion_mnist.py report [--run-dir runs/fashion_mnist] [--figures-dir figures]

``run`` trains and evaluates every weight-space method (:func:`negkit.benchmark.fashion_mnist_config`;
``--full`` takes the whole training set and the paper-sized pool, meant for a GPU) and
prints the wall time. ``report`` learns the forget vectors of every seed (notebook 04 has
done seed 0's with the same settings) and writes ``<figures>/fashion_mnist_results.csv`` (one row per
setting, scenario, method, metric and seed), ``fashion_mnist_summary.csv`` (mean ± std over
seeds, both λ rules), ``fashion_mnist_paired.csv`` (NegMerge minus validation-selected Task
Arithmetic and minus the uniform merge, seed by seed, with 95 % t-intervals) and the figures
``fashion_mnist_{results_errorbars,paired,pool_diversity,consensus_vs_k,member_curves}``.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from negkit import analysis, benchmark, executor, plotting  # noqa: E402
from negkit import forget_vectors as fvs  # noqa: E402
from negkit.config import from_dict  # noqa: E402
from negkit.io import save_text  # noqa: E402
from negkit.plotting import diagnostics  # noqa: E402

DATASET = "fashion_mnist"
FV_EPOCHS = 5  # forget vectors: the epochs make bench-fashion passes to notebook 04


def _config(args: argparse.Namespace) -> benchmark.BenchmarkConfig:
    return benchmark.fashion_mnist_config(full=args.full, quick=args.quick, data_root=args.data_root)


def run(args: argparse.Namespace) -> None:
    cfg = _config(args)
    start = time.time()
    df = executor.run_benchmark(cfg, args.run_dir, device=args.device, progress=args.progress, workers=args.workers)
    minutes = (time.time() - start) / 60
    print(f"fashion_mnist benchmark: {len(df)} records, {len(cfg.seeds)} seeds x {len(cfg.scenarios)} scenarios "
          f"in {minutes:.1f} min ({args.run_dir})")


def forget_vectors(cfg: benchmark.BenchmarkConfig, args: argparse.Namespace) -> None:
    """Forget vectors on every seed and scenario (notebook 04 learns seed 0's with the same settings)."""
    for seed in cfg.seeds:
        fv_cfg = from_dict(fvs.ForgetVectorConfig, epochs=FV_EPOCHS, steps_per_epoch=None, batch_size=64,
                           augment="none", seed=seed)
        for sc in cfg.scenarios:
            fvs.run_benchmark(benchmark.prepare(cfg, args.run_dir, sc, seed=seed, device=args.device), fv_cfg,
                              device=args.device)


def report(args: argparse.Namespace) -> None:
    cfg = _config(args)
    figs = Path(args.figures_dir)
    forget_vectors(cfg, args)
    df = benchmark.load_results(args.run_dir)
    df = df[df.scenario.isin(cfg.scenarios)]  # notebook 04 adds seed-0-only scenarios (class_3, class_3-8)
    table = benchmark.results_table(df)
    save_text(table.to_csv(index=False), figs / f"{DATASET}_results.csv")
    summaries = {s: benchmark.summary(df, setting=s) for s in (benchmark.SETTING, benchmark.SETTING_MATCH)}
    both = pd.concat([t.assign(setting=s) for s, t in summaries.items()], ignore_index=True)
    save_text(both.to_csv(index=False), figs / f"{DATASET}_summary.csv")
    paired = pd.concat([benchmark.paired(df, setting=s).assign(setting=s) for s in summaries], ignore_index=True)
    save_text(paired.to_csv(index=False), figs / f"{DATASET}_paired.csv")

    plotting.set_style()
    main = summaries[benchmark.SETTING]
    fig, axes = plt.subplots(len(cfg.scenarios), 1, figsize=(10, 3.2 * len(cfg.scenarios)), squeeze=False,
                             layout="constrained")
    for ax, sc in zip(axes[:, 0], cfg.scenarios):
        diagnostics.errorbar_results(main[main.scenario == sc], metric="avg_gap", ax=ax)
        ax.set_title(f"{sc}: Avg. Gap to Retrain, mean ± std over {len(cfg.seeds)} seeds", loc="left")
    plotting.save_figure(fig, figs / f"{DATASET}_results_errorbars")

    fig, ax = plt.subplots(figsize=(6.5, 2.8), layout="constrained")
    diagnostics.paired_intervals(paired[paired.setting == benchmark.SETTING], ax=ax)
    plotting.save_figure(fig, figs / f"{DATASET}_paired")

    seed = cfg.seeds[0]
    fig, axes = plt.subplots(len(cfg.scenarios), 3, figsize=(15, 4.2 * len(cfg.scenarios)), squeeze=False,
                             layout="constrained")
    effective = []
    for row, sc in zip(axes, cfg.scenarios):
        setup = benchmark.prepare(cfg, args.run_dir, sc, seed=seed, device=args.device)
        tvs = benchmark.pool_task_vectors(setup)
        names = list(tvs)
        div = analysis.pool_diversity([tvs[n] for n in names], names=names)
        groups = analysis.distinct_members(div)
        effective.append({"scenario": sc, "seed": seed, "pool": len(names), "distinct_1e-3": len(groups)})
        diagnostics.diversity_heatmap(div, "cosine", ax=row[0])
        row[0].set_title(f"{sc}: cosine of τ_a, τ_b (seed {seed})", loc="left")
        diagnostics.diversity_heatmap(div, "agreement", ax=row[1])
        row[1].set_title(f"{sc}: sign agreement", loc="left")
        vs_k = analysis.consensus_vs_k([tvs[n] for n in names], draws=5, seed=seed, names=names)
        plotting.consensus_curve(vs_k, ax=row[2])
        row[2].set_title(f"{sc}: fraction NegMerge keeps vs K ({len(groups)} distinct of {len(names)})", loc="left")
    plotting.save_figure(fig, figs / f"{DATASET}_pool_diversity")
    save_text(pd.DataFrame(effective).to_csv(index=False), figs / f"{DATASET}_pool_effective_size.csv")

    fig, axes = plt.subplots(len(cfg.scenarios), 2, figsize=(12, 3.6 * len(cfg.scenarios)), squeeze=False,
                             layout="constrained")
    for row, sc in zip(axes, cfg.scenarios):
        part = df[(df.scenario == sc) & (df.seed == seed) & (df.setting == benchmark.SETTING)]
        ref = part[(part.coef == 0) & (part.split == "val_control") & (part.metric == "acc")].value.iloc[0]
        for ax, split in zip(row, ("val_forget", "val_control")):
            diagnostics.member_curves(part, split=split, ax=ax, threshold=cfg.threshold if split == "val_control"
                                      else None, control_reference=ref)
            ax.set_title(f"{sc}: {split} accuracy vs λ, every member and merge (seed {seed})", loc="left")
    plotting.save_figure(fig, figs / f"{DATASET}_member_curves")
    for setting, t in summaries.items():
        print(f"\n## {setting}: mean ± std over seeds\n")
        print(_markdown(benchmark.mean_std(t).reset_index()))
    print("\n## paired differences (95 % t-interval)\n")
    print(_markdown(paired.round(3)))


def _markdown(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (README-ready)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("run", "report"))
    parser.add_argument("--run-dir", default=None, help="default: runs/fashion_mnist (runs/fashion_mnist_full)")
    parser.add_argument("--figures-dir", default="figures")
    parser.add_argument("--data-root", default=None, help="folder of the IDX files (default: Debian's)")
    parser.add_argument("--full", action="store_true", help="whole training set, paper-sized pool (GPU)")
    parser.add_argument("--quick", action="store_true", help="14x14, 5,000 images: the non-memorising contrast")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (one thread each)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    args.run_dir = args.run_dir or ("runs/fashion_mnist_full" if args.full else
                                    "runs/fashion_mnist_quick" if args.quick else "runs/fashion_mnist")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    {"run": run, "report": report}[args.step](args)


if __name__ == "__main__":
    main()
