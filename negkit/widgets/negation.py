"""NEGATION view: drag λ and watch forget / control accuracy move.

The negated model is θ(λ) = θ_pre − λ·τ, where τ is one pool member's task vector
(Task Arithmetic) or a merge of the pool (mean, TIES, MagMax, NegMerge). λ is chosen
on validation data as the coefficient with the lowest forget accuracy among those whose
control accuracy stays ≥ threshold × the original's control accuracy (the admissibility
line; NegMerge paper, Sec. 4).

Two sources feed the same view:

* :class:`RecordedCurves` (results mode) reads the per-λ curves a pipeline recorded
  (``metric="acc"``, splits ``val_forget`` / ``val_control``, ``coef=λ``) and the final
  UA/RA/TA/MIA rows, e.g. CLIP runs made on a GPU elsewhere.
* :class:`LiveNegation` (live mode) re-evaluates the negated model at any λ; the
  pretrained weights, task vectors, merged vectors and datasets (as tensors) are cached,
  so each slider move costs one forward pass over a few hundred small images.

:class:`NegationState` is the plain-Python model of the view (what is selected, the
numbers shown, the figure); the ipywidgets layer lives in :mod:`negkit.widgets.views`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd

from negkit import merge
from negkit.plotting.style import RULE_LABELS
from negkit.results import COLUMNS, method_rank, read_results

__all__ = ["RunKey", "RecordedCurves", "NegationState", "curve_records", "negation_methods", "FINAL_METRICS"]


def negation_methods() -> list[str]:
    """Methods that negate a task vector with a coefficient λ (the ones the view can show): Task
    Arithmetic and every rule of :mod:`negkit.merge`'s registry, in the kit's display order."""
    return sorted(["task_arithmetic", *merge.list_methods()], key=method_rank)


#: Metrics of the chosen model shown next to the curve when they are available.
FINAL_METRICS = ("UA", "RA", "TA", "MIA", "avg_gap")


@dataclasses.dataclass(frozen=True)
class RunKey:
    """Identifies one experiment in a results table (one curve family)."""

    dataset: str
    scenario: str
    model: str = ""
    setting: str = ""
    seed: int = 0

    @property
    def label(self) -> str:
        """Human-readable name for a dropdown, naming the λ rule (a run has a row per rule on random forgetting)."""
        rule = f"λ {RULE_LABELS[self.setting]}" if self.setting in RULE_LABELS else ""
        extra = ", ".join(x for x in (self.model, f"seed {self.seed}", rule) if x)
        return f"{self.dataset} / {self.scenario} ({extra})"

    def mask(self, df: pd.DataFrame) -> pd.Series:
        """Rows of ``df`` belonging to this run."""
        m = (df["dataset"] == self.dataset) & (df["scenario"] == self.scenario) & (df["seed"] == self.seed)
        if self.model:
            m &= df["model"] == self.model
        if self.setting:
            m &= df["setting"] == self.setting
        return m


#: What an extreme value of a metric means, shown beside it (UA 100 or MIA 0 puzzle first-time readers).
_EXTREMES = {
    ("UA", 100.0): "UA 100: no image of D_f is classified correctly (Retrain's value when a whole class is "
                   "forgotten: it never saw the class)",
    ("UA", 0.0): "UA 0: every image of D_f is classified correctly, as by the Original that trained on them",
    ("MIA", 0.0): "MIA 0: the attack calls every image of D_f a training member: the model still treats D_f "
                  "as seen (the Original's value)",
    ("MIA", 100.0): "MIA 100: the attack calls every image of D_f unseen, as for data the model never trained on",
}


def metric_notes(values: Mapping[str, Any]) -> list[str]:
    """Plain sentences for the extreme values among ``values`` (UA/MIA at 0 or 100 %)."""
    out = []
    for (metric, at), text in _EXTREMES.items():
        v = values.get(metric)
        if isinstance(v, (int, float)) and abs(float(v) - at) < 0.05:
            out.append(text)
    return out


def _nearest(values: Sequence[float], x: float) -> float:
    return min(values, key=lambda v: (abs(v - x), v))


class RecordedCurves:
    """Results mode: negation curves and final metrics read from tidy records.

    Args:
        results: A results log (``.jsonl``), a folder of logs, or a DataFrame with
            :data:`negkit.results.COLUMNS`.
        forget_split: Split name of the forget-side curve.
        control_split: Split name of the control-side curve.
        threshold: Admissibility threshold on control accuracy (fraction of the reference).
    """

    live = False

    def __init__(self, results: str | os.PathLike | pd.DataFrame, *, forget_split: str = "val_forget",
                 control_split: str = "val_control", threshold: float = 0.95) -> None:
        if isinstance(results, pd.DataFrame):
            self.where = "the given table"
            df = results
        else:
            self.where = os.fspath(results)
            df = read_results(results) if os.path.exists(results) else pd.DataFrame(columns=list(COLUMNS))
        missing = set(COLUMNS) - set(df.columns)
        if missing:
            raise ValueError(f"results table lacks columns {sorted(missing)}; "
                             "build it with negkit.results.read_results")
        self.forget_split, self.control_split, self.threshold = forget_split, control_split, threshold
        self.df = df
        curve = df["metric"].eq("acc") & df["split"].isin([forget_split, control_split]) & df["coef"].notna()
        self._methods = negation_methods()
        self._curves = df[curve & df["method"].isin(self._methods)]
        # Everything else a negation method recorded describes its chosen model: UA/RA/TA/MIA/avg_gap
        # (benchmark) or test accuracies at the chosen λ (CLIP task negation: test_forget / test_control).
        self._final = df[~curve & df["method"].isin(self._methods)]

    def runs(self) -> list[RunKey]:
        """Runs that have at least one negation curve or final negation metric."""
        rows = pd.concat([self._curves, self._final])
        keys = {RunKey(r.dataset, r.scenario, r.model, r.setting, int(r.seed))
                for r in rows[["dataset", "scenario", "model", "setting", "seed"]].itertuples()}
        return sorted(keys, key=lambda k: k.label)

    def methods(self, run: RunKey) -> list[tuple[str, str]]:
        """``(method, pool_config)`` pairs recorded for ``run`` (curves or final metrics).

        The benchmark's method-level Task Arithmetic row (``pool_config=""``, the
        validation-selected member, no curve of its own) is left out when the members
        themselves are listed; :meth:`selected_member` names it.
        """
        rows = pd.concat([self._curves[run.mask(self._curves)], self._final[run.mask(self._final)]])
        pairs = list(dict.fromkeys(zip(rows["method"], rows["pool_config"])))
        if any(m == "task_arithmetic" and p for m, p in pairs):
            pairs = [p for p in pairs if p != ("task_arithmetic", "")]
        order = {m: i for i, m in enumerate(self._methods)}
        return sorted(pairs, key=lambda p: (order[p[0]], p[1]))

    def selected_member(self, run: RunKey) -> str | None:
        """Pool member the pipeline selected on validation for Task Arithmetic (from its note)."""
        f = self._final
        notes = f[run.mask(f) & (f["method"] == "task_arithmetic") & (f["pool_config"] == "")]["note"]
        for note in notes:
            m = re.search(r"val-selected pool member (\S+)", note)
            if m:
                return m.group(1)
        return None

    def curve(self, run: RunKey, method: str, pool_config: str = "") -> pd.DataFrame:
        """Tidy curve rows (coef, split, value, ...) of one method; empty when none was recorded."""
        c = self._curves
        rows = c[run.mask(c) & (c["method"] == method) & (c["pool_config"] == pool_config)]
        return rows.sort_values(["split", "coef"]).reset_index(drop=True)

    def coefs(self, run: RunKey, method: str, pool_config: str = "") -> list[float]:
        """The recorded λ grid of one method (sorted)."""
        return sorted(set(self.curve(run, method, pool_config)["coef"].astype(float)))

    def _at(self, curve: pd.DataFrame, split: str, coef: float) -> float | None:
        rows = curve[curve["split"] == split]
        if rows.empty:
            return None
        c = _nearest(list(rows["coef"]), coef)
        return float(rows.loc[rows["coef"] == c, "value"].mean())

    def control_reference(self, run: RunKey, method: str, pool_config: str = "") -> float | None:
        """Control accuracy of the unedited model: an ``original``/``zeroshot`` row, else the curve at λ=0."""
        d = self.df
        orig = d[run.mask(d) & d["method"].isin(["original", "zeroshot"]) & (d["metric"] == "acc")
                 & (d["split"] == self.control_split)]
        if not orig.empty:
            return float(orig["value"].mean())
        curve = self.curve(run, method, pool_config)
        rows = curve[(curve["split"] == self.control_split) & (curve["coef"] == 0.0)]
        return float(rows["value"].mean()) if not rows.empty else None

    def chosen_coef(self, run: RunKey, method: str, pool_config: str = "") -> float | None:
        """λ of the final metric rows; else the validation rule applied to the recorded curve."""
        f = self._final
        rows = f[run.mask(f) & (f["method"] == method) & (f["pool_config"] == pool_config)]
        finite = rows["coef"].dropna()
        if not finite.empty:
            return float(finite.iloc[0])
        if not rows.empty:  # final rows without λ: the pipeline found no admissible coefficient
            return None
        from negkit.coefs import select_coef

        curve = self.curve(run, method, pool_config)
        ref = self.control_reference(run, method, pool_config)
        coefs = self.coefs(run, method, pool_config)
        if ref is None or not coefs:
            return None
        forget = [self._at(curve, self.forget_split, c) for c in coefs]
        control = [self._at(curve, self.control_split, c) for c in coefs]
        if any(v is None for v in forget + control):
            return None
        return select_coef(coefs, forget, control, ref, threshold=self.threshold)

    def numbers(self, run: RunKey, method: str, pool_config: str, coef: float) -> list[tuple[str, Any]]:
        """Rows ``(label, value)`` shown for λ=``coef``: the curve at the nearest recorded λ,
        then the final metrics of the chosen model (recorded once, at the chosen λ)."""
        curve = self.curve(run, method, pool_config)
        out: list[tuple[str, Any]] = []
        if not curve.empty:
            shown = _nearest(self.coefs(run, method, pool_config), coef)
            out.append(("λ (nearest recorded)", float(shown)))
            for split in (self.forget_split, self.control_split):
                v = self._at(curve, split, shown)
                if v is not None:
                    out.append((f"{split} acc (%)", v))
        f = self._final
        rows = f[run.mask(f) & (f["method"] == method) & (f["pool_config"] == pool_config)]
        for metric in FINAL_METRICS:
            vals = rows.loc[rows["metric"] == metric, "value"]
            if not vals.empty:
                out.append((f"{metric} at chosen λ", float(vals.mean())))
        for split, vals in rows[rows["metric"] == "acc"].groupby("split", sort=False)["value"]:
            out.append((f"{split} acc (%) at chosen λ", float(vals.mean())))
        notes = sorted(set(n for n in rows["note"] if n))
        if notes:
            out.append(("note", "; ".join(notes)))
        out += [("reading", text) for text in metric_notes({k.split(" ")[0]: v for k, v in out})]
        return out


class NegationState:
    """Plain-Python model of the negation view.

    Args:
        source: A :class:`RecordedCurves` or :class:`~negkit.widgets.live.LiveNegation`, or a
            list of them (e.g. one live source per scenario); their runs are offered together
            (a run present in several sources is taken from the first).
        threshold: Admissibility threshold drawn on the curve.
    """

    def __init__(self, source: Any, *, threshold: float = 0.95) -> None:
        self.sources = list(source) if isinstance(source, (list, tuple)) else [source]
        if not self.sources:
            raise ValueError("no source given; pass a results folder, a RecordedCurves or a LiveNegation")
        self.threshold = threshold
        self._owner: dict[RunKey, Any] = {}
        for src in self.sources:
            for run in src.runs():
                self._owner.setdefault(run, src)
        self.runs: list[RunKey] = list(self._owner)
        self.run: RunKey | None = None
        self.method, self.pool_config = "", ""
        self.coef = 0.0
        if self.runs:
            self.select(run=self.runs[0])

    @property
    def source(self) -> Any:
        """The source of the selected run (the first source when there is no run)."""
        return self._owner.get(self.run, self.sources[0])

    # --- selection -------------------------------------------------------------------
    def methods(self) -> list[str]:
        """Method names available for the selected run."""
        return list(dict.fromkeys(m for m, _ in self.source.methods(self.run))) if self.run else []

    def pool_configs(self) -> list[str]:
        """Pool members available for Task Arithmetic in the selected run."""
        if self.run is None:
            return []
        return [p for m, p in self.source.methods(self.run) if m == "task_arithmetic"]

    def pool_label(self, name: str) -> str:
        """Dropdown label of a pool member (the validation-selected one is starred)."""
        pick = getattr(self.source, "selected_member", lambda run: None)(self.run) if self.run else None
        return f"{name} ★ val-selected" if name == pick else name

    def select(self, run: RunKey | None = None, method: str | None = None, pool_config: str | None = None) -> None:
        """Change run / method / pool member; λ jumps to the chosen λ of the new selection."""
        if run is not None:
            if run not in self.runs:
                raise ValueError(f"unknown run {run.label!r}; available: {[r.label for r in self.runs]}")
            self.run = run
            methods = self.methods()
            if method is None and self.method not in methods:
                method = "negmerge" if "negmerge" in methods else (methods[0] if methods else "")
        if method is not None:
            if method not in self.methods():
                where = self.run.label if self.run else "any run"
                raise ValueError(f"no negation results for method {method!r} in {where}; "
                                 f"available: {self.methods()}")
            self.method = method
        if self.method == "task_arithmetic":
            pools = self.pool_configs()
            if pool_config is not None:
                if pool_config not in pools:
                    raise ValueError(f"unknown pool member {pool_config!r}; available: {pools}")
                self.pool_config = pool_config
            elif self.pool_config not in pools:
                self.pool_config = pools[0] if pools else ""
        else:
            self.pool_config = ""
        chosen = self.chosen_coef()
        coefs = self.coefs()
        self.coef = chosen if chosen is not None else (coefs[0] if coefs else 0.0)

    def set_coef(self, coef: float) -> None:
        """Move λ."""
        if not math.isfinite(coef):
            raise ValueError(f"λ must be a finite number, got {coef}")
        self.coef = float(coef)

    # --- what the view shows -----------------------------------------------------------
    def coefs(self) -> list[float]:
        """The λ grid of the selected curve (empty when there is none)."""
        return self.source.coefs(self.run, self.method, self.pool_config) if self.run else []

    def curve(self) -> pd.DataFrame:
        """Tidy curve rows of the selection."""
        if self.run is None:
            return pd.DataFrame(columns=list(COLUMNS))
        return self.source.curve(self.run, self.method, self.pool_config)

    def chosen_coef(self) -> float | None:
        """The validation-chosen λ of the selection (None: none admissible or unknown)."""
        return self.source.chosen_coef(self.run, self.method, self.pool_config) if self.run else None

    def control_reference(self) -> float | None:
        """The original model's control accuracy (the admissibility line is threshold × this)."""
        return self.source.control_reference(self.run, self.method, self.pool_config) if self.run else None

    @property
    def message(self) -> str | None:
        """Why nothing can be shown for the selection, or None when all is well."""
        if not self.runs:
            where = " or ".join(str(src.where) for src in self.sources)
            return (f"No negation results in {where}: no records with a λ curve "
                    "(metric 'acc', coef set) or final metrics of a negation method. Run the benchmark "
                    "(negkit.benchmark.run) into that folder first, or point the explorer at another results folder.")
        if not self.method:
            return f"No negation method recorded for {self.run.label}."
        if self.curve().empty:
            who = self.method + (f" ({self.pool_config})" if self.pool_config else "")
            return (f"No λ curve recorded for {who} in {self.run.label}; only its final metrics are shown. "
                    "Rerun the pipeline with curve recording, or pick another method.")
        return None

    def numbers(self) -> list[tuple[str, Any]]:
        """``(label, value)`` rows for the current λ (accuracies in %)."""
        if self.run is None or not self.method:
            return []
        rows = list(self.source.numbers(self.run, self.method, self.pool_config, self.coef))
        chosen = self.chosen_coef()
        rows.append(("chosen λ", "none admissible" if chosen is None else float(chosen)))
        return rows

    def figure(self) -> plt.Figure | None:
        """The λ curve with the admissibility line, the chosen λ and the current λ marked."""
        curve = self.curve()
        if curve.empty:
            return None
        from negkit import plotting

        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        plotting.coef_curve(curve, self.method, ax=ax, control_reference=self.control_reference(),
                            threshold=self.threshold, chosen=self.chosen_coef(),
                            forget_split=self.source.forget_split, control_split=self.source.control_split)
        # The λ being shown: a wide translucent band, never confused with the chosen λ (thin dotted black).
        ax.axvline(self.coef, color="#d62728", ls="-", lw=3, alpha=0.45, zorder=1, label=f"λ shown = {self.coef:.2f}")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        return fig


def curve_records(rows: Sequence[Mapping[str, Any]], run: RunKey, method: str, pool_config: str) -> pd.DataFrame:
    """Tidy curve DataFrame (negkit.results.COLUMNS) from ``{coef, split, value}`` rows."""
    base = dict(setting=run.setting or "standard", model=run.model, dataset=run.dataset, scenario=run.scenario,
                method=method, pool_config=pool_config, metric="acc", seed=run.seed, note="")
    df = pd.DataFrame([{**base, **r} for r in rows], columns=list(COLUMNS))
    df["coef"] = df["coef"].astype(float)
    df["value"] = df["value"].astype(float)
    return df
