"""Bad inputs to the public API (issue 21): each refused before any work, with the right type and a message
naming the culprit.

Every row is ``(id, call, exception type, message fragment)``; ``call`` takes a scratch folder. The table
complements ``test_fuzz.py`` (file damage, checkpoints, locks) with the numeric, registry, results-log,
config and device checks.
"""
from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import torch

import negkit.data as data
import negkit.models as models
import negkit.unlearn as unlearn
from negkit import benchmark as B
from negkit import config, executor, io, lock, merge, metrics, notebook, results
from negkit.evaluate import check_threshold, coef_grid, resolve_device, search_coef, select_coef
from negkit.taskvec import TaskVector

NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------ helpers
def _curves(coefs):
    return {"val_forget": [50.0 - c for c in coefs], "val_control": [90.0] * len(coefs)}


def _sel(coefs=(0.0, 0.5, 1.0), forget=(50.0, 40.0, 30.0), control=(90.0, 90.0, 90.0), ref=90.0, **kw):
    return lambda d: select_coef(list(coefs), list(forget), list(control), ref, **kw)


def _search(ref=90.0, evaluate=_curves, **kw):
    return lambda d: search_coef(evaluate, ref, **kw)


def _acc(labels, logits=None):
    return lambda d: metrics.accuracy(torch.eye(3)[:len(labels)] if logits is None else logits, labels)


def _mia(labels, feature="confidence", logits=None):
    return lambda d: metrics.mia_features(torch.eye(3) if logits is None else logits, labels, feature)


def _tv_from(pre, ft, **kw):
    return lambda d: TaskVector.from_state_dicts(pre, ft, **kw)


def _nb(value, spec, name="x", **more):
    return lambda d: notebook.check_parameters({name: value, **more}, {name: spec, **{k: str for k in more}}, root=d)


def _cfg(**changes):
    return lambda d: B.make_config(B.default_config(smoke=True), **changes)


def _log(d, *lines, newline=True):
    p = d / "r.jsonl"
    p.write_text("\n".join(lines) + ("\n" if newline else ""))
    return p


_GOOD = json.dumps(dict(setting="standard", model="small_resnet", dataset="digits", scenario="random_10",
                        method="negmerge", pool_config="", coef=0.35, split="test", metric="TA", value=91.5))


def _no_cuda(call):
    def run(d):
        real = torch.cuda.is_available
        torch.cuda.is_available = lambda: False
        try:
            return call(d)
        finally:
            torch.cuda.is_available = real
    return run


def _check(executor_="local", address=None, num_cpus=None, cpus=1.0, gpus=0.0, retries=2, workers=1, device=None):
    return lambda d: executor._check(executor_, address, num_cpus, cpus, gpus, retries, workers, device)


def _live_worker_record(d):
    """A record of a live process of this host (our parent, with its real start time), as a killed run's
    surviving worker leaves it; opening the run dir must refuse."""
    import os
    ppid = os.getppid()
    io.save_json({"pid": ppid, "host": socket.gethostname(), "start": lock._start_time(ppid)},
                 d / "run" / lock.WORKERS_DIR / f"{ppid}.json")
    with lock.lock_run_dir(d / "run"):
        pass


def _file_run_dir(d):
    (d / "afile").write_text("x")
    with lock.lock_run_dir(d / "afile"):
        pass


REGISTRIES = [("merge", merge.register), ("models", models.register_model), ("data", data.register_dataset),
              ("unlearn", unlearn.register)]
BAD_NAMES = [("int", 123, TypeError, "must be a str"), ("none", None, TypeError, "must be a str"),
             ("bytes", b"abc", TypeError, "must be a str"), ("float", 1.5, TypeError, "must be a str"),
             ("list", ["a"], TypeError, "must be a str"), ("empty", "", ValueError, "identifier"),
             ("space", "a b", ValueError, "identifier"), ("digit", "9lives", ValueError, "identifier"),
             ("dash", "neg-merge", ValueError, "identifier"), ("dot", "a.b", ValueError, "identifier")]
NOT_CALLABLE = [("int", 42), ("str", "mean"), ("none", None), ("list", [len]), ("dict", {})]

ROWS = [
    # coefficient grid and selection
    *[(f"grid-{n}", (lambda a: lambda d: coef_grid(*a))(a), ValueError, w) for n, a, w in [
        ("nan-start", (NAN, 1, 0.1), "start"), ("inf-stop", (0, INF, 0.1), "stop"), ("nan-step", (0, 1, NAN), "step"),
        ("zero-step", (0, 1, 0), "step > 0"), ("neg-step", (0, 1, -0.1), "step > 0"),
        ("reversed", (1, 0, 0.1), "stop >= start"), ("huge", (0, 1, 1e-9), "coarser step"),
        ("str-start", ("0", 1, 0.1), "start")]],
    ("select-nan-coef", _sel(coefs=(0.0, NAN, 1.0)), ValueError, "coefs[1] must be a finite number"),
    ("select-inf-coef", _sel(coefs=(INF, 0.5, 1.0)), ValueError, "coefs[0]"),
    ("select-neginf-coef", _sel(coefs=(0.0, 0.5, -INF)), ValueError, "coefs[2]"),
    ("select-str-coef", _sel(coefs=(0.0, "0.5", 1.0)), ValueError, "coefs[1]"),
    ("select-bool-coef", _sel(coefs=(0.0, True, 1.0)), ValueError, "coefs[1]"),
    ("select-none-coef", _sel(coefs=(None, 0.5, 1.0)), ValueError, "coefs[0]"),
    ("select-neg-ref", _sel(ref=-1.0), ValueError, "control_reference"),
    ("select-tiny-neg-ref", _sel(ref=-1e-12), ValueError, "≥ 0"),
    ("select-nan-ref", _sel(ref=NAN), ValueError, "control_reference"),
    ("select-inf-ref", _sel(ref=INF), ValueError, "control_reference"),
    ("select-str-ref", _sel(ref="90"), ValueError, "control_reference"),
    ("select-none-ref", _sel(ref=None), ValueError, "control_reference"),
    ("select-threshold-zero", _sel(threshold=0.0), ValueError, "threshold"),
    ("select-threshold-percent", _sel(threshold=95), ValueError, "did you mean 0.95"),
    ("select-threshold-neg", _sel(threshold=-0.5), ValueError, "threshold"),
    ("select-threshold-nan", _sel(threshold=NAN), ValueError, "threshold"),
    ("select-threshold-str", _sel(threshold="0.9"), ValueError, "threshold"),
    ("select-unknown-rule", _sel(rule="max_forget"), ValueError, "unknown rule"),
    ("select-match-no-target", _sel(rule="match"), ValueError, "target"),
    ("select-match-nan-target", _sel(rule="match", target=NAN), ValueError, "target"),
    ("select-lengths", _sel(forget=(1.0, 2.0)), ValueError, "equal lengths"),
    ("select-empty", _sel(coefs=(), forget=(), control=()), ValueError, "no coefficients"),
    ("search-start-neg", _search(start=-1), ValueError, "start must be a finite λ ≥ 0"),
    ("search-start-small-neg", _search(start=-0.05), ValueError, "start=-0.05"),
    ("search-start-nan", _search(start=NAN), ValueError, "start"),
    ("search-start-inf", _search(start=INF), ValueError, "start"),
    ("search-start-str", _search(start="0"), ValueError, "start"),
    ("search-neg-ref", _search(ref=-5.0), ValueError, "control_reference"),
    ("search-nan-ref", _search(ref=NAN), ValueError, "control_reference"),
    ("search-max-below-stop", _search(max_coef=0.5), ValueError, "max_coef"),
    ("search-target-without-match", _search(target=10.0), ValueError, "only used by rule='match'"),
    ("search-zero-step", _search(step=0), ValueError, "step"),
    ("search-missing-split", _search(evaluate=lambda c: {"val_forget": [1.0] * len(c)}), ValueError,
     "without 'val_control'"),
    ("search-short-values", _search(evaluate=lambda c: {"val_forget": [1.0], "val_control": [1.0]}), ValueError,
     "accuracies for"),
    *[(f"threshold-{i}", (lambda t: lambda d: check_threshold(t))(t), ValueError, "threshold")
      for i, t in enumerate([0, 1.01, -1, NAN, INF, "x", None, 100])],
    # labels
    ("acc-float-labels", _acc(torch.tensor([0.0, 1.0, 2.0])), TypeError, "integer class indices"),
    ("acc-half-labels", _acc(torch.tensor([0, 1], dtype=torch.float16)), TypeError, "float16"),
    ("acc-double-labels", _acc(torch.tensor([0.0], dtype=torch.float64)), TypeError, "float64"),
    ("acc-bool-labels", _acc(torch.tensor([True, False])), TypeError, "torch.bool"),
    ("acc-numpy-float-labels", _acc(np.array([0.0, 1.0])), TypeError, "integer class indices"),
    ("acc-length-mismatch", _acc(torch.tensor([0, 1]), logits=torch.eye(3)), ValueError, "as many labels"),
    ("acc-empty", _acc(torch.tensor([], dtype=torch.long), logits=torch.zeros(0, 3)), ValueError, "at least one"),
    *[(f"mia-negative-{f}", _mia(torch.tensor([0, -1, 2]), f), ValueError, "≥ 0, got -1")
      for f in metrics.MIA_FEATURES],
    ("mia-ignore-index", _mia(torch.tensor([-100, 1, 2])), ValueError, "-100"),
    ("mia-label-too-big", _mia(torch.tensor([0, 1, 3])), ValueError, "out of range for 3 classes"),
    ("mia-float-labels", _mia(torch.tensor([0.0, 1.0, 2.0])), TypeError, "integer class indices"),
    ("mia-bool-labels", _mia(torch.tensor([True, False, True])), TypeError, "torch.bool"),
    ("mia-unknown-feature", _mia(torch.tensor([0, 1, 2]), "loss"), ValueError, "unknown MIA feature"),
    ("mia-count-mismatch", _mia(torch.tensor([0, 1])), ValueError, "N labels"),
    ("mia-1d-logits", _mia(torch.tensor([0, 1, 2]), logits=torch.zeros(3)), ValueError, "(N, C)"),
    # task vectors
    *[(f"tv-int-ft-{str(t).split('.')[-1]}", _tv_from({"w": torch.zeros(2)}, {"w": torch.ones(2, dtype=t)}),
       TypeError, "fine-tuned entry 'w'") for t in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool)],
    ("tv-shape", _tv_from({"w": torch.zeros(2)}, {"w": torch.zeros(3)}), ValueError, "shape mismatch for 'w'"),
    ("tv-missing-key", _tv_from({"w": torch.zeros(2), "b": torch.zeros(1)}, {"w": torch.zeros(2)}), KeyError, "'b'"),
    ("tv-keys-str", _tv_from({"w": torch.zeros(2)}, {"w": torch.zeros(2)}, keys="w"), TypeError, "single string"),
    ("tv-keys-unknown", _tv_from({"w": torch.zeros(2)}, {"w": torch.zeros(2)}, keys=["v"]), KeyError, "'v'"),
    ("tv-not-mapping", lambda d: TaskVector([torch.ones(1)]), TypeError, "mapping"),
    ("tv-int-value", lambda d: TaskVector({"w": torch.ones(2, dtype=torch.long)}), TypeError, "floating-point"),
    ("tv-list-value", lambda d: TaskVector({"w": [1.0, 2.0]}), TypeError, "floating-point"),
    ("tv-nan-value", lambda d: TaskVector({"w": torch.tensor([NAN, 1.0])}), ValueError, "NaN/Inf"),
    ("tv-inf-value", lambda d: TaskVector({"w": torch.tensor([INF])}), ValueError, "NaN/Inf"),
    *[(f"apply-model-{type(m).__name__}", (lambda m: lambda d: TaskVector({"w": torch.ones(1)}).apply_to(m, 1.0))(m),
       TypeError, f"got a {type(m).__name__}") for m in (5, None, "m.safetensors", 1.5, [1.0], (1,))],
    *[(f"apply-coef-{i}", (lambda c: lambda d: TaskVector({"w": torch.ones(1)}).apply_to({"w": torch.ones(1)}, c))(c),
       ValueError, "finite number") for i, c in enumerate([NAN, INF, -INF, "1", None, True])],
    # registries
    *[(f"register-{r}-{n}", (lambda f, v: lambda d: f(v)(lambda *a, **k: None))(f, v), e, w)
      for r, f in REGISTRIES for n, v, e, w in BAD_NAMES],
    *[(f"register-{r}-not-callable-{n}", (lambda f, v: lambda d: f("fuzz_nc")(v))(f, v), TypeError,
       "must be registered on a callable") for r, f in REGISTRIES for n, v in NOT_CALLABLE],
    ("merge-get-unknown", lambda d: merge.get("negmrge"), ValueError, "unknown merge method"),
    ("merge-get-int", lambda d: merge.get(3), ValueError, "unknown merge method"),
    ("models-get-unknown", lambda d: models.get("resnet99", 10), ValueError, "resnet99"),
    ("unlearn-get-unknown", lambda d: unlearn.get("gaa"), ValueError, "gaa"),
    # notebook parameters
    *[(f"nb-float-{i}", _nb(v, notebook.Param(float, min=0.0, max=1.0)), ValueError, "must be a finite number")
      for i, v in enumerate(["nan", "NaN", " nan", "inf", "-inf", "Infinity", NAN, INF, -INF])],
    *[(f"nb-placeholder-{i}", (lambda t: lambda d: notebook.check_parameters(
        {"d": "x", "run_dir": t}, {"d": str, "run_dir": notebook.Path}, root=d))(t), ValueError, "in braces")
      for i, t in enumerate(["{d.__class__}", "{d.__class__.__mro__}", "{d[0]}", "{d!r}", "{d:>99}", "{0}", "{}",
                             "{e}", "{d.upper}", "{__import__}"])],
    ("nb-unbalanced-brace", lambda d: notebook.check_parameters({"run_dir": "runs/{"}, {"run_dir": notebook.Path},
                                                                 root=d), ValueError, "literal braces"),
    ("nb-int-str", _nb("3.5", int), ValueError, "must be an integer"),
    ("nb-bool-str", _nb("maybe", bool), ValueError, "boolean"),
    ("nb-int-bool", _nb(True, int), ValueError, "must be an integer"),
    ("nb-min", _nb(-1, notebook.Param(int, min=0)), ValueError, "≥ 0"),
    ("nb-choices", _nb("big", notebook.Param(str, choices=("a", "b"))), ValueError, "one of"),
    # scenarios and configs
    *[(f"scenario-{s}", (lambda s: lambda d: B.parse_scenario(s))(s), ValueError, w) for s, w in [
        ("random_200", "(0, 100)"), ("random_0", "(0, 100)"), ("random_100", "(0, 100)"),
        ("random_0.0", "(0, 100)"), ("random_-5", "unknown scenario"), ("random_", "unknown scenario"),
        ("class_", "unknown scenario"), ("class_3-3", "repeats a class"), ("class_1-2-1", "repeats a class"),
        ("class_a", "unknown scenario"), ("Random_10", "unknown scenario"), ("", "unknown scenario"),
        ("random_10 ", "unknown scenario")]],
    ("scenario-int", lambda d: B.parse_scenario(10), TypeError, "is a str"),
    ("cfg-pool-epochs-empty", _cfg(pool={"epochs": ()}), ValueError, "PoolSpec.epochs is empty"),
    ("cfg-pool-wd-empty", _cfg(pool={"weight_decays": []}), ValueError, "PoolSpec.weight_decays is empty"),
    ("cfg-pool-ls-empty", _cfg(pool={"label_smoothings": ()}), ValueError, "label_smoothings is empty"),
    ("cfg-pool-epochs-zero", _cfg(pool={"epochs": (0,)}), ValueError, "epochs"),
    ("cfg-pool-ls-one", _cfg(pool={"label_smoothings": (1.0,)}), ValueError, "label_smoothings"),
    ("cfg-pool-unknown-key", _cfg(pool={"epoch": (1,)}), ValueError, "epoch"),
    ("cfg-scenarios-empty", _cfg(scenarios=()), ValueError, "scenarios is empty"),
    ("cfg-scenarios-str", _cfg(scenarios="class_3"), ValueError, "scenarios"),
    ("cfg-random-200", _cfg(scenarios=("random_200",)), ValueError, "'random_200'"),
    ("cfg-class-10", _cfg(scenarios=("class_10",)), ValueError, "unknown class(es) [10]"),
    ("cfg-class-99", _cfg(scenarios=("class_3", "class_99")), ValueError, "[99]"),
    ("cfg-seeds-empty", _cfg(seeds=()), ValueError, "seeds"),
    ("cfg-seeds-neg", _cfg(seeds=(-1,)), ValueError, "seeds"),
    ("cfg-seeds-repeat", _cfg(seeds=(0, 0)), ValueError, "seeds"),
    ("cfg-threshold-percent", _cfg(threshold=95), ValueError, "threshold"),
    ("cfg-coef-step-zero", _cfg(coef_step=0.0), ValueError, "coef_step"),
    ("cfg-coef-max-nan", _cfg(coef_max=NAN), ValueError, "coef_max"),
    ("cfg-coefs-negative", _cfg(coefs=(-0.5, 0.0, 1.0)), ValueError, "coefs=(-0.5, 0.0, 1.0) must be >= 0"),
    ("cfg-coefs-nan", _cfg(coefs=(NAN, 1.0)), ValueError, "coefs=(nan, 1.0) is NaN"),
    ("cfg-merge-unknown", _cfg(merge_methods=("negmrge",)), ValueError, "negmrge"),
    ("cfg-baseline-unknown", _cfg(baselines=("gaa",)), ValueError, "gaa"),
    ("cfg-unknown-key", _cfg(colour="red"), ValueError, "colour"),
    ("cfg-rules-unknown", _cfg(rules=("min_forget", "best")), ValueError, "rules"),
    ("cfg-coef-search", _cfg(coef_search="binary"), ValueError, "coef_search"),
    # results logs
    ("read-missing", lambda d: results.read_results(d / "nope.jsonl"), FileNotFoundError, "nope.jsonl"),
    ("read-missing-folder", lambda d: results.read_results(d / "nowhere"), FileNotFoundError, "no results log"),
    ("read-corrupt-last-complete", lambda d: results.read_results(_log(d, _GOOD, '{"setting": "st')), ValueError,
     "r.jsonl:2 is not a JSON record"),
    ("read-corrupt-middle", lambda d: results.read_results(_log(d, _GOOD, "garbage", _GOOD)), ValueError, "r.jsonl:2"),
    ("read-corrupt-first", lambda d: results.read_results(_log(d, "{", _GOOD, newline=False)), ValueError, "r.jsonl:1"),
    ("read-corrupt-then-torn", lambda d: results.read_results(_log(d, "xx", "{", newline=False)), ValueError,
     "r.jsonl:1"),
    ("read-nan-literal", lambda d: results.read_results(_log(d, _GOOD.replace("91.5", "NaNx"))), ValueError,
     "r.jsonl:1"),
    ("append-str", lambda d: results.ResultsLog(d / "r.jsonl").append("record"), TypeError, "Record"),
    ("append-folder", lambda d: results.ResultsLog(d).append(results.Record(**json.loads(_GOOD))), ValueError,
     "folder"),
    # devices and executors
    ("device-bogus", lambda d: resolve_device("gpu0"), ValueError, "not a torch device"),
    ("device-int-str", lambda d: resolve_device("cuda:x"), ValueError, "not a torch device"),
    ("device-cuda-absent", _no_cuda(lambda d: resolve_device("cuda")), ValueError, "torch.cuda.is_available()"),
    ("device-cuda1-absent", _no_cuda(lambda d: resolve_device("cuda:1")), ValueError, "pass device='cpu'"),
    ("device-cuda-obj-absent", _no_cuda(lambda d: resolve_device(torch.device("cuda"))), ValueError, "GPU"),
    ("exec-unknown", _check(executor_="dask"), ValueError, "unknown executor"),
    ("exec-gpus-local", _check(gpus=1.0), ValueError, "executor='local' does not use Ray"),
    ("exec-gpus-local-frac", _check(gpus=0.25), ValueError, "gpus_per_task=0.25"),
    ("exec-gpus-neg", _check(executor_="ray", gpus=-1.0), ValueError, "gpus_per_task >= 0"),
    ("exec-cpus-zero", _check(cpus=0.0), ValueError, "cpus_per_task > 0"),
    ("exec-retries-neg", _check(retries=-1), ValueError, "retries >= 0"),
    ("exec-num-cpus-zero", _check(num_cpus=0), ValueError, "num_cpus"),
    ("exec-address-local", _check(address="auto"), ValueError, "executor='ray'"),
    ("exec-workers-zero", _check(workers=0), ValueError, "workers"),
    ("exec-workers-float", _check(workers=2.0), ValueError, "workers"),
    ("exec-workers-ray", _check(executor_="ray", workers=2), ValueError, "local executor"),
    ("exec-cuda-absent", _no_cuda(_check(device="cuda")), ValueError, "torch.cuda.is_available()"),
    ("exec-device-bogus", _check(device="tpu9"), ValueError, "not a torch device"),
    # run dirs and writes
    ("lock-run-dir-file", _file_run_dir, NotADirectoryError, "is a file"),
    ("lock-live-worker", _live_worker_record, lock.RunDirLocked, "worker process(es)"),
    ("save-long-name", lambda d: io.save_state_dict({"w": torch.ones(1)}, d / ("n" * 300 + ".safetensors")), OSError,
     "could not write"),
    ("save-json-long-name", lambda d: io.save_json({}, d / ("j" * 300 + ".json")), OSError, "at most 255 bytes"),
    ("save-into-file", lambda d: (d / "f").write_text("x") and io.save_json({}, d / "f" / "x.json"), OSError, "f"),
    ("save-not-tensor", lambda d: io.save_state_dict({"w": [1.0]}, d / "a.safetensors"), TypeError, "not a tensor"),
    ("save-meta-not-str", lambda d: io.save_state_dict({"w": torch.ones(1)}, d / "a.safetensors", metadata={"a": 1}),
     TypeError, "metadata"),
    ("load-missing", lambda d: io.load_state_dict(d / "missing.safetensors"), FileNotFoundError, "missing"),
    ("config-registration-kind", lambda d: config.check_registration("widget", 3.0), TypeError,
     "a widget's name must be a str"),
]


@pytest.mark.parametrize("call,exc,word", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_fails_clearly(tmp_path, call, exc, word):
    with pytest.raises(exc) as info:
        call(tmp_path)
    assert word.lower() in str(info.value).lower(), f"message lacks {word!r}: {info.value}"


def test_table_is_large_and_ids_unique():
    assert len(ROWS) >= 180 and len({r[0] for r in ROWS}) == len(ROWS)


# ------------------------------------------------------------------ the right behaviour next to each refusal
def test_what_the_checks_still_accept(tmp_path):
    assert select_coef([0.0, 0.5], [50.0, 30.0], [90.0, 90.0], 0.0) == 0.5  # a zero reference is finite and ≥ 0
    assert search_coef(_curves, 90.0, start=0.0, max_coef=1.0).coef == 1.0
    assert metrics.accuracy(torch.eye(3), torch.tensor([0, 1, 1], dtype=torch.int32)) == pytest.approx(200 / 3)
    assert metrics.mia_features(torch.eye(3), np.array([0, 1, 2]), "correctness").ravel().tolist() == [1.0] * 3
    tv = TaskVector.from_state_dicts({"w": torch.zeros(2), "n": torch.zeros((), dtype=torch.long)},
                                     {"w": torch.ones(2), "n": torch.ones((), dtype=torch.long)})
    assert list(tv) == ["w"]  # integer buffers of both sides are skipped, as before
    ok = notebook.check_parameters({"lr": "1e-3", "d": "x", "run_dir": "runs/{d}"},
                                   {"lr": float, "d": str, "run_dir": notebook.Path}, root=tmp_path)
    assert ok["lr"] == 1e-3 and ok["run_dir"] == str(tmp_path / "runs" / "x")
    assert B.parse_scenario("random_2.5")["fraction"] == pytest.approx(0.025)
    p = _log(tmp_path, _GOOD, _GOOD + "  ", "{torn", newline=False)
    with pytest.warns(UserWarning, match="truncated"):
        assert len(results.read_results(p)) == 2
    assert math.isclose(results.read_results(_log(tmp_path, _GOOD)).value[0], 91.5)
    executor._check("ray", None, None, 1.0, 0.5, 2, 1, None)  # GPUs with Ray are fine
