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
from negkit.benchmark import units as U
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
    # As from a terminal: a shell's background job (CI launched with `&`) passes SIGINT on ignored, and Python
    # then leaves it ignored; the child gets the default disposition back before it starts.
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


# ---------------------------------------------------------------- Ray: nothing of an interrupted run keeps running
class _FakeRay:
    """Just enough of Ray's API for executor._ray: remote tasks, wait (interrupted on the 2nd call), cancel."""

    def __init__(self) -> None:
        self.cancelled: list = []
        self.calls = 0
        self.shut = False
        self.initialised = False
        self.submitted = 0

    def is_initialized(self) -> bool:
        return self.initialised

    def init(self, **kwargs) -> None:
        self.initialised = True

    def shutdown(self) -> None:
        self.shut = True

    def remote(self, fn):
        fake = self

        class _Task:
            def options(self, **kw):
                return self

            def remote(self, *args):
                fake.submitted += 1
                return f"ref{fake.submitted - 1}"
        return _Task()

    def wait(self, pending, num_returns=1):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return pending[:1], pending[1:]

    def get(self, ref):
        return {"seconds": 0.0, "host": "h", "pid": 1}

    def cancel(self, ref, force=False):
        assert force
        self.cancelled.append(ref)
        if ref == "ref2":
            raise RuntimeError("already finished")  # swallowed: nothing left to stop


def test_ray_tasks_are_cancelled_and_a_local_ray_shut_down_on_interrupt(monkeypatch):
    from tqdm import tqdm

    from negkit import executor
    from negkit.benchmark import default_config

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    units = [U.Unit(name=f"u{i}", kind="original", seed=0, scenario="") for i in range(4)]
    with pytest.raises(KeyboardInterrupt), tqdm(disable=True) as bar:
        executor._ray(default_config(smoke=True), Path("unused"), units, bar, address=None, num_cpus=1,
                      cpus_per_task=1, gpus_per_task=0, retries=0, device="cpu")
    assert fake.cancelled == ["ref1", "ref2", "ref3"]  # every task not finished when Ctrl-C came
    assert fake.shut  # the Ray this run started is shut down


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


# ---------------------------------------------------------------- config checks at load
@pytest.mark.parametrize("changes, fragment", [
    ({"pool": {"epochs": ()}}, "PoolSpec.epochs is empty"),
    ({"pool": {"weight_decays": []}}, "PoolSpec.weight_decays is empty"),
    ({"pool": {"label_smoothings": ()}}, "PoolSpec.label_smoothings is empty"),
    ({"scenarios": ()}, "scenarios is empty"),
    ({"scenarios": ("random_200",)}, "'random_200': the forget percent must be in (0, 100)"),
    ({"scenarios": ("random_0",)}, "'random_0': the forget percent must be in (0, 100)"),
    ({"scenarios": ("random_100",)}, "'random_100': the forget percent must be in (0, 100)"),
    ({"scenarios": ("class_10",)}, "'class_10': unknown class(es) [10]; digits has classes 0..9"),
    ({"scenarios": ("class_2-11",)}, "unknown class(es) [11]"),
    ({"scenarios": ("class_3-3",)}, "'class_3-3' repeats a class"),
    ({"scenarios": ("forget_3",)}, "unknown scenario 'forget_3'"),
])
def test_bad_pools_and_scenarios_are_refused_at_load(changes, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        B.make_config(B.default_config(smoke=True), **changes)


def test_good_scenarios_still_load():
    cfg = B.make_config(B.default_config(smoke=True), scenarios=("random_1", "random_99", "random_2.5", "class_0-9"))
    assert cfg.scenarios == ("random_1", "random_99", "random_2.5", "class_0-9")


def test_class_bounds_are_only_checked_for_datasets_of_known_size():
    cfg = B.make_config(B.default_config(smoke=True), dataset="cifar100", scenarios=("class_42",))
    assert cfg.scenarios == ("class_42",)
    with pytest.raises(ValueError, match=re.escape("unknown class(es) [100]; cifar100 has classes 0..99")):
        B.make_config(B.default_config(smoke=True), dataset="cifar100", scenarios=("class_100",))


def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_gpus_per_task_without_ray_is_refused_before_any_work(tmp_path, capsys):
    err = _cli_error(["benchmark", "--smoke", "--run-dir", str(tmp_path / "r"), "--gpus-per-task", "0.5"], capsys)
    assert "gpus_per_task=0.5 asks Ray for GPUs, but executor='local'" in err and "--executor ray" in err
    assert not (tmp_path / "r").exists()


def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _cli_error(["benchmark", "--smoke", "--run-dir", str(tmp_path / "r"), "--device", "cuda"], capsys)
    assert "device='cuda' asks for a GPU, but torch.cuda.is_available() is False" in err
    assert not (tmp_path / "r").exists()
    from negkit.evaluate import resolve_device
    with pytest.raises(ValueError, match="pass device='cpu'"):
        resolve_device("cuda:0")
    assert resolve_device("cpu").type == "cpu"


def test_a_run_dir_that_is_a_file_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    err = _cli_error(["benchmark", "--smoke", "--run-dir", str(tmp_path / "afile")], capsys)
    assert f"run dir {tmp_path / 'afile'} is an existing file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.parametrize("options", ["[1, 2]", "3", "dense"])
def test_merge_options_that_are_not_a_mapping_are_refused(files, tmp_path, capsys, options):
    _, tv = files
    (tmp_path / "m.yaml").write_text(f"method: ties\noptions: {options}\n")
    err = _cli_error(["merge", str(tv), str(tv), "--config", str(tmp_path / "m.yaml"), "-o",
                      str(tmp_path / "o.safetensors")], capsys)
    assert "merge config 'options' must be a mapping" in err and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("command", ["negate", "merge"])
def test_an_output_name_over_the_limit_is_refused_naming_it(files, tmp_path, capsys, command):
    model, tv = files
    out = str(tmp_path / ("x" * 300 + ".safetensors"))
    argv = (["negate", "--model", str(model), "--task-vector", str(tv), "--coef", "1", "-o", out]
            if command == "negate" else ["merge", str(tv), str(tv), "--method", "mean", "-o", out])
    err = _cli_error(argv, capsys)
    assert "x" * 50 in err and "File name too long" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "tv.safetensors"]  # no temporary left


@pytest.mark.parametrize("model", [5, None, "m.safetensors", 1.5])
def test_apply_to_an_int_model_is_a_type_error(model):
    from negkit.taskvec import TaskVector
    with pytest.raises(TypeError, match=f"apply_to takes a state dict or an nn.Module, got a {type(model).__name__}"):
        TaskVector({"w": torch.ones(2)}).apply_to(model, 1.0)


# ---------------------------------------------------------------- a resume waits for the old run's workers
WORKER = textwrap.dedent("""
    import os, sys, time
    from negkit import executor
    executor._worker_init(1, os.getppid(), sys.argv[1])   # records this worker in the run dir
    print("ready", flush=True)
    time.sleep(120)
""")


def _start_worker(tmp_path, run_dir):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_opening_a_run_dir_refuses_while_a_recorded_worker_is_alive(tmp_path):
    from negkit.lock import RunDirLocked, WORKERS_DIR, live_workers, lock_run_dir

    run_dir = tmp_path / "run"
    proc = _start_worker(tmp_path, run_dir)
    try:
        assert [w["pid"] for w in live_workers(run_dir)] == [proc.pid]
        with pytest.raises(RunDirLocked, match=rf"worker process\(es\) {proc.pid} of an earlier run.*kill {proc.pid}"):
            with lock_run_dir(run_dir):
                pytest.fail("the run dir was opened while a worker of the old run was alive")
    finally:
        proc.kill()
        proc.wait()
    with lock_run_dir(run_dir):  # the worker is gone: the resume proceeds and its record is dropped
        assert not (run_dir / WORKERS_DIR).exists()


def test_records_of_ended_or_reused_pids_do_not_block(tmp_path):
    from negkit import io as nkio
    from negkit.lock import WORKERS_DIR, live_workers, lock_run_dir

    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    host = __import__("socket").gethostname()
    nkio.save_json({"pid": dead, "host": host, "start": "1"}, run_dir / WORKERS_DIR / f"{dead}.json")
    # a live PID (our parent) with another start time: the PID was reused, not our worker
    nkio.save_json({"pid": os.getppid(), "host": host, "start": "-1"}, run_dir / WORKERS_DIR / "reused.json")
    (run_dir / WORKERS_DIR / "junk.json").write_text("not json")
    nkio.save_json({"pid": os.getppid(), "host": "another-host", "start": "1"}, run_dir / WORKERS_DIR / "far.json")
    assert live_workers(run_dir) == []
    assert [p.name for p in (run_dir / WORKERS_DIR).iterdir()] == ["far.json"]  # other hosts: left alone
    with lock_run_dir(run_dir):
        pass
