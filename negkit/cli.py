"""The ``negkit`` command: a thin runner over the library (also ``python -m negkit``).

Every subcommand builds its configuration from a YAML/JSON file (``--config``) and/or
flags (flags win), validates all of it, and only then starts work; each calls one or
a few library functions a notebook could call too. ``negkit <command> --help`` shows
examples.

    negkit benchmark     the standard-classification protocol (local or Ray executor)
    negkit clip-negation CLIP task negation (notebook 06's protocol)
    negkit merge         merge task vectors stored as safetensors files
    negkit negate        θ = θ_o − λ·τ, written as a checkpoint
    negkit notebook      run a notebook with papermill after checking its parameters
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

__all__ = ["main", "build_parser", "load_config_file"]

log = logging.getLogger("negkit.cli")


class CliError(Exception):
    """A bad argument or config value; reported as ``negkit <command>: error: ...`` with exit status 2."""


# --------------------------------------------------------------------------- helpers
def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON (``.json``) file holding one mapping; ``{}`` for None."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise CliError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)  # YAML's messages span lines (a caret drawing): keep one
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise CliError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                       f"{problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise CliError(f"config file {path} must hold a mapping of option names to values, got {type(data).__name__}")
    return dict(data)


def _value(text: str) -> Any:
    """A flag's value as YAML reads it: ``0.2`` -> float, ``true`` -> bool, ``[1, 2]`` -> list, else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _key_values(pairs: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for pair in pairs or ():
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} takes KEY=VALUE, got {pair!r}")
        out[key] = _value(val)
    return out


def _flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The given (non-None) flags among ``names``, under their config names."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _sub(subs: argparse._SubParsersAction, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    p = subs.add_parser(name, help=summary, description=summary, epilog="examples:\n" + examples,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log what the kit does (INFO messages)")
    return p


def refuse_overwriting_inputs(output: str | Path, inputs: Sequence[tuple[str, str | Path | None]]) -> None:
    """Refuse an output path that is one of the inputs (same file: symlinks and other spellings included).

    Checked before anything is read, so a typo can never replace a model by its own negation.

    Raises:
        CliError: Naming the flag whose file the output would overwrite.
    """
    out = Path(output)
    try:
        exists = out.exists()
    except OSError as err:  # a name over the file system's limit (ENAMETOOLONG), a loop of links...
        hint = " (a file name may have at most 255 bytes)" if err.errno == errno.ENAMETOOLONG else ""
        raise CliError(f"-o {output}: {err.strerror}{hint}; choose another output path") from None
    if not exists:
        return
    for flag, path in inputs:
        if path is not None and Path(path).exists() and os.path.samefile(out, path):
            raise CliError(f"-o {output} is the same file as {flag} {path}: writing it would destroy an input; "
                           "choose another output path")


# --------------------------------------------------------------------------- benchmark
_BENCH_FLAGS = ("seeds", "scenarios", "data_root")


def benchmark_config(args: argparse.Namespace):
    """The :class:`~negkit.benchmark.BenchmarkConfig` of ``negkit benchmark``'s config file and flags."""
    from negkit import benchmark

    values = {**load_config_file(args.config), **_flags(args, _BENCH_FLAGS)}
    dataset = args.dataset or values.pop("dataset", "digits")
    values.pop("dataset", None)
    smoke = bool(args.smoke or values.pop("smoke", False))
    try:
        return benchmark.dataset_config(dataset, smoke=smoke, **values)
    except (TypeError, ValueError) as err:
        given = [f"--{k.replace('_', '-')}" for k in _flags(args, _BENCH_FLAGS)]
        where = " and ".join(([str(args.config)] if args.config else []) + given) or f"the {dataset} defaults"
        raise CliError(f"{where}: {err}") from None


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from negkit import benchmark, executor

    cfg = benchmark_config(args)
    df = executor.run_benchmark(
        cfg, args.run_dir, executor=args.executor, address=args.address, num_cpus=args.num_cpus,
        cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task, retries=args.retries,
        device=args.device, progress=not args.quiet, workers=args.workers)
    print(f"{len(df)} records in {Path(args.run_dir) / 'results.jsonl'}")
    if not args.quiet:
        print(benchmark.summary_table(df).to_string(index=False))
    for path in benchmark.write_summary(df, args.run_dir):
        print(f"wrote {path}")
    for line in benchmark.regime_warnings(df) + benchmark.coef_warnings(df):  # anything to undo? did λ move?
        print(f"warning: {line}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- clip-negation
CLIP_NOTEBOOK = "06_clip_negation"
_CLIP_FLAGS = ("model", "pretrained", "datasets", "control", "data_root", "data_source", "pool", "merge_methods",
               "threshold", "device", "num_workers")


def clip_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Notebook 06's parameters from the config file, ``-p`` pairs and flags (in rising precedence)."""
    params = {**load_config_file(args.config), **{k: _value(v) for k, v in (args.parameter or [])},
              **_flags(args, _CLIP_FLAGS)}
    if args.smoke:
        params["smoke"] = True
    run_dir = Path(args.run_dir).resolve()
    params.setdefault("run_dir", str(run_dir))
    params.setdefault("figures_dir", str(run_dir / "figures"))
    return params


def _cmd_clip_negation(args: argparse.Namespace) -> int:
    # The protocol is defined once, as library calls in notebook 06; the command runs that notebook, whose
    # first cells check every parameter (types, ranges, names) before any model or data is loaded.
    from negkit import notebook

    path = _notebook_path(CLIP_NOTEBOOK)
    params = clip_parameters(args)
    try:
        notebook.check_names(path, params)
    except ValueError as err:
        raise CliError(str(err)) from None
    output = Path(params["run_dir"]) / f"{CLIP_NOTEBOOK}.ipynb"
    notebook.execute(path, output, params, log_output=not args.quiet)
    print(f"records in {Path(params['run_dir']) / 'results.jsonl'}; table and figures in {params['figures_dir']}; "
          f"executed notebook {output}")
    return 0


# --------------------------------------------------------------------------- merge / negate
def _cmd_merge(args: argparse.Namespace) -> int:
    from negkit import merge

    values = load_config_file(args.config)
    method = args.method or values.pop("method", "negmerge")
    values.pop("method", None)
    options = values.pop("options", None) or {}
    if not isinstance(options, Mapping):
        raise CliError(f"merge config 'options' must be a mapping of option names to values, e.g. "
                       f"{{density: 0.2}}, got a {type(options).__name__}: {options!r:.80}")
    if not isinstance(method, str):
        raise CliError(f"merge config 'method' must be a rule name, got {method!r}")
    options = {**options, **_key_values(args.option, "--option")}
    pretrained = args.pretrained or values.pop("pretrained", None)
    values.pop("pretrained", None)
    if values:
        raise CliError(f"unknown merge config key(s) {sorted(values)}; valid keys are ['method', 'options', "
                       "'pretrained']")
    try:
        merge.get(method)
    except ValueError as err:
        raise CliError(str(err)) from None
    missing = [p for p in args.task_vectors if not Path(p).is_file()]
    if missing:
        raise CliError(f"task vector file(s) not found: {missing}")
    refuse_overwriting_inputs(args.output, [("a task vector", p) for p in args.task_vectors]
                              + [("--pretrained", pretrained)])
    if pretrained is not None and not Path(pretrained).is_file():
        raise CliError(f"--pretrained {pretrained} not found")
    if Path(args.output).suffix != ".safetensors":
        raise CliError(f"-o must name a .safetensors file, got {args.output}")
    try:
        out = merge.merge_files(args.task_vectors, method, pretrained=pretrained, out_path=args.output,
                                progress=not args.quiet, **options)
    except TypeError as err:  # an option the rule does not take
        raise CliError(f"merge rule {method!r}: {err}") from None
    print(f"{method} of {len(args.task_vectors)} task vectors -> {out}")
    return 0


def _cmd_negate(args: argparse.Namespace) -> int:
    from negkit import io
    from negkit.taskvec import TaskVector

    for flag, path in (("--model", args.model), ("--task-vector", args.task_vector)):
        if not Path(path).is_file():
            raise CliError(f"{flag} {path} not found")
    if Path(args.output).suffix != ".safetensors":
        raise CliError(f"-o must name a .safetensors file, got {args.output}")
    refuse_overwriting_inputs(args.output, [("--model", args.model), ("--task-vector", args.task_vector)])
    tv = TaskVector.load(args.task_vector)
    try:
        theta = tv.apply_to(io.load_state_dict(args.model), -args.coef)
    except (KeyError, ValueError) as err:
        raise CliError(f"cannot negate {args.task_vector} on {args.model}: {err}") from None
    io.save_state_dict(theta, args.output, metadata={
        "negated_from": str(args.model), "task_vector": str(args.task_vector), "coef": repr(float(args.coef))})
    print(f"θ_o − {args.coef:g}·τ -> {args.output}")
    return 0


# --------------------------------------------------------------------------- notebook
def _notebook_path(name: str) -> Path:
    from negkit.notebook import repo_root

    p = Path(name)
    if p.suffix == ".ipynb" and p.is_file():
        return p
    folder = repo_root() / "notebooks"
    hits = sorted(folder.glob(f"{p.stem}*.ipynb")) if folder.is_dir() else []
    exact = [h for h in hits if h.stem == p.stem]
    if exact or len(hits) == 1:
        return (exact or hits)[0]
    names = sorted(h.stem for h in folder.glob("*.ipynb")) if folder.is_dir() else []
    raise CliError(f"no notebook {name!r}" + (f" (matches {[h.stem for h in hits]})" if hits else "")
                   + f"; the notebooks are {names}")


def _cmd_notebook(args: argparse.Namespace) -> int:
    from negkit import notebook

    path = _notebook_path(args.name)
    params = {**load_config_file(args.config), **{k: _value(v) for k, v in (args.parameter or [])}}
    try:
        notebook.check_names(path, params)
    except ValueError as err:
        raise CliError(str(err)) from None
    output = Path(args.output or Path("runs") / "notebooks" / path.name)
    notebook.execute(path, output, params, log_output=not args.quiet)
    print(f"{path.name} ran; executed copy in {output}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``negkit`` argument parser (one subparser per command)."""
    parser = argparse.ArgumentParser(prog="negkit", description="negkit: machine unlearning by task-vector "
                                     "negation (NegMerge) and forget vectors, from the command line.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run 'negkit <command> --help' for a command's options and examples.")
    parser.add_argument("--version", action="version", version=_version())
    subs = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = _sub(subs, "benchmark", "Run the standard-classification protocol (Original, Retrain, pool, negation, "
             "baselines) and write its records.", """\
  negkit benchmark --smoke --run-dir runs/smoke
  negkit benchmark --smoke --run-dir runs/smoke-2 --workers 2
  negkit benchmark --smoke --run-dir runs/smoke-ray --executor ray
  negkit benchmark --dataset fashion_mnist --seeds 0 1 2 --run-dir runs/fashion --executor ray --num-cpus 8
  negkit benchmark --config bench.yaml --run-dir /shared/runs/digits --executor ray --address auto
A config file holds BenchmarkConfig fields (and 'dataset'), e.g.
  dataset: digits
  seeds: [0, 1]
  pool: {epochs: [4, 5]}
  merge_options: {ties: {density: 0.2}}
""")
    p.add_argument("--config", help="YAML/JSON file of BenchmarkConfig fields (flags override it)")
    p.add_argument("--dataset", help="dataset whose ready config is the base (digits, fashion_mnist, cifar10); "
                   "default: the file's 'dataset', else digits")
    p.add_argument("--smoke", action="store_true", help="the shrunken CI configuration (seconds on a CPU)")
    p.add_argument("--run-dir", required=True, help="folder of the run; rerunning it resumes")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (each redraws the split and retrains everything)")
    p.add_argument("--scenarios", nargs="+", help="e.g. random_10 class_3")
    p.add_argument("--data-root", help="folder of on-disk datasets")
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="who trains the units (default local)")
    p.add_argument("--workers", type=int, default=1,
                   help="local: processes running independent units at once, same records (default 1)")
    p.add_argument("--address", help="Ray cluster to join ('auto' or HEAD_IP:6379); default: start an embedded Ray")
    p.add_argument("--num-cpus", type=int, help="embedded Ray: CPUs it may use (default: all)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="Ray: CPUs per training unit (default 1)")
    p.add_argument("--gpus-per-task", type=float, default=0.0,
                   help="Ray: GPUs per unit, 0.25 packs four on a GPU (default 0)")
    p.add_argument("--retries", type=int, default=2, help="Ray: further attempts of a failed unit (default 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available; Ray units: cuda iff given GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no table")
    p.set_defaults(func=_cmd_benchmark)

    p = _sub(subs, "clip-negation", "CLIP task negation (notebook 06's protocol): fine-tune a pool per task, "
             "negate it merged and member by member, choose λ on validation, write the paper's table.", """\
  negkit clip-negation --smoke --run-dir runs/clip-smoke
  negkit clip-negation --datasets mnist svhn --data-root /data --device cuda --run-dir runs/clip
  negkit clip-negation --config clip.yaml -p finetuning_mode linear --run-dir runs/clip-linear
Every parameter of notebooks/06_clip_negation.ipynb can be set with -p NAME VALUE or in the config
file; a name the notebook does not declare is refused. The executed notebook is kept in the run dir.
""")
    p.add_argument("--config", help="YAML/JSON file of notebook 06 parameters (-p and flags override it)")
    p.add_argument("--run-dir", required=True, help="folder of fine-tunes, heads and records; rerunning resumes")
    p.add_argument("--smoke", action="store_true", help="a tiny offline CLIP on generated images (CI)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="any notebook 06 parameter, value read as YAML; repeatable")
    p.add_argument("--model", help="open_clip architecture (default ViT-B-32)")
    p.add_argument("--pretrained", help="open_clip weights tag (default openai)")
    p.add_argument("--datasets", nargs="+", help="tasks to forget (default: the paper's eight)")
    p.add_argument("--control", help="control task (default imagenet)")
    p.add_argument("--data-root", help="folder of the datasets (default data)")
    p.add_argument("--data-source", help="torchvision, imagefolder or hf (default torchvision)")
    p.add_argument("--pool", help="pool name (default paper)")
    p.add_argument("--merge-methods", nargs="+", help="merge rules (default negmerge mean ties magmax)")
    p.add_argument("--threshold", type=float, help="fraction of zero-shot control accuracy to keep (default 0.95)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default 8)")
    p.add_argument("--quiet", action="store_true", help="do not forward cell output")
    p.set_defaults(func=_cmd_clip_negation)

    p = _sub(subs, "merge", "Merge task vectors stored as safetensors files (streamed tensor by tensor).", """\
  negkit merge runs/digits/seed_0/class_3/task_vectors/*.safetensors --method negmerge -o negmerge.safetensors
  negkit merge ft/*.safetensors --pretrained zeroshot.safetensors --method ties --option density=0.2 -o ties.safetensors
  negkit merge tvs/*.safetensors --config merge.yaml -o merged.safetensors   # method:, options:, pretrained:
""")
    p.add_argument("task_vectors", nargs="+", metavar="TV", help="task vector files (or fine-tuned checkpoints "
                   "with --pretrained)")
    p.add_argument("--method", help="merge rule (default negmerge; see negkit.merge.list_methods())")
    p.add_argument("--pretrained", help="θ_pre checkpoint: the TVs are then fine-tuned checkpoints")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="rule option, repeatable")
    p.add_argument("--config", help="YAML/JSON file with method, options, pretrained")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_merge)

    p = _sub(subs, "negate", "Write θ = θ_o − λ·τ: a checkpoint with a task vector negated into it.", """\
  negkit negate --model runs/digits/seed_0/original/model.safetensors \\
                --task-vector negmerge.safetensors --coef 0.8 -o unlearned.safetensors
""")
    p.add_argument("--model", required=True, help="θ_o checkpoint (.safetensors)")
    p.add_argument("--task-vector", required=True, help="τ (.safetensors, e.g. from 'negkit merge')")
    p.add_argument("--coef", type=float, required=True, help="λ")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.set_defaults(func=_cmd_negate)

    p = _sub(subs, "notebook", "Run a notebook with papermill after checking its parameters.", """\
  negkit notebook 01_quickstart -p smoke true
  negkit notebook 02 -p dataset fashion_mnist -p run_dir runs/fashion -o runs/notebooks/02_fashion.ipynb
  negkit notebook notebooks/05_results.ipynb --config params.yaml
Values are read as YAML (true, 0.5, [1, 2]); a parameter the notebook does not declare is refused.
""")
    p.add_argument("name", help="notebook file, or its name (or unique prefix) under notebooks/")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), help="repeatable")
    p.add_argument("--config", help="YAML/JSON file of parameters (-p overrides it)")
    p.add_argument("-o", "--output", help="executed copy (default runs/notebooks/<name>.ipynb)")
    p.add_argument("--quiet", action="store_true", help="do not forward cell output")
    p.set_defaults(func=_cmd_notebook)
    return parser


def _version() -> str:
    from negkit import __version__

    return f"negkit {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``negkit`` and ``python -m negkit``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Quiet by default (warnings only, so progress bars stay on one line); -v brings the INFO messages back.
    logging.getLogger("negkit").setLevel(logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    from negkit.executor import UnitFailed
    from negkit.lock import RunDirLocked

    try:
        return func(args)
    except KeyboardInterrupt:
        sys.stderr.write(_interrupted(args, sys.argv[1:] if argv is None else list(argv)) + "\n")
        return 130
    except CliError as err:
        parser.exit(2, f"negkit {args.command}: error: {err}\n")
    except UnitFailed as err:
        parser.exit(1, f"negkit {args.command}: {err}\n")
    except (OSError, ValueError, ImportError, RunDirLocked) as err:  # messages say the fix (and name the path)
        parser.exit(2, f"negkit {args.command}: error: {err}\n")
    return 0


def _interrupted(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The one line Ctrl-C prints: how far a run got and the exact command that resumes it."""
    command = "negkit " + shlex.join(argv)
    if args.command == "benchmark":
        try:
            from negkit.benchmark import units as U

            cfg = benchmark_config(args)
            todo = U.training_units(cfg) + U.negation_units(cfg)
            done = sum(U.is_done(cfg, args.run_dir, u) for u in todo)
            return f"interrupted: {done} of {len(todo)} units done; resume with: {command}"
        except Exception:  # the line must come out whatever state the run dir is in
            pass
    return f"interrupted; finished work is kept, resume with: {command}"


if __name__ == "__main__":
    sys.exit(main())
