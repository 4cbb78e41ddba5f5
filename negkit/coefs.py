"""The choice of the negation coefficient λ in θ = θ_ori − λ τ.

* :func:`coef_grid`, :func:`select_coef`, :func:`sweep_coefs`: NegMerge (Kim et al., 2025,
  Sec. 4) and task arithmetic pick, among the λ that keep the control accuracy at least
  ``threshold`` x its reference (95 % of the original model's), the one with the lowest
  forget accuracy (rule ``"min_forget"``; ``"match"`` takes the forget accuracy closest to a
  target).
* :func:`search_coef`: the same choice without a fixed grid edge and with a fraction of the
  evaluations (range doubling, then bisection on the grid's step) -> :class:`CoefSearch`;
  :func:`negation_evaluator`: every λ of a call evaluated in one data pass.

:mod:`negkit.evaluate` re-exports every name here.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from negkit.evaluate import InputTransform, evaluate, resolve_device

__all__ = ["coef_grid", "select_coef", "sweep_coefs", "CoefSearch", "search_coef", "negation_evaluator",
           "check_threshold", "RULES", "MAX_GRID"]

#: Most coefficients a grid may hold: a finer grid is a typo (a step of 1e-9), not a search.
MAX_GRID = 100_000

RULES = ("min_forget", "match")


def check_threshold(threshold: float) -> None:
    """Raise ``ValueError`` unless ``threshold`` is a fraction in (0, 1] (95 suggests 0.95)."""
    if not (isinstance(threshold, numbers.Real) and 0.0 < threshold <= 1.0):
        hint = f"; did you mean {threshold / 100:g} (a fraction, not a percentage)?" if (
            isinstance(threshold, numbers.Real) and 1.0 < threshold <= 100.0) else ""
        raise ValueError(f"threshold must be a fraction in (0, 1] of the reference control accuracy, "
                         f"got {threshold!r}{hint}")


def _check_reference(control_reference: float) -> None:
    if not (isinstance(control_reference, numbers.Real) and math.isfinite(control_reference)
            and control_reference >= 0):
        raise ValueError(f"control_reference must be a finite accuracy ≥ 0 (the original model's control accuracy "
                         f"in %), got {control_reference!r}; was the reference evaluated on an empty set?")


def _check_coefs(coefs: Sequence[float]) -> None:
    for i, c in enumerate(coefs):
        if isinstance(c, bool) or not (isinstance(c, numbers.Real) and math.isfinite(c)):
            raise ValueError(f"coefs[{i}] must be a finite number, got {c!r}; build the candidates with "
                             f"negkit.evaluate.coef_grid(0, 1, 0.05)")


def _check_selection(threshold: float, control_reference: float, rule: str, target: float | None) -> None:
    """The arguments :func:`select_coef` and :func:`search_coef` share, checked before any work."""
    check_threshold(threshold)
    _check_reference(control_reference)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid rules are {list(RULES)}")
    if rule == "match" and not (isinstance(target, numbers.Real) and math.isfinite(target)):
        raise ValueError(f"rule='match' needs a finite target forget accuracy (%), got target={target!r}")


def _grid_size(start: float, stop: float, step: float) -> int:
    """Number of steps from ``start`` to ``stop`` (the grid has one more point); checks the inputs first."""
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value)):
            raise ValueError(f"coefficient grid: {name} must be a finite number, got {value!r}")
    if step <= 0 or stop < start:
        raise ValueError(f"need step > 0 and stop >= start; got start={start}, stop={stop}, step={step}")
    steps = (stop - start) / step
    if steps > MAX_GRID:
        raise ValueError(f"a step of {step:g} from {start:g} to {stop:g} gives {steps:.3g} coefficients "
                         f"(at most {MAX_GRID} allowed); use a coarser step, e.g. {(stop - start) / 100:g}")
    return int(math.floor(steps + 1e-9))


def coef_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.05) -> list[float]:
    """Evenly spaced coefficients from ``start`` to ``stop`` inclusive, rounded to 6 decimals.

    Raises:
        ValueError: A non-finite bound, ``step`` not positive, ``stop < start``, or more
            than :data:`MAX_GRID` coefficients (checked before anything is allocated).
    """
    n = _grid_size(start, stop, step)
    return [round(start + i * step, 6) for i in range(n + 1)]


def select_coef(coefs: Sequence[float], forget_acc: Sequence[float], control_acc: Sequence[float],
                control_reference: float, threshold: float = 0.95, *, rule: str = "min_forget",
                target: float | None = None) -> float | None:
    """The λ with the lowest forget accuracy among those that keep control accuracy.

    A coefficient qualifies when ``control_acc >= threshold * control_reference``.
    Ties in forget accuracy go to the smaller coefficient (the gentler edit).

    Args:
        coefs: Candidate coefficients.
        forget_acc: Forget (target-task) accuracy at each coefficient.
        control_acc: Control accuracy at each coefficient.
        control_reference: Control accuracy of the reference (original) model.
        threshold: Fraction of the reference control accuracy to keep.
        rule: ``"min_forget"`` (above) or ``"match"``: the qualifying λ whose forget
            accuracy is closest to ``target`` (ties: smaller λ).
        target: Forget accuracy to match (``rule="match"`` only).

    Returns:
        The selected coefficient, or None when none qualifies.

    Raises:
        ValueError: The sequences differ in length or are empty; a NaN/Inf coefficient; a
            threshold outside (0, 1]; a negative or non-finite reference; an unknown rule or
            a missing target.
    """
    _check_selection(threshold, control_reference, rule, target)
    if not len(coefs) == len(forget_acc) == len(control_acc):
        raise ValueError(f"coefs, forget_acc and control_acc must have equal lengths; got "
                         f"{len(coefs)}, {len(forget_acc)}, {len(control_acc)}")
    if not len(coefs):
        raise ValueError("no coefficients to select from; pass e.g. negkit.evaluate.coef_grid(0, 1, 0.05)")
    _check_coefs(coefs)
    best = None
    for c, f, k in zip(coefs, forget_acc, control_acc):
        if not (k >= threshold * control_reference) or math.isnan(f):
            continue
        score = f if rule == "min_forget" else abs(f - target)
        if best is None or score < best[1] or (score == best[1] and c < best[0]):
            best = (float(c), float(score))
    return None if best is None else best[0]


def sweep_coefs(build_model: Callable[[float], nn.Module], coefs: Sequence[float],
                eval_sets: Mapping[str, Dataset | DataLoader], *, device: str | torch.device | None = None,
                batch_size: int = 256, input_transform: InputTransform | None = None,
                progress: bool = True) -> pd.DataFrame:
    """Accuracy of ``build_model(coef)`` on every evaluation set, for every coefficient.

    Args:
        build_model: Returns the model edited with coefficient λ (e.g. θ_ori − λ τ loaded in a model).
        coefs: Coefficients to try (see :func:`coef_grid`).
        eval_sets: Split name -> dataset, e.g. ``{"val_forget": ..., "val_control": ...}``.
        device: Where to evaluate.
        batch_size: Evaluation batch size.
        input_transform: Passed to :func:`predict`.
        progress: Show a tqdm bar over coefficients.

    Returns:
        A tidy DataFrame with columns ``coef``, ``split``, ``acc`` (%).
    """
    rows = []
    for coef in tqdm(list(coefs), desc="λ sweep", disable=not progress):
        model = build_model(float(coef))
        for split, data in eval_sets.items():
            res = evaluate(model, data, device=device, batch_size=batch_size, input_transform=input_transform)
            rows.append({"coef": float(coef), "split": split, "acc": res["acc"]})
    return pd.DataFrame(rows, columns=["coef", "split", "acc"])


@dataclasses.dataclass(frozen=True)
class CoefSearch:
    """Outcome of :func:`search_coef`.

    Attributes:
        coef: The chosen λ (None: no evaluated λ keeps the control accuracy).
        curve: Every evaluated λ as tidy rows ``coef, split, acc`` (%), sorted by coef
            (every split the evaluator returns, not only forget and control).
        n_evaluated: Distinct λ evaluated.
        searched: ``(lowest, highest)`` λ of the range searched (the grid the search stands for).
        hit_max: The range stopped growing at ``max_coef`` while control was still admissible
            there: a larger λ might be better.
        exhaustive: Every λ of the searched grid was evaluated.
    """

    coef: float | None
    curve: pd.DataFrame
    n_evaluated: int
    searched: tuple[float, float]
    hit_max: bool
    exhaustive: bool


def search_coef(evaluate_coefs: Callable[[Sequence[float]], Mapping[str, Sequence[float]]],
                control_reference: float, *, threshold: float = 0.95, step: float = 0.05,
                start: float = 0.0, stop: float = 1.0, max_coef: float = 8.0,
                forget_split: str = "val_forget", control_split: str = "val_control",
                rule: str = "min_forget", target: float | None = None,
                exhaustive: bool = False) -> CoefSearch:
    """Choose λ on the grid ``start, start+step, …`` with a fraction of the evaluations.

    The answer is the one :func:`select_coef` would give on the whole grid, found with
    far fewer evaluations when the curves behave:

    1. **Range.** ``[start, stop]`` grows upward, its width doubling (0..1, 0..2, 0..4,
       0..8 by default), while the control accuracy at the top is still admissible
       (≥ ``threshold`` × reference) and the top is below ``max_coef``. Stopping at
       ``max_coef`` with control still admissible sets ``hit_max``.
    2. **Bisection.** Between two evaluated neighbours a < b, forget and control
       accuracy are assumed to fall monotonically with λ, so every grid point inside is
       bounded by the neighbours' values. A gap is split at its middle only while some
       point in it could still beat the best evaluated λ (be admissible and reach a
       lower forget accuracy — or, with ``rule="match"``, one closer to ``target`` — or
       tie it at a smaller λ). On monotone curves this locates the admissible boundary
       by bisection on the grid's step.
    3. **Checks.** Where two evaluated neighbours contradict monotonicity (accuracy
       rising with λ), every grid point between them is evaluated.

    Each round's λ go to ``evaluate_coefs`` in one call (one data pass with
    :func:`negation_evaluator`).

    Args:
        evaluate_coefs: ``coefs -> {split: [acc % per coef]}`` for every split it knows.
        control_reference: Control accuracy (%) of the reference (original) model.
        threshold: Fraction of ``control_reference`` an admissible λ keeps.
        step: Grid step.
        start: Lowest λ.
        stop: Top of the initial range.
        max_coef: The range never grows past this.
        forget_split: Split whose accuracy is minimised (or matched).
        control_split: Split that decides admissibility.
        rule: ``"min_forget"`` (lowest forget accuracy; ties: smaller λ) or ``"match"``
            (forget accuracy closest to ``target``; ties: smaller λ — e.g. random
            forgetting with target = the held-out validation accuracy).
        target: Forget accuracy to match (``rule="match"`` only).
        exhaustive: Evaluate every grid point of the (grown) range instead of bisecting.

    Returns:
        A :class:`CoefSearch`.

    Raises:
        ValueError: A bad threshold, reference, grid (``start`` < 0), rule or target, or an evaluator
            that omits a split or returns the wrong number of values.
    """
    _check_selection(threshold, control_reference, rule, target)
    if rule != "match" and target is not None:
        raise ValueError(f"target is only used by rule='match'; got rule={rule!r}, target={target!r}")
    if not (isinstance(start, numbers.Real) and math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be a finite λ ≥ 0 (negation subtracts λτ; a negative λ adds the task "
                         f"back), got start={start!r}")
    if max_coef < stop:
        raise ValueError(f"max_coef ({max_coef:g}) must be >= stop ({stop:g})")
    n_max = _grid_size(start, max_coef, step)
    n_top = _grid_size(start, stop, step)
    lam = lambda i: round(start + i * step, 6)  # noqa: E731 - the grid, as coef_grid spells it
    bound = threshold * control_reference
    acc: dict[int, dict[str, float]] = {}

    def run(indices: Sequence[int]) -> None:
        todo = sorted(set(indices) - set(acc))
        if not todo:
            return
        coefs = [lam(i) for i in todo]
        res = evaluate_coefs(coefs)
        for split in (forget_split, control_split):
            if split not in res:
                raise ValueError(f"evaluate_coefs returned splits {sorted(res)}, without {split!r}; "
                                 f"pass forget_split/control_split naming splits it evaluates")
        for split, values in res.items():
            if len(values) != len(coefs):
                raise ValueError(f"evaluate_coefs returned {len(values)} {split!r} accuracies for "
                                 f"{len(coefs)} coefficients")
        for k, i in enumerate(todo):
            acc[i] = {split: float(values[k]) for split, values in res.items()}

    def admissible(i: int) -> bool:
        return acc[i][control_split] >= bound

    # 1. Range: grow while the top is admissible.
    run(range(n_top + 1) if exhaustive else (0, n_top))
    while admissible(n_top) and n_top < n_max:
        new_top = min(max(2 * n_top, 1), n_max)
        run(range(n_top + 1, new_top + 1) if exhaustive else (new_top,))
        n_top = new_top
    hit_max = n_top == n_max and admissible(n_top)

    # 2-3. Refine between evaluated neighbours until no gap can hold a better λ.
    def score(i: int) -> float:
        f = acc[i][forget_split]
        return f if rule == "min_forget" else abs(f - target)

    while not exhaustive:
        pts = sorted(i for i in acc if i <= n_top)
        cands = [i for i in pts if admissible(i) and not math.isnan(acc[i][forget_split])]
        best = min(cands, key=lambda i: (score(i), i)) if cands else None
        todo: list[int] = []
        ties: list[int] = []  # gaps that could only tie the best: probed once nothing can beat it
        for a, b in zip(pts, pts[1:]):
            if b - a < 2:
                continue
            fa, fb = acc[a][forget_split], acc[b][forget_split]
            ca, cb = acc[a][control_split], acc[b][control_split]
            if not (fa >= fb and ca >= cb):  # not monotone here (or NaN): evaluate the bracket
                todo += range(a + 1, b)
                continue
            if ca < bound:  # control inside is ≤ ca: nothing admissible
                continue
            if rule == "min_forget":
                lower = fb
            else:
                lower = 0.0 if fb <= target <= fa else min(abs(fa - target), abs(fb - target))
            if best is None or lower < score(best):
                todo.append((a + b) // 2)
            elif lower == score(best) and a + 1 < best:
                # Only a tie at a smaller λ is possible. Right below the best λ, the left
                # neighbour settles it in one evaluation (a higher forget accuracy there
                # bounds the whole gap); elsewhere, bisect for the plateau's start.
                ties.append(b - 1 if b == best and rule == "min_forget" else (a + b) // 2)
        if not (todo or ties):
            break
        run(todo or ties)

    coefs = sorted(acc)
    splits = list(acc[coefs[0]])
    curve = pd.DataFrame([{"coef": lam(i), "split": s, "acc": acc[i][s]} for i in coefs for s in splits],
                         columns=["coef", "split", "acc"])
    chosen = select_coef([lam(i) for i in coefs], [acc[i][forget_split] for i in coefs],
                         [acc[i][control_split] for i in coefs], control_reference, threshold,
                         rule=rule, target=target)
    return CoefSearch(coef=chosen, curve=curve, n_evaluated=len(coefs), searched=(lam(0), lam(n_top)),
                      hit_max=hit_max, exhaustive=exhaustive)


# ------------------------------------------------------- every λ of a sweep in one data pass
def negation_evaluator(model: nn.Module, tau: Mapping[str, torch.Tensor], eval_sets: Mapping[str, Dataset],
                       *, device: str | torch.device | None = None, batch_size: int = 256, chunk: int = 8,
                       progress: bool = False) -> Callable[[Sequence[float]], dict[str, list[float]]]:
    """An evaluator of θ(λ) = θ_o − λ·τ that reads each batch once for all λ of a call.

    θ_o is ``model``'s current state. For every batch of every evaluation set, the λ of
    the call are evaluated in chunks of ``chunk``: each λ's parameters are built as
    ``θ_o − λ·τ`` (the arithmetic of :meth:`negkit.taskvec.TaskVector.apply_to`, so the
    numbers equal :func:`evaluate` on the loaded model to float round-off) and run with
    ``torch.func.functional_call`` — the weights of ``model`` are never overwritten.
    Decoding and transforming images (CLIP's ImageFolder datasets) then happens once
    per call instead of once per λ. Memory: ``chunk`` extra copies of the τ-covered
    parameters.

    Args:
        model: The original model θ_o (put in eval mode; moved to ``device``).
        tau: Task vector (name -> tensor, a :class:`~negkit.taskvec.TaskVector` works); keys
            must be entries of ``model.state_dict()``.
        eval_sets: Split name -> dataset of ``(image, label)`` items (or a DataLoader).
        device: Where to evaluate (None: cuda if available).
        batch_size: Batch size of the data passes.
        chunk: λ whose parameters are materialised at once.
        progress: Show a tqdm bar over each split's batches.

    Returns:
        ``evaluate_coefs(coefs) -> {split: [accuracy % per coef]}`` (see :func:`search_coef`).

    Raises:
        ValueError: ``tau`` has keys or shapes ``model`` lacks, ``chunk < 1``, or an empty set.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (λ materialised at once), got {chunk}")
    device = resolve_device(device)
    model = model.to(device).eval()
    state = model.state_dict(keep_vars=True)
    vector = getattr(tau, "vector", tau)
    missing = [k for k in vector if k not in state]
    if missing:
        raise ValueError(f"task vector key {missing[0]!r} is not in the model ({len(missing)} such keys); "
                         f"was τ made from this architecture?")
    for k, t in vector.items():
        if tuple(t.shape) != tuple(state[k].shape):
            raise ValueError(f"shape mismatch for {k!r}: τ {tuple(t.shape)} vs model {tuple(state[k].shape)}")
    base = {k: state[k].detach() for k in vector}
    vec = {k: t.detach().to(device=device, dtype=base[k].dtype) for k, t in vector.items()}
    loaders = {split: data if isinstance(data, DataLoader) else DataLoader(
        data, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
        for split, data in eval_sets.items()}

    @torch.no_grad()
    def evaluate_coefs(coefs: Sequence[float]) -> dict[str, list[float]]:
        coefs = [float(c) for c in coefs]
        out: dict[str, list[float]] = {}
        for split, loader in loaders.items():
            correct, n = torch.zeros(len(coefs), dtype=torch.long), 0
            for images, targets in tqdm(loader, desc=f"λ×{len(coefs)} {split}", disable=not progress,
                                        leave=False):
                images = images.to(device, non_blocking=True)
                targets = torch.as_tensor(targets, dtype=torch.long).to(device)
                for lo in range(0, len(coefs), chunk):
                    params = [{k: torch.add(base[k], vec[k], alpha=-c) for k in vec}
                              for c in coefs[lo:lo + chunk]]
                    for j, p in enumerate(params):
                        logits = torch.func.functional_call(model, p, (images,))
                        correct[lo + j] += int((logits.argmax(1) == targets).sum())
                n += int(targets.numel())
            if n == 0:
                raise ValueError(f"evaluation set {split!r} is empty")
            out[split] = (100.0 * correct.double() / n).tolist()
        return out

    return evaluate_coefs
