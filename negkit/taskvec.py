"""Task vectors: τ = θ_ft − θ_pre, with the arithmetic of Ilharco et al. (2023).

A :class:`TaskVector` is a read-only mapping ``name -> Tensor`` over the
floating-point parameters of a model, so merge rules (:mod:`negkit.merge`) and
analyses accept it wherever they accept a plain dict. The arithmetic reads like
the papers::

    tau = TaskVector.from_state_dicts(pre, ft)
    theta_unlearned = (-tau).apply_to(pre, coef=0.5)      # negation, θ_pre − λτ
    tau_mean = sum(taus) * (1 / len(taus))                # uniform merge

BatchNorm running statistics are not weights: they are the running mean and
variance of the activations. θ_pre − λ(μ_ft − μ_pre) can produce a negative
running variance or statistics far outside what the layer ever saw, which breaks
the negated model. They are therefore excluded by default and the pretrained
statistics are kept by :meth:`TaskVector.apply_to`; ``include_bn_stats=True``
keeps them for analyses that want every floating-point tensor.

Other floating-point buffers are constants of the architecture, e.g. the mean and
std of the :class:`negkit.models.Normalize` input layer. Fine-tuning never moves
them, so τ holds exact zeros there: harmless for negation, but they inflate
:meth:`TaskVector.numel` and count as "no sign consensus" in
:mod:`negkit.analysis`. ``keys=`` restricts τ to chosen entries, and
:meth:`TaskVector.from_models` with ``params_only=True`` (its default) to the
model's parameters, the weights that training actually updates::

    tau = TaskVector.from_models(original, finetuned)   # parameters only
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from torch import nn

from negkit import __version__, io

__all__ = ["TaskVector", "BN_STAT_SUFFIXES", "is_bn_stat", "difference", "KeySelection"]

BN_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

#: Which state-dict entries τ covers: names, a predicate on names, or None (all of them).
KeySelection = Union[Iterable[str], Callable[[str], bool], None]


def is_bn_stat(key: str) -> bool:
    """True for BatchNorm running-statistics entries (``...running_mean`` etc.)."""
    return key.rsplit(".", 1)[-1] in BN_STAT_SUFFIXES


def difference(pre: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """τ for one tensor: ``ft − pre`` in ``pre``'s dtype and on ``pre``'s device.

    The single definition shared by :class:`TaskVector` and the streaming
    :func:`negkit.merge.merge_files`, so both produce bit-identical vectors.
    """
    return ft.detach().to(device=pre.device, dtype=pre.dtype) - pre.detach()


class TaskVector(Mapping):
    """A task vector: a mapping from parameter names to floating-point tensors.

    Args:
        vector: ``{name: tensor}``; every value must be a floating-point tensor.
        metadata: ``str -> str`` provenance (architecture, pretrained tag,
            fine-tuning config as JSON, negkit version) saved with :meth:`save`.

    Raises:
        TypeError: A value is not a floating-point tensor.
        ValueError: A tensor holds NaN or Inf (a diverged fine-tune; negating it gives a broken model).
    """

    def __init__(self, vector: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
        if not isinstance(vector, Mapping):
            raise TypeError(f"a task vector is built from a mapping name -> tensor, got a {type(vector).__name__}")
        for key, value in vector.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"task vector entry {key!r} is {kind}; only floating-point tensors form a task vector")
            # A sum is NaN/Inf whenever the tensor holds one; only an overflowing sum needs the exact check.
            if value.numel() and not bool(torch.isfinite(value.sum())) and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise ValueError(f"task vector entry {key!r} holds {bad} NaN/Inf value(s); the fine-tune diverged or "
                                 "a checkpoint is damaged. Retrain it or leave that vector out")
        self.vector: dict[str, torch.Tensor] = dict(vector)
        self.metadata: dict[str, str] = dict(metadata or {})

    # ----------------------------------------------------------- construction
    @classmethod
    def from_state_dicts(
        cls,
        pretrained: Mapping[str, torch.Tensor],
        finetuned: Mapping[str, torch.Tensor],
        *,
        include_bn_stats: bool = False,
        keys: KeySelection = None,
    ) -> "TaskVector":
        """τ = θ_ft − θ_pre over the floating-point entries of two state dicts.

        Integer and boolean buffers are skipped; BatchNorm running statistics are
        skipped unless ``include_bn_stats`` (see the module docstring for why).

        Args:
            pretrained: θ_pre.
            finetuned: θ_ft, with the same keys and shapes (among the selected ones).
            include_bn_stats: Also subtract ``running_mean``/``running_var``.
            keys: Restrict τ to these entries: a collection of names (each must be a
                floating-point entry of both state dicts, and a BatchNorm statistic only
                with ``include_bn_stats``) or a predicate ``name -> bool`` (applied on
                top of the rules above). Entries not selected need not match between
                the two state dicts (e.g. a replaced classification head). τ keeps
                ``pretrained``'s order. None: every entry.

        Raises:
            KeyError: A selected key is in one state dict only.
            ValueError: A tensor has different shapes in the two; ``keys`` names an
                entry that cannot be part of τ.
            TypeError: ``keys`` is a single string.
        """
        select, named = cls._selection(keys, pretrained, finetuned)
        only_pre = [k for k in pretrained if select(k) and k not in finetuned]
        only_ft = [k for k in finetuned if select(k) and k not in pretrained]
        if only_pre or only_ft:
            k, where = (only_pre[0], "the pretrained") if only_pre else (only_ft[0], "the fine-tuned")
            raise KeyError(
                f"key {k!r} is only in {where} state dict ({len(only_pre) + len(only_ft)} unmatched keys); "
                "drop extra entries (e.g. a new classification head) from both before forming τ, "
                "or leave them out with keys="
            )
        vector = {}
        for key, pre in pretrained.items():
            if not select(key):
                continue
            ft = finetuned[key]
            if not pre.is_floating_point() or (is_bn_stat(key) and not include_bn_stats):
                if named:
                    why = (f"a {pre.dtype} tensor; task vectors hold floating-point tensors only"
                           if not pre.is_floating_point() else
                           "a BatchNorm running statistic; pass include_bn_stats=True to include it")
                    raise ValueError(f"keys names {key!r}, which is {why}")
                continue
            if not ft.is_floating_point():
                raise TypeError(f"fine-tuned entry {key!r} is a {ft.dtype} tensor where the pretrained one is "
                                f"{pre.dtype}; a task vector needs floating-point weights on both sides (was the "
                                "checkpoint quantised or saved with the wrong dtype?)")
            if pre.shape != ft.shape:
                raise ValueError(
                    f"shape mismatch for {key!r}: {tuple(pre.shape)} pretrained vs {tuple(ft.shape)} fine-tuned; "
                    "were both checkpoints made from the same architecture?"
                )
            vector[key] = difference(pre, ft)
        return cls(vector)

    @staticmethod
    def _selection(keys: KeySelection, pretrained: Mapping[str, torch.Tensor],
                   finetuned: Mapping[str, torch.Tensor]) -> tuple[Callable[[str], bool], bool]:
        """``keys`` as a predicate, and whether it was an explicit list of names (checked here)."""
        if keys is None:
            return (lambda k: True), False
        if callable(keys):
            return keys, False
        if isinstance(keys, (str, bytes)):
            raise TypeError(f"keys={keys!r} is a single string; pass a list of names, e.g. keys=[{keys!r}]")
        wanted = set(keys)
        for k in sorted(wanted):
            for sd, where in ((pretrained, "pretrained"), (finetuned, "fine-tuned")):
                if k not in sd:
                    raise KeyError(f"keys names {k!r}, which is not in the {where} state dict; "
                                   f"its keys start with {list(sd)[:5]}")
        return wanted.__contains__, True

    @classmethod
    def from_models(
        cls,
        pretrained: nn.Module,
        finetuned: nn.Module,
        *,
        params_only: bool = True,
        include_bn_stats: bool = False,
        device: str | torch.device = "cpu",
    ) -> "TaskVector":
        """τ = θ_ft − θ_pre between two models of the same architecture.

        Args:
            pretrained: The model before fine-tuning.
            finetuned: The fine-tuned model.
            params_only: τ over ``pretrained.named_parameters()`` only (the weights
                training moves); buffers, including constant ones such as the
                Normalize layer's mean/std, are left out (see the module docstring).
                False: every floating-point state-dict entry, as :meth:`from_state_dicts`.
            include_bn_stats: With ``params_only=False``, also the BatchNorm statistics.
            device: Where τ is computed and kept.

        Raises:
            ValueError: ``params_only`` together with ``include_bn_stats`` (statistics are buffers);
                the two models' parameters differ in names or shapes (the message names them).
            TypeError: An argument is not an ``nn.Module``.
            KeyError, ValueError: As :meth:`from_state_dicts`.
        """
        for what, m in (("pretrained", pretrained), ("finetuned", finetuned)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"from_models: {what} is a {type(m).__name__}, not an nn.Module; "
                                "use TaskVector.from_state_dicts for state dicts")
        if params_only and include_bn_stats:
            raise ValueError("BatchNorm statistics are buffers, not parameters: pass params_only=False "
                             "together with include_bn_stats=True")
        _check_same_architecture(pretrained, finetuned)
        # remove_duplicate=False: a tied weight is in τ under every name the state dict uses for it.
        names = {n for n, _ in pretrained.named_parameters(remove_duplicate=False)} if params_only else None

        def state(model: nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().to(device) for k, v in model.state_dict().items() if names is None or k in names}

        return cls.from_state_dicts(state(pretrained), state(finetuned), include_bn_stats=include_bn_stats)

    @classmethod
    def from_files(
        cls,
        pretrained_path: io.PathLike,
        finetuned_path: io.PathLike,
        *,
        include_bn_stats: bool = False,
        keys: KeySelection = None,
        device: str | torch.device = "cpu",
    ) -> "TaskVector":
        """τ from two checkpoint files (read with :func:`negkit.io.load_state_dict`).

        ``include_bn_stats`` and ``keys`` are those of :meth:`from_state_dicts`.
        """
        pre = io.load_state_dict(pretrained_path, device=device)
        ft = io.load_state_dict(finetuned_path, device=device)
        tv = cls.from_state_dicts(pre, ft, include_bn_stats=include_bn_stats, keys=keys)
        tv.metadata["pretrained_file"] = Path(pretrained_path).name
        tv.metadata["finetuned_file"] = Path(finetuned_path).name
        return tv

    # ---------------------------------------------------------------- mapping
    # Mapping's element-wise __eq__ would compare tensors; identity semantics instead.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.vector[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.vector)

    def __len__(self) -> int:
        return len(self.vector)

    def __repr__(self) -> str:
        return f"TaskVector({len(self)} tensors, {self.numel():,} elements)"

    def numel(self) -> int:
        """Total number of elements."""
        return sum(t.numel() for t in self.vector.values())

    def norm(self) -> float:
        """Global L2 norm ‖τ‖₂ over all tensors (accumulated in float64)."""
        return math.sqrt(sum(float(t.double().pow(2).sum()) for t in self.vector.values()))

    def to(self, device: str | torch.device) -> "TaskVector":
        """A copy on ``device`` (metadata kept)."""
        return TaskVector({k: v.to(device) for k, v in self.vector.items()}, self.metadata)

    # ------------------------------------------------------------- arithmetic
    def _check_same_keys(self, other: Mapping[str, torch.Tensor], op: str) -> None:
        missing = [k for k in self.vector if k not in other]
        extra = [k for k in other if k not in self.vector]
        if missing or extra:
            k, where = (missing[0], "the right") if missing else (extra[0], "the left")
            raise KeyError(
                f"cannot compute tv {op} tv: key {k!r} is missing from {where} operand "
                f"({len(missing) + len(extra)} keys differ); build both from the same architecture "
                "with the same include_bn_stats, or combine the shared keys with "
                f"negkit.merge.merge('sum', [a, {'-' if op == '-' else ''}b], strict=False)"
            )
        for k, t in self.vector.items():
            if t.shape != other[k].shape:
                raise ValueError(f"cannot compute tv {op} tv: {k!r} has shape {tuple(t.shape)} vs "
                                 f"{tuple(other[k].shape)}")

    def __neg__(self) -> "TaskVector":
        return TaskVector({k: -v for k, v in self.vector.items()}, self.metadata)

    def __add__(self, other: Any) -> "TaskVector":
        if isinstance(other, (int, float)) and other == 0:
            return TaskVector(self.vector, self.metadata)  # so that sum(tvs) works (start value 0)
        if not isinstance(other, Mapping):
            return NotImplemented
        self._check_same_keys(other, "+")
        return TaskVector({k: v + other[k] for k, v in self.vector.items()})

    __radd__ = __add__

    def __sub__(self, other: Any) -> "TaskVector":
        if not isinstance(other, Mapping):
            return NotImplemented
        self._check_same_keys(other, "-")
        return TaskVector({k: v - other[k] for k, v in self.vector.items()})

    def __rsub__(self, other: Any) -> "TaskVector":
        if not isinstance(other, Mapping):
            return NotImplemented
        return TaskVector(dict(other)) - self

    def __mul__(self, coef: Any) -> "TaskVector":
        if isinstance(coef, torch.Tensor) and coef.numel() == 1:
            coef = coef.item()
        if not isinstance(coef, (int, float)) or isinstance(coef, bool):
            return NotImplemented
        return TaskVector({k: v * coef for k, v in self.vector.items()}, self.metadata)

    __rmul__ = __mul__

    def __truediv__(self, coef: Any) -> "TaskVector":
        if not isinstance(coef, (int, float)) or isinstance(coef, bool):
            return NotImplemented
        return self * (1.0 / coef)

    def apply_to(self, pretrained: Mapping[str, torch.Tensor] | nn.Module,
                 coef: float = 1.0) -> dict[str, torch.Tensor] | nn.Module:
        """θ = θ_pre + coef·τ as a new state dict, or as an edited copy of a model.

        Negation (forgetting) is ``tv.apply_to(pre, coef=-λ)`` or ``(-tv).apply_to(pre, λ)``.

        Args:
            pretrained: θ_pre, a state dict or an ``nn.Module`` (left unchanged). Entries
                τ lacks (integer buffers, BatchNorm statistics, a classification head)
                are passed through unchanged (the same tensor objects, not copies).
            coef: Scaling coefficient λ (a finite number).

        Returns:
            For a state dict, a new dict with every key of ``pretrained``, each tensor
            keeping its dtype and device; for a model, a deep copy holding θ.

        Raises:
            KeyError: τ has a key that ``pretrained`` lacks.
            ValueError: Shapes differ, or ``coef`` is not a finite number.
            TypeError: ``pretrained`` is neither a mapping nor a model.
        """
        if isinstance(coef, torch.Tensor) and coef.numel() == 1:
            coef = coef.item()
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
            raise ValueError(f"apply_to: coef={coef!r} must be a finite number")
        if isinstance(pretrained, nn.Module):
            model = copy.deepcopy(pretrained)
            model.load_state_dict(self.apply_to(pretrained.state_dict(), coef))
            return model
        if not isinstance(pretrained, Mapping):
            raise TypeError(f"apply_to takes a state dict or an nn.Module, got a {type(pretrained).__name__}")
        extra = [k for k in self.vector if k not in pretrained]
        if extra:
            raise KeyError(f"task vector key {extra[0]!r} is not in the pretrained state dict "
                           f"({len(extra)} such keys); was τ made from this architecture?")
        out = {}
        for key, p in pretrained.items():
            tau = self.vector.get(key)
            if tau is None:
                out[key] = p
                continue
            if tau.shape != p.shape:
                raise ValueError(f"shape mismatch for {key!r}: τ {tuple(tau.shape)} vs pretrained {tuple(p.shape)}")
            out[key] = torch.add(p.detach(), tau.to(device=p.device, dtype=p.dtype), alpha=coef)
        return out

    # -------------------------------------------------------------------- I/O
    def save(
        self,
        path: io.PathLike,
        *,
        architecture: str | None = None,
        pretrained: str | None = None,
        config: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Save as safetensors (atomically) with provenance metadata.

        Args:
            path: Destination ``.safetensors`` file.
            architecture: Model name, e.g. ``"ViT-B-32"``.
            pretrained: Pretrained tag, e.g. ``"openai"``.
            config: Fine-tuning config; stored as a JSON string under ``finetune_config``.
            metadata: Further ``str -> str`` entries.

        Returns:
            The destination path.

        Raises:
            ValueError: ``path`` does not end in ``.safetensors`` (task vectors are never pickled).
        """
        if Path(path).suffix != ".safetensors":
            raise ValueError(f"TaskVector.save({str(path)!r}): task vectors are saved as safetensors; "
                             f"use a .safetensors path, e.g. {Path(path).with_suffix('.safetensors').name!r}")
        meta = dict(self.metadata)
        meta.update(metadata or {})
        if architecture is not None:
            meta["architecture"] = architecture
        if pretrained is not None:
            meta["pretrained"] = pretrained
        if config is not None:
            meta["finetune_config"] = json.dumps(dict(config), sort_keys=True, default=str)
        meta["negkit_version"] = __version__
        meta["format"] = "negkit.TaskVector"
        self.metadata = meta
        return io.save_state_dict(self.vector, path, metadata=meta)

    @classmethod
    def load(cls, path: io.PathLike, device: str | torch.device = "cpu") -> "TaskVector":
        """Load a task vector written by :meth:`save` (or any safetensors of float tensors)."""
        return cls(io.load_state_dict(path, device=device), io.read_metadata(path))

    @property
    def config(self) -> dict[str, Any]:
        """The fine-tuning config stored in the metadata (``{}`` if none)."""
        raw = self.metadata.get("finetune_config")
        return json.loads(raw) if raw else {}


def _check_same_architecture(pretrained: nn.Module, finetuned: nn.Module) -> None:
    """Refuse two models whose parameters differ in names or shapes, naming the differing keys."""
    pre = {n: tuple(p.shape) for n, p in pretrained.named_parameters(remove_duplicate=False)}
    ft = {n: tuple(p.shape) for n, p in finetuned.named_parameters(remove_duplicate=False)}
    only_pre = [k for k in pre if k not in ft]
    only_ft = [k for k in ft if k not in pre]
    shapes = [f"{k} {pre[k]} vs {ft[k]}" for k in pre if k in ft and pre[k] != ft[k]]
    if only_pre or only_ft or shapes:
        parts = []
        if only_pre:
            parts.append(f"only in pretrained: {only_pre[:5]}" + (f" (+{len(only_pre) - 5} more)" if len(only_pre) > 5 else ""))
        if only_ft:
            parts.append(f"only in finetuned: {only_ft[:5]}" + (f" (+{len(only_ft) - 5} more)" if len(only_ft) > 5 else ""))
        if shapes:
            parts.append(f"shapes differ: {shapes[:5]}")
        raise ValueError(f"from_models: the two models are not the same architecture ({'; '.join(parts)}); "
                         f"build both with the same model name and options")
