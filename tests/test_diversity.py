"""negkit.diversity: pool diversity by hand, near-duplicate members, and its re-export from negkit.analysis."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import negkit
from negkit import analysis, diversity


def test_pool_diversity_by_hand_and_near_duplicates():
    tvs = [{"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([3.0, 4.0001])}, {"w": torch.tensor([-4.0, 3.0])}]
    div = diversity.pool_diversity(tvs, names=["a", "b", "c"]).set_index(["a", "b"])
    assert len(div) == 9
    assert div.loc[("a", "c"), "cosine"] == pytest.approx(0.0)          # (3,4)·(−4,3) = 0
    assert div.loc[("a", "a"), "cosine"] == pytest.approx(1.0)
    assert div.loc[("a", "c"), "agreement"] == pytest.approx(0.5)       # signs (+,+) vs (−,+)
    assert div.loc[("a", "c"), "rel_distance"] == pytest.approx(math.sqrt(50) / 5)
    assert div.loc[("a", "b"), "rel_distance"] == pytest.approx(1e-4 / 5, rel=1e-2)  # float32 4.0001
    assert div.loc[("c", "c"), "norm_a"] == pytest.approx(5.0)
    groups = diversity.distinct_members(div.reset_index())
    assert groups == [["a", "b"], ["c"]]
    assert diversity.distinct_members(div.reset_index(), tol=1e-6) == [["a"], ["b"], ["c"]]


def test_analysis_re_exports_every_diversity_function():
    assert set(diversity.__all__) <= set(analysis.__all__)
    for name in diversity.__all__:
        assert getattr(analysis, name) is getattr(diversity, name)
        assert name in dir(analysis)
    from negkit.analysis import distinct_members, pairwise_agreement, pool_diversity  # noqa: F401
    assert pool_diversity is diversity.pool_diversity
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        analysis.nope  # noqa: B018


def test_diversity_imports_first_in_a_fresh_interpreter():
    # negkit.diversity uses negkit.analysis's helpers and negkit.analysis re-exports it: either may come first.
    root = str(Path(negkit.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    code = ("import negkit.diversity as d, negkit.analysis as a; from negkit.analysis import *; "
            "assert pool_diversity is d.pool_diversity is a.pool_diversity")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
