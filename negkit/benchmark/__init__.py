"""The NegMerge paper's "standard image classification" protocol, end to end.

One code path serves the built-in digits default (:func:`default_config`: small
ResNet on 8×8 digits, seconds per run on CPU), Fashion-MNIST (:func:`fashion_mnist_config`,
sized for 2 CPU cores, or the whole training set on a GPU) and ResNet-18 on CIFAR-10
(:func:`cifar10_config`, GPU-sized); :func:`dataset_config` picks one by dataset name.
Per forgetting scenario (``"random_10"``: a random 10 % of the
training set; ``"class_3"``: every training image of class 3):

1. **Original** θ_o trained on the whole training set; **Retrain**, the same recipe on
   the retain set D_r only — the reference every Avg. Gap is measured against
   (:func:`prepare`, :mod:`negkit.benchmark.setup`).
2. **Pool**: θ_o fine-tuned on the forget set D_f once per pool configuration
   (:func:`pool_configs`; the paper's 27-member grid, epochs scaled for digits —
   :mod:`negkit.benchmark.config`, :mod:`negkit.benchmark.recipes`).
3. **Negation** θ(λ) = θ_o − λ·τ of each single task vector τ_k = θ_k − θ_o (Task
   Arithmetic) and of the merged pool (``mean``, ``ties``, ``magmax``, ``negmerge``),
   λ chosen on validation; then the classic baselines FT, GA, RL, ℓ1-sparse, SalUn
   (:func:`run`, :mod:`negkit.benchmark.pipeline`).
4. **Metrics** (SalUn's): UA = 100 − accuracy on D_f, RA on D_r, TA on the test set
   (class-wise: without the forgotten classes), MIA-efficacy on D_f, and Avg. Gap =
   mean |metric − Retrain's| over the four (:func:`summary`, :func:`headline`,
   :mod:`negkit.benchmark.report`).

Everything trained goes through :func:`negkit.train.train` with ``out_dir`` under
``run_dir`` (skip if done, resume if interrupted) and records go to
``run_dir/results.jsonl``. Layout::

    run_dir/benchmark_config.json   run_dir/results.jsonl
    run_dir/seed_<s>/original/
    run_dir/seed_<s>/<scenario>/{split.json, retrain/, pool/<name>/, task_vectors/<name>.safetensors,
                                 baselines/<method>/<setting>/, baselines/<method>/selection.json}

Each seed of ``cfg.seeds`` redraws the forget split and retrains everything; records
carry ``seed``, and :func:`summary` / :func:`paired` aggregate over seeds.

Example::

    from negkit import benchmark
    df = benchmark.run(benchmark.default_config(), "runs/digits")
    benchmark.summary(df)
"""
from negkit.benchmark.config import (EDGE, NO_COEF, RULES, SETTING, SETTING_MATCH, UNLEARNING_METRICS,
                                     BenchmarkConfig, PoolSpec, baseline_candidates, make_config, parse_scenario,
                                     pool_configs, pool_frame)
from negkit.benchmark.recipes import cifar10_config, dataset_config, default_config, fashion_mnist_config, list_configs
from negkit.benchmark.pipeline import negated_metrics, negated_model, negation_sweep, pool_task_vectors, run
from negkit.benchmark.report import (MEMORISE_RATIO, coef_warnings, headline, join_seeds, load_results, mean_std,
                                     paired, regime, regime_warnings, results_table, sign_flip_pvalue, summary,
                                     summary_table, write_summary)
from negkit.benchmark.setup import Setup, check_run, one_seed, prepare, record_method, seed_dir
from negkit.benchmark.extra import record_retrain_metrics

__all__ = [
    "PoolSpec", "BenchmarkConfig", "default_config", "cifar10_config", "fashion_mnist_config", "dataset_config",
    "list_configs", "make_config", "pool_configs", "pool_frame", "baseline_candidates", "parse_scenario", "Setup",
    "prepare", "check_run", "one_seed", "seed_dir", "record_method", "pool_task_vectors", "negated_model",
    "negation_sweep", "negated_metrics", "run", "load_results", "summary", "mean_std", "paired", "headline",
    "results_table", "join_seeds", "sign_flip_pvalue", "regime", "regime_warnings", "coef_warnings",
    "summary_table", "write_summary", "record_retrain_metrics", "MEMORISE_RATIO", "SETTING", "SETTING_MATCH",
    "RULES", "UNLEARNING_METRICS", "NO_COEF", "EDGE",
]
