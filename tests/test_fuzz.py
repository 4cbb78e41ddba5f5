"""Bad inputs to the public API, as a hostile or careless user would give them.

Every row must fail *before any work*, with the expected exception type and a word
in the message that points at the culprit. Below the table: one writer per run dir
(a second process is refused, concurrent appends lose nothing), and a write killed
mid-way leaves no temporary file once the run dir is opened again.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from negkit import checkpoint as ck
from negkit import config, io, merge, results
from negkit.benchmark.config import make_config
from negkit.config import from_dict, replace
from negkit.taskvec import TaskVector
from negkit.train import TrainConfig

NAN, INF = float("nan"), float("inf")
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fixtures
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo fuzz-pwned",))


def _rec(**kw):
    base = dict(setting="standard", model="small_resnet", dataset="digits", scenario="random_10", method="negmerge",
                pool_config="", coef=0.35, split="test", metric="TA", value=91.5)
    return {**base, **kw}


def _log(d: Path, *rows) -> Path:
    p = d / "r.jsonl"
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def _checkpoint(d: Path, **meta_over) -> Path:
    """A training checkpoint whose metadata is edited (a tampered or damaged resume)."""
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = ck.TrainingState(epoch=1, step=3, history=[{"epoch": 1}], seconds=1.0, config={"epochs": 3})
    path = ck.save_training_state(d / "ckpt" / ck.CHECKPOINT, model, opt, state)
    tensors = io.load_state_dict(path)
    meta = json.loads(io.read_metadata(path)["negkit_checkpoint"])
    meta.update(meta_over)
    io.save_state_dict(tensors, path, metadata={"negkit_checkpoint": json.dumps(meta)})
    return path


def _resume(path: Path) -> None:
    model = nn.Linear(2, 2)
    ck.load_training_state(path, model, torch.optim.SGD(model.parameters(), lr=0.1), config={"epochs": 3})


def _finished(d: Path, done=None, cfg=None) -> Path:
    out = d / "run"
    ck.save_finished(out, nn.Linear(2, 2), {"epochs": 1}, {"steps": 1}, [])
    if done is not None:
        (out / ck.DONE_FILE).write_text(json.dumps(done))
    if cfg is not None:
        (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture
def files(tmp_path):
    d = tmp_path
    torch.save({"w": torch.ones(3)}, d / "ok.pt")
    raw = (d / "ok.pt").read_bytes()
    (d / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    torch.save({"w": torch.ones(3)}, d / "legacy.pt", _use_new_zipfile_serialization=False)
    (d / "legacy_trunc.pt").write_bytes((d / "legacy.pt").read_bytes()[:40])
    torch.save(nn.Linear(2, 2), d / "module.pt")
    (d / "evil.pt").write_bytes(pickle.dumps({"w": _Evil()}, protocol=2))
    torch.save(collections.OrderedDict(w=torch.ones(1), f=os.getcwd), d / "global.pt")
    (d / "text.pt").write_text("hello, not a checkpoint")
    save_file({"w": torch.ones(4)}, str(d / "ok.safetensors"))
    (d / "trunc.safetensors").write_bytes((d / "ok.safetensors").read_bytes()[:-5])
    save_file({"w": torch.ones(4).to(torch.float8_e4m3fn)}, str(d / "fp8.safetensors"))
    (d / "adir").mkdir()
    return d


def _tv(**kw):
    return TaskVector({"w": torch.tensor([1.0, -2.0]), **kw})


def _net(width=4):
    return nn.Sequential(nn.Linear(2, width), nn.Linear(width, 2))


def _symlinked_log(d: Path) -> results.ResultsLog:
    target = d / "target.jsonl"
    target.write_text(json.dumps(_rec()) + "\n")
    (d / "link.jsonl").symlink_to(target)
    return results.ResultsLog(d / "link.jsonl")


def _pool_cfg(**kw):
    from negkit.clip.finetune import PoolConfig
    return PoolConfig(**kw)


def _fv_cfg(**kw):
    from negkit.forget_vectors import ForgetVectorConfig
    return ForgetVectorConfig(**kw)


def _unlearn_cfg(**kw):
    from negkit.unlearn import UnlearnConfig
    return UnlearnConfig(**kw)


def _writer(d: Path, name: str):
    with io.safetensors_writer(d / "w.safetensors", {name: ((2,), torch.float32)}) as write:
        write(name, torch.zeros(2))


def _open_pool(src):
    from negkit.pool import open_pool
    with open_pool(src):
        pass


# ------------------------------------------------------------------- the table
# (id, call(tmp dir), expected exception type, a word the message must contain)
ROWS = [
    # TrainConfig: types and ranges
    ("train-epochs-str", lambda d: from_dict(TrainConfig, {"epochs": "10"}), ValueError, "epochs"),
    ("train-epochs-0", lambda d: TrainConfig(epochs=0), ValueError, "epochs"),
    ("train-epochs-float", lambda d: TrainConfig(epochs=2.5), ValueError, "int"),
    ("train-wd-negative", lambda d: TrainConfig(weight_decay=-1e-4), ValueError, "weight_decay"),
    ("train-lr-nan", lambda d: TrainConfig(lr=NAN), ValueError, "NaN"),
    ("train-lr-inf", lambda d: TrainConfig(lr=INF), ValueError, "infinite"),
    ("train-batch-0", lambda d: TrainConfig(batch_size=0), ValueError, "batch_size"),
    ("train-amp-str", lambda d: TrainConfig(amp="yes"), ValueError, "amp"),
    ("train-ls-1.5", lambda d: TrainConfig(label_smoothing=1.5), ValueError, "label_smoothing"),
    ("train-grad-clip-0", lambda d: TrainConfig(grad_clip=0.0), ValueError, "grad_clip"),
    ("train-seed-negative", lambda d: TrainConfig(seed=-1), ValueError, "seed"),
    ("train-momentum-bool", lambda d: TrainConfig(momentum=True), ValueError, "momentum"),
    ("train-momentum-1.5", lambda d: TrainConfig(momentum=1.5), ValueError, "momentum"),
    ("train-workers-negative", lambda d: TrainConfig(num_workers=-2), ValueError, "num_workers"),
    ("train-from-list", lambda d: from_dict(TrainConfig, ["epochs"]), ValueError, "dict of its fields"),
    ("train-replace-typo", lambda d: replace(TrainConfig(), epoch=3), ValueError, "epoch"),
    ("train-replace-str", lambda d: replace(TrainConfig(), lr="0.1"), ValueError, "lr"),
    # BenchmarkConfig / PoolSpec
    ("bench-scenarios-str", lambda d: make_config(scenarios="class_3"), ValueError, "tuple"),
    ("bench-coefs-nan", lambda d: make_config(coefs=[NAN]), ValueError, "NaN"),
    ("bench-coefs-inf", lambda d: make_config(coefs=[0.0, INF]), ValueError, "infinite"),
    ("bench-coefs-str", lambda d: make_config(coefs="0.5"), ValueError, "coefs"),
    ("bench-negmerge-density", lambda d: make_config(merge_options={"negmerge": {"density": 0.2}}), ValueError,
     "density"),
    ("bench-ties-typo", lambda d: make_config(merge_options={"ties": {"densty": 0.2}}), ValueError, "densty"),
    ("bench-ties-str", lambda d: make_config(merge_options={"ties": {"density": "0.2"}}), ValueError, "density"),
    ("bench-ties-nan", lambda d: make_config(merge_options={"ties": {"density": NAN}}), ValueError, "density"),
    ("bench-options-not-dict", lambda d: make_config(merge_options={"ties": 0.2}), ValueError, "dict"),
    ("bench-options-unknown-rule", lambda d: make_config(merge_options={"nope": {}}), ValueError, "nope"),
    ("bench-pool-epochs-0", lambda d: make_config(pool={"epochs": (0,)}), ValueError, "epochs"),
    ("bench-pool-wd-negative", lambda d: make_config(pool={"weight_decays": (-1e-4,)}), ValueError, "weight_decays"),
    ("bench-pool-epochs-int", lambda d: make_config(pool={"epochs": 4}), ValueError, "tuple"),
    ("bench-pool-ls-str", lambda d: make_config(pool={"label_smoothings": ("0.1",)}), ValueError, "label_smoothings"),
    ("bench-original-epochs-str", lambda d: make_config(original={"epochs": "10"}), ValueError, "epochs"),
    ("bench-eval-batch-0", lambda d: make_config(eval_batch_size=0), ValueError, "eval_batch_size"),
    ("bench-seeds-str", lambda d: make_config(seeds=(0, "1")), ValueError, "int"),
    ("bench-data-options-list", lambda d: make_config(data_options=[1]), ValueError, "data_options"),
    ("bench-merge-methods-str", lambda d: make_config(merge_methods="ties"), ValueError, "tuple"),
    ("bench-threshold-percent", lambda d: make_config(threshold=95), ValueError, "threshold"),
    # the other config classes
    ("clip-pool-epochs-0", lambda d: _pool_cfg(epochs=0), ValueError, "epochs"),
    ("clip-pool-lr-negative", lambda d: _pool_cfg(lr=-1e-5), ValueError, "lr"),
    ("clip-pool-rand-m-str", lambda d: _pool_cfg(rand_m="9", rand_n=2), ValueError, "rand_m"),
    ("clip-pool-wd-nan", lambda d: _pool_cfg(weight_decay=NAN), ValueError, "weight_decay"),
    ("fv-lr-nan", lambda d: _fv_cfg(lr=NAN), ValueError, "lr"),
    ("fv-gamma-0", lambda d: _fv_cfg(gamma=0.0), ValueError, "gamma"),
    ("fv-epochs-str", lambda d: _fv_cfg(epochs="5"), ValueError, "epochs"),
    ("fv-beta-negative", lambda d: _fv_cfg(beta=-1.0), ValueError, "beta"),
    ("unlearn-lr-negative", lambda d: _unlearn_cfg(lr=-0.1), ValueError, "lr"),
    ("unlearn-batch-0", lambda d: _unlearn_cfg(batch_size=0), ValueError, "batch_size"),
    ("unlearn-wd-str", lambda d: _unlearn_cfg(weight_decay="5e-4"), ValueError, "weight_decay"),
    # checkpoint files
    ("load-folder", lambda d: io.load_state_dict(d / "adir"), OSError, "is a folder"),
    ("load-missing", lambda d: io.load_state_dict(d / "missing.pt"), FileNotFoundError, "does not exist"),
    ("load-device-nonsense", lambda d: io.load_state_dict(d / "ok.pt", device="nonsense"), ValueError, "device"),
    ("load-device-nonsense-st", lambda d: io.load_state_dict(d / "ok.safetensors", device="gpu0"), ValueError,
     "device"),
    ("load-truncated-zip", lambda d: io.load_state_dict(d / "trunc.pt"), ValueError, "truncated"),
    ("load-truncated-legacy", lambda d: io.load_state_dict(d / "legacy_trunc.pt"), ValueError, "truncated"),
    ("load-truncated-safetensors", lambda d: io.load_state_dict(d / "trunc.safetensors"), ValueError, "truncated"),
    ("load-pickled-module", lambda d: io.load_state_dict(d / "module.pt"), ValueError, "pickled code"),
    ("load-malicious-reduce", lambda d: io.load_state_dict(d / "evil.pt"), ValueError, "pickled code"),
    ("load-malicious-global", lambda d: io.load_state_dict(d / "global.pt"), ValueError, "pickled code"),
    ("load-text", lambda d: io.load_state_dict(d / "text.pt"), ValueError, "not a checkpoint"),
    ("metadata-folder", lambda d: io.read_metadata(d / "adir"), OSError, "is a folder"),
    ("save-metadata-name", lambda d: io.save_state_dict({"__metadata__": torch.ones(1)}, d / "m.safetensors"),
     ValueError, "__metadata__"),
    ("writer-metadata-name", lambda d: _writer(d, "__metadata__"), ValueError, "__metadata__"),
    ("save-not-tensor", lambda d: io.save_state_dict({"a": 1}, d / "a.safetensors"), TypeError, "not a tensor"),
    ("save-metadata-int", lambda d: io.save_state_dict({"a": torch.ones(1)}, d / "a.safetensors", metadata={"k": 1}),
     TypeError, "metadata"),
    ("atomic-write-folder", lambda d: io.save_json({}, d / "adir"), OSError, "is a folder"),
    # run folders and resumes
    ("done-marker-string", lambda d: ck.is_finished(_finished(d, done={"done": "yes"})), ValueError, "done"),
    ("done-marker-list", lambda d: ck.is_finished(_finished(d, done=[])), ValueError, "done"),
    ("finished-config-list", lambda d: ck.load_finished(_finished(d, cfg=[]), nn.Linear(2, 2), {"epochs": 1}),
     ValueError, "config"),
    ("resume-epoch-negative", lambda d: _resume(_checkpoint(d, epoch=-5)), ValueError, "epoch"),
    ("resume-epoch-beyond", lambda d: _resume(_checkpoint(d, epoch=7, history=[{}] * 7)), ValueError, "epoch"),
    ("resume-step-negative", lambda d: _resume(_checkpoint(d, step=-1000)), ValueError, "step"),
    ("resume-history-mismatch", lambda d: _resume(_checkpoint(d, history=[])), ValueError, "history"),
    # task vectors
    ("tv-nan", lambda d: _tv(b=torch.tensor([NAN])), ValueError, "NaN"),
    ("tv-inf", lambda d: _tv(b=torch.tensor([INF, 1.0])), ValueError, "Inf"),
    ("tv-not-mapping", lambda d: TaskVector([torch.ones(2)]), TypeError, "mapping"),
    ("tv-apply-nan-coef", lambda d: _tv().apply_to({"w": torch.zeros(2)}, coef=NAN), ValueError, "coef"),
    ("tv-apply-list", lambda d: _tv().apply_to([torch.zeros(2)]), TypeError, "state dict"),
    ("tv-save-pt", lambda d: _tv().save(d / "tv.pt"), ValueError, "safetensors"),
    ("tv-from-models-arch", lambda d: TaskVector.from_models(_net(4), _net(8)), ValueError, "architecture"),
    ("tv-from-models-dicts", lambda d: TaskVector.from_models({"w": torch.ones(1)}, {"w": torch.ones(1)}), TypeError,
     "nn.Module"),
    # pools
    ("pool-fp8-file", lambda d: _open_pool([d / "fp8.safetensors"]), ValueError, "float8"),
    ("pool-empty", lambda d: _open_pool([]), ValueError, "K = 0"),
    ("pool-single-mapping", lambda d: _open_pool({"w": torch.ones(1)}), TypeError, "sequence"),
    # results logs
    ("read-value-str", lambda d: results.read_results(_log(d, _rec(), _rec(value="12abc"))), ValueError, "r.jsonl:2"),
    ("read-unknown-method", lambda d: results.read_results(_log(d, _rec(method="negmrge"))), ValueError,
     "unknown method"),
    ("read-seed-str", lambda d: results.read_results(_log(d, _rec(seed="3"))), ValueError, "seed"),
    ("read-unknown-column", lambda d: results.read_results(_log(d, {**_rec(), "colour": "red"})), ValueError,
     "colour"),
    ("read-missing-column", lambda d: results.read_results(_log(d, {"setting": "standard"})), ValueError, "missing"),
    ("read-json-list", lambda d: results.read_results(_log(d, "[1, 2]", _rec())), ValueError, "r.jsonl:1"),
    ("record-value-str", lambda d: results.Record(**_rec(value="12abc")), ValueError, "value"),
    ("record-seed-float", lambda d: results.Record(**_rec(seed=1.5)), ValueError, "seed"),
    ("append-symlink", lambda d: _symlinked_log(d).append(results.Record(**_rec())), ValueError, "symbolic link"),
    ("append-not-record", lambda d: results.ResultsLog(d / "r.jsonl").append([_rec()]), TypeError, "Record"),
]


@pytest.mark.parametrize("call,exc,word", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_fails_clearly(files, call, exc, word):
    with pytest.raises(exc) as info:
        call(files)
    assert word.lower() in str(info.value).lower(), f"message lacks {word!r}: {info.value}"


def test_table_is_large_and_ids_unique():
    assert len(ROWS) >= 60 and len({r[0] for r in ROWS}) == len(ROWS)


# ---------------------------------------------------- silent wrong results, fixed
def test_done_marker_saying_false_is_not_finished(tmp_path):
    assert ck.is_finished(_finished(tmp_path))
    assert not ck.is_finished(_finished(tmp_path, done={"done": False, "epochs": 1, "steps": 1}))


def test_replace_keeps_nested_dataclasses():
    cfg = make_config()
    new = replace(cfg, original={"epochs": 3}, eval_batch_size=64)
    assert isinstance(new.original, TrainConfig) and new.original.epochs == 3 and new.eval_batch_size == 64
    assert new.original.lr == cfg.original.lr  # the other nested fields are kept, not reset to TrainConfig()
    assert config.to_dict(replace(cfg, eval_batch_size=64))["original"] == config.to_dict(cfg)["original"]


def test_registered_rule_is_recordable(monkeypatch):
    with pytest.raises(ValueError, match="unknown method"):
        results.Record(**_rec(method="my_rule"))
    monkeypatch.setitem(merge._RULES, "my_rule", merge.mean)
    assert "my_rule" in results.list_methods()
    assert results.Record(**_rec(method="my_rule")).method == "my_rule"


def test_apply_to_a_model_returns_an_edited_copy():
    pre = _net()
    tv = TaskVector({k: torch.ones_like(v) for k, v in pre.state_dict().items()})
    before = {k: v.clone() for k, v in pre.state_dict().items()}
    edited = tv.apply_to(pre, coef=-0.5)
    assert isinstance(edited, nn.Module) and edited is not pre
    for k, v in edited.state_dict().items():
        assert torch.equal(v, before[k] - 0.5) and torch.equal(pre.state_dict()[k], before[k])


def test_long_names_and_one_file_mode(tmp_path):
    name = "x" * 240 + ".safetensors"  # 252 bytes: fits, and so must its temporary name
    io.save_state_dict({"w": torch.ones(1)}, tmp_path / name)
    io.save_json({}, tmp_path / ("y" * 250 + ".json"))
    mask = os.umask(0o027)
    try:
        io.save_state_dict({"w": torch.ones(1)}, tmp_path / "a.safetensors")
        io.save_json({}, tmp_path / "a.json")
    finally:
        os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("a.*")}
    assert modes == {"a.safetensors": 0o640, "a.json": 0o640}


# ------------------------------------------------------------ one writer per run dir
def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"helper exited early: {proc.communicate()}")
        assert time.monotonic() - t0 < timeout, "helper did not start"
        time.sleep(0.05)


HOLDER = """
    import sys, time, pathlib
    from negkit.lock import lock_run_dir
    with lock_run_dir(sys.argv[1]):
        pathlib.Path(sys.argv[2]).touch()
        time.sleep(60)
"""


def test_second_process_is_refused_naming_the_holder_and_a_killed_holder_is_not_waited_on(tmp_path):
    from negkit.lock import RunDirLocked, holder, lock_run_dir

    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    proc = _python(HOLDER, str(run_dir), str(ready))
    try:
        _wait_for(ready, proc)
        t0 = time.monotonic()
        with pytest.raises(RunDirLocked, match=rf"PID {proc.pid} on host \S+"):
            with lock_run_dir(run_dir):
                pass
        assert time.monotonic() - t0 < 5  # refused at once, not waited on
        assert holder(run_dir)["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with lock_run_dir(run_dir):  # the kernel dropped the dead holder's lock: taken over, not waited on
        assert holder(run_dir)["pid"] == os.getpid()
        with lock_run_dir(run_dir):  # the holder may re-enter
            pass
    assert holder(run_dir) is None  # released cleanly


APPENDER = """
    import sys
    from negkit.results import Record, ResultsLog
    log, tag, n = ResultsLog(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for i in range(n):
        log.append(Record(setting="standard", model="m", dataset="d", scenario="s", method="mean",
                          pool_config=f"{tag}{i}", coef=0.0, split="test", metric="acc", value=float(i)))
"""


def test_concurrent_appends_lose_nothing(tmp_path):
    path, n = tmp_path / "results.jsonl", 80
    procs = [_python(APPENDER, str(path), tag, str(n)) for tag in ("a", "b")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    df = results.read_results(path)
    assert len(df) == 2 * n and not df.duplicated().any()
    assert set(df.pool_config) == {f"{t}{i}" for t in "ab" for i in range(n)}


def test_runner_refuses_a_locked_run_dir_before_any_work(tmp_path):
    from negkit.benchmark import run
    from negkit.lock import RunDirLocked

    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    proc = _python(HOLDER, str(run_dir), str(ready))
    try:
        _wait_for(ready, proc)
        with pytest.raises(RunDirLocked, match=f"PID {proc.pid}"):
            run(make_config(), run_dir, device="cpu", progress=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # nothing but the holder's lock and environment record: no results, no trained model
    assert {p.name for p in run_dir.iterdir()} <= {".negkit.lock", "environment.json"}


# ------------------------------------------------------------- killed writes
SLOW_WRITER = """
    import sys, pathlib
    from negkit.io import atomic_write
    with atomic_write(pathlib.Path(sys.argv[1]) / "sub" / "model.safetensors") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            pathlib.Path(sys.argv[2]).touch()
            while True:
                f.write(b"x" * 4096)
"""


def test_write_killed_midway_leaves_no_temporary_file_after_the_next_open(tmp_path):
    from negkit.lock import lock_run_dir

    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    proc = _python(SLOW_WRITER, str(run_dir), str(ready))
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    orphans = list(run_dir.rglob(f"{io.TMP_PREFIX}*"))
    assert len(orphans) == 1 and not (run_dir / "sub" / "model.safetensors").exists()
    (run_dir / "sub" / "keep.tmp-notours").write_text("not a negkit temporary")
    with lock_run_dir(run_dir):
        assert not list(run_dir.rglob(f"{io.TMP_PREFIX}*"))
    assert (run_dir / "sub" / "keep.tmp-notours").exists()


def test_resume_in_another_environment_warns(tmp_path):
    from negkit.lock import ENV_FILE, lock_run_dir

    with lock_run_dir(tmp_path):
        pass
    recorded = json.loads((tmp_path / ENV_FILE).read_text())
    assert recorded["threads"] == torch.get_num_threads() and recorded["torch"] in torch.__version__
    io.save_json({**recorded, "threads": recorded["threads"] + 7}, tmp_path / ENV_FILE)
    with pytest.warns(RuntimeWarning, match="threads"):
        with lock_run_dir(tmp_path):
            pass


def test_checkpoint_resumed_with_other_threads_warns(tmp_path):
    path = _checkpoint(tmp_path)
    meta = json.loads(io.read_metadata(path)["negkit_checkpoint"])
    assert meta["environment"]["threads"] == torch.get_num_threads()
    path = _checkpoint(tmp_path, environment={**meta["environment"], "threads": meta["environment"]["threads"] + 3})
    with pytest.warns(RuntimeWarning, match="threads"):
        _resume(path)
