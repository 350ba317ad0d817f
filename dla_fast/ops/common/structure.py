"""The partition a forward decided, in compact per-token form: what the backward passes hold fixed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Structure:
    """Which tokens opened a slot and which pairs merged, per (batch, head) row.

    Attributes:
        starts: ``[R, T]`` bool, token t opened a slot.
        merged: ``[R, T]`` integer (int8 when K <= 128), the merged pair index at t, or -1.
        size0: ``[R]`` int64, the initial cache's size.
        K: capacity.
        triton: the Triton forward's own structure tensors when it ran (its backward's input), else None.
    """

    starts: torch.Tensor
    merged: torch.Tensor
    size0: torch.Tensor
    K: int
    triton: dict | None = None

    def numpy(self):
        """``(starts bool, merged int64, size0 int64)`` as NumPy arrays (for the numba tables)."""
        return (self.starts.cpu().numpy().astype(np.bool_), self.merged.cpu().numpy().astype(np.int64),
                self.size0.cpu().numpy().astype(np.int64))

    def sizes_before(self) -> torch.Tensor:
        """``[R, T]`` int64: live slots before each token."""
        delta = self.starts.to(torch.int64) - (self.merged >= 0).to(torch.int64)
        after = self.size0.unsqueeze(1) + delta.cumsum(1)
        return after - delta

    def final_size(self) -> torch.Tensor:
        """``[R]`` int64: live slots after the last token."""
        delta = self.starts.to(torch.int64) - (self.merged >= 0).to(torch.int64)
        return self.size0 + delta.sum(1)
