"""The README's Python example really runs (and does what its comments say)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no ```python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    model, tau, pre = namespace["model"], namespace["tau"], namespace["theta_pre"]
    # θ = θ_pre − 0.8 τ where τ is the sign-consensual merge: check the model really holds it.
    for key, value in model.state_dict().items():
        assert (value - (pre[key] - 0.8 * tau[key])).abs().max() < 1e-6
    assert "NegMerge kept" in capsys.readouterr().out


def test_readme_results_at_a_glance_match_the_committed_summary():
    import pandas as pd

    text = README.read_text()
    table = text[text.index("## Results at a glance"):].split("\n\n")[2].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")][1:]
    ids = {"Original": "original", "NegMerge": "negmerge", "TA (val.)": "task_arithmetic", "uniform": "mean",
           "MagMax": "magmax", "consensus": "consensus", "FT": "ft", "RL": "rl", "SalUn": "salun",
           "forget vector": "forget_vector", "NegGrad+": "neggrad_plus", "BS": "bs", "IU": "iu", "SSD": "ssd",
           "SCRUB": "scrub", "BE": "be"}
    summary = pd.read_csv(README.parent / "figures" / "fashion_mnist_summary.csv")
    gap = summary[(summary.metric == "avg_gap") & (summary.setting == "standard")].set_index(["scenario", "method"])
    checked = 0
    for row in table[2:]:
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        scenario = {"random 10 %": "random_10", "class 0": "class_0"}[cells[0]]
        for name, cell in zip(header, cells[1:]):
            mean = float(cell.split("±")[0])
            assert mean == round(gap.loc[(scenario, ids[name]), "value"], 2), (scenario, name, cell)
            checked += 1
    assert checked == 2 * len(ids)
