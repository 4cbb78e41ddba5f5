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
