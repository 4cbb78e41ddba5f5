"""What every notebook of the kit needs before its first real cell, and a safe way to run one.

* :func:`check_parameters` — the ``parameters`` cell's values pass through one validator:
  types and ranges, booleans and lists given as strings (papermill's ``-p smoke false``,
  ``-p fv_classes "[3, 5]"``), paths resolved against the repository root, names papermill
  injected but the notebook does not take refused, and ``smoke`` shrinking only what the user
  did not set.
* :func:`set_threads` — the kit's thread policy in one call (one intra-op thread by default:
  the kit's default models are tiny, and threads fighting over a few cores are slower).
* :func:`repo_root` / :func:`resolve_path` — ``runs/digits`` means the same folder whether the
  kernel starts in the repository (papermill, ``make demo``) or in ``notebooks/`` (JupyterLab).
* :func:`execute` — papermill with the parameters checked against the notebook's
  ``parameters`` cell (papermill's own inspection) before a kernel starts, and without the
  kernel's start-up noise ("running over TCP without encryption" on a local connection).

A notebook's first cells::

    # parameters
    smoke = False
    dataset = "digits"
    run_dir = "runs/{dataset}"
    draws = 5

    params = notebook.check_parameters(globals(), {
        "smoke": bool, "dataset": str, "run_dir": Path, "draws": notebook.Param(int, min=1)},
        smoke_values={"draws": 2})
    notebook.set_threads()
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import logging
import math
import os
import string
from pathlib import Path
from typing import Any, Iterable, Mapping, MutableMapping, Sequence

__all__ = ["Param", "check_parameters", "pick", "injected_parameters", "set_threads", "repo_root", "resolve_path",
           "notebook_parameters", "check_names", "execute", "KERNEL_ARGUMENTS"]

logger = logging.getLogger(__name__)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
# IPython keeps the source of every executed cell in ``In``; papermill's injected cell starts so.
_INJECTED_HEADER = "# Parameters"
#: Extra command-line arguments of the kernels :func:`execute` starts: start-up log at ERROR only.
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)


@dataclasses.dataclass(frozen=True)
class Param:
    """What one notebook parameter accepts.

    Attributes:
        kind: ``bool``, ``int``, ``float``, ``str``, ``pathlib.Path`` (a path resolved against the
            repository root, returned as ``str``; ``{name}`` placeholders are filled from the other
            parameters), ``list`` (then ``items`` says what each element is) or ``dict``.
        min: Smallest allowed value (numbers; for lists: each item).
        max: Largest allowed value.
        choices: Allowed values (for lists: of each item).
        items: Kind of a list's elements.
        optional: Whether ``None`` is allowed (also given as the string ``"None"``).
        min_len: Fewest elements of a list.
    """

    kind: type = str
    min: float | None = None
    max: float | None = None
    choices: Sequence[Any] | None = None
    items: type | None = None
    optional: bool = False
    min_len: int = 0


def _as_param(spec: type | Param) -> Param:
    return spec if isinstance(spec, Param) else Param(spec)


def _kind_name(kind: type) -> str:
    return {bool: "a boolean (True/False)", int: "an integer", float: "a number", str: "a string",
            Path: "a path", list: "a list", dict: "a dict"}.get(kind, kind.__name__)


def _scalar(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind``, accepting the strings papermill's command line passes through."""
    bad = ValueError(f"notebook parameter {name!r} must be {_kind_name(kind)}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(out):  # NaN passes every min/max comparison
            raise ValueError(f"notebook parameter {name!r} must be a finite number, got {value!r}")
        return out
    if kind in (str, Path):
        if isinstance(value, (str, Path)):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # papermill turns `-p scenario 3` into an int
        raise bad
    raise TypeError(f"notebook parameter {name!r}: unsupported kind {kind!r}; use bool, int, float, str, Path or list")


def _check_range(name: str, value: Any, p: Param) -> None:
    if p.choices is not None and value not in p.choices:
        raise ValueError(f"notebook parameter {name!r} must be one of {list(p.choices)}, got {value!r}")
    if p.min is not None and value < p.min:
        raise ValueError(f"notebook parameter {name!r} must be ≥ {p.min}, got {value!r}")
    if p.max is not None and value > p.max:
        raise ValueError(f"notebook parameter {name!r} must be ≤ {p.max}, got {value!r}")


def _coerce(name: str, value: Any, p: Param) -> Any:
    if value is None or (p.optional and isinstance(value, str) and value.strip() == "None"):
        if p.optional:
            return None
        raise ValueError(f"notebook parameter {name!r} must be {_kind_name(p.kind)}, got None")
    if p.kind is dict:
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value.strip() or "{}")
            except (ValueError, SyntaxError):
                raise ValueError(f"notebook parameter {name!r}: cannot read {value!r} as a dict; write it as "
                                 f"\"{{'key': 1}}\" (or pass it with papermill -y 'name: {{key: 1}}')") from None
        if not isinstance(value, dict):
            raise ValueError(f"notebook parameter {name!r} must be a dict, got {value!r}")
        return value
    if p.kind is list:
        if isinstance(value, str):
            text = value.strip()
            if text[:1] in "[(":
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise ValueError(f"notebook parameter {name!r}: cannot read {value!r} as a list; write it "
                                     f"as \"[3, 5]\" or \"3,5\" (or pass lists with papermill -y 'name: [3, 5]')"
                                     ) from None
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `-p classes 3` means the list [3]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"notebook parameter {name!r} must be a list, got {value!r}")
        out = [_scalar(f"{name}[{i}]", v, p.items) if p.items else v for i, v in enumerate(value)]
        for i, v in enumerate(out):
            _check_range(f"{name}[{i}]", v, p)
        if len(out) < p.min_len:
            raise ValueError(f"notebook parameter {name!r} needs at least {p.min_len} element(s), got {out!r}")
        return out
    out = _scalar(name, value, p.kind)
    _check_range(name, out, p)
    return out


def injected_parameters(namespace: Mapping[str, Any]) -> set[str]:
    """Names papermill injected into this kernel (its ``# Parameters`` cell), read from IPython's ``In``.

    Empty in JupyterLab, where nobody injects anything.
    """
    names: set[str] = set()
    for src in namespace.get("In", []) or []:
        if isinstance(src, str) and src.lstrip().startswith(_INJECTED_HEADER):
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _unknown_message(unknown: Iterable[str], known: Iterable[str], where: str) -> str:
    known = sorted(known)
    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown notebook parameter(s) {', '.join(parts)} for {where}; it takes: {', '.join(known)}"


def _fill(name: str, template: str, values: Mapping[str, Any]) -> str:
    """``template`` with each ``{param}`` replaced; nothing else in braces is evaluated.

    ``str.format`` would follow ``{d.__class__}`` or ``{d[0]}`` into the values' attributes;
    here a placeholder must be a bare parameter name (``{{``/``}}`` stay literal braces).
    """
    out = []
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"notebook parameter {name!r}={template!r}: {err}; "
                         f"write literal braces as {{{{ }}}}") from None
    for literal, field, spec, conversion in parts:
        out.append(literal)
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion or field not in values:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(f"notebook parameter {name!r}={template!r} names {shown!r} in braces, which is not "
                             f"a parameter; placeholders can be {sorted(values)} (bare names only)")
        out.append(str(values[field]))
    return "".join(out)


def check_parameters(namespace: MutableMapping[str, Any], spec: Mapping[str, type | Param], *,
                     smoke_values: Mapping[str, Any] | None = None, root: str | Path | None = None) -> dict[str, Any]:
    """Check, convert and complete a notebook's parameters, writing them back into ``namespace``.

    Call it right after the ``parameters`` cell with ``globals()``. Strings from the command
    line become the declared kind (``"false"`` → False, ``"[3, 5]"`` or ``"3,5"`` → [3, 5]);
    ``Path`` parameters have their ``{name}`` placeholders filled (``"runs/{dataset}"``) and are
    resolved against :func:`repo_root`. With ``smoke`` true, ``smoke_values`` replace the
    parameters the user did not pass to papermill; the ones they did pass are kept.

    Args:
        namespace: The notebook's globals (read and updated in place).
        spec: Parameter name → kind or :class:`Param`, one entry per name of the ``parameters`` cell.
        smoke_values: Values of the shrunken run (``smoke=True``), applied to parameters not set by the user.
        root: Folder relative paths are resolved against (default: :func:`repo_root`).

    Returns:
        The checked parameters (also written into ``namespace``).

    Raises:
        ValueError: A value of the wrong kind or out of range, or a name papermill injected that the
            notebook does not take — the message names the parameter and what it accepts.
    """
    injected = injected_parameters(namespace)
    unknown = injected - set(spec)
    if unknown:
        raise ValueError(_unknown_message(unknown, spec, "this notebook"))
    missing = [n for n in spec if n not in namespace]
    if missing:
        raise ValueError(f"the parameters cell does not define {missing}; add them there or drop them from the spec")
    params = {n: _as_param(s) for n, s in spec.items()}
    values = {n: _coerce(n, namespace[n], p) for n, p in params.items()}
    if smoke_values and values.get("smoke"):
        for name, value in smoke_values.items():
            if name not in params:
                raise ValueError(f"smoke_values names {name!r}, which is not a parameter of this notebook")
            if name in injected:
                logger.info("smoke=True keeps %s=%r, which was passed explicitly", name, values[name])
            else:
                values[name] = _coerce(name, value, params[name])
    base = Path(root) if root is not None else repo_root()
    plain = {n: v for n, v in values.items() if params[n].kind is not Path}
    for name, p in params.items():
        if p.kind is Path and values[name] is not None:
            filled = _fill(name, values[name], plain)
            values[name] = str(resolve_path(filled, base))
    namespace.update(values)
    return values


def pick(options: Sequence[Any], index: int, name: str) -> Any:
    """``options[index]``, refusing an index past the end with a message naming the parameter.

    A notebook parameter such as ``member_index`` is checked against a list only known after
    some work (the pool's members); this says which values are valid instead of clamping.

    Raises:
        ValueError: ``index`` is not in ``0 … len(options) - 1``.
    """
    if not 0 <= index < len(options):
        listed = ", ".join(f"{i}: {o}" for i, o in enumerate(options))
        raise ValueError(f"{name}={index} is out of range: there are {len(options)} ({listed}); "
                         f"pass {name} between 0 and {len(options) - 1}")
    return options[index]


def set_threads(threads: int | None = None) -> int:
    """The kit's thread policy: ``threads`` intra-op threads, by default ``$OMP_NUM_THREADS`` or 1.

    One thread is the fastest setting for the kit's small default models on a few cores
    (several threads on the same cores fight: a 3-epoch fit took 57 s with 2 threads on a busy
    2-core machine, 6.7 s with 1). The environment variables are set as well, so DataLoader
    workers and subprocesses follow.

    Returns:
        The number of threads now used by torch.
    """
    import torch

    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else 1
    if int(threads) < 1:
        raise ValueError(f"threads must be ≥ 1, got {threads}")
    threads = int(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    return threads


def _is_checkout(folder: Path) -> bool:
    try:
        return (folder / "negkit" / "__init__.py").is_file() and "negkit" in (folder / "pyproject.toml").read_text()
    except OSError:
        return False


def repo_root(start: str | Path | None = None) -> Path:
    """The negkit checkout the notebook belongs to.

    The first folder, from ``start`` (default: the working directory) upwards, that holds
    ``pyproject.toml`` and ``negkit/``; otherwise the checkout negkit was installed from
    (editable install); otherwise the working directory itself.
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_checkout(folder):
            return folder
    installed = Path(__file__).resolve().parents[1]
    return installed if _is_checkout(installed) else here


def resolve_path(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` made absolute: ``~`` expanded, relative paths taken from ``root`` (default :func:`repo_root`)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root if root is not None else repo_root()) / p


def notebook_parameters(path: str | Path) -> dict[str, dict]:
    """The parameters a notebook's ``parameters`` cell declares (papermill's inspection): name → info."""
    from papermill.inspection import inspect_notebook

    return inspect_notebook(str(path))


def check_names(path: str | Path, parameters: Mapping[str, Any]) -> None:
    """Refuse parameters the notebook at ``path`` does not declare (papermill only warns about them).

    Raises:
        ValueError: naming each unknown parameter, the closest declared name and the full list.
    """
    declared = notebook_parameters(path)
    if not declared:
        raise ValueError(f"{path} has no cell tagged 'parameters'; it cannot take {sorted(parameters)}")
    unknown = set(parameters) - set(declared)
    if unknown:
        raise ValueError(_unknown_message(unknown, declared, str(path)))


def execute(notebook: str | Path, output: str | Path, parameters: Mapping[str, Any] | None = None, *,
            cwd: str | Path | None = None, kernel_name: str = "python3", log_output: bool = False,
            progress_bar: bool = False, execution_timeout: float | None = None) -> Any:
    """Run a notebook with papermill after refusing parameters it does not declare.

    The kernel's own start-up log is limited to errors (:data:`KERNEL_ARGUMENTS`): ipykernel
    otherwise warns "Kernel is running over TCP without encryption" once per notebook, about
    a connection that never leaves this machine. Warnings raised by the notebook's code still
    show in its cells.

    Args:
        notebook: The notebook to run.
        output: Where the executed copy goes (its folder is created).
        parameters: Values for the ``parameters`` cell.
        cwd: Working directory of the kernel (default: :func:`repo_root`).
        kernel_name: Jupyter kernel.
        log_output: Forward cell output to the log.
        progress_bar: Show papermill's per-cell bar.
        execution_timeout: Seconds one cell may run (None: no limit). A bound turns the rare
            lost-reply hang of nbclient with widget outputs into an error instead of a wait forever.

    Returns:
        The executed notebook (``nbformat`` node).
    """
    import papermill

    parameters = dict(parameters or {})
    check_names(notebook, parameters)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(
        str(notebook), str(output), parameters=parameters, kernel_name=kernel_name,
        cwd=str(cwd or repo_root()), log_output=log_output, progress_bar=progress_bar,
        execution_timeout=execution_timeout, extra_arguments=list(KERNEL_ARGUMENTS))
