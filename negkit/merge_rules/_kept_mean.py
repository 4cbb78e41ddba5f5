"""Shared machinery of the rules that sparsify each member, then average: the mean of kept values."""
from __future__ import annotations

import torch

from negkit.merge import _acc_dtype, _Fold

__all__ = ["KeptMeanFold"]


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
