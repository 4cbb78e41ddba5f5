"""The negkit command and the executors: help, config validation, merge/negate, notebooks,
equal records from the local and Ray executors, resume after a killed Ray run, failures named."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from negkit import benchmark as B
from negkit import checkpoint, executor, io
from negkit.benchmark import units
from negkit.cli import benchmark_config, build_parser, main

# The smallest benchmark that trains every kind of unit: Original, Retrain, 2 pool members, 1 baseline.
TINY = {"scenarios": ["class_3"], "baselines": ["ga"], "merge_methods": ["negmerge"], "original": {"epochs": 1},
        "pool": {"epochs": [1], "weight_decays": [1e-4], "label_smoothings": [0.0, 0.1]}}
COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def _bench(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["benchmark", "--smoke", "--config", str(config), "--run-dir", str(run_dir), "--quiet", *extra]


def _tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(run_dir)): io.load_state_dict(p) for p in sorted(run_dir.rglob("model.safetensors"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> Path:
    """The tiny benchmark run by the library alone (no executor)."""
    run_dir = tmp_path_factory.mktemp("reference")
    B.run(B.dataset_config("digits", smoke=True, **TINY), run_dir, device="cpu", progress=False)
    return run_dir


@pytest.fixture(scope="module")
def local_run(tiny, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("local")
    assert main(_bench(tiny, run_dir, "--device", "cpu")) == 0
    return run_dir


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"negkit {command} " in out.split("examples:")[1]


def test_python_dash_m_negkit_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "negkit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(c in out.stdout for c in ["benchmark", "clip-negation", "merge", "negate", "notebook"])
    assert set(COMMANDS) == {"benchmark", "clip-negation", "merge", "negate", "notebook"}


def test_benchmark_config_from_file_and_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"scenarios": ["random_10"], "seeds": [3], "pool": {"epochs": [2]}}))
    args = build_parser().parse_args(["benchmark", "--config", str(path), "--smoke", "--seeds", "4", "5",
                                      "--run-dir", str(tmp_path / "r")])
    cfg = benchmark_config(args)
    assert cfg.scenarios == ("random_10",) and cfg.seeds == (4, 5)  # the flag beats the file
    assert cfg.pool.epochs == (2,) and cfg.smoke


@pytest.mark.parametrize("text, match", [
    ("seedz: [1]\n", "seedz"),                       # unknown key, named with the valid ones
    ("- 1\n- 2\n", "mapping"),                       # not a mapping
    ("threshold: 2.0\n", "threshold"),               # out of range
    ("merge_methods: [negmerg]\n", "negmerg"),       # unknown rule, the registry lists the valid ones
])
def test_bad_benchmark_config_fails_before_any_work(tmp_path, capsys, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--config", str(path), "--smoke", "--run-dir", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("negkit benchmark: error:") and match in err
    assert not (tmp_path / "run").exists()


def test_merge_and_negate_on_hand_computed_tensors(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    io.save_state_dict({"w": torch.tensor([1.0, -2.0, 4.0])}, a)
    io.save_state_dict({"w": torch.tensor([3.0, 2.0, 0.0])}, b)
    merged = tmp_path / "mean.safetensors"
    assert main(["merge", str(a), str(b), "--method", "mean", "-o", str(merged), "--quiet"]) == 0
    torch.testing.assert_close(io.load_state_dict(merged)["w"], torch.tensor([2.0, 0.0, 2.0]))

    model, out = tmp_path / "model.safetensors", tmp_path / "negated.safetensors"
    io.save_state_dict({"w": torch.tensor([10.0, 10.0, 10.0]), "b": torch.tensor([1.0])}, model)
    assert main(["negate", "--model", str(model), "--task-vector", str(merged), "--coef", "0.5", "-o", str(out)]) == 0
    got = io.load_state_dict(out)
    torch.testing.assert_close(got["w"], torch.tensor([9.0, 10.0, 9.0]))  # θ_o − 0.5·τ
    torch.testing.assert_close(got["b"], torch.tensor([1.0]))            # keys τ lacks pass through
    assert io.read_metadata(out)["coef"] == "0.5"

    with pytest.raises(SystemExit) as exc:
        main(["merge", str(a), str(b), "--method", "meen", "-o", str(tmp_path / "x.safetensors")])
    assert exc.value.code == 2 and "negmerge" in capsys.readouterr().err  # the valid names are listed
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(a), str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.safetensors")])
    assert exc.value.code == 2 and "missing.safetensors" in capsys.readouterr().err


def test_notebook_command_refuses_an_undeclared_parameter(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["notebook", "01_quickstart", "-p", "smok", "true"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "smok" in err and "smoke" in err
    with pytest.raises(SystemExit) as exc:
        main(["notebook", "no_such_notebook"])
    assert exc.value.code == 2 and "01_quickstart" in capsys.readouterr().err


def test_clip_negation_maps_flags_onto_notebook_06_parameters(tmp_path, capsys):
    from negkit import cli, notebook

    declared = notebook.notebook_parameters(cli._notebook_path(cli.CLIP_NOTEBOOK))
    assert set(cli._CLIP_FLAGS) <= set(declared)  # every flag names a parameter the notebook declares
    path = tmp_path / "clip.yaml"
    path.write_text("datasets: [cars]\nthreshold: 0.9\n")
    args = build_parser().parse_args(["clip-negation", "--config", str(path), "--datasets", "mnist", "svhn",
                                      "-p", "finetuning_mode", "linear", "--run-dir", str(tmp_path / "r")])
    params = cli.clip_parameters(args)
    assert params["datasets"] == ["mnist", "svhn"] and params["threshold"] == 0.9  # flags beat the file
    assert params["finetuning_mode"] == "linear" and params["run_dir"] == str((tmp_path / "r").resolve())
    with pytest.raises(SystemExit) as exc:
        main(["clip-negation", "--smoke", "--run-dir", str(tmp_path / "r"), "-p", "datasetz", "[mnist]"])
    assert exc.value.code == 2 and "datasetz" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_executor_arguments_are_checked_first(tmp_path):
    cfg = B.dataset_config("digits", smoke=True, **TINY)
    with pytest.raises(ValueError, match="valid executors are"):
        executor.run_units(cfg, tmp_path / "r", executor="dask")
    with pytest.raises(ValueError, match="executor='ray'"):
        executor.run_units(cfg, tmp_path / "r", address="auto")
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        executor.run_units(cfg, tmp_path / "r", workers=0)
    with pytest.raises(ValueError, match="for the local executor"):
        executor.run_units(cfg, tmp_path / "r", executor="ray", workers=2)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- executors (end to end)
@pytest.mark.slow
def test_local_executor_trains_every_unit_and_gives_the_librarys_records(local_run, reference, tiny):
    cfg = B.dataset_config("digits", smoke=True, **TINY)
    assert all(units.is_done(cfg, local_run, u) for u in units.training_units(cfg))
    assert (local_run / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()
    ref = _tensors(reference)
    assert _tensors(local_run).keys() == ref.keys()
    for name, sd in _tensors(local_run).items():
        for key, t in sd.items():
            assert torch.equal(t, ref[name][key]), (name, key)


@pytest.mark.slow
def test_two_workers_give_the_records_of_one_and_of_the_library(local_run, reference, tiny, tmp_path):
    """Units in two spawned processes, each started once what it waits for is done: the same bytes."""
    run_dir = tmp_path / "two_workers"
    assert main(_bench(tiny, run_dir, "--device", "cpu", "--workers", "2")) == 0
    records = (run_dir / "results.jsonl").read_bytes()
    assert records == (local_run / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()
    ref = _tensors(reference)
    assert _tensors(run_dir).keys() == ref.keys()
    for name, sd in _tensors(run_dir).items():
        assert all(torch.equal(t, ref[name][k]) for k, t in sd.items()), name


@pytest.mark.slow
def test_units_leave_nothing_for_run_to_train(local_run, monkeypatch):
    """What makes the executors' records equal by construction: after the units, run() only evaluates."""
    def trained(out, *args, **kwargs):
        raise AssertionError(f"benchmark.run trained {out} again; the units missed it")

    monkeypatch.setattr(checkpoint, "save_finished", trained)
    B.run(B.dataset_config("digits", smoke=True, **TINY), local_run, device="cpu", progress=False)


def test_negation_units_wait_for_what_they_negate():
    cfg = B.dataset_config("digits", smoke=True, **{**TINY, "scenarios": ["class_3", "random_10"]})
    neg = {u.name: u for u in units.negation_units(cfg)}
    pre = "seed_0/class_3"
    assert sorted(n for n in neg if n.startswith(pre)) == [  # match applies to random forgetting only
        f"{pre}/negation/min_forget/negmerge", f"{pre}/negation/min_forget/task_arithmetic/e1_wd1e-4_ls0",
        f"{pre}/negation/min_forget/task_arithmetic/e1_wd1e-4_ls0.1"]
    assert len([n for n in neg if n.startswith("seed_0/random_10/negation/match/")]) == 3
    member = neg[f"{pre}/negation/min_forget/task_arithmetic/e1_wd1e-4_ls0.1"]
    assert member.after == ("seed_0/original", f"{pre}/retrain", f"{pre}/pool/e1_wd1e-4_ls0.1")
    assert neg[f"{pre}/negation/min_forget/negmerge"].after[2:] == (f"{pre}/pool/e1_wd1e-4_ls0",
                                                                     f"{pre}/pool/e1_wd1e-4_ls0.1")
    trained = {u.name for u in units.training_units(cfg)}
    assert all(set(u.after) <= trained for u in neg.values())
    with pytest.raises(ValueError, match="pass 'task_arithmetic' with one of"):
        B.pipeline.negation_unit(cfg, "unused", 0, "class_3", "task_arithmetic")


@pytest.mark.slow
def test_negation_units_leave_no_search_for_run(local_run, reference, tmp_path, monkeypatch):
    """Every λ search ran as a unit: run() only reads the outcomes and writes the library's records."""
    cfg = B.dataset_config("digits", smoke=True, **TINY)
    assert all(units.is_done(cfg, local_run, u) for u in units.negation_units(cfg))
    run_dir = tmp_path / "records_only"
    shutil.copytree(local_run, run_dir)
    (run_dir / "results.jsonl").unlink()

    def searched(*args, **kwargs):
        raise AssertionError("benchmark.run searched λ again; the negation units missed it")

    monkeypatch.setattr(B.pipeline, "negation_search", searched)
    monkeypatch.setattr(checkpoint, "save_finished", searched)
    B.run(cfg, run_dir, device="cpu", progress=False)
    assert (run_dir / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()


@pytest.fixture(scope="module")
def ray_cluster():
    """One embedded 2-CPU Ray for the module; the commands join it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.slow
def test_ray_run_killed_then_resumed_gives_the_local_records(ray_cluster, tiny, reference, tmp_path):
    run_dir = tmp_path / "ray"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "negkit", *_bench(tiny, run_dir, "--executor", "ray",
                                                                      "--address", ray_cluster)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # generous: a loaded machine starves the workers
    while not (run_dir / "seed_0" / "original" / "done.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the Ray run trained nothing within 600 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started
    proc.wait(timeout=60)
    proc.stderr.close()
    cfg = B.dataset_config("digits", smoke=True, **TINY)
    assert not (run_dir / "results.jsonl").exists()  # killed during training
    assert not all(units.is_done(cfg, run_dir, u) for u in units.training_units(cfg))

    assert main(_bench(tiny, run_dir, "--executor", "ray")) == 0  # resumes on the module's Ray
    assert (run_dir / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()
    ref = _tensors(reference)
    for name, sd in _tensors(run_dir).items():
        assert all(torch.equal(t, ref[name][k]) for k, t in sd.items()), name


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "workers", "ray"])
def test_a_failing_unit_is_named_with_its_traceback(where, local_run, tiny, tmp_path, capsys, request):
    if where == "ray":
        request.getfixturevalue("ray_cluster")
    run_dir = tmp_path / "broken"
    shutil.copytree(local_run, run_dir)
    shutil.rmtree(run_dir / "seed_0" / "class_3" / "pool")
    (run_dir / "seed_0" / "original" / "model.safetensors").write_bytes(b"not a safetensors file")
    how = ["--workers", "2"] if where == "workers" else ["--executor", where, "--retries", "0"]
    with pytest.raises(SystemExit) as exc:
        main(_bench(tiny, run_dir, *how))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "training unit 'seed_0/class_3/pool/e1_wd1e-4_ls0" in err
    assert "Traceback" in err and "load_finished" in err  # where it failed, in the unit's own process


@pytest.mark.slow
def test_local_workers_die_with_a_killed_main_process_and_the_resume_gives_the_same_records(tiny, reference,
                                                                                            tmp_path):
    """kill -9 of `negkit benchmark --workers 2`'s main process: no worker outlives it by 5 s; a resume
    gives the records of an uninterrupted run byte for byte."""
    from negkit.lock import WORKERS_DIR, live_workers

    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "negkit", *_bench(tiny, run_dir, "--workers", "2")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # generous: a loaded machine starves the workers
    while not (run_dir / "seed_0" / "original" / "done.json").exists() or not list(
            (run_dir / WORKERS_DIR).glob("*.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the run trained nothing within 600 s"
        time.sleep(0.05)
    workers = [w["pid"] for w in live_workers(run_dir)]
    assert workers, "no live worker was recorded"
    os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers must notice on their own
    proc.wait(timeout=60)
    proc.stderr.close()
    gone = time.monotonic() + 5
    while live_workers(run_dir) and time.monotonic() < gone:
        time.sleep(0.1)
    left = live_workers(run_dir)
    for w in left:
        os.kill(w["pid"], signal.SIGKILL)
    assert not left, f"workers {[w['pid'] for w in left]} outlived their killed parent by more than 5 s"

    assert main(_bench(tiny, run_dir, "--workers", "2")) == 0  # resumes
    assert (run_dir / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()
