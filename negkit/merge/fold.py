"""The fold: how every streaming merge rule is written, and the loop that drives it.

A fold sees, per tensor key, the K slices of that key one after another and keeps running
statistics (sums, sign masks, the running maximum), never a stack of K tensors, so memory
does not grow with K. :func:`_in_memory` (the in-memory rules) and
:func:`negkit.merge.merge_files` (streaming from files) drive the same fold in the same order,
so their results are bit-identical.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from negkit.pool import Pool, open_pool

__all__ = ["KeptMeanFold"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision running sums lose digits after a few additions; accumulate in fp32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Fold:
    """Folds the K slices of one key into the merged tensor, one slice at a time."""

    def __init__(self, pool: Pool, progress: bool = False) -> None:
        self.K = pool.K

    def start(self, key: str) -> None:
        self.first = True

    def add(self, t: torch.Tensor, k: int) -> None:
        raise NotImplementedError

    def finish(self) -> torch.Tensor:
        raise NotImplementedError


class _SumFold(_Fold):
    def add(self, t: torch.Tensor, k: int) -> None:
        if self.first:
            self.dtype, self.s, self.first = t.dtype, t.to(_acc_dtype(t.dtype), copy=True), False
        else:
            self.s += t

    def finish(self) -> torch.Tensor:
        return self.s.to(self.dtype)


def _choice(rule: str, option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{rule}: {option}={value!r} is not one of {list(choices)}")
    return value


def _run(fold_cls: type[_Fold], pool: Pool, options: dict[str, Any], progress: bool,
         sink: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, torch.Tensor]:
    """Drive a fold over every key; merged tensors go to ``sink`` if given, else into the returned dict."""
    fold = fold_cls(pool, progress=progress, **options)
    out: dict[str, torch.Tensor] = {}
    for key in tqdm(pool.keys, desc=fold_cls.__name__.strip("_").replace("Fold", "").lower(),
                    disable=not progress):
        fold.start(key)
        for k in range(pool.K):
            fold.add(pool.get(k, key), k)
        if sink is None:
            out[key] = fold.finish()
        else:
            sink(key, fold.finish())
    return out


def _in_memory(fold_cls: type[_Fold], task_vectors: Sequence[Mapping[str, torch.Tensor]], strict: bool,
               names: Sequence[str] | None, progress: bool, **options: Any) -> dict[str, torch.Tensor]:
    with open_pool(task_vectors, names=names, strict=strict, files=False) as pool:
        return _run(fold_cls, pool, options, progress)


class KeptMeanFold(_Fold):
    """(1/K) Σ_k keep_k(τ_k): a running sum of what :meth:`kept` leaves of each slice, flat in K."""

    def start(self, key: str) -> None:
        super().start(key)
        self.key = key

    def kept(self, t: torch.Tensor, k: int) -> torch.Tensor:
        """What member ``k`` contributes of slice ``t`` (in the accumulation dtype)."""
        raise NotImplementedError

    def add(self, t: torch.Tensor, k: int) -> None:
        kept = self.kept(t.to(_acc_dtype(t.dtype)), k)
        if self.first:
            self.dtype, self.s, self.first = t.dtype, kept, False
        else:
            self.s += kept

    def finish(self) -> torch.Tensor:
        return (self.s / self.K).to(self.dtype)
