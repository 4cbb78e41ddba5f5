"""Every notebook keeps the house shape and executes under papermill with smoke=True."""
from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

from negkit import notebook

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


def _git_status() -> str | None:
    """``git status --porcelain`` of the checkout (None outside a git checkout, e.g. an sdist)."""
    if not (ROOT / ".git").exists():
        return None
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def _default_paths(nb_path: Path) -> dict[str, str]:
    params = notebook.notebook_parameters(nb_path)
    dataset = ast.literal_eval(params["dataset"]["default"]) if "dataset" in params else ""
    return {k: ast.literal_eval(params[k]["default"]).format(dataset=dataset)
            for k in ("run_dir", "figures_dir") if k in params}


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_default_outputs_are_ignored_by_git(nb_path: Path):
    """A notebook run with its defaults writes only under paths git ignores: `git status` stays clean."""
    if _git_status() is None:
        pytest.skip("not a git checkout")
    paths = _default_paths(nb_path)
    assert {"run_dir", "figures_dir"} <= set(paths)
    for name, rel in paths.items():
        assert not Path(rel).is_absolute(), (nb_path.name, name, rel)
        probe = f"{rel.rstrip('/')}/probe.png"
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT).returncode == 0
        assert ignored, f"{nb_path.name}: default {name}={rel!r} is not ignored by git; its outputs would dirty the tree"


def test_make_lab_opens_working_copies_not_the_tracked_notebooks():
    text = (ROOT / "Makefile").read_text()
    recipe = text[text.index("\nlab:"):].split("\n\n")[0]
    assert "runs/lab" in recipe and "notebooks/07_explorer.ipynb" not in recipe.split("jupyter lab")[1]
    assert "--allow-root" in recipe


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(nb_path: Path, tmp_path: Path):
    out = tmp_path / nb_path.name
    figures = tmp_path / "figures"
    # A cell limit: nbclient can lose the reply of a cell that displays widgets (jupyter/nbclient#312);
    # then the test fails instead of waiting forever.
    before = _git_status()
    notebook.execute(nb_path, out, {"smoke": True, "run_dir": str(tmp_path / "run"), "figures_dir": str(figures)},
                     execution_timeout=600)
    assert _git_status() == before, f"{nb_path.name} changed the checkout (tracked files or untracked, not ignored)"
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if "save_figure" in nb_path.read_text():
        assert list(figures.glob("*.png")), f"{nb_path.name} wrote no figure to figures_dir in smoke mode"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_checks_every_parameter(nb_path: Path):
    """The cell after `parameters` passes every declared name through notebook.check_parameters."""
    cells = [c for c in _cells(nb_path) if c["cell_type"] == "code"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    declared = set(notebook.notebook_parameters(nb_path))
    check = "".join(cells[i + 1]["source"])
    assert "notebook.check_parameters(globals()" in check and "notebook.set_threads(" in check, nb_path.name
    spec = next(n for n in ast.walk(ast.parse(check)) if isinstance(n, ast.Dict))
    assert {k.value for k in spec.keys} == declared, f"{nb_path.name}: the spec and the parameters cell differ"


# --- negkit.notebook: the validator, hand-checked ------------------------------------------------

def _ns(**values):
    return dict(values)


def test_strings_from_the_command_line_become_the_declared_kind(tmp_path: Path):
    ns = _ns(smoke="false", draws="7", lr="0.5", classes="[3, 5]", pair="3,8", opts="{'a': 1}", name=3)
    spec = {"smoke": bool, "draws": int, "lr": float, "classes": notebook.Param(list, items=int),
            "pair": notebook.Param(list, items=int), "opts": dict, "name": str}
    out = notebook.check_parameters(ns, spec, root=tmp_path)
    assert out == {"smoke": False, "draws": 7, "lr": 0.5, "classes": [3, 5], "pair": [3, 8], "opts": {"a": 1},
                   "name": "3"}
    assert ns["smoke"] is False and ns["classes"] == [3, 5]  # written back into the namespace


@pytest.mark.parametrize("value", ["TRUE", "yes", "1", True, 1])
def test_booleans_from_strings(value, tmp_path: Path):
    assert notebook.check_parameters(_ns(smoke=value), {"smoke": bool}, root=tmp_path)["smoke"] is True


@pytest.mark.parametrize("spec,value,message", [
    (bool, "maybe", "'smoke' must be a boolean"),
    (int, "five", "'smoke' must be an integer, got 'five'"),
    (int, 2.5, "'smoke' must be an integer"),
    (int, True, "'smoke' must be an integer"),
    (notebook.Param(int, min=1), 0, "'smoke' must be ≥ 1"),
    (notebook.Param(float, max=1.0), "1.5", "'smoke' must be ≤ 1.0"),
    (notebook.Param(str, choices=("a", "b")), "c", "must be one of ['a', 'b']"),
    (notebook.Param(list, items=int), "[3, x]", "cannot read '[3, x]' as a list"),
    (notebook.Param(list, items=int), "3,five", "'smoke[1]' must be an integer"),
    (notebook.Param(list, items=int, min_len=2), [3], "at least 2"),
    (str, None, "got None"),
])
def test_bad_values_are_refused_naming_the_parameter(spec, value, message, tmp_path: Path):
    with pytest.raises(ValueError, match=re.escape(message)):
        notebook.check_parameters(_ns(smoke=value), {"smoke": spec}, root=tmp_path)


def test_optional_accepts_none_as_a_string(tmp_path: Path):
    out = notebook.check_parameters(_ns(threads="None"), {"threads": notebook.Param(int, optional=True)}, root=tmp_path)
    assert out["threads"] is None


def test_paths_follow_the_dataset_and_start_at_the_root(tmp_path: Path):
    ns = _ns(dataset="fashion_mnist", run_dir="runs/{dataset}", figures_dir=str(tmp_path / "abs"), cache="~/x")
    spec = {"dataset": str, "run_dir": Path, "figures_dir": Path, "cache": Path}
    out = notebook.check_parameters(ns, spec, root=tmp_path)
    assert out["run_dir"] == str(tmp_path / "runs" / "fashion_mnist")
    assert out["figures_dir"] == str(tmp_path / "abs")
    assert out["cache"] == str(Path.home() / "x")
    with pytest.raises(ValueError, match="names 'datset' in braces"):
        notebook.check_parameters(_ns(run_dir="runs/{datset}"), {"run_dir": Path}, root=tmp_path)


def test_repo_root_is_found_from_the_notebooks_folder():
    assert notebook.repo_root(ROOT / "notebooks") == ROOT
    assert notebook.resolve_path("runs/digits", ROOT) == ROOT / "runs" / "digits"


INJECTED = "# Parameters\nsmoke = True\nfv_classes = \"[3, 5]\"\n"


def test_names_papermill_injected_are_read_from_the_kernel_history():
    assert notebook.injected_parameters({"In": ["", "x = 1", INJECTED]}) == {"smoke", "fv_classes"}
    assert notebook.injected_parameters({}) == set()


def test_a_misspelt_injected_name_is_refused(tmp_path: Path):
    ns = {"In": ["", "# Parameters\nsmoek = True\n"], "smoke": False, "smoek": True}
    with pytest.raises(ValueError, match="'smoek' \\(did you mean 'smoke'\\?\\)"):
        notebook.check_parameters(ns, {"smoke": bool}, root=tmp_path)


def test_smoke_shrinks_only_what_the_user_did_not_set(tmp_path: Path):
    spec = {"smoke": bool, "fv_classes": notebook.Param(list, items=int), "fv_epochs": int}
    ns = {"In": ["", INJECTED], "smoke": True, "fv_classes": "[3, 5]", "fv_epochs": 10}
    out = notebook.check_parameters(ns, spec, smoke_values={"fv_classes": [3], "fv_epochs": 1}, root=tmp_path)
    assert out == {"smoke": True, "fv_classes": [3, 5], "fv_epochs": 1}
    ns = {"smoke": False, "fv_classes": [3, 5, 8], "fv_epochs": 10}
    out = notebook.check_parameters(ns, spec, smoke_values={"fv_classes": [3], "fv_epochs": 1}, root=tmp_path)
    assert out["fv_epochs"] == 10 and out["fv_classes"] == [3, 5, 8]  # smoke off: nothing replaced


def test_the_runner_refuses_unknown_names_before_starting_a_kernel():
    nb = ROOT / "notebooks" / "03_sign_agreement.ipynb"
    with pytest.raises(ValueError, match="'smoek' \\(did you mean 'smoke'\\?\\)"):
        notebook.execute(nb, "/nonexistent/out.ipynb", {"smoek": True})
    notebook.check_names(nb, {"smoke": True, "draws": 2})  # declared names pass


def test_set_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert notebook.set_threads() == 2 and torch.get_num_threads() == 2
        assert notebook.set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be ≥ 1"):
            notebook.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_pick_refuses_an_index_past_the_end_naming_the_parameter():
    assert notebook.pick(["a", "b"], 1, "member_index") == "b"
    with pytest.raises(ValueError, match=r"member_index=13 is out of range: there are 2 \(0: a, 1: b\); pass "
                                         r"member_index between 0 and 1"):
        notebook.pick(["a", "b"], 13, "member_index")


@pytest.mark.parametrize("value", ["nan", "NaN", " nan ", "inf", "-inf", float("nan"), float("inf")])
def test_a_float_parameter_refuses_nan_and_inf(value, tmp_path: Path):
    with pytest.raises(ValueError, match="notebook parameter 'lr' must be a finite number"):
        notebook.check_parameters(_ns(lr=value), {"lr": notebook.Param(float, min=0.0, max=1.0)}, root=tmp_path)


@pytest.mark.parametrize("template, shown", [("runs/{d.__class__}", "d.__class__"), ("runs/{d[0]}", "d[0]"),
                                             ("runs/{d!r}", "d!r"), ("runs/{d:>30}", "d:>30"), ("runs/{0}", "0"),
                                             ("runs/{}", "")])
def test_path_placeholders_are_bare_names_and_nothing_is_evaluated(template, shown, tmp_path: Path):
    with pytest.raises(ValueError, match=re.escape(f"names {shown!r} in braces")):
        notebook.check_parameters(_ns(d="x", run_dir=template), {"d": str, "run_dir": Path}, root=tmp_path)


def test_doubled_braces_stay_literal_in_a_path(tmp_path: Path):
    out = notebook.check_parameters(_ns(d="x", run_dir="runs/{{d}}/{d}"), {"d": str, "run_dir": Path}, root=tmp_path)
    assert out["run_dir"] == str(tmp_path / "runs" / "{d}" / "x")
