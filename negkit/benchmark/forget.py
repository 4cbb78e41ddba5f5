"""Forget vectors as a benchmark method: learned, chosen on validation, recorded beside the negations.

With ``cfg.forget_vectors`` on, each (seed, scenario) learns δ with the original model
frozen for every setting of its grid (:func:`negkit.forget_vectors.tune.select_on_validation`),
keeping δ after every epoch, and picks one (setting, epoch) per selection rule with the
same validation sets, threshold and targets as the negations and the classic baselines.
Random forgetting starts from the reference code's random-forgetting defaults, class-wise
forgetting from its class-wise ones (:func:`negkit.forget_vectors.tune.default_config`);
``cfg.forget_vector_configs`` / ``cfg.forget_vector_grid`` override them per kind.

Saved under ``<scenario>/forget_vectors/``::

    selection.csv           every (setting, epoch): val_forget, val_control, forget margin, retain probe, ‖δ‖₂
    <rule>.safetensors      the δ each rule chose
    selection.json          the choices (the unit's done-marker, written last)

:func:`forget_vector_unit` computes them (an executor's unit, or ``run``'s own step);
:func:`record_forget_vector` records method ``"forget_vector"`` per rule.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from negkit import forget_vectors as fvs
from negkit.benchmark.config import SETTING, SETTING_MATCH, BenchmarkConfig, parse_scenario
from negkit.benchmark.setup import Setup, prepare, record_method
from negkit.config import to_dict
from negkit.forget_vectors.tune import candidate_settings, default_config, pick, select_on_validation
from negkit.io import load_json, save_json, save_text
from negkit.metrics import unlearning_metrics

log = logging.getLogger(__name__)

__all__ = ["forget_vector_config", "forget_vector_dir", "forget_vector_unit", "select_forget_vector",
           "record_forget_vector", "DONE_FILE"]

DONE_FILE = "selection.json"


def _kind(scenario: str) -> str:
    return parse_scenario(scenario)["scenario"]


def forget_vector_config(cfg: BenchmarkConfig, scenario: str, seed: int) -> tuple[fvs.ForgetVectorConfig, dict]:
    """The base setting and grid of ``scenario``'s forget vector (reference defaults + ``cfg``'s overrides)."""
    kind = _kind(scenario)
    base = default_config(kind, **{"seed": seed, **cfg.forget_vector_configs.get(kind, {})})
    return base, dict(cfg.forget_vector_grid.get(kind, {}))


def forget_vector_dir(setup: Setup) -> Path:
    """``<scenario>/forget_vectors/`` of a Setup."""
    return Path(setup.scenario_dir) / "forget_vectors"


def select_forget_vector(setup: Setup, *, progress: bool = False) -> dict[str, Any]:
    """Learn, score and choose the Setup's forget vectors (or read the saved choice); returns ``selection.json``."""
    folder = forget_vector_dir(setup)
    done = folder / DONE_FILE
    if done.exists():
        return load_json(done)
    cfg = setup.cfg
    base, grid = forget_vector_config(cfg, setup.scenario, cfg.seed)
    table, vectors = select_on_validation(setup.original, setup.forget, setup.retain, setup.val_forget,
                                          setup.val_control, base, grid=grid, device=setup.device,
                                          batch_size=cfg.eval_batch_size, progress=progress)
    save_text(table.to_csv(index=False), folder / "selection.csv")
    candidates = table[table.setting != "original"]
    choices = {}
    for rule in _rules(cfg, setup.scenario):
        target = setup.control_reference if rule == "match" else None
        row, admissible = pick(candidates, rule, reference=setup.control_reference, threshold=cfg.threshold,
                               target=target)
        vectors[(row.setting, int(row.epoch))].save(folder / f"{rule}.safetensors")
        choices[rule] = {"setting": row.setting, "epoch": int(row.epoch), "admissible": bool(admissible),
                         "val_forget": float(row.val_forget), "val_control": float(row.val_control)}
    selection = {"base": to_dict(base), "grid": {k: list(v) for k, v in grid.items()},
                 "n_candidates": int(len(candidates)), "control_reference": setup.control_reference,
                 "threshold": cfg.threshold, "choices": choices}
    save_json(selection, done)  # last: the done-marker
    return selection


def _rules(cfg: BenchmarkConfig, scenario: str) -> tuple[str, ...]:
    return tuple(r for r in cfg.rules if r == "min_forget" or _kind(scenario) == "random")


def forget_vector_unit(cfg: BenchmarkConfig, run_dir: str | Path, seed: int, scenario: str, *,
                       device: str | None = None) -> Path:
    """One (seed, scenario)'s forget-vector selection, saved; nothing is recorded (:func:`record_forget_vector` does).

    Needs the seed's Original and the scenario's Retrain trained.

    Returns:
        The ``selection.json`` done-marker.
    """
    setup = prepare(cfg, run_dir, scenario, seed=seed, device=device, record=False)
    select_forget_vector(setup)
    return forget_vector_dir(setup) / DONE_FILE


def record_forget_vector(setup: Setup, *, progress: bool = False) -> None:
    """Record ``"forget_vector"`` for every rule of the scenario (UA/RA/TA/MIA with the chosen δ applied)."""
    selection = select_forget_vector(setup, progress=progress)
    n = selection["n_candidates"]
    # The match rule first: the step counts as done once its min_forget record exists (as the baselines').
    for rule, choice in sorted(selection["choices"].items(), key=lambda kv: kv[0] == "min_forget"):
        setting = SETTING_MATCH if rule == "match" else SETTING
        if setup.log.has(scenario=setup.scenario, method="forget_vector", metric="avg_gap", seed=setup.seed,
                         setting=setting):
            continue
        fv = fvs.ForgetVector.load(forget_vector_dir(setup) / f"{rule}.safetensors", device=setup.device)
        metrics = unlearning_metrics(setup.original, setup.forget, setup.retain, setup.test, device=setup.device,
                                     input_transform=fv, seed=setup.cfg.seed)
        note = (f"chosen setting {choice['setting'] or 'default'}, epoch {choice['epoch']} of {n} candidates; "
                f"||δ||₂={fv.norm():.3g}")
        if not choice["admissible"]:
            note += f"; no candidate keeps control ≥ {setup.cfg.threshold:g} × original (highest control)"
        record_method(setup.log, setup, "forget_vector", metrics, note=note, setting=setting)


def selection_table(setup: Setup) -> pd.DataFrame:
    """The saved per-(setting, epoch) validation table of the Setup's forget vectors."""
    return pd.read_csv(forget_vector_dir(setup) / "selection.csv")


__all__ += ["selection_table", "candidate_settings"]
