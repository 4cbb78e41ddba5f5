"""Every notebook keeps the house shape and executes under papermill with smoke=True."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(nb_path: Path) -> list[dict]:
    return json.loads(nb_path.read_text())["cells"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shape(nb_path: Path):
    cells = _cells(nb_path)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") for c in code), f"{nb_path.name} is committed with outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{nb_path.name} needs exactly one cell tagged 'parameters'"
    names = {t.id for t in ast.walk(ast.parse("".join(params[0]["source"]))) if isinstance(t, ast.Name)}
    assert {"smoke", "run_dir", "figures_dir"} <= names, f"{nb_path.name}: parameters lack smoke/run_dir/figures_dir"
    for c in code:
        src = "".join(c["source"])
        tree = ast.parse(src)
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, f"{nb_path.name} defines functions/classes; move them into negkit:\n{src}"
    assert any(c["cell_type"] == "markdown" for c in cells), f"{nb_path.name} has no explanations"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(nb_path: Path, tmp_path: Path):
    import papermill as pm

    out = tmp_path / nb_path.name
    figures = tmp_path / "figures"
    pm.execute_notebook(
        str(nb_path), str(out), kernel_name="python3", progress_bar=False, cwd=str(ROOT),
        parameters={"smoke": True, "run_dir": str(tmp_path / "run"), "figures_dir": str(figures)},
    )
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if "save_figure" in nb_path.read_text():
        assert list(figures.glob("*.png")), f"{nb_path.name} wrote no figure to figures_dir in smoke mode"
