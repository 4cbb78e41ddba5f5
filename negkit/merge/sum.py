"""The task-arithmetic sum Σ_k τ_k (Ilharco et al., ICLR 2023)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from negkit.merge.fold import _in_memory, _SumFold

__all__ = ["sum"]


@register("sum", fold=_SumFold)
def sum(task_vectors: Sequence[Mapping[str, torch.Tensor]], *, strict: bool = True,  # noqa: A001
        names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """Task-arithmetic sum ``Σ_k τ_k`` (Ilharco et al., 2023). Options and errors as in :func:`negmerge`."""
    return _in_memory(_SumFold, task_vectors, strict, names, progress)
