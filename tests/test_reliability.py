"""Reliability: no input overwritten, no worker outliving its run, no repeated config entries."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from negkit import benchmark as B
from negkit import cli, io
from negkit.config import ConfigError


# ---------------------------------------------------------------- an output that is an input
@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "m.safetensors"
    io.save_state_dict({"w": torch.ones(3)}, model)
    tv = tmp_path / "tv.safetensors"
    io.save_state_dict({"w": torch.full((3,), 0.5)}, tv)
    return model, tv


@pytest.mark.parametrize("spelling", ["same", "symlink", "dotdot"])
def test_negate_refuses_to_overwrite_its_model(files, tmp_path, spelling, capsys):
    model, tv = files
    before = model.read_bytes()
    out = {"same": model, "dotdot": tmp_path / "sub" / ".." / model.name}[spelling] if spelling != "symlink" \
        else tmp_path / "link.safetensors"
    if spelling == "symlink":
        out.symlink_to(model)
    (tmp_path / "sub").mkdir(exist_ok=True)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["negate", "--model", str(model), "--task-vector", str(tv), "--coef", "1", "-o", str(out)])
    assert exit_info.value.code == 2
    assert "same file as --model" in capsys.readouterr().err
    assert model.read_bytes() == before


def test_negate_refuses_to_overwrite_its_task_vector(files, capsys):
    model, tv = files
    before = tv.read_bytes()
    with pytest.raises(SystemExit):
        cli.main(["negate", "--model", str(model), "--task-vector", str(tv), "--coef", "1", "-o", str(tv)])
    assert "same file as --task-vector" in capsys.readouterr().err and tv.read_bytes() == before


def test_merge_refuses_to_overwrite_a_task_vector(files, capsys):
    _, tv = files
    before = tv.read_bytes()
    with pytest.raises(SystemExit):
        cli.main(["merge", str(tv), str(tv), "--method", "mean", "-o", str(tv)])
    assert "same file as a task vector" in capsys.readouterr().err and tv.read_bytes() == before


def test_negate_to_a_new_file_still_works(files, tmp_path):
    model, tv = files
    assert cli.main(["negate", "--model", str(model), "--task-vector", str(tv), "--coef", "2",
                     "-o", str(tmp_path / "new.safetensors")]) == 0
    assert torch.equal(io.load_state_dict(tmp_path / "new.safetensors")["w"], torch.zeros(3))


# ---------------------------------------------------------------- repeated entries
@pytest.mark.parametrize("key, value", [("merge_methods", ("mean", "mean")), ("seeds", (0, 0)),
                                        ("scenarios", ("class_3", "class_3")), ("baselines", ("ga", "ga")),
                                        ("rules", ("min_forget", "min_forget"))])
def test_repeated_entries_in_a_list_key_are_refused_naming_it(key, value):
    with pytest.raises(ValueError, match=rf"{key}|distinct"):
        B.default_config(smoke=True, **{key: value})


def test_repeated_grid_values_and_pool_entries_are_refused():
    with pytest.raises(ConfigError, match=r"baseline_grid\['ga'\]\['lr'\] repeats \[0.001\]"):
        B.make_config(baseline_grid={"ga": {"lr": (1e-3, 1e-3)}})
    with pytest.raises(ConfigError, match="PoolSpec.epochs repeats"):
        B.make_config(pool={"epochs": (2, 2)})


# ---------------------------------------------------------------- workers die with their parent
PARENT = textwrap.dedent("""
    import concurrent.futures as cf, multiprocessing, os, sys, time
    from negkit import executor

    def work(path):
        open(path, "w").write(str(os.getpid()))
        time.sleep(120)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=executor._worker_init,
                                    initargs=(1, os.getpid())) as pool:
            pool.submit(work, sys.argv[1])
            time.sleep(120)
""")


def test_a_worker_dies_within_seconds_of_a_killed_parent(tmp_path):
    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=Path(__file__).parents[1])
    try:
        deadline = time.time() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline, "the worker never started"
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        gone = time.time() + 5
        while time.time() < gone:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"worker {worker} outlived its killed parent by more than 5 s")
    finally:
        if parent.poll() is None:
            parent.kill()


# ---------------------------------------------------------------- Ctrl-C: one line, the resume command, exit 130
def test_sigint_during_a_benchmark_prints_the_resume_command_and_no_traceback(tmp_path):
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"scenarios": ["class_3"], "baselines": ["ga"], "merge_methods": ["negmerge"],
                                   "original": {"epochs": 200},  # long enough to be interrupted
                                   "pool": {"epochs": [1], "weight_decays": [1e-4], "label_smoothings": [0.0]}}))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "negkit", "benchmark", "--smoke", "--config", str(cfg), "--run-dir", str(run_dir),
           "--quiet", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not list(run_dir.glob("seed_0/*/checkpoint.safetensors")) and \
            not list(run_dir.glob("seed_0/*/*/checkpoint.safetensors")):  # a model is mid-training
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "units done; resume with: negkit benchmark --smoke --config" in lines[0], err


# ---------------------------------------------------------------- registries refuse bad names and non-callables
def _registries():
    import negkit.data as data
    import negkit.models as models
    import negkit.unlearn as unlearn
    from negkit import merge
    return [("merge rule", merge.register, merge.list_methods), ("model", models.register_model, models.list_models),
            ("dataset", data.register_dataset, data.list_datasets),
            ("unlearning method", unlearn.register, unlearn.list_methods)]


@pytest.mark.parametrize("index", range(4), ids=["merge", "models", "data", "unlearn"])
@pytest.mark.parametrize("name, error, fragment", [
    (123, TypeError, "name must be a str, got int 123"), (None, TypeError, "name must be a str, got NoneType"),
    (b"mean2", TypeError, "name must be a str, got bytes"), (["x"], TypeError, "name must be a str, got list"),
    ("", ValueError, "non-empty identifier"), ("my rule", ValueError, "non-empty identifier"),
    ("1abc", ValueError, "non-empty identifier"), ("a-b", ValueError, "non-empty identifier")])
def test_register_refuses_a_name_that_is_not_an_identifier_str(index, name, error, fragment):
    kind, register, listing = _registries()[index]
    before = list(listing())
    with pytest.raises(error, match=re.escape(fragment)):
        register(name)(lambda *a, **k: None)
    assert list(listing()) == before


@pytest.mark.parametrize("index", range(4), ids=["merge", "models", "data", "unlearn"])
@pytest.mark.parametrize("obj", [42, "mean", None, [len]])
def test_register_refuses_a_non_callable(index, obj):
    kind, register, listing = _registries()[index]
    before = list(listing())
    with pytest.raises(TypeError, match=f"{kind} 'fuzz_not_callable' must be registered on a callable"):
        register("fuzz_not_callable")(obj)
    assert list(listing()) == before


@pytest.mark.parametrize("name, error, fragment", [(7, TypeError, "name must be a str, got int"),
                                                   ("", ValueError, "file-name-safe"),
                                                   ("../evil", ValueError, "file-name-safe"),
                                                   ("a/b", ValueError, "file-name-safe")])
def test_register_model_config_refuses_a_bad_name(name, error, fragment, tmp_path):
    from negkit.clip import model as clip_model
    with pytest.raises(error, match=re.escape(fragment)):
        clip_model.register_model_config(name, {"embed_dim": 8}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_register_model_config_refuses_a_config_that_is_not_a_mapping(tmp_path):
    from negkit.clip import model as clip_model
    with pytest.raises(TypeError, match="config of 'fuzz_tiny' must be a mapping"):
        clip_model.register_model_config("fuzz_tiny", [("embed_dim", 8)], tmp_path)
