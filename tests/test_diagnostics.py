"""negkit.plotting.diagnostics on hand-made tables: bar heights, error bars, intervals, curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from negkit import analysis  # noqa: E402
from negkit.plotting import diagnostics  # noqa: E402


def _summary():
    return pd.DataFrame({"dataset": "d", "scenario": "class_0", "method": ["mean", "negmerge", "task_arithmetic"],
                         "metric": "avg_gap", "value": [3.0, 1.0, 2.0], "std": [0.5, 0.25, np.nan], "n_seeds": 3})


def test_errorbar_results_draws_means_in_method_order_with_std():
    ax = diagnostics.errorbar_results(_summary())
    heights = [p.get_height() for p in ax.patches]
    assert heights == [2.0, 3.0, 1.0]  # task_arithmetic, mean, negmerge (the kit's method order)
    (_, caps, (bars,)) = ax.containers[-1].errorbar.lines
    seg = bars.get_segments()
    assert [s[1][1] - s[0][1] for s in seg] == pytest.approx([0.0, 1.0, 0.5])  # 2 × std (± std)
    with pytest.raises(ValueError, match="no rows of metric 'UA'"):
        diagnostics.errorbar_results(_summary(), metric="UA")
    plt.close("all")


def test_paired_intervals_one_point_per_comparison():
    p = pd.DataFrame({"scenario": "class_0", "a": "negmerge", "b": ["task_arithmetic", "mean"], "metric": "avg_gap",
                      "mean_diff": [-1.0, 0.5], "std_diff": 0.5, "n_seeds": 3, "ci_low": [-2.0, -0.5],
                      "ci_high": [-0.1, 1.5], "excludes_zero": [True, False]})
    ax = diagnostics.paired_intervals(p)
    xs = sorted(float(line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "o")
    assert xs == [-1.0, 0.5]
    assert [t.get_text() for t in ax.get_yticklabels()][0].endswith("Task Arithmetic")
    plt.close("all")


def test_diversity_heatmap_and_member_curves():
    tvs = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}]
    div = analysis.pool_diversity(tvs, names=["a", "b"])
    ax = diagnostics.diversity_heatmap(div, "cosine")
    assert np.allclose(ax.collections[0].get_array().reshape(2, 2), [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="value must be"):
        diagnostics.diversity_heatmap(div, "norm")
    rows = []
    for method, pc, lam in (("task_arithmetic", "a", 0.5), ("task_arithmetic", "b", 1.0), ("negmerge", "", 2.0)):
        for c in (0.0, 0.5, 1.0, 2.0):
            rows.append(dict(method=method, pool_config=pc, metric="acc", split="val_forget", coef=c,
                             value=90 - 10 * c))
        rows.append(dict(method=method, pool_config=pc, metric="UA", split="forget", coef=lam, value=1.0))
    ax = diagnostics.member_curves(pd.DataFrame(rows), threshold=0.95, control_reference=80.0)
    curves = [line for line in ax.lines if len(line.get_xdata()) == 4]
    dots = [line for line in ax.lines if len(line.get_xdata()) == 1]
    assert len(curves) == 3 and sorted(float(d.get_xdata()[0]) for d in dots) == [0.5, 1.0, 2.0]
    assert any(np.allclose(line.get_ydata(), 76.0) for line in ax.lines if len(line.get_ydata()) == 2)
    plt.close("all")
