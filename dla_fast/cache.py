"""The DLA cache and the per-call trace as torch tensors: twins of ``dla_ref.Cache`` and ``dla_ref.Trace``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

import dla_ref


def _info_dtype(states_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if states_dtype == torch.float64 else torch.float32


@dataclass
class Cache:
    """An ordered cache of at most K slots per (batch, head), oldest slot first (same fields as ``dla_ref.Cache``).

    Attributes:
        states: ``[B, H, K, Dk, Dv]`` float32 (float64 when the inputs are float64), the slot states ``S_i``.
        counts: ``[B, H, K]`` int64, ``n_i``: how many tokens each slot holds.
        info:   ``[B, H, K]`` float32 (float64 with float64 states), ``Ibar_i``: the sum of the slot's scores.
        size:   ``[B, H]`` int64, how many slots are in use; the open (newest) slot is ``size - 1``.

    Slots at index ``>= size`` are unused and all zero. ``dla_fast.step`` updates a cache in place.

    ``checked`` is True once the values were checked (sizes and counts in range, finite states, unused slots
    zero) or the cache was built by ``dla_fast`` (``forward``, ``empty``, ``step``): ``step`` checks an
    unchecked cache once, on its first call (one host sync on an accelerator), and never per token.

    ``scratch`` belongs to ``step``, not to the state (never copied or compared): the signature of the last
    call it validated and the decode kernels' buffers and compiled launches, so that a decode loop pays for
    them once.
    """

    states: torch.Tensor
    counts: torch.Tensor
    info: torch.Tensor
    size: torch.Tensor
    checked: bool = field(default=False, repr=False, compare=False)
    scratch: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        """Pickling and deep copies leave ``scratch`` behind (compiled kernels, buffers: this process's)."""
        return {**self.__dict__, "scratch": {}}

    @classmethod
    def empty(cls, B: int, H: int, K: int, Dk: int, Dv: int, *, dtype=torch.float32, device=None) -> Cache:
        """An empty cache; ``dtype`` is the states' dtype (float32, or float64 for exact checks)."""
        return cls(
            states=torch.zeros((B, H, K, Dk, Dv), dtype=dtype, device=device),
            counts=torch.zeros((B, H, K), dtype=torch.int64, device=device),
            info=torch.zeros((B, H, K), dtype=_info_dtype(dtype), device=device),
            size=torch.zeros((B, H), dtype=torch.int64, device=device),
            checked=True,
        )

    @classmethod
    def from_ref(cls, cache: dla_ref.Cache, *, device=None, dtype=torch.float32) -> Cache:
        """The torch twin of a ``dla_ref.Cache`` (states in ``dtype``, info float32 or float64 to match)."""
        return cls(
            states=torch.as_tensor(np.asarray(cache.states), device=device).to(dtype),
            counts=torch.as_tensor(np.asarray(cache.counts), device=device).to(torch.int64),
            info=torch.as_tensor(np.asarray(cache.info), device=device).to(_info_dtype(dtype)),
            size=torch.as_tensor(np.asarray(cache.size), device=device).to(torch.int64),
        )

    def to_ref(self) -> dla_ref.Cache:
        """A float64 ``dla_ref.Cache`` with the same content (copies to host)."""
        return dla_ref.Cache(
            states=self.states.detach().to("cpu", torch.float64).numpy(),
            counts=self.counts.detach().to("cpu", torch.int64).numpy(),
            info=self.info.detach().to("cpu", torch.float64).numpy(),
            size=self.size.detach().to("cpu", torch.int64).numpy(),
        )

    @property
    def capacity(self) -> int:
        return self.counts.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.states.device

    def clone(self) -> Cache:
        return Cache(self.states.clone(), self.counts.clone(), self.info.clone(), self.size.clone(), self.checked)

    copy = clone

    def to(self, device=None, dtype: torch.dtype | None = None) -> Cache:
        """This cache on ``device`` with states in ``dtype`` (info follows: float64 iff states are)."""
        dtype = self.states.dtype if dtype is None else dtype
        return Cache(
            self.states.to(device=device, dtype=dtype),
            self.counts.to(device=device),
            self.info.to(device=device, dtype=_info_dtype(dtype)),
            self.size.to(device=device),
            self.checked,
        )


@dataclass
class Trace:
    """What happened at each token, ``[B, T, H]`` each (twin of ``dla_ref.Trace``).

    Attributes:
        scores: float32 (float64 for float64 inputs), the state information score ``I_t``.
        starts: bool, whether token t opened a new slot.
        merged: int64, the index i of the adjacent pair (i, i+1) merged at step t, or -1.

    Fields are readable as attributes and as ``trace["scores"]``.
    """

    scores: torch.Tensor
    starts: torch.Tensor
    merged: torch.Tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in ("scores", "starts", "merged"):
            raise KeyError(name)
        return getattr(self, name)

    def keys(self):
        return ("scores", "starts", "merged")

    def to_ref(self) -> dla_ref.Trace:
        """A ``dla_ref.Trace`` of NumPy arrays (scores float64)."""
        return dla_ref.Trace(
            scores=self.scores.detach().to("cpu", torch.float64).numpy(),
            starts=self.starts.detach().cpu().numpy(),
            merged=self.merged.detach().to("cpu", torch.int64).numpy(),
        )
