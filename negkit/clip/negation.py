"""Task negation on CLIP's image encoder: θ = θ_pre − λ·τ, λ chosen on validation data.

Protocol of the task-vector papers (Ilharco et al. 2023, Sec. 3; NegMerge, Kim et
al. 2025, Sec. 5.2): τ is a single fine-tune's task vector (Task Arithmetic) or
the merge of a pool of them (NegMerge and other rules of :mod:`negkit.merge`).
The negated encoder is evaluated on {dataset}Val (forget accuracy, to be
minimised) and ImageNetVal (control accuracy); the chosen λ is the one with the
lowest forget accuracy among those keeping the control accuracy ≥ 95 % of the
zero-shot model's. By default λ is chosen, as in the NegMerge release, from the
exhaustive grid λ ∈ linspace(0, 1, 21) (``coef_search="grid"``, ``coef_max=1``).
``coef_search="adaptive"`` with a larger ``coef_max`` is the kit's option: the range
0..1 grows by doubling while control holds, then bisection (:func:`negkit.evaluate.search_coef`);
every candidate's ``n_coefs`` and ``coef_max_searched`` records say which grid its result
stands for (their ``note``: ``"grid: linspace(0, 1, 21)"`` for the release's). Every λ of
a round is evaluated in one pass over the images (:func:`negkit.evaluate.negation_evaluator`),
so each image is decoded once per round, not once per λ. Test accuracies on the forget
task and on ImageNet at that λ are reported beside the zero-shot model's.

Every number is a :class:`negkit.results.Record` (setting ``"clip"``, scenario
``"task"``) appended to a :class:`~negkit.results.ResultsLog` as soon as it is
measured; a rerun skips what the log already holds. Zero-shot accuracies are
measured once and reused for every λ = 0 and for every forget dataset's control
rows; heads come from the on-disk cache of :mod:`negkit.clip.heads`.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch.utils.data import DataLoader

import negkit.merge
from negkit import io as nkio
from negkit.clip.heads import get_head
from negkit.clip.linearize import check_finetuning_mode
from negkit.clip.model import ClipBackbone, ImageClassifier
from negkit.data import DatasetBundle
from negkit.coefs import CoefSearch, check_threshold, coef_grid, negation_evaluator, search_coef, select_coef
from negkit.evaluate import evaluate, resolve_device
from negkit.lock import locks_run_dir
from negkit.results import Record, ResultsLog
from negkit.taskvec import TaskVector

__all__ = ["visual_task_vectors", "save_task_vectors", "run_task_negation", "paper_table", "model_label", "SPLITS",
           "NO_COEF_NOTE"]

log = logging.getLogger(__name__)

SPLITS = ("val_forget", "val_control", "test_forget", "test_control")
NO_COEF_NOTE = "no admissible coefficient: control accuracy below the threshold at every λ"
EDGE_NOTE = "λ search reached its maximum with control still admissible"
VAL_SPLITS = ("val_forget", "val_control")


def visual_task_vectors(pretrained: Mapping[str, torch.Tensor], finetuned: Mapping[str, str | os.PathLike]
                        ) -> dict[str, TaskVector]:
    """τ_i = θ_ft,i − θ_pre over the image encoder, for every fine-tune.

    Args:
        pretrained: ``backbone.visual_state_dict()``.
        finetuned: Member name -> its ``visual.safetensors``.
    """
    return {name: TaskVector.from_state_dicts(pretrained, nkio.load_state_dict(path))
            for name, path in finetuned.items()}


def save_task_vectors(backbone: ClipBackbone, finetuned: Mapping[str, str | os.PathLike],
                      out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write τ_i = θ_ft,i − θ_pre of every fine-tune to ``out_dir/<name>.safetensors`` (one at a time).

    The files feed the streaming analyses of :mod:`negkit.analysis` (sign consensus,
    pairwise agreement); existing files are kept.

    Returns:
        Member name -> task-vector file.
    """
    pre = {k: v.cpu() for k, v in backbone.visual_state_dict().items()}
    out = {}
    for name, path in finetuned.items():
        dest = Path(out_dir) / f"{name}.safetensors"
        if not dest.exists():
            tau = TaskVector.from_state_dicts(pre, nkio.load_state_dict(path))
            tau.save(dest, architecture=backbone.model_name, pretrained=backbone.pretrained,
                     metadata={"part": "visual", "finetuned_file": str(path)})
        out[name] = dest
    return out


def model_label(backbone: ClipBackbone, finetuning_mode: str = "standard") -> str:
    """The ``model`` of result rows: ``backbone.name``, plus ``"+linear"`` for the linearised model."""
    return backbone.name if check_finetuning_mode(finetuning_mode) == "standard" else f"{backbone.name}+linear"


class _Negator:
    """One copy of the image encoder, shared by a forget and a control classifier.

    In linear mode the copy is wrapped in :class:`~negkit.clip.linearize.LinearizedModel`
    around θ_pre, so θ_pre − λτ is evaluated as f(x; θ_pre) − λ·J τ (the reference
    negates the linearised model, never the non-linear one).
    """

    def __init__(self, backbone: ClipBackbone, forget_head: torch.nn.Module, control_head: torch.nn.Module,
                 device: torch.device, finetuning_mode: str = "standard") -> None:
        forget = ImageClassifier.from_backbone(backbone, forget_head, finetuning_mode=finetuning_mode)
        self.forget = forget.to(device).eval()
        self.control = ImageClassifier(forget.visual, control_head, backbone.mean, backbone.std).to(device).eval()
        self.encoder = forget.encoder
        self.pre = {k: v.to(device) for k, v in backbone.visual_state_dict().items()}

    @torch.no_grad()
    def set(self, tau: TaskVector | None, coef: float) -> None:
        """Load θ_pre − coef·τ into the shared encoder."""
        sd = self.pre if tau is None else tau.apply_to(self.pre, coef=-coef)
        self.encoder.load_state_dict(sd)


@locks_run_dir(lambda a: a["results"].path.parent)  # the run dir is the results log's folder
def run_task_negation(
    backbone: ClipBackbone,
    forget: DatasetBundle,
    control: DatasetBundle,
    finetuned: Mapping[str, str | os.PathLike],
    results: ResultsLog,
    *,
    methods: Sequence[str] = ("negmerge",),
    single: bool = True,
    merge_options: Mapping[str, Mapping[str, Any]] | None = None,
    coefs: Sequence[float] | None = None,
    coef_step: float = 0.05,
    coef_max: float = 1.0,
    coef_search: str = "grid",
    threshold: float = 0.95,
    head_cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = False,
    finetuning_mode: str = "standard",
) -> pd.DataFrame:
    """Negate the fine-tunes of ``forget`` (merged and one by one), pick λ, record everything.

    Args:
        backbone: The pretrained CLIP θ_pre.
        forget: The task to forget (its ``val`` is {dataset}Val, its ``test`` the test split).
        control: The control task (ImageNet: ``val`` = ImageNetVal, ``test`` = ImageNet val set).
        finetuned: Pool member name -> ``visual.safetensors`` (see :mod:`negkit.clip.finetune`).
        results: Log the records are appended to (and read from, to resume).
        methods: Merge rules of :mod:`negkit.merge` applied to the pool.
        single: Also negate every member alone (Task Arithmetic rows, ``pool_config`` = member).
        merge_options: Per-method keyword options, e.g. ``{"ties": {"density": 0.2}}``.
        coefs: Evaluate exactly these λ instead of searching (None: the search below).
        coef_step: Grid step of the λ search (:func:`negkit.evaluate.search_coef`, from 0..1).
        coef_max: The search's range grows up to this λ at most (default 1: the release's grid).
        coef_search: ``"grid"`` (every λ of the range: with the defaults the release's
            linspace(0, 1, 21)) or ``"adaptive"`` (doubling, then bisection; the kit's option).
        threshold: Fraction of zero-shot control (val) accuracy a λ must keep.
        head_cache: Folder of cached zero-shot heads.
        device: None: cuda if available.
        batch_size: Evaluation batch size.
        num_workers: DataLoader workers decoding images.
        seed: Recorded in every row.
        progress: tqdm bars of the evaluation passes.
        finetuning_mode: How the pool was fine-tuned: ``"standard"``, or ``"linear"``
            (tangent space; negation is then applied to the linearised model and rows
            carry ``model = model_label(backbone, "linear")``). Must match the files.

    Returns:
        One row per method / pool member: ``method, pool_config, coef`` and the test
        accuracies ``test_forget, test_control`` beside the zero-shot ones.

    Raises:
        ValueError: A fine-tune's file was written in another ``finetuning_mode``.
    """
    device = resolve_device(device)
    coef_grid(0.0, coef_max, coef_step)  # a bad grid fails here, before any evaluation
    check_threshold(threshold)
    if coef_search not in ("adaptive", "grid"):
        raise ValueError(f"coef_search must be 'adaptive' or 'grid', got {coef_search!r}")
    if coefs is not None:
        coefs = sorted({float(c) for c in coefs})
        if not coefs:
            raise ValueError("coefs is empty; pass None for the λ search or e.g. negkit.evaluate.coef_grid()")
    for m in methods:
        negkit.merge.get(m)  # unknown rule -> ValueError listing the registry, before anything is computed
    for member, path in finetuned.items():
        made = nkio.read_metadata(path).get("finetuning_mode", "standard")
        if made != check_finetuning_mode(finetuning_mode):
            raise ValueError(f"{member} ({path}) was fine-tuned with finetuning_mode={made!r}; pass "
                             f"finetuning_mode={made!r} to negate it (a task vector belongs to its own model)")
    label = model_label(backbone, finetuning_mode)
    base = dict(setting="clip", model=label, dataset=forget.name, scenario="task", seed=seed)
    sets = {"val_forget": forget.val, "val_control": control.val, "test_forget": forget.test,
            "test_control": control.test}
    existing = results.read()
    existing = existing[(existing.setting == "clip") & (existing.model == label)
                        & (existing.scenario == "task") & (existing.seed == seed)]

    forget_head = get_head(backbone, forget.name, cache_dir=head_cache, classnames=forget.classnames, device=device)
    control_head = get_head(backbone, control.name, cache_dir=head_cache, classnames=control.classnames,
                            device=device)
    neg = _Negator(backbone, forget_head, control_head, device, finetuning_mode)

    def measure(split: str) -> float:
        clf = neg.forget if split.endswith("forget") else neg.control
        return evaluate(clf, sets[split], device=device, batch_size=batch_size, num_workers=num_workers,
                        progress=progress)["acc"]

    # Zero-shot accuracies: measured once; control ones are shared by every forget dataset.
    zs: dict[str, float] = {}
    neg.set(None, 0.0)
    for split in SPLITS:
        mine = existing[(existing.method == "zeroshot") & (existing.split == split)]
        here = mine[mine.dataset == forget.name]
        shared = mine if split.endswith("control") else here
        if len(here):
            zs[split] = float(here.value.iloc[0])
            continue
        zs[split] = float(shared.value.iloc[0]) if len(shared) else measure(split)
        results.append(Record(**base, method="zeroshot", pool_config="", coef=0.0, split=split, metric="acc",
                              value=zs[split]))

    candidates = [(m, "") for m in methods] + ([("task_arithmetic", n) for n in finetuned] if single else [])
    pre_cpu = {k: v.cpu() for k, v in backbone.visual_state_dict().items()}
    # τ's keys are the encoder's; inside a classifier they carry the encoder's module path.
    prefix = next(f"{name}." for name, m in neg.forget.named_modules() if m is neg.encoder)
    summary = []
    for method, member in candidates:
        rows = existing[(existing.dataset == forget.name) & (existing.method == method)
                        & (existing.pool_config == member)]
        done = rows[rows.split == "test_forget"]
        if len(done):
            test = {r.split: r for r in rows[rows.split.isin(["test_forget", "test_control"])].itertuples()}
            summary.append(_summary(method, member, test["test_forget"].coef, test["test_forget"].value,
                                    test["test_control"].value, zs))
            continue
        if method == "task_arithmetic":
            tau = TaskVector.from_state_dicts(pre_cpu, nkio.load_state_dict(finetuned[member]))
        else:
            # Streamed from the files tensor by tensor: memory stays flat in the pool size K.
            opts = dict((merge_options or {}).get(method, {}))
            tau = TaskVector(negkit.merge.merge_files(list(finetuned.values()), method, pretrained=pre_cpu, **opts))
        tau = tau.to(device)
        accs = {(r.split, r.coef): r.value for r in rows[rows.split.isin(VAL_SPLITS)].itertuples()}
        evaluators = [negation_evaluator(clf, {f"{prefix}{k}": v for k, v in tau.items()},
                                         {split: DataLoader(sets[split], batch_size=batch_size, shuffle=False,
                                                            num_workers=num_workers)},
                                         device=device, batch_size=batch_size, progress=progress)
                      for clf, split in ((neg.forget, "val_forget"), (neg.control, "val_control"))]

        def evaluate_coefs(cs: Sequence[float], accs=accs, evaluators=evaluators, method=method,
                           member=member) -> dict[str, list[float]]:
            # Recorded λ (a resumed run) and λ = 0 (the zero-shot model) are not evaluated again.
            todo = [c for c in cs if c != 0.0 and any((s, c) not in accs for s in VAL_SPLITS)]
            fresh = {k: v for ev in evaluators for k, v in ev(todo).items()} if todo else {}
            new = []
            for c in cs:
                for split in VAL_SPLITS:
                    if (split, c) not in accs:
                        accs[(split, c)] = zs[split] if c == 0.0 else fresh[split][todo.index(c)]
                        new.append(Record(**base, method=method, pool_config=member, coef=c, split=split,
                                          metric="acc", value=accs[(split, c)]))
            if new:
                results.append(new)
            return {split: [accs[(split, c)] for c in cs] for split in VAL_SPLITS}

        search = _choose(evaluate_coefs, coefs, zs["val_control"], threshold=threshold, step=coef_step,
                         max_coef=coef_max, exhaustive=coef_search == "grid")
        chosen = search.coef
        new = []
        if chosen is not None and chosen != 0.0:
            neg.set(tau, chosen)
        for split in ("test_forget", "test_control"):
            if chosen is None:
                value, note, coef = math.nan, NO_COEF_NOTE, math.nan
            else:
                value = zs[split] if chosen == 0.0 else measure(split)
                note, coef = f"λ selected on val (control ≥ {threshold:g} × zero-shot)", chosen
                if search.hit_max:
                    note += f"; {EDGE_NOTE}"
            new.append(Record(**base, method=method, pool_config=member, coef=coef, split=split, metric="acc",
                              value=value, note=note))
        grid = _grid_note(coefs, coef_search, coef_step, search)
        new += [Record(**base, method=method, pool_config=member, coef=math.nan, split="val", metric="n_coefs",
                       value=float(search.n_evaluated), note=grid),
                Record(**base, method=method, pool_config=member, coef=math.nan, split="val",
                       metric="coef_max_searched", value=float(search.searched[1]), note=grid)]
        results.append(new)
        if chosen is None:
            log.warning("%s %s%s: %s", forget.name, method, f" ({member})" if member else "", NO_COEF_NOTE)
        summary.append(_summary(method, member, new[0].coef, new[0].value, new[1].value, zs))
    return pd.DataFrame(summary)


def _choose(evaluate_coefs, coefs: Sequence[float] | None, control_reference: float, *, threshold: float,
            step: float, max_coef: float, exhaustive: bool) -> CoefSearch:
    """:func:`search_coef` from 0..1, or exactly ``coefs`` when given (a fixed grid)."""
    if coefs is None:
        return search_coef(evaluate_coefs, control_reference, threshold=threshold, step=step, max_coef=max_coef,
                           exhaustive=exhaustive)
    accs = evaluate_coefs(coefs)
    lam = select_coef(coefs, accs["val_forget"], accs["val_control"], control_reference, threshold)
    curve = pd.DataFrame([{"coef": c, "split": s, "acc": accs[s][i]} for i, c in enumerate(coefs) for s in accs],
                         columns=["coef", "split", "acc"])
    return CoefSearch(coef=lam, curve=curve, n_evaluated=len(coefs), searched=(coefs[0], coefs[-1]),
                      hit_max=accs["val_control"][-1] >= threshold * control_reference, exhaustive=True)


def _grid_note(coefs: Sequence[float] | None, coef_search: str, step: float, search: CoefSearch) -> str:
    """Which λ grid a result stands for, e.g. ``"grid: linspace(0, 1, 21)"`` (the release's)."""
    lo, hi = search.searched
    if coefs is not None:
        return f"fixed: {len(coefs)} λ in [{lo:g}, {hi:g}]"
    if coef_search == "grid":
        return f"grid: linspace({lo:g}, {hi:g}, {int(round((hi - lo) / step)) + 1})"
    return f"adaptive: {search.n_evaluated} λ of the step-{step:g} grid on [{lo:g}, {hi:g}]"


def _summary(method: str, member: str, coef: float, test_forget: float, test_control: float,
             zs: Mapping[str, float]) -> dict[str, Any]:
    """One row of :func:`run_task_negation`'s table, for a fresh or a resumed candidate."""
    return {"method": method, "pool_config": member, "coef": float(coef), "test_forget": float(test_forget),
            "test_control": float(test_control), "zeroshot_forget": zs["test_forget"],
            "zeroshot_control": zs["test_control"]}


def paper_table(df: pd.DataFrame, *, model: str | None = None, task_arithmetic: str = "mean") -> pd.DataFrame:
    """The paper's table: forget (↓) and control test accuracy per method and dataset, plus the average.

    Args:
        df: Results (``negkit.results.read_results``) holding ``run_task_negation`` rows.
        model: Keep only this model (default: all rows of setting ``"clip"``).
        task_arithmetic: How single-member Task Arithmetic rows are summarised: ``"mean"``
            over members; ``"val"``, the member whose selected λ gives the lowest
            *validation* forget accuracy (ties: higher validation control accuracy, then
            name), i.e. a single fine-tune chosen as the protocol allows; or ``"best"``,
            the member with the lowest *test* forget accuracy (an oracle that looks at
            the test set, an optimistic bound rather than a baseline).

    Returns:
        Index = method; columns = MultiIndex (dataset or ``"avg"``, ``"forget"``/``"control"``).
    """
    if task_arithmetic not in ("mean", "val", "best"):
        raise ValueError(f"task_arithmetic must be 'mean', 'val' or 'best', got {task_arithmetic!r}")
    rows = df[(df.setting == "clip") & (df.scenario == "task")]
    if model is not None:
        rows = rows[rows.model == model]
    d = rows[rows.split.isin(["test_forget", "test_control"])]
    if d.empty:
        raise ValueError("no CLIP task-negation test rows in these results; run run_task_negation first")
    wide = d.pivot_table(index=["dataset", "method", "pool_config"], columns="split", values="value",
                         aggfunc="first", dropna=False).reset_index()
    ta = wide[wide.method == "task_arithmetic"]
    if task_arithmetic == "best" and len(ta):
        ta = ta.loc[ta.groupby("dataset").test_forget.idxmin()]
    if task_arithmetic == "val" and len(ta):
        ta = ta.merge(_val_selected(rows), on=["dataset", "pool_config"])
    wide = pd.concat([wide[wide.method != "task_arithmetic"], ta])
    table = wide.groupby(["method", "dataset"])[["test_forget", "test_control"]].mean().unstack("dataset")
    table.columns = table.columns.swaplevel(0, 1)
    table = table.rename(columns={"test_forget": "forget", "test_control": "control"}, level=1)
    datasets = sorted({c[0] for c in table.columns})
    for part in ("forget", "control"):
        table[("avg", part)] = table[[(ds, part) for ds in datasets]].mean(axis=1)
    order = [(ds, p) for ds in datasets + ["avg"] for p in ("forget", "control")]
    return table[order]


def _val_selected(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the Task Arithmetic member chosen on validation: ``dataset, pool_config`` columns.

    A member's validation accuracies are read at its selected λ (the coef of its test
    rows); members without an admissible λ cannot be chosen.
    """
    ta = rows[rows.method == "task_arithmetic"]
    chosen = ta[ta.split == "test_forget"][["dataset", "pool_config", "coef"]].dropna()
    val = ta[ta.split.isin(["val_forget", "val_control"])].pivot_table(
        index=["dataset", "pool_config", "coef"], columns="split", values="value", aggfunc="first").reset_index()
    cand = chosen.merge(val, on=["dataset", "pool_config", "coef"])
    cand = cand.sort_values(["dataset", "val_forget", "val_control", "pool_config"],
                            ascending=[True, True, False, True])
    return cand.drop_duplicates("dataset")[["dataset", "pool_config"]]
