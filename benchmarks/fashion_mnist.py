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

Seeds can run apart: ``run --seeds 3 4 --run-dir runs/later`` then ``report --run-dir runs/later
--join-results figures/fashion_mnist_results.csv`` takes seeds 0-2 from the earlier report's table
(:func:`negkit.benchmark.join_seeds`: a seed comes from one source only) into the results, summary and
paired tables; the diagnostics that need every record cover the run dir's seeds.

``tables [--figures-dir figures] [--check | --write docs/results.md]`` prints the markdown tables
docs/results.md quotes, drawn from the report's CSVs (:mod:`negkit.benchmark.markdown`), checks that
each marked table of the file is as rendered, or rewrites them.
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
from negkit.benchmark import extra, ksweep, markdown  # noqa: E402
from negkit.io import load_json, save_text  # noqa: E402
from negkit.metrics import RETRAIN_METRICS  # noqa: E402
from negkit.plotting import diagnostics  # noqa: E402

DATASET = "fashion_mnist"


def _config(args: argparse.Namespace) -> benchmark.BenchmarkConfig:
    """The kit's Fashion-MNIST config; a run dir made earlier keeps its own recipe and gains the methods added since.

    Method lists may grow in a run dir (the benchmark compares everything else), so a run made
    before a merge rule or baseline joined the config is extended with its rows, not redone.
    """
    cfg = benchmark.fashion_mnist_config(full=args.full, quick=args.quick, data_root=args.data_root)
    saved = Path(args.run_dir) / "benchmark_config.json"
    if not saved.exists():
        return cfg
    old = benchmark.make_config(load_json(saved))
    return benchmark.make_config(old, merge_methods=tuple(dict.fromkeys(old.merge_methods + cfg.merge_methods)),
                                 baselines=tuple(dict.fromkeys(old.baselines + cfg.baselines)),
                                 baseline_grid={**cfg.baseline_grid, **old.baseline_grid},
                                 baseline_configs={**cfg.baseline_configs, **old.baseline_configs})


def run(args: argparse.Namespace) -> None:
    cfg = _run_config(args)
    start = time.time()
    df = executor.run_benchmark(cfg, args.run_dir, device=args.device, progress=args.progress, workers=args.workers)
    minutes = (time.time() - start) / 60
    print(f"fashion_mnist benchmark: {len(df)} records, {len(cfg.seeds)} seeds x {len(cfg.scenarios)} scenarios "
          f"in {minutes:.1f} min ({args.run_dir})")


def _run_config(args: argparse.Namespace) -> benchmark.BenchmarkConfig:
    """The config of the run in ``args.run_dir``: its own recipe, with every method the kit's config lists.

    ``--seeds`` narrows it: ``run`` trains those seeds now (the others run, or resume, later) and
    ``report`` reads only them (e.g. the seeds that have finished while another still runs).
    """
    cfg = _config(args)
    return benchmark.make_config(cfg, seeds=tuple(args.seeds)) if args.seeds else cfg


def _best_baseline(summary: pd.DataFrame, scenario: str, baselines: list[str]) -> str | None:
    """The classic baseline with the lowest mean Avg. Gap in ``scenario`` (None without one)."""
    d = summary[(summary.scenario == scenario) & (summary.metric == "avg_gap") & summary.method.isin(baselines)]
    d = d.dropna(subset=["value"])
    return None if d.empty else str(d.sort_values("value").method.iloc[0])


def report(args: argparse.Namespace) -> None:
    cfg = _run_config(args)
    figs = Path(args.figures_dir)
    plotting.set_style()
    run_df, df = _records(args, cfg)
    if args.retrain_metrics:  # KL/JS to Retrain, ZRF, relearn epochs (recorded once; a rerun adds nothing)
        for sc in cfg.scenarios:
            best = extra.best_baseline(df, cfg, sc)  # over every seed of the tables, joined ones included
            methods = [*extra.DEFAULT_METHODS, *([best] if best else [])]
            for seed in cfg.seeds:
                benchmark.record_retrain_metrics(cfg, args.run_dir, sc, seed=seed, device=args.device, methods=methods)
        run_df, df = _records(args, cfg)
    if args.join_results:
        print(f"seeds {sorted(set(df.seed) - set(run_df.seed))} from {args.join_results}, "
              f"seeds {sorted(set(run_df.seed))} from {args.run_dir}; the headline, λ curves, pool diversity, "
              "forget-vector epochs and K sweep cover the run's seeds only")
    table = benchmark.results_table(df)
    _save_drawn(table, figs / f"{DATASET}_results.csv")

    regime = benchmark.regime(df)
    save_text(regime.to_csv(index=False), figs / f"{DATASET}_regime.csv")
    for line in benchmark.regime_warnings(df):
        print(f"WARNING: {line}")

    settings = (benchmark.SETTING, benchmark.SETTING_MATCH)
    summaries = {s: benchmark.summary(df, setting=s) for s in settings}
    both = pd.concat([t.assign(setting=s) for s, t in summaries.items()], ignore_index=True)
    _save_drawn(both, figs / f"{DATASET}_summary.csv")
    retrain = both[both.metric.isin(RETRAIN_METRICS) & (both.setting == benchmark.SETTING)]
    if len(retrain):
        save_text(retrain.to_csv(index=False), figs / f"{DATASET}_retrain_metrics.csv")
    heads = pd.concat([benchmark.headline(run_df, setting=s).assign(setting=s) for s in settings], ignore_index=True)
    save_text(heads.to_csv(index=False), figs / f"{DATASET}_headline.csv")

    # NegMerge minus each comparison, seed by seed: 95 % t-interval and the exact sign-flip p-value.
    parts = []
    for s, summ in summaries.items():
        for sc in cfg.scenarios:
            best = _best_baseline(summ, sc, list(cfg.baselines))
            others = [m for m in ("task_arithmetic", "mean", "ties", "magmax") if m in cfg.merge_methods or
                      m == "task_arithmetic"] + ([best] if best else []) + (
                ["forget_vector"] if cfg.forget_vectors else [])
            p = benchmark.paired(df[df.scenario == sc], "negmerge", others, setting=s)
            parts.append(p.assign(setting=s, best_baseline=p.b == best))
    paired = pd.concat(parts, ignore_index=True)
    _save_drawn(paired, figs / f"{DATASET}_paired.csv")

    # Forget vectors on random forgetting: every setting's validation trajectory, over seeds.
    fv_rows = []
    for sc in cfg.scenarios:
        for seed in cfg.seeds:
            path = Path(args.run_dir) / f"seed_{seed}" / sc / "forget_vectors" / "selection.csv"
            if path.exists():
                t = pd.read_csv(path)
                fv_rows.append(t.assign(setting=t.setting.fillna("default"), seed=seed, scenario=sc))
    if fv_rows:
        fv = pd.concat(fv_rows, ignore_index=True)
        _save_drawn(fv, figs / f"{DATASET}_forget_vector_epochs.csv")

    # Pool size: NegMerge and the uniform merge on random sub-pools of K members (random forgetting).
    random_sc = [sc for sc in cfg.scenarios if sc.startswith("random")]
    if random_sc and args.k_subsets > 0:
        ks = ksweep.k_sweep(cfg, args.run_dir, scenario=random_sc[0], ks=(3, 5), subsets=args.k_subsets,
                            methods=("negmerge", "mean"), rules=args.k_rules, seeds=args.k_seeds,
                            device=args.device, progress=args.progress)
        _save_drawn(ks, figs / f"{DATASET}_k_sweep.csv")

    seed = cfg.seeds[0]
    fig, axes = plt.subplots(len(cfg.scenarios), 3, figsize=(15, 4.2 * len(cfg.scenarios)), squeeze=False,
                             layout="constrained")
    effective = []
    for row, sc in zip(axes, cfg.scenarios):
        setup = benchmark.prepare(cfg, args.run_dir, sc, seed=seed, device=args.device, record=False)
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
        part = run_df[(run_df.scenario == sc) & (run_df.seed == seed) & (run_df.setting == benchmark.SETTING)]
        ref = part[(part.coef == 0) & (part.split == "val_control") & (part.metric == "acc")].value.iloc[0]
        for ax, split in zip(row, ("val_forget", "val_control")):
            diagnostics.member_curves(part, split=split, ax=ax, threshold=cfg.threshold if split == "val_control"
                                      else None, control_reference=ref)
            ax.set_title(f"{sc}: {split} accuracy vs λ, every member and merge (seed {seed})", loc="left")
    plotting.save_figure(fig, figs / f"{DATASET}_member_curves")

    print("\n## regime: does the Original memorise D_f?\n")
    print(markdown.frame_table(regime.round(2)))
    for setting, t in summaries.items():
        print(f"\n## {setting}: mean ± std over seeds\n")
        print(markdown.frame_table(benchmark.mean_std(t).reset_index()))
    print("\n## paired differences NegMerge − other (95 % t-interval, exact sign-flip p)\n")
    print(markdown.frame_table(paired.round(3)))
    if random_sc and args.k_subsets > 0:
        print("\n## pool size K (Avg. Gap, mean ± std over seeds of the sub-pool mean)\n")
        per_seed = ks[ks.metric == "avg_gap"].groupby(["setting", "method", "k", "seed"]).value.mean()
        spread = per_seed.groupby(["setting", "method", "k"]).agg(["mean", "std"]).round(2)
        print(markdown.frame_table(spread.reset_index()))


def _records(args: argparse.Namespace, cfg: benchmark.BenchmarkConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's records of ``cfg``'s seeds and scenarios, and those joined with ``--join-results``'s other seeds."""
    df = benchmark.load_results(args.run_dir)
    run_df = df[df.scenario.isin(cfg.scenarios) & df.seed.isin(cfg.seeds)]  # notebooks may add one-seed scenarios
    if not args.join_results:
        return run_df, run_df
    earlier = _earlier_table(args.join_results)
    try:
        return run_df, benchmark.join_seeds(run_df, earlier[earlier.scenario.isin(cfg.scenarios)])
    except ValueError as err:
        raise SystemExit(f"--join-results {args.join_results}: {err}") from None


def _earlier_table(path: str) -> pd.DataFrame:
    """The per-seed results CSV of ``--join-results``, or a one-line exit that says what to pass."""
    if not Path(path).is_file():
        raise SystemExit(f"--join-results {path}: no such file; pass the fashion_mnist_results.csv an earlier "
                         "report wrote (e.g. figures/fashion_mnist_results.csv)")
    table = pd.read_csv(path)
    if "scenario" not in table:
        raise SystemExit(f"--join-results {path}: not a results table (no 'scenario' column); pass the "
                         "fashion_mnist_results.csv an earlier report wrote")
    return table


def _save_drawn(table: pd.DataFrame, csv: Path) -> None:
    """Write ``table`` to ``csv`` and the figure drawn from that CSV beside it (:func:`negkit.plotting.draw`)."""
    save_text(table.to_csv(index=False), csv)
    stem, fig = plotting.draw(csv)
    plotting.save_figure(fig, csv.parent / stem)
    plt.close(fig)


#: Rows of the docs' tables, in reading order.
DOC_METHODS = ("original", "task_arithmetic", "mean", "ties", "magmax", "negmerge", "dare", "breadcrumbs",
               "consensus", "tsv", "ft", "ga", "rl", "l1_sparse", "salun", "iu", "be", "bs", "neggrad_plus",
               "scrub", "ssd", "forget_vector")
TABLE_MARK = "<!-- table:"
NEWER = ("iu", "be", "bs", "neggrad_plus", "scrub", "ssd")
RETRAIN_COLUMNS = {"kl_retrain_forget": "KL on D_f", "kl_retrain_test": "KL on test", "zrf": "ZRF",
                   "relearn_epochs": "relearn epochs"}


def doc_tables(figures_dir: str | Path) -> dict[str, str]:
    """The markdown tables docs/results.md quotes, drawn from the report's CSVs in ``figures_dir``."""
    fig = Path(figures_dir)
    summary = pd.read_csv(fig / f"{DATASET}_summary.csv")
    paired = pd.read_csv(fig / f"{DATASET}_paired.csv")
    scenarios = sorted(summary.scenario.unique(), key=lambda s: (not s.startswith("random"), s))
    tables = {"avg_gap": markdown.gap_table(summary, methods=DOC_METHODS, fallback="standard", columns=[
        (s, r) for s in scenarios for r in ("standard", "standard_match")
        if ((summary.scenario == s) & (summary.setting == r)).any()])}
    tables["newer"] = markdown.metric_table(summary, scenarios=scenarios, methods=NEWER,
                                            labels={m: markdown.method_label(m) for m in NEWER})
    tables["references"] = markdown.metric_table(summary, scenarios=scenarios,
                                                 methods=("original", "retrain", "negmerge", "forget_vector"))
    retrain = fig / f"{DATASET}_retrain_metrics.csv"
    if retrain.is_file():
        out = pd.read_csv(retrain)
        best = {s: list(paired[(paired.scenario == s) & paired.best_baseline.astype(bool)].b.unique()[:1])
                for s in scenarios}
        methods = {s: ["original", "retrain", "task_arithmetic", "mean", "negmerge", *best[s]] for s in scenarios}
        labels = {"task_arithmetic": "Task Arithmetic (val.)",
                  **{b: f"{markdown.method_label(b)} (best baseline)" for bs in best.values() for b in bs}}
        tables["retrain_metrics"] = markdown.metric_table(
            out, scenarios=scenarios, methods=methods, metrics=tuple(RETRAIN_COLUMNS), headers=RETRAIN_COLUMNS,
            labels=labels, zero=("retrain",), digits={**dict.fromkeys(RETRAIN_COLUMNS, 3), "relearn_epochs": 1})
    tables["regime"] = markdown.regime_table(pd.read_csv(fig / f"{DATASET}_regime.csv"))
    tables["paired"] = markdown.paired_table(paired)
    return tables


def _tables_in(text: str) -> dict[str, tuple[int, int]]:
    """Where each ``<!-- table: NAME -->`` marker's table lies in ``text`` (start and end offsets)."""
    spans, pos = {}, 0
    while (at := text.find(TABLE_MARK, pos)) >= 0:
        name_end = text.index("-->", at)
        name = text[at + len(TABLE_MARK):name_end].strip()
        start = text.index("\n", name_end) + 1
        end = start
        while text.startswith("|", end):
            end = text.find("\n", end) + 1 or len(text)
        spans[name] = (start, end)
        pos = end
    return spans


def tables(args: argparse.Namespace) -> None:
    """Print the docs' tables from ``--figures-dir``'s CSVs, check a document quotes them, or rewrite it.

    A document marks each table it quotes with ``<!-- table: NAME -->`` on the line above it
    (names: :func:`doc_tables`'s keys); ``--check FILE`` exits non-zero naming every table that
    differs from the CSVs, ``--write FILE`` replaces them (written atomically).
    """
    rendered = doc_tables(args.figures_dir)
    path = args.check or args.write
    if not path:
        for name, text in rendered.items():
            print(f"{TABLE_MARK} {name} -->\n{text}\n")
        return
    text = Path(path).read_text()
    spans = _tables_in(text)
    unknown = sorted(set(spans) - set(rendered))
    if unknown:
        raise SystemExit(f"{path}: table markers {unknown} name no table; known: {sorted(rendered)}")
    stale = [n for n, (a, b) in spans.items() if text[a:b].rstrip("\n") != rendered[n]]
    if args.check:
        if stale:
            raise SystemExit(f"{path}: the tables {stale} differ from {args.figures_dir}'s CSVs; rewrite them with "
                             f"`python benchmarks/fashion_mnist.py tables --figures-dir {args.figures_dir} --write {path}`")
        print(f"{path}: its {len(spans)} tables match {args.figures_dir}'s CSVs")
        return
    for name, (a, b) in sorted(spans.items(), key=lambda kv: -kv[1][0]):
        text = text[:a] + rendered[name] + "\n" + text[b:]
    save_text(text, path)
    print(f"{path}: rewrote {len(stale)} of its {len(spans)} tables from {args.figures_dir}'s CSVs")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("run", "report", "tables"))
    parser.add_argument("--run-dir", default=None, help="default: runs/fashion_mnist (runs/fashion_mnist_full)")
    parser.add_argument("--figures-dir", default="figures")
    parser.add_argument("--data-root", default=None, help="folder of the IDX files (default: Debian's)")
    parser.add_argument("--full", action="store_true", help="whole training set, paper-sized pool (GPU)")
    parser.add_argument("--quick", action="store_true", help="14x14, 5,000 images: the non-memorising contrast")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (one thread each)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="only these seeds of the config (run: train them now, the others later; report: read them)")
    parser.add_argument("--no-retrain-metrics", dest="retrain_metrics", action="store_false",
                        help="skip KL/JS to Retrain, ZRF and relearn epochs in the report")
    parser.add_argument("--join-results", default=None, metavar="CSV",
                        help="an earlier report's fashion_mnist_results.csv: its seeds that this run dir lacks join "
                             "the tables, summaries and paired differences (e.g. seeds 3-4 run later beside 0-2)")
    parser.add_argument("--k-subsets", type=int, default=3, help="random sub-pools per K in the pool-size sweep "
                        "(0: no sweep)")
    parser.add_argument("--k-rules", nargs="+", default=None, choices=list(benchmark.RULES),
                        help="λ rules of the pool-size sweep (default: the run's)")
    parser.add_argument("--k-seeds", nargs="+", type=int, default=None, help="seeds of the sweep (default: the run's)")
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--check", default=None, metavar="FILE",
                        help="tables: exit non-zero unless every marked table of FILE (docs/results.md) is as rendered")
    checks.add_argument("--write", default=None, metavar="FILE", help="tables: rewrite FILE's marked tables")
    args = parser.parse_args()
    args.run_dir = args.run_dir or ("runs/fashion_mnist_full" if args.full else
                                    "runs/fashion_mnist_quick" if args.quick else "runs/fashion_mnist")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    {"run": run, "report": report, "tables": tables}[args.step](args)


if __name__ == "__main__":
    main()
