"""The protocol's steps after :func:`~negkit.benchmark.setup.prepare`: pool, negation, baselines.

Per scenario: fine-tune θ_o on D_f with every pool config; task vectors
τ_k = θ_k − θ_o over the parameters (BatchNorm running statistics and other buffers
excluded, so the negated model keeps θ_o's); Task Arithmetic θ_o − λτ_k for every
member and for the member chosen on validation; the merged pool (mean, TIES, MagMax,
NegMerge) negated the same way; the classic baselines of :mod:`negkit.unlearn`. λ
comes from :func:`negkit.evaluate.search_coef` on the validation sets (lowest forget
accuracy with control accuracy ≥ 0.95 × the original's) on the grid ``coef_step``
apart, its range growing from ``coefs`` (0..1) by doubling up to ``coef_max`` while
control holds; every λ of a call is evaluated in one data pass
(:func:`negkit.evaluate.negation_evaluator`). A search that reaches ``coef_max`` with
control still admissible is flagged in the record's note; each negation also records
how many λ it evaluated (``n_coefs``) and the top of its range (``coef_max_searched``).
"Task Arithmetic (val)" is the member whose selected λ
gives the lowest validation forget accuracy (ties: higher control accuracy, then name).

Each step's records (its λ curve, then its metrics) are written in one append and a
step whose final record exists is skipped, so a rerun after an interruption yields
the same records as one uninterrupted run.

Each negation's outcome (its λ search and the metrics at the chosen λ) is also a unit of
work, :func:`negation_unit`: it is computed once, by whoever comes first (``run``'s own
loop, or a unit on an executor), and saved atomically to
``<scenario>/negation/<rule>/<method>[/<pool member>]/outcome.json``, which is its
done-marker; ``run`` reads a saved outcome instead of searching again, so its records
are the same whoever computed it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from negkit import merge, unlearn
from negkit.benchmark.config import (EDGE, NO_COEF, ZERO_COEF, SETTING, SETTING_MATCH, UNLEARNING_METRICS, BenchmarkConfig,
                                     baseline_candidates, parse_scenario, pool_configs)
from negkit.benchmark.report import load_results
from negkit.benchmark.setup import Setup, _done_steps, check_run, prepare, record_method
from negkit.config import to_dict
from negkit.data import get as get_dataset
from negkit.data.augment import training_view
from negkit.coefs import CoefSearch, negation_evaluator, search_coef, select_coef
from negkit.evaluate import evaluate
from negkit.io import load_json, save_json
from negkit.lock import locks_run_dir
from negkit.metrics import unlearning_metrics
from negkit.results import COLUMNS, Record
from negkit.taskvec import TaskVector
from negkit.train import train

log = logging.getLogger(__name__)

__all__ = ["pool_task_vectors", "negated_model", "negation_search", "negation_sweep", "negated_metrics",
           "negation_rules", "outcome_path", "negation_unit", "run"]

OUTCOME_FILE = "outcome.json"


def pool_task_vectors(setup: Setup, *, names: Sequence[str] | None = None,
                      progress: bool = False) -> dict[str, TaskVector]:
    """Fine-tune θ_o on D_f with every pool config (skipped when done) and return τ_k = θ_k − θ_o.

    τ_k covers the model's parameters only (:meth:`TaskVector.from_models`, on CPU):
    BatchNorm running statistics would break the negated model, and constant buffers
    (the Normalize layer's mean/std) never move and would only add zeros that count as
    "no sign consensus" in the analysis.

    Each τ_k is also saved as ``<scenario>/task_vectors/<name>.safetensors`` (for
    streaming analysis and the explorer widget).

    Args:
        setup: The scenario.
        names: Only these pool members (None: all of them).
        progress: Show a progress bar over the members.
    """
    out: dict[str, TaskVector] = {}
    members = [(n, tc) for n, tc in pool_configs(setup.cfg) if names is None or n in names]
    for name, tc in tqdm(members, desc=f"pool {setup.scenario}", disable=not progress):
        ft = train(copy.deepcopy(setup.original), setup.forget, tc, device=setup.device,
                   out_dir=setup.scenario_dir / "pool" / name, progress=False).model
        tv = TaskVector.from_models(setup.original, ft, params_only=True, device="cpu")
        path = setup.scenario_dir / "task_vectors" / f"{name}.safetensors"
        if not path.exists():
            tv.save(path, metadata={"architecture": setup.cfg.model, "pretrained": "original", "pool_config": name,
                                    "finetune_config": json.dumps(to_dict(tc), sort_keys=True)})
        out[name] = tv
    return out


def _as_task_vector(tau: TaskVector | Mapping[str, torch.Tensor]) -> TaskVector:
    return tau if isinstance(tau, TaskVector) else TaskVector(dict(tau))


def negated_model(setup: Setup, tau: TaskVector | Mapping[str, torch.Tensor], coef: float,
                  *, out: nn.Module | None = None) -> nn.Module:
    """θ(λ) = θ_o − λ·τ loaded into a copy of the original model (or into ``out``, reused)."""
    model = copy.deepcopy(setup.original) if out is None else out
    model.load_state_dict(_as_task_vector(tau).apply_to(setup.original.state_dict(), -float(coef)))
    return model.eval()


def negation_search(setup: Setup, tau: TaskVector | Mapping[str, torch.Tensor], *,
                    coefs: Sequence[float] | None = None, rule: str = "min_forget",
                    target: float | None = None) -> CoefSearch:
    """Choose λ for θ_o − λτ on the validation sets, every λ of a round in one data pass.

    Args:
        setup: The scenario.
        tau: Task vector (or merged vector) to negate.
        coefs: Evaluate exactly these λ (a diagnostic curve, e.g. a wider grid) instead
            of the config's search (``coefs`` as the initial range, ``coef_step``,
            ``coef_max``, ``coef_search``).
        rule: Selection rule of :func:`negkit.evaluate.search_coef`.
        target: Forget accuracy to match (``rule="match"``).

    Returns:
        The :class:`negkit.evaluate.CoefSearch` (its curve has splits ``val_forget`` and
        ``val_control``).
    """
    cfg = setup.cfg
    evaluate_coefs = negation_evaluator(setup.original, _as_task_vector(tau).vector,
                                        {"val_forget": setup.val_forget, "val_control": setup.val_control},
                                        device=setup.device, batch_size=cfg.eval_batch_size)
    if coefs is None:
        return search_coef(evaluate_coefs, setup.control_reference, threshold=cfg.threshold, step=cfg.coef_step,
                           start=min(cfg.coefs), stop=max(cfg.coefs), max_coef=cfg.coef_max, rule=rule,
                           target=target, exhaustive=cfg.coef_search == "grid")
    coefs = sorted({float(c) for c in coefs})
    if not coefs:
        raise ValueError("coefs is empty; pass e.g. negkit.evaluate.coef_grid(0, 3, 0.1), or None for the search")
    accs = evaluate_coefs(coefs)
    lam = select_coef(coefs, accs["val_forget"], accs["val_control"], setup.control_reference, cfg.threshold,
                      rule=rule, target=target)
    curve = pd.DataFrame([{"coef": c, "split": s, "acc": accs[s][i]} for i, c in enumerate(coefs) for s in accs],
                         columns=["coef", "split", "acc"])
    return CoefSearch(coef=lam, curve=curve, n_evaluated=len(coefs), searched=(coefs[0], coefs[-1]),
                      hit_max=accs["val_control"][-1] >= cfg.threshold * setup.control_reference, exhaustive=True)


def _curve_records(setup: Setup, res: CoefSearch, method: str, pool_config: str, *,
                   setting: str = SETTING) -> list[Record]:
    """The search's λ curve (metric ``"acc"``) and its two summary records (``n_coefs``, ``coef_max_searched``)."""
    cfg = setup.cfg
    base = dict(setting=setting, model=cfg.model, dataset=cfg.dataset, scenario=setup.scenario, method=method,
                pool_config=pool_config, seed=cfg.seed)
    rows = [Record(**base, coef=float(r.coef), split=r.split, metric="acc", value=float(r.acc))
            for r in res.curve.itertuples()]
    return rows + [Record(**base, coef=math.nan, split="val", metric="n_coefs", value=float(res.n_evaluated)),
                   Record(**base, coef=math.nan, split="val", metric="coef_max_searched",
                          value=float(res.searched[1]))]


def negation_sweep(setup: Setup, tau: TaskVector | Mapping[str, torch.Tensor], *,
                   method: str = "task_arithmetic", pool_config: str = "",
                   coefs: Sequence[float] | None = None, rule: str = "min_forget",
                   target: float | None = None) -> tuple[pd.DataFrame, float | None]:
    """Validation curve of θ_o − λτ over the λ the search evaluated, and the λ it picks.

    Args:
        setup: The scenario.
        tau: Task vector (or merged vector) to negate.
        method: Method name written into the curve's rows.
        pool_config: Pool member name written into the curve's rows.
        coefs: Evaluate exactly these λ instead of searching (see :func:`negation_search`).
        rule: Selection rule of :func:`negkit.evaluate.search_coef`.
        target: Forget accuracy to match (``rule="match"``).

    Returns:
        ``(curve, λ)``: the curve as tidy records (metric ``"acc"``, splits ``"val_forget"``
        and ``"val_control"``, one row per evaluated λ and split — what
        :func:`negkit.plotting.coef_curve` draws) and the chosen λ, or None when no λ keeps
        the control accuracy.
    """
    res = negation_search(setup, tau, coefs=coefs, rule=rule, target=target)
    rows = [dataclasses.asdict(r) for r in _curve_records(setup, res, method, pool_config) if r.metric == "acc"]
    return pd.DataFrame(rows, columns=list(COLUMNS)), res.coef


def negated_metrics(setup: Setup, tau: TaskVector | Mapping[str, torch.Tensor], coef: float) -> dict[str, float]:
    """UA, RA, TA, MIA of θ_o − λτ on the scenario's forget, retain and test sets."""
    return unlearning_metrics(negated_model(setup, tau, coef), setup.forget, setup.retain, setup.test,
                              device=setup.device)


def negation_rules(cfg: BenchmarkConfig, scenario: str) -> tuple[str, ...]:
    """The selection rules of a scenario: ``match`` only applies to random forgetting."""
    kind = parse_scenario(scenario)["scenario"]
    return tuple(r for r in cfg.rules if r == "min_forget" or kind == "random")


def outcome_path(setup: Setup, method: str, pool_config: str = "", rule: str = "min_forget") -> Path:
    """Where a negation's outcome is saved: ``<scenario>/negation/<rule>/<method>[/<pool_config>]/outcome.json``."""
    return setup.scenario_dir.joinpath("negation", rule, method, *([pool_config] if pool_config else []), OUTCOME_FILE)


def _negation_outcome(setup: Setup, method: str, tau: TaskVector | Callable[[], TaskVector], *,
                      pool_config: str = "", rule: str = "min_forget") -> tuple[CoefSearch, dict[str, float] | None]:
    """The λ search of θ_o − λτ and the metrics at the chosen λ (None: no λ admissible).

    Read from :func:`outcome_path` when saved there; else computed (``tau`` may be a
    function giving τ, called only then) and saved there atomically. The one place a
    negation is computed: ``run``'s loop and :func:`negation_unit` both call it.
    """
    path = outcome_path(setup, method, pool_config, rule)
    if path.exists():
        o = load_json(path)
        res = CoefSearch(coef=o["coef"], curve=pd.DataFrame(o["curve"], columns=["coef", "split", "acc"]),
                         n_evaluated=o["n_evaluated"], searched=tuple(o["searched"]), hit_max=o["hit_max"],
                         exhaustive=o["exhaustive"])
        return res, o["metrics"]
    tau = tau() if callable(tau) else tau
    res = negation_search(setup, tau, rule=rule, target=_match_target(setup) if rule == "match" else None)
    metrics = None if res.coef is None else negated_metrics(setup, tau, res.coef)
    save_json({"method": method, "pool_config": pool_config, "rule": rule, "coef": res.coef,
               "curve": [[float(r.coef), r.split, float(r.acc)] for r in res.curve.itertuples()],
               "n_evaluated": int(res.n_evaluated), "searched": [float(c) for c in res.searched],
               "hit_max": bool(res.hit_max), "exhaustive": bool(res.exhaustive),
               "metrics": None if metrics is None else {k: float(v) for k, v in metrics.items()}}, path)
    return res, metrics


def _vector(tvs: Mapping[str, TaskVector], cfg: BenchmarkConfig, method: str, pool_config: str) -> TaskVector:
    """The vector a negation negates: one member's τ (Task Arithmetic) or the pool merged by ``method``."""
    if method == "task_arithmetic":
        return tvs[pool_config]
    names = list(tvs)
    return merge.get(method)([tvs[n] for n in names], names=names, **cfg.merge_options.get(method, {}))


def negation_unit(cfg: BenchmarkConfig, run_dir: str | Path, seed: int, scenario: str, method: str,
                  pool_config: str = "", rule: str = "min_forget", *, device: str | None = None) -> Path:
    """One negation's λ search and metrics, saved to its outcome file; nothing is recorded.

    Needs the seed's Original, the scenario's Retrain and the pool members it negates
    trained (:mod:`negkit.benchmark.units`); :func:`run` later records the outcome as if
    it had computed it itself. Skipped when the outcome exists.

    Args:
        cfg: The benchmark's configuration (all seeds; ``seed`` picks one).
        run_dir: The run's folder.
        seed: One of ``cfg.seeds``.
        scenario: One of ``cfg.scenarios``.
        method: ``"task_arithmetic"`` (with ``pool_config``) or one of ``cfg.merge_methods``.
        pool_config: The pool member negated by Task Arithmetic (empty for a merge).
        rule: One of :func:`negation_rules` ``(cfg, scenario)``.
        device: None: cuda if available, else cpu.

    Returns:
        The outcome file.

    Raises:
        ValueError: ``method`` is neither Task Arithmetic with a pool member nor a merge rule of ``cfg``.
    """
    if (method == "task_arithmetic") != bool(pool_config) or (pool_config and pool_config not in dict(
            pool_configs(cfg))) or (method != "task_arithmetic" and method not in cfg.merge_methods):
        raise ValueError(f"cannot negate method {method!r} with pool member {pool_config!r}; pass "
                         f"'task_arithmetic' with one of {[n for n, _ in pool_configs(cfg)]} or one of "
                         f"{list(cfg.merge_methods)} without a member")
    setup = prepare(cfg, run_dir, scenario, seed=seed, device=device, record=False)
    path = outcome_path(setup, method, pool_config, rule)
    if not path.exists():
        tvs = pool_task_vectors(setup, names=[pool_config] if pool_config else None)
        _negation_outcome(setup, method, lambda: _vector(tvs, cfg, method, pool_config), pool_config=pool_config,
                          rule=rule)
    return path


def _negate(setup: Setup, method: str, tau: TaskVector | Callable[[], TaskVector], *,
            pool_config: str = "", rule: str = "min_forget") -> list[Record]:
    """Search λ for θ_o − λτ on validation, measure the metrics (or read both saved); record in one append."""
    cfg = setup.cfg
    res, metrics = _negation_outcome(setup, method, tau, pool_config=pool_config, rule=rule)
    setting = SETTING_MATCH if rule == "match" else SETTING
    extra, lam = _curve_records(setup, res, method, pool_config, setting=setting), res.coef
    where = f"{setup.scenario}/{method}" + (f"[{pool_config}]" if pool_config else "")
    if lam is None:
        log.warning("%s: %s (control never ≥ %.2f × %.2f)", where, NO_COEF, cfg.threshold,
                    setup.control_reference)
        metrics, note, lam = {k: math.nan for k in UNLEARNING_METRICS}, NO_COEF, math.nan
    else:
        note = ZERO_COEF if lam == 0 else EDGE if res.hit_max else ""
        if note == EDGE:
            log.info("%s: %s (λ=%g, max %g)", where, EDGE, lam, res.searched[1])
    return record_method(setup.log, setup, method, metrics, pool_config=pool_config, coef=lam, note=note,
                         extra=extra, setting=setting)


def _select_single(df: pd.DataFrame, setup: Setup, names: list[str], *, setting: str = SETTING,
                   target: float | None = None) -> None:
    """Record "Task Arithmetic (val)": the pool member whose λ gives the best validation forget accuracy.

    Best is the lowest (``min_forget``) or, with ``target``, the closest to ``target``
    (the match rule); ties go to the higher control accuracy, then the name.
    """
    d = df[(df.seed == setup.seed) & (df.setting == setting) & (df.scenario == setup.scenario)
           & (df.method == "task_arithmetic") & df.pool_config.isin(names)]
    d = d.drop_duplicates()  # a step resumed after a cut-short append re-writes its records
    candidates = []
    for name in names:
        rows = d[d.pool_config == name]
        final = rows[rows.metric == "UA"]
        if final.empty or not math.isfinite(final.coef.iloc[-1]):
            continue
        lam = final.coef.iloc[-1]
        at = rows[(rows.metric == "acc") & np.isclose(rows.coef, lam)].drop_duplicates("split", keep="last")
        at = at.set_index("split").value
        score = at["val_forget"] if target is None else abs(at["val_forget"] - target)
        candidates.append((score, -at["val_control"], name, lam))
    if not candidates:
        record_method(setup.log, setup, "task_arithmetic", {k: math.nan for k in UNLEARNING_METRICS},
                      note=f"val-selected pool member: none ({NO_COEF} for every member)", setting=setting)
        return
    _, _, name, lam = min(candidates)
    rows = d[(d.pool_config == name) & d.metric.isin(UNLEARNING_METRICS)].drop_duplicates("metric", keep="last")
    metrics = dict(zip(rows.metric, rows.value))
    record_method(setup.log, setup, "task_arithmetic", metrics, coef=lam,
                  note=f"val-selected pool member {name}", setting=setting)


@locks_run_dir("run_dir")  # one writer per run dir: a second process fails at once, naming this one
def run(cfg: BenchmarkConfig, run_dir: str | Path, *, device: str | None = None,
        progress: bool = True) -> pd.DataFrame:
    """Run the whole protocol for every seed and scenario of ``cfg``; finished steps are skipped.

    Every precondition of the whole run (:func:`~negkit.benchmark.setup.check_run`) is
    checked before the first training starts.

    Returns:
        All records of ``run_dir/results.jsonl`` (exact duplicates, which only an
        interrupted append can leave, dropped).
    """
    run_dir = Path(run_dir)
    bundle = get_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    sizes = check_run(cfg, run_dir, bundle=bundle)
    log.info("benchmark %s: %d seeds × %d scenarios; set sizes\n%s", cfg.dataset, len(cfg.seeds),
             len(cfg.scenarios), sizes.to_string(index=False))
    for seed in cfg.seeds:
        for scenario in cfg.scenarios:
            setup = prepare(cfg, run_dir, scenario, seed=seed, device=device, progress=progress, bundle=bundle)
            _run_scenario(setup, progress=progress)
    return load_results(run_dir)


def _pick(val: Mapping[str, Mapping[str, float]], reference: float, threshold: float,
          target: float | None) -> tuple[str, bool]:
    """The baseline setting the negation's rule would pick from its validation accuracies.

    Among settings with control ≥ threshold × reference: lowest forget accuracy, or the one
    closest to ``target``; ties go to the order of ``val``. Without an admissible setting,
    the one with the highest control accuracy (second value False).
    """
    names = list(val)
    ok = [n for n in names if val[n]["val_control"] >= threshold * reference]
    if not ok:
        return max(names, key=lambda n: (val[n]["val_control"], -names.index(n))), False
    key = (lambda n: val[n]["val_forget"]) if target is None else (lambda n: abs(val[n]["val_forget"] - target))
    return min(ok, key=lambda n: (key(n), names.index(n))), True


def _baseline(setup: Setup, method: str, rules: Sequence[str]) -> None:
    """Run one classic baseline of :mod:`negkit.unlearn` for every setting of its grid, pick one per rule, record.

    Each candidate is checkpointed under ``<scenario>/baselines/<method>/<setting>``; its
    validation accuracies go to ``<scenario>/baselines/<method>/selection.json``; the
    chosen setting is named in the record's note.
    """
    cfg = setup.cfg
    candidates = baseline_candidates(cfg, method)
    folder = setup.scenario_dir / "baselines" / method
    models, val = {}, {}
    for name, overrides in candidates.items():
        ucfg = unlearn.default_config(method, **{"seed": cfg.seed, **overrides})
        # D_f and D_r with the training augmentation, as the reference's unlearning loaders (metrics stay clean)
        models[name] = unlearn.get(method)(setup.original, training_view(setup.bundle, setup.forget),
                                           training_view(setup.bundle, setup.retain), ucfg, device=setup.device,
                                           out_dir=folder / name if name else folder, progress=False)
        val[name] = {split: float(evaluate(models[name], getattr(setup, split), device=setup.device,
                                           batch_size=cfg.eval_batch_size)["acc"])
                     for split in ("val_forget", "val_control")}
    save_json({"candidates": candidates, "val": val, "control_reference": setup.control_reference},
              folder / "selection.json")
    metrics: dict[str, dict[str, float]] = {}
    # The match rule first: the step counts as done once its min_forget record exists.
    for rule in sorted(rules, key=lambda r: r == "min_forget"):
        target = _match_target(setup) if rule == "match" else None
        name, admissible = _pick(val, setup.control_reference, cfg.threshold, target)
        if name not in metrics:
            metrics[name] = unlearning_metrics(models[name], setup.forget, setup.retain, setup.test,
                                               device=setup.device, seed=cfg.seed)
        note = f"chosen setting {name or 'default'} of {len(candidates)}" + (
            "" if admissible else f"; no setting keeps control ≥ {cfg.threshold:g} × original (highest control)")
        record_method(setup.log, setup, method, metrics[name], note=note,
                      setting=SETTING if rule == "min_forget" else SETTING_MATCH)


def _rules(setup: Setup) -> tuple[str, ...]:
    """The selection rules of this scenario: ``match`` only applies to random forgetting."""
    return negation_rules(setup.cfg, setup.scenario)


def _match_target(setup: Setup) -> float:
    """The match rule's target: the original's accuracy on the held-out validation split (random forgetting)."""
    return setup.control_reference


def _run_scenario(setup: Setup, *, progress: bool) -> None:
    cfg, sc = setup.cfg, setup.scenario
    tvs = pool_task_vectors(setup, progress=progress)
    names = list(tvs)
    steps: list[tuple[str, str, str, Callable[[], Any]]] = []
    for rule in _rules(setup):
        setting = SETTING if rule == "min_forget" else SETTING_MATCH
        target = _match_target(setup) if rule == "match" else None
        for name in names:
            steps.append((setting, "task_arithmetic", name, lambda name=name, rule=rule: _negate(
                setup, "task_arithmetic", lambda: tvs[name], pool_config=name, rule=rule)))
        steps.append((setting, "task_arithmetic", "", lambda setting=setting, target=target: _select_single(
            setup.log.read(), setup, names, setting=setting, target=target)))
        for m in cfg.merge_methods:
            steps.append((setting, m, "", lambda m=m, rule=rule: _negate(
                setup, m, lambda: _vector(tvs, cfg, m, ""), rule=rule)))
    for m in cfg.baselines:
        steps.append((SETTING, m, "", lambda m=m: _baseline(setup, m, _rules(setup))))
    if cfg.forget_vectors:
        from negkit.benchmark.forget import record_forget_vector  # it imports this module's neighbours

        steps.append((SETTING, "forget_vector", "", lambda: record_forget_vector(setup, progress=progress)))
    done = _done_steps(setup.log.read())
    for setting, method, pool_config, step in tqdm(steps, desc=f"methods {sc} seed {setup.seed}",
                                                   disable=not progress):
        if (setup.seed, setting, sc, method, pool_config) in done:
            continue
        step()
