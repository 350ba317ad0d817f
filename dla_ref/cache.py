"""The DLA cache and the per-call trace, as NumPy arrays (float64)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Cache:
    """An ordered cache of at most K slots per (batch, head), oldest slot first.

    Attributes:
        states: ``[B, H, K, Dk, Dv]`` float64, the slot states ``S_i``.
        counts: ``[B, H, K]`` int64, ``n_i``: how many tokens each slot holds.
        info:   ``[B, H, K]`` float64, ``Ibar_i``: the sum of the scores of those tokens.
        size:   ``[B, H]`` int64, how many slots are in use; the open (newest) slot is ``size - 1``.

    Slots at index ``>= size`` are unused and all zero.
    """

    states: np.ndarray
    counts: np.ndarray
    info: np.ndarray
    size: np.ndarray

    @classmethod
    def empty(cls, B: int, H: int, K: int, Dk: int, Dv: int) -> Cache:
        return cls(
            states=np.zeros((B, H, K, Dk, Dv)),
            counts=np.zeros((B, H, K), dtype=np.int64),
            info=np.zeros((B, H, K)),
            size=np.zeros((B, H), dtype=np.int64),
        )

    @property
    def capacity(self) -> int:
        return self.counts.shape[-1]

    def copy(self) -> Cache:
        return Cache(self.states.copy(), self.counts.copy(), self.info.copy(), self.size.copy())


@dataclass
class Trace:
    """What happened at each token, ``[B, T, H]`` each.

    Attributes:
        scores: float64, the state information score ``I_t``.
        starts: bool, whether token t opened a new slot.
        merged: int64, the index i of the adjacent pair (i, i+1) merged at step t, or -1.

    Fields are readable as attributes and as ``trace["scores"]``.
    """

    scores: np.ndarray
    starts: np.ndarray
    merged: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in ("scores", "starts", "merged"):
            raise KeyError(name)
        return getattr(self, name)

    def keys(self):
        return ("scores", "starts", "merged")
