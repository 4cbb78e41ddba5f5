"""The uniform merge (model soup of task vectors): (1/K) Σ_k τ_k."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import torch

from negkit.merge import register
from negkit.merge.fold import _in_memory, _SumFold

__all__ = ["mean"]


class _MeanFold(_SumFold):
    def finish(self) -> torch.Tensor:
        return (self.s / self.K).to(self.dtype)


@register("mean", fold=_MeanFold)
def mean(task_vectors: Sequence[Mapping[str, torch.Tensor]], *, strict: bool = True,
         names: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """Uniform merge (model soup of task vectors): ``(1/K) Σ_k τ_k``.

    Options and errors as in :func:`negmerge`. Half-precision inputs are summed in fp32.
    """
    return _in_memory(_MeanFold, task_vectors, strict, names, progress)
