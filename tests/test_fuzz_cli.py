"""Bad command lines (issue 21): each ends with a non-zero exit and one error line, never a traceback.

Every case runs ``negkit.cli.main`` in-process. Training and notebook execution are replaced by a
function that fails the test, so a case the checks let through cannot start any work, and no GPU is
visible (``--device cuda`` must be refused as on a CPU-only machine). Cases marked ``usage`` are
argparse's own errors: a usage block, then the one error line.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from negkit import cli, executor, io, notebook

LONG = "x" * 300 + ".safetensors"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz_cli")
    io.save_state_dict({"w": torch.ones(3)}, d / "m.safetensors")
    io.save_state_dict({"w": torch.full((3,), 0.5)}, d / "tv.safetensors")
    io.save_state_dict({"v": torch.ones(3)}, d / "tv_other_key.safetensors")
    io.save_state_dict({"w": torch.ones(4)}, d / "tv_other_shape.safetensors")
    (d / "not_a_model.safetensors").write_text("hello")
    (d / "afile").write_text("a file, not a folder")
    (d / "adir").mkdir()
    configs = {
        "bad.yaml": "seeds: [0\n", "tab.yaml": "seeds: [0]\n\tpool: 1\n", "list.yaml": "- 1\n- 2\n",
        "bad.json": "{'a': 1}", "str.yaml": "just a string\n",
        "unknown.yaml": "colour: red\n", "pool_empty.yaml": "pool: {epochs: []}\n",
        "scen_empty.yaml": "scenarios: []\n",
        "scen_200.yaml": "scenarios: [random_200]\n", "threshold.yaml": "threshold: 95\n",
        "merge_unknown.yaml": "merge_methods: [negmrge]\n", "baseline_unknown.yaml": "baselines: [gaa]\n",
        "step.yaml": "coef_step: 0\n", "seeds_rep.yaml": "seeds: [1, 1]\n", "seeds_str.yaml": "seeds: one\n",
        "pool_key.yaml": "pool: {epoch: [1]}\n", "original_lr.yaml": "original: {lr: -1}\n",
        "dataset.yaml": "dataset: digitz\n", "class_big.yaml": "scenarios: [class_3, class_12]\n",
        "grid_rep.yaml": "baseline_grid: {ga: {lr: [0.001, 0.001]}}\n",
        "m_opts_list.yaml": "method: ties\noptions: [1, 2]\n", "m_opts_int.yaml": "method: ties\noptions: 3\n",
        "m_opts_str.yaml": "method: ties\noptions: dense\n", "m_method_int.yaml": "method: 3\n",
        "m_unknown_key.yaml": "method: mean\nweights: [1, 2]\n", "m_method_bad.yaml": "method: negmrge\n",
        "m_pre_missing.yaml": "method: mean\npretrained: nowhere.safetensors\n",
    }
    for name, text in configs.items():
        (d / name).write_text(text)
    return d


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Nothing may train, execute a notebook or see a GPU."""
    def started(*args, **kwargs):
        raise AssertionError("a bad command line started work")

    monkeypatch.setattr(executor, "run_units", started)
    monkeypatch.setattr(notebook, "execute", started)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _b(*extra):
    return ["benchmark", "--smoke", "--run-dir", "{d}/run", *extra]


def _neg(*extra, model="m.safetensors", tv="tv.safetensors", coef="1", out="{d}/out.safetensors"):
    return ["negate", "--model", f"{{d}}/{model}", "--task-vector", f"{{d}}/{tv}", "--coef", coef, "-o", out, *extra]


def _m(*extra, tvs=("tv.safetensors", "tv.safetensors"), out="{d}/merged.safetensors"):
    return ["merge", *(f"{{d}}/{t}" for t in tvs), "-o", out, *extra]


# (id, argv with {d} for the files folder, message fragment, argparse usage error?)
CASES = [
    # benchmark: flags
    ("b-seeds-neg", _b("--seeds", "-1"), "seeds", False),
    ("b-seeds-repeat", _b("--seeds", "0", "0"), "seeds", False),
    ("b-seeds-word", _b("--seeds", "one"), "invalid int value", True),
    ("b-random-200", _b("--scenarios", "random_200"), "'random_200'", False),
    ("b-random-0", _b("--scenarios", "random_0"), "(0, 100)", False),
    ("b-random-100", _b("--scenarios", "random_100"), "(0, 100)", False),
    ("b-class-10", _b("--scenarios", "class_10"), "unknown class(es) [10]", False),
    ("b-class-repeat", _b("--scenarios", "class_3-3"), "repeats a class", False),
    ("b-scenario-word", _b("--scenarios", "forget_all"), "unknown scenario", False),
    ("b-scenario-repeat", _b("--scenarios", "class_3", "class_3"), "repeats", False),
    ("b-dataset", _b("--dataset", "digitz"), "digitz", False),
    ("b-executor", _b("--executor", "dask"), "invalid choice", True),
    ("b-workers-zero", _b("--workers", "0"), "workers", False),
    ("b-workers-neg", _b("--workers", "-2"), "workers", False),
    ("b-workers-ray", _b("--workers", "2", "--executor", "ray"), "local executor", False),
    ("b-workers-word", _b("--workers", "two"), "invalid int value", True),
    ("b-cpus-zero", _b("--cpus-per-task", "0"), "cpus_per_task > 0", False),
    ("b-gpus-without-ray", _b("--gpus-per-task", "1"), "executor='local' does not use Ray", False),
    ("b-gpus-frac-without-ray", _b("--gpus-per-task", "0.25"), "--executor ray", False),
    ("b-gpus-neg", _b("--gpus-per-task=-1", "--executor", "ray"), "gpus_per_task >= 0", False),
    ("b-retries-neg", _b("--retries=-1"), "retries >= 0", False),
    ("b-num-cpus-zero", _b("--num-cpus", "0"), "num_cpus", False),
    ("b-address-local", _b("--address", "auto"), "executor='ray'", False),
    ("b-cuda-absent", _b("--device", "cuda"), "torch.cuda.is_available() is False", False),
    ("b-cuda1-absent", _b("--device", "cuda:1"), "asks for a GPU", False),
    ("b-device-bogus", _b("--device", "gpu0"), "not a torch device", False),
    ("b-run-dir-file", ["benchmark", "--smoke", "--run-dir", "{d}/afile"], "is an existing file, not a folder", False),
    ("b-no-run-dir", ["benchmark", "--smoke"], "--run-dir", True),
    ("b-unknown-flag", _b("--colour", "red"), "unrecognized arguments", True),
    ("b-config-bad-yaml-tab", _b("--config", "{d}/tab.yaml"), "line 2", False),
    # benchmark: config files
    ("b-config-missing", _b("--config", "{d}/nowhere.yaml"), "does not exist", False),
    ("b-config-bad-yaml", _b("--config", "{d}/bad.yaml"), "not valid YAML", False),
    ("b-config-bad-json", _b("--config", "{d}/bad.json"), "not valid JSON", False),
    ("b-config-list", _b("--config", "{d}/list.yaml"), "must hold a mapping", False),
    ("b-config-str", _b("--config", "{d}/str.yaml"), "must hold a mapping", False),
    ("b-config-folder", _b("--config", "{d}/adir"), "does not exist", False),
    ("b-config-unknown-key", _b("--config", "{d}/unknown.yaml"), "colour", False),
    ("b-config-pool-empty", _b("--config", "{d}/pool_empty.yaml"), "PoolSpec.epochs is empty", False),
    ("b-config-scenarios-empty", _b("--config", "{d}/scen_empty.yaml"), "scenarios is empty", False),
    ("b-config-random-200", _b("--config", "{d}/scen_200.yaml"), "'random_200'", False),
    ("b-config-threshold", _b("--config", "{d}/threshold.yaml"), "threshold", False),
    ("b-config-merge-unknown", _b("--config", "{d}/merge_unknown.yaml"), "negmrge", False),
    ("b-config-baseline-unknown", _b("--config", "{d}/baseline_unknown.yaml"), "gaa", False),
    ("b-config-step-zero", _b("--config", "{d}/step.yaml"), "coef_step", False),
    ("b-config-seeds-repeat", _b("--config", "{d}/seeds_rep.yaml"), "seeds", False),
    ("b-config-seeds-str", _b("--config", "{d}/seeds_str.yaml"), "seeds", False),
    ("b-config-pool-key", _b("--config", "{d}/pool_key.yaml"), "epoch", False),
    ("b-config-original-lr", _b("--config", "{d}/original_lr.yaml"), "lr", False),
    ("b-config-dataset", _b("--config", "{d}/dataset.yaml"), "digitz", False),
    ("b-config-class-12", _b("--config", "{d}/class_big.yaml"), "unknown class(es) [12]", False),
    ("b-config-grid-repeat", _b("--config", "{d}/grid_rep.yaml"), "repeats", False),
    # merge
    ("m-missing-tv", _m(tvs=("tv.safetensors", "nowhere.safetensors")), "nowhere.safetensors", False),
    ("m-method-unknown", _m("--method", "negmrge"), "unknown merge method", False),
    ("m-option-no-equals", _m("--option", "density"), "KEY=VALUE", False),
    ("m-option-no-key", _m("--option", "=0.2"), "KEY=VALUE", False),
    ("m-option-unknown", _m("--method", "mean", "--option", "colour=1"), "colour", False),
    ("m-output-suffix", _m(out="{d}/merged.pt"), ".safetensors", False),
    ("m-output-is-input", _m(out="{d}/tv.safetensors"), "same file as a task vector", False),
    ("m-output-too-long", _m(out="{d}/" + LONG), "File name too long", False),
    ("m-output-too-long-pt", _m(out="{d}/" + "y" * 300), "File name too long", False),
    ("m-pretrained-missing", _m("--pretrained", "{d}/nowhere.safetensors"), "nowhere.safetensors", False),
    ("m-pretrained-is-output", _m("--pretrained", "{d}/m.safetensors", out="{d}/m.safetensors"),
     "same file as --pretrained", False),
    ("m-key-mismatch", _m(tvs=("tv.safetensors", "tv_other_key.safetensors")), "tv_other_key", False),
    ("m-shape-mismatch", _m(tvs=("tv.safetensors", "tv_other_shape.safetensors")), "shape", False),
    ("m-not-safetensors", _m(tvs=("tv.safetensors", "not_a_model.safetensors")), "not_a_model", False),
    ("m-config-options-list", _m("--config", "{d}/m_opts_list.yaml"), "'options' must be a mapping", False),
    ("m-config-options-int", _m("--config", "{d}/m_opts_int.yaml"), "got a int", False),
    ("m-config-options-str", _m("--config", "{d}/m_opts_str.yaml"), "got a str", False),
    ("m-config-method-int", _m("--config", "{d}/m_method_int.yaml"), "'method' must be a rule name", False),
    ("m-config-unknown-key", _m("--config", "{d}/m_unknown_key.yaml"), "unknown merge config key", False),
    ("m-config-method-bad", _m("--config", "{d}/m_method_bad.yaml"), "negmrge", False),
    ("m-config-pretrained-missing", _m("--config", "{d}/m_pre_missing.yaml"), "nowhere.safetensors", False),
    ("m-config-list", _m("--config", "{d}/list.yaml"), "must hold a mapping", False),
    ("m-no-output", ["merge", "{d}/tv.safetensors"], "-o/--output", True),
    ("m-no-tvs", ["merge", "-o", "{d}/x.safetensors"], "TV", True),
    # negate
    ("n-model-missing", _neg(model="nowhere.safetensors"), "--model", False),
    ("n-tv-missing", _neg(tv="nowhere.safetensors"), "--task-vector", False),
    ("n-model-is-folder", _neg(model="adir"), "not found", False),
    ("n-output-suffix", _neg(out="{d}/out.pt"), ".safetensors", False),
    ("n-output-is-model", _neg(out="{d}/m.safetensors"), "same file as --model", False),
    ("n-output-is-tv", _neg(out="{d}/tv.safetensors"), "same file as --task-vector", False),
    ("n-output-too-long", _neg(out="{d}/" + LONG), "File name too long", False),
    ("n-coef-nan", _neg(coef="nan"), "finite number", False),
    ("n-coef-inf", _neg(coef="inf"), "finite number", False),
    ("n-coef-neg-inf", _neg(coef="-1")[:-4] + ["--coef=-inf", "-o", "{d}/out.safetensors"], "finite number", False),
    ("n-coef-word", _neg(coef="one"), "invalid float value", True),
    ("n-key-mismatch", _neg(tv="tv_other_key.safetensors"), "cannot negate", False),
    ("n-shape-mismatch", _neg(tv="tv_other_shape.safetensors"), "cannot negate", False),
    ("n-model-not-safetensors", _neg(model="not_a_model.safetensors"), "not_a_model", False),
    ("n-no-coef", ["negate", "--model", "{d}/m.safetensors", "--task-vector", "{d}/tv.safetensors", "-o",
                   "{d}/o.safetensors"], "--coef", True),
    # notebook
    ("nb-unknown-notebook", ["notebook", "no_such_notebook"], "no notebook", False),
    ("nb-unknown-parameter", ["notebook", "01_quickstart", "-p", "smok", "true"], "smok", False),
    ("nb-config-missing", ["notebook", "01_quickstart", "--config", "{d}/nowhere.yaml"], "does not exist", False),
    ("nb-config-list", ["notebook", "01_quickstart", "--config", "{d}/list.yaml"], "must hold a mapping", False),
    # top level
    ("no-command", [], "required", True),
    ("unknown-command", ["unlearn"], "invalid choice", True),
]


@pytest.mark.parametrize("argv,fragment,usage", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line_fails_with_one_error_line(files, capsys, argv, fragment, usage):
    before = sorted(p.name for p in files.iterdir())
    with pytest.raises(SystemExit) as info:
        cli.main([a.replace("{d}", str(files)) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert usage or len(lines) == 1, f"more than the error line: {err}"
    assert fragment.lower() in err.lower(), f"message lacks {fragment!r}: {err}"
    after = sorted(p.name for p in files.iterdir() if p.name != "run")
    assert after == [n for n in before if n != "run"], "a refused command left a file behind"


def test_table_is_large_and_ids_unique():
    assert len(CASES) >= 90 and len({c[0] for c in CASES}) == len(CASES)


def test_a_good_negate_still_runs_under_the_same_guards(files, capsys):
    out = files / "good.safetensors"
    assert cli.main([a.replace("{d}", str(files)) for a in _neg(coef="2", out=str(out))]) == 0
    assert torch.equal(io.load_state_dict(out)["w"], torch.zeros(3))
    out.unlink()
