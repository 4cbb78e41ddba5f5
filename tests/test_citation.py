"""LICENSE, CITATION.cff and pyproject agree on the licence; the citation file lists the papers."""
from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_license_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_citation_cff_names_the_kit_and_the_papers_it_implements():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and str(cff["version"]) == project["version"]
    titles = " | ".join(r["title"] for r in cff["references"])
    for paper in ("NegMerge", "Forget Vectors at Play", "Task Arithmetic", "SalUn", "TIES-Merging", "MagMax"):
        assert paper in titles, paper
    assert all(r["authors"] and r["year"] for r in cff["references"])
