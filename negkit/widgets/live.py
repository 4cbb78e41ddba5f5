"""Live mode of the negation view: re-evaluate θ(λ) = θ_pre − λ·τ at any λ.

Everything that does not depend on λ is computed once and cached: the pretrained
state dict, the task vectors, each method's merged vector (on first use), and every
evaluation split as one tensor on the device. A slider move then costs one
``torch.func.functional_call`` forward pass per split, without copying weights into
the model; results are memoised per (method, λ) so revisiting a position is free.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from negkit import merge
from negkit.coefs import CoefSearch, coef_grid, search_coef
from negkit.evaluate import resolve_device, true_class_confidence
from negkit.metrics import accuracy, avg_gap, mia_efficacy
from negkit.taskvec import TaskVector
from negkit.widgets.negation import RunKey, curve_records, metric_notes

__all__ = ["LiveNegation"]


def _as_tensors(data: Any, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(images, labels) of a dataset or an ``(images, labels)`` pair, as two tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
    else:
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
        xs, ys = zip(*[(b[0], b[1]) for b in loader]) if len(data) else ((), ())
        if not xs:
            raise ValueError("an evaluation split of the live negation view is empty; pass a non-empty dataset")
        x, y = torch.cat(xs), torch.cat(ys)
    return x.float(), torch.as_tensor(y).long()


class LiveNegation:
    """Negation curves computed on the fly for a small model (the digits default).

    Args:
        model: The architecture (its weights are not used; ``pretrained`` is). Put in eval mode.
        pretrained: State dict θ_pre of the original model.
        task_vectors: Pool members ``{name: τ}`` (TaskVectors or plain dicts of tensors).
        splits: ``{split name: dataset or (images, labels)}``. ``forget_split`` and
            ``control_split`` draw the curve and choose λ; ``forget``, ``retain`` and
            ``test`` (when given) add UA, RA, TA and MIA-efficacy to the numbers.
        methods: Merge rules (``negkit.merge`` registry names) offered besides Task
            Arithmetic with each single pool member.
        method_options: Keyword options per merge rule, e.g. ``{"ties": {"density": 0.2}}``.
        coefs: λ grid of the curve (default ``negkit.evaluate.coef_grid()``: 0..1 by 0.05); its
            ends are the initial range of the λ search (:func:`negkit.evaluate.search_coef`),
            whose evaluated λ join the curve.
        threshold: Admissibility threshold (fraction of the original's control accuracy).
        coef_step: Grid step of the λ search (default: the smallest spacing of ``coefs``).
        coef_max: The search's range grows (doubling) up to this λ at most.
        run: Names the experiment in the view.
        device: Torch device (None: cuda if available, else cpu).
        mia: Compute MIA-efficacy at every λ (needs forget, retain and test splits).
        retrain_metrics: Retrain's UA/RA/TA/MIA, the target the numbers are judged against
            (shown beside each metric, with the Avg. Gap to them).
    """

    live = True

    def __init__(self, model: nn.Module, pretrained: Mapping[str, Tensor],
                 task_vectors: Mapping[str, Mapping[str, Tensor]],
                 splits: Mapping[str, Any], *, methods: Sequence[str] = ("mean", "ties", "magmax", "negmerge"),
                 method_options: Mapping[str, Mapping[str, Any]] | None = None, coefs: Sequence[float] | None = None,
                 threshold: float = 0.95, coef_step: float | None = None, coef_max: float = 8.0,
                 forget_split: str = "val_forget", control_split: str = "val_control",
                 run: RunKey | None = None, device: str | torch.device | None = None, mia: bool = True,
                 retrain_metrics: Mapping[str, float] | None = None) -> None:
        for name in (forget_split, control_split):
            if name not in splits:
                raise ValueError(f"splits lack {name!r} (needed for the λ curve); given: {sorted(splits)}")
        if not task_vectors:
            raise ValueError("no task vectors given; pass the pool's {name: TaskVector} mapping")
        if methods:
            from negkit import merge

            for m in methods:
                merge.get(m)  # unknown rule -> ValueError listing the registry, before anything is computed
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.pretrained = {k: v.detach().to(self.device) for k, v in pretrained.items()}
        self.task_vectors = {n: {k: v.detach().to(self.device) for k, v in tv.items()}
                             for n, tv in task_vectors.items()}
        self.splits = {n: tuple(t.to(self.device) for t in _as_tensors(d)) for n, d in splits.items()}
        self.merge_methods = tuple(methods)
        self.method_options = {k: dict(v) for k, v in (method_options or {}).items()}
        self.grid = sorted({float(c) for c in (coefs if coefs is not None else coef_grid())})
        if not self.grid:
            raise ValueError("coefs is empty; pass e.g. negkit.evaluate.coef_grid() (0..1 by 0.05)")
        gaps = [b - a for a, b in zip(self.grid, self.grid[1:])]
        self.coef_step = float(coef_step if coef_step is not None else min(gaps, default=0.05))
        self.coef_max = max(float(coef_max), self.grid[-1])
        coef_grid(self.grid[0], self.coef_max, self.coef_step)  # an absurdly fine step fails here, at once
        self._searches: dict[tuple[str, str], CoefSearch] = {}
        self.threshold, self.forget_split, self.control_split = threshold, forget_split, control_split
        self.run = run or RunKey(dataset="live", scenario="")
        self.where = "live mode"
        self.mia = mia and {"forget", "retain", "test"} <= set(self.splits)
        self.retrain_metrics = {k: float(v) for k, v in (retrain_metrics or {}).items()}
        self._vectors: dict[tuple[str, str], dict[str, Tensor]] = {}
        self._evals: dict[tuple[str, str, float], dict[str, float]] = {}

    @classmethod
    def from_setup(cls, setup: Any, task_vectors: Mapping[str, Mapping[str, Tensor]] | None = None,
                   **kw: Any) -> "LiveNegation":
        """Live view of one benchmark scenario (:func:`negkit.benchmark.prepare`).

        Args:
            setup: A ``negkit.benchmark.Setup`` (original model, splits, config).
            task_vectors: The pool; default :func:`negkit.benchmark.pool_task_vectors`
                (fine-tunes that are not on disk yet are trained first).
            **kw: Overrides of the constructor's keyword arguments.
        """
        from negkit import benchmark

        cfg = setup.cfg
        if task_vectors is None:
            task_vectors = benchmark.pool_task_vectors(setup)
        splits = {"val_forget": setup.val_forget, "val_control": setup.val_control,
                  "forget": setup.forget, "retain": setup.retain, "test": setup.test}
        options = dict(methods=cfg.merge_methods, method_options=cfg.merge_options, coefs=cfg.coefs,
                       threshold=cfg.threshold, coef_step=cfg.coef_step, coef_max=cfg.coef_max,
                       device=setup.device, retrain_metrics=setup.retrain_metrics,
                       run=RunKey(cfg.dataset, setup.scenario, cfg.model, "standard", cfg.seed))
        options.update(kw)
        return cls(setup.original, setup.original.state_dict(), task_vectors, splits, **options)

    # --- source interface shared with RecordedCurves --------------------------------------
    def runs(self) -> list[RunKey]:
        """The one experiment this source evaluates."""
        return [self.run]

    def methods(self, run: RunKey) -> list[tuple[str, str]]:
        """Task Arithmetic with every pool member, then the merge rules, as ``(method, pool_config)``."""
        return [("task_arithmetic", n) for n in self.task_vectors] + [(m, "") for m in self.merge_methods]

    def coefs(self, run: RunKey, method: str, pool_config: str = "") -> list[float]:
        """The λ grid of the curve and every λ the search evaluated (the slider accepts any λ in their range)."""
        return sorted(set(self.grid) | set(self.search(method, pool_config).curve["coef"]))

    def curve(self, run: RunKey, method: str, pool_config: str = "") -> pd.DataFrame:
        """Forget / control accuracy over :meth:`coefs`, as tidy records (evaluated once, then cached)."""
        rows = []
        for c in self.coefs(run, method, pool_config):
            accs = self.evaluate(method, pool_config, c, splits=(self.forget_split, self.control_split))
            rows += [{"coef": c, "split": s, "value": accs[s]} for s in (self.forget_split, self.control_split)]
        return curve_records(rows, self.run, method, pool_config)

    def control_reference(self, run: RunKey, method: str, pool_config: str = "") -> float:
        """Control accuracy of the original model (λ = 0 is θ_o whatever the method)."""
        return self.evaluate(method, pool_config, 0.0, splits=(self.control_split,))[self.control_split]

    def chosen_coef(self, run: RunKey, method: str, pool_config: str = "") -> float | None:
        """λ chosen by :func:`negkit.evaluate.search_coef` (None: none admissible)."""
        return self.search(method, pool_config).coef

    def search(self, method: str, pool_config: str = "") -> CoefSearch:
        """The λ search of a method (the benchmark's rule and range growth; cached)."""
        key = (method, pool_config)
        if key not in self._searches:
            splits = (self.forget_split, self.control_split)

            def evaluate_coefs(coefs):
                accs = [self.evaluate(method, pool_config, c, splits=splits) for c in coefs]
                return {s: [a[s] for a in accs] for s in splits}

            ref = self.evaluate(method, pool_config, 0.0, splits=(self.control_split,))[self.control_split]
            self._searches[key] = search_coef(
                evaluate_coefs, ref, threshold=self.threshold, step=self.coef_step, start=self.grid[0],
                stop=self.grid[-1], max_coef=self.coef_max, forget_split=self.forget_split,
                control_split=self.control_split)
        return self._searches[key]

    def numbers(self, run: RunKey, method: str, pool_config: str, coef: float) -> list[tuple[str, Any]]:
        """Accuracy on every split at λ=``coef``, admissibility, and UA/RA/TA/MIA when the splits allow."""
        res = self.evaluate(method, pool_config, coef)
        out: list[tuple[str, Any]] = [("λ", float(coef))]
        out += [(f"{s} acc (%)", res[s]) for s in self.splits]
        ref = self.control_reference(run, method, pool_config)
        out.append(("admissible", "yes" if res[self.control_split] >= self.threshold * ref else "no"))
        target = self.retrain_metrics
        for key in ("UA", "RA", "TA", "MIA"):
            if key in res:
                out.append((f"{key} (Retrain {target[key]:.2f})" if key in target else key, res[key]))
        shared = [k for k in ("UA", "RA", "TA", "MIA") if k in res and k in target]
        if shared:  # the headline number, against the model retrained without D_f
            out.append(("Avg. Gap to Retrain ↓", avg_gap(res, target, keys=shared)))
        out += [("reading", text) for text in metric_notes(res)]
        return out

    # --- computation ------------------------------------------------------------------------
    def vector(self, method: str, pool_config: str = "") -> dict[str, Tensor]:
        """τ of a single pool member (Task Arithmetic) or the merge of the whole pool (cached)."""
        key = (method, pool_config)
        if key not in self._vectors:
            if method == "task_arithmetic":
                if pool_config not in self.task_vectors:
                    raise ValueError(f"unknown pool member {pool_config!r}; available: {list(self.task_vectors)}")
                self._vectors[key] = self.task_vectors[pool_config]
            else:
                if method not in self.merge_methods:
                    raise ValueError(f"method {method!r} is not offered; available: "
                                     f"{['task_arithmetic', *self.merge_methods]}")
                rule = merge.get(method)
                self._vectors[key] = rule(list(self.task_vectors.values()), **self.method_options.get(method, {}))
        return self._vectors[key]

    def state_dict(self, method: str, pool_config: str, coef: float) -> dict[str, Tensor]:
        """θ_pre − λ·τ; keys τ lacks (e.g. BatchNorm statistics) are kept from θ_pre.

        Built by :meth:`TaskVector.apply_to`, the same arithmetic the benchmark records,
        so live and recorded curves agree exactly.
        """
        return TaskVector(self.vector(method, pool_config)).apply_to(self.pretrained, -coef)

    @torch.inference_mode()
    def evaluate(self, method: str, pool_config: str, coef: float,
                 splits: Sequence[str] | None = None) -> dict[str, float]:
        """Accuracy (%) per split of the negated model at λ=``coef``; with all splits also UA/RA/TA/MIA."""
        coef = round(float(coef), 6)
        key = (method, pool_config, coef)
        want = list(splits or self.splits)
        cached = self._evals.setdefault(key, {})
        todo = [s for s in want if s not in cached]
        full = splits is None and "UA" not in cached and "forget" in self.splits
        if todo or full:
            params = self.state_dict(method, pool_config, coef)
            conf: dict[str, Tensor] = {}
            for s in (list(self.splits) if full else todo):
                x, y = self.splits[s]
                logits = torch.func.functional_call(self.model, params, (x,))
                cached[s] = float(accuracy(logits, y))
                conf[s] = true_class_confidence(logits, y).cpu()
            if full:
                cached["UA"] = 100.0 - cached["forget"]
                for name, split in (("RA", "retain"), ("TA", "test")):
                    if split in cached:
                        cached[name] = cached[split]
                if self.mia:
                    cached["MIA"] = float(mia_efficacy(conf["retain"].numpy(), conf["test"].numpy(),
                                                       conf["forget"].numpy()))
        return dict(cached)
