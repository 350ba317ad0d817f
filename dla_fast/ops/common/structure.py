"""The partition a forward decided, in compact per-token form: what the backward passes hold fixed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def checkpoint_interval(n_chunks: int) -> int:
    """Chunks between the backward's stored slot states: ``ceil(sqrt(n_chunks))`` (at least 1), so that the
    checkpoints and one segment's states take about as much memory."""
    return max(1, math.isqrt(n_chunks - 1) + 1 if n_chunks > 1 else 1)


@dataclass
class SlotCheckpoints:
    """The delta rule's slot states where its kernel forward's walk passed chunks ``0, every, 2 every, ...`` of
    ``chunk`` tokens: ``states [n, R, K, Dk, Dv]`` float32, the backward's checkpoints, kept so that it does not walk
    to them again; ``decided``, the merge kernel's ``DecidedStructure`` and the initial sizes ``[R]``, from which the
    backward builds its partition maps (the partition kernel's maps mode, or ``live_starts_from_lists`` for
    ``DevicePartition``) instead of rebuilding them from the trace."""

    chunk: int
    every: int
    states: torch.Tensor
    decided: tuple | None = None


@dataclass
class Structure:
    """Which tokens opened a slot and which pairs merged, per (batch, head) row.

    Attributes:
        starts: ``[R, T]`` bool, token t opened a slot.
        merged: ``[R, T]`` integer (int8 when K <= 128), the merged pair index at t, or -1.
        size0: ``[R]`` int64, the initial cache's size.
        K: capacity.
        triton: the Triton forward's own structure tensors when it ran (its backward's input), else None.
        slot_checkpoints: the delta rule's kernel forward's slot states at its backward's checkpoints, when that
            forward ran with gradients asked for, else None.
    """

    starts: torch.Tensor
    merged: torch.Tensor
    size0: torch.Tensor
    K: int
    triton: dict | None = None
    slot_checkpoints: SlotCheckpoints | None = None

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
