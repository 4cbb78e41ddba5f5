"""Markdown tables of a benchmark report, drawn from its CSVs (for papers, READMEs and docs).

Each function takes a table the report writes (:func:`negkit.benchmark.summary` and its CSV,
:func:`negkit.benchmark.paired`, :func:`negkit.benchmark.regime`) and returns a GitHub markdown table
as a string, so that a document quoting numbers can be regenerated from the CSVs, and checked
against them, instead of being typed by hand:

    >>> summary = pd.read_csv("figures/fashion_mnist_summary.csv")
    >>> print(gap_table(summary, columns=[("random_10", "standard"), ("class_0", "standard")]))

A mean ± std cell names its number of seeds when it has fewer than the table's most.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from negkit.plotting.style import METHOD_LABELS

__all__ = ["scenario_label", "method_label", "cell", "frame_table", "gap_table", "metric_table", "paired_table",
           "regime_table"]

#: Names the docs use where they differ from the figure legends.
DOC_LABELS = {"original": "Original (no unlearning)", "task_arithmetic": "Task Arithmetic, val.-selected member",
              "mean": "uniform merge", "consensus": "consensus masks (TALL, m = 2)", "forget_vector": "forget vector"}
RULE_NAMES = {"standard": "(a)", "standard_match": "(b)"}


def scenario_label(scenario: str) -> str:
    """``random_10`` → ``random 10 %``, ``class_0`` → ``class 0``; other names unchanged."""
    kind, _, rest = scenario.partition("_")
    if kind == "random" and rest:
        return f"random {rest} %"
    if kind == "class" and rest:
        return f"class {rest.replace('-', ', ')}"
    return scenario


def method_label(method: str, labels: Mapping[str, str] | None = None) -> str:
    """The name a table shows for ``method`` (``labels`` first, then the docs' and legends' names)."""
    for table in (labels or {}, DOC_LABELS, METHOD_LABELS):
        if method in table:
            return table[method]
    return method


def cell(mean: float, std: float | None = None, n: int | None = None, *, n_max: int | None = None,
         digits: int = 2, bold: bool = False) -> str:
    """``mean ± std`` at ``digits`` decimals, ``(n = 4)`` added when ``n`` is below ``n_max``, bold on request."""
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "—"
    text = f"{mean:.{digits}f}"
    if std is not None and not np.isnan(std):
        text += f" ± {std:.{digits}f}"
    if bold:
        text = f"**{text}**"
    if n is not None and n_max is not None and n < n_max:
        text += f" (n = {n})"
    return text


def _indexed(summary: pd.DataFrame) -> pd.DataFrame:
    need = {"scenario", "method", "metric", "value", "std", "n_seeds", "setting"}
    missing = need - set(summary.columns)
    if missing:
        raise ValueError(f"summary table lacks columns {sorted(missing)}; pass the report's *_summary.csv")
    return summary.set_index(["setting", "scenario", "method", "metric"]).sort_index()


def _row(header: Sequence[str]) -> str:
    return "| " + " | ".join(header) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_row(header), "|" + "---|" * len(header)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def frame_table(df: pd.DataFrame) -> str:
    """Any DataFrame as a pipe table, its columns as the header and each value as ``str`` shows it."""
    return _table([str(c) for c in df.columns], [[str(v) for v in row] for row in df.itertuples(index=False)])


def gap_table(summary: pd.DataFrame, *, columns: Sequence[tuple[str, str]], methods: Sequence[str] | None = None,
              metric: str = "avg_gap", labels: Mapping[str, str] | None = None, digits: int = 2,
              fallback: str | None = None) -> str:
    """One row per method, one column per ``(scenario, setting)``: mean ± std of ``metric``, the lowest bold.

    Args:
        summary: The report's summary table (one row per setting, scenario, method and metric).
        columns: ``(scenario, setting)`` pairs, e.g. ``[("random_10", "standard"), ("random_10",
            "standard_match")]``; the header reads ``random 10 %, rule (a)``.
        methods: Row order (default: the order of the summary); a method missing from a column shows ``—``.
        metric: The metric shown (default ``avg_gap``; the lowest of a column is bolded).
        fallback: A setting whose value stands in where a method has none under a column's setting
            (``"standard"``: the Original and the baselines, tuned once, repeat under every λ rule).
    """
    data = _indexed(summary)
    if methods is None:
        methods = list(dict.fromkeys(summary["method"]))
    n_max = int(summary["n_seeds"].max())
    header = ["method"] + [f"{scenario_label(s)}, rule {RULE_NAMES.get(r, r)}" for s, r in columns]
    values = {}
    for col in columns:
        for m in methods:
            keys = [(col[1], col[0], m, metric)] + ([(fallback, col[0], m, metric)] if fallback else [])
            values[col, m] = next((data.loc[k] for k in keys if k in data.index), None)
    best = {col: min((v["value"] for (c, m), v in values.items() if c == col and v is not None
                      and m not in ("retrain",)), default=None) for col in columns}
    rows = []
    for m in methods:
        row = [method_label(m, labels)]
        for col in columns:
            v = values[col, m]
            row.append("—" if v is None else cell(v["value"], v["std"], int(v["n_seeds"]), n_max=n_max,
                                                  digits=digits, bold=round(v["value"], digits) == round(best[col], digits)))
        rows.append(row)
    return _table(header, rows)


def metric_table(summary: pd.DataFrame, *, scenarios: Sequence[str],
                 methods: Sequence[str] | Mapping[str, Sequence[str]],
                 metrics: Sequence[str] = ("UA", "RA", "TA", "MIA"), setting: str = "standard",
                 labels: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                 digits: Mapping[str, int] | int = 2, zero: Sequence[str] = ()) -> str:
    """One row per scenario and method, one column per metric (mean ± std).

    Args:
        methods: The rows of every scenario, or per scenario (``{"random_10": [..., "ft"], "class_0": [..., "rl"]}``).
        labels: Row names per method (``{"ft": "FT (best baseline)"}``).
        headers: Column names per metric (default: the metric's name).
        digits: Decimals, one number or per metric.
        zero: Methods shown as ``0`` where their value is exactly 0 with no spread (Retrain's divergence
            to itself).
    """
    data = _indexed(summary)
    n_max = int(summary["n_seeds"].max())
    header = ["scenario", "method"] + [(headers or {}).get(k, k) for k in metrics]
    rows = []
    for s in scenarios:
        for m in (methods.get(s, ()) if isinstance(methods, Mapping) else methods):
            row = [scenario_label(s), method_label(m, labels)]
            for k in metrics:
                d = digits if isinstance(digits, int) else digits.get(k, 2)
                key = (setting, s, m, k)
                if key not in data.index:
                    row.append("—")
                    continue
                v = data.loc[key]
                if m in zero and v["value"] == 0 and (np.isnan(v["std"]) or v["std"] == 0):
                    row.append("0")
                else:
                    row.append(cell(v["value"], v["std"], int(v["n_seeds"]), n_max=n_max, digits=d))
            rows.append(row)
    return _table(header, rows)


def paired_table(paired: pd.DataFrame, *, labels: Mapping[str, str] | None = None) -> str:
    """The paired differences (``a − b``): mean, 95 % t-interval (bold when it excludes 0), sign-flip p, n."""
    header = ["scenario, rule", f"{method_label(str(paired['a'].iloc[0]), labels)} −", "mean diff",
              "95 % t-interval", "sign-flip p", "n"]
    rows = []
    for r in paired.itertuples(index=False):
        name = method_label(r.b, labels)
        if getattr(r, "best_baseline", False):
            name += " (best classic)"
        interval = f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
        if r.excludes_zero:
            interval = f"**{interval}**"
        rows.append([f"{scenario_label(r.scenario)} {RULE_NAMES.get(r.setting, r.setting)}", name,
                     f"{r.mean_diff:+.2f}", interval, f"{r.p_value:.3f}", str(int(r.n_seeds))])
    return _table(header, rows)


def regime_table(regime: pd.DataFrame) -> str:
    """The regime check per scenario and seed (:func:`negkit.benchmark.regime`)."""
    header = ["scenario", "seed", "Original's accuracy on D_f", "Original UA", "Retrain UA", "memorises"]
    rows = [[scenario_label(r.scenario), str(int(r.seed)), f"{r.original_forget_acc:.2f}", f"{r.original_UA:.2f}",
             f"{r.retrain_UA:.2f}", "yes" if bool(r.memorises) else "no"]
            for r in regime.sort_values(["scenario", "seed"]).itertuples(index=False)]
    return _table(header, rows)
