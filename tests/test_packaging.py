"""The project's packaging promises: environment.yml and pyproject.toml list the same
dependencies, the Makefile and CI do what README says."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from the PyPI names.
CONDA_NAME = {"torch": "pytorch", "ray": "ray-core"}


def _name_and_spec(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    assert m, req
    name = m.group(1).lower().replace("_", "-")
    return CONDA_NAME.get(name, name), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pip_reqs = project["dependencies"] + extras["test"] + extras["ray"]
    want = dict(_name_and_spec(r) for r in pip_reqs)

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    got = dict(_name_and_spec(d) for d in conda if not d.startswith(("python", "pip")))
    assert got == want, (
        "environment.yml and pyproject.toml disagree; "
        f"only in pyproject: {sorted(set(want) - set(got))}, only in environment.yml: "
        f"{sorted(set(got) - set(want))}, different pins: "
        f"{sorted(k for k in set(want) & set(got) if want[k] != got[k])}"
    )


def test_readme_shows_the_two_commands_and_ci_calls_make_test():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
