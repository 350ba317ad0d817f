"""Seeded synthetic streams for the study: ``dla_ref.synthetic.piecewise_stationary`` plus planted needles.

A stream is one (batch, head) sequence: keys ``k`` ``[T, Dk]`` (unit norm), values ``v`` ``[T, Dv]`` (norm
about 1), log decays ``g`` ``[T]``, the regime index of every token, and the positions of planted needles.
The regime-change rate is the fraction of tokens that begin a regime (``1 / mean regime length``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dla_ref.synthetic import piecewise_stationary

__all__ = ["Stream", "make_stream"]


@dataclass(frozen=True)
class Stream:
    """One synthetic sequence (see the module docstring)."""

    k: np.ndarray  # [T, Dk]
    v: np.ndarray  # [T, Dv]
    g: np.ndarray  # [T], log decay <= 0
    regimes: np.ndarray  # [T] int64, regime index
    needles: np.ndarray  # [N] int64, increasing positions of planted needles (may be empty)

    @property
    def T(self) -> int:
        return int(self.k.shape[0])

    @property
    def log_decay_prefix(self) -> np.ndarray:
        """``G_s = g_0 + ... + g_s``: the decay from ``s`` to ``t`` is ``exp(G_t - G_s)``."""
        return np.cumsum(self.g)

    def regime_starts(self) -> np.ndarray:
        """Positions (int64, increasing, starting with 0) where a regime begins."""
        return np.flatnonzero(np.r_[True, self.regimes[1:] != self.regimes[:-1]]).astype(np.int64)

    def oracle_boundaries(self) -> np.ndarray:
        """Bool ``[T]``: every regime start, every needle and the token after each needle."""
        opens = np.zeros(self.T, dtype=bool)
        opens[self.regime_starts()] = True
        opens[self.needles] = True
        after = self.needles + 1
        opens[after[after < self.T]] = True
        return opens


def make_stream(
    T: int,
    *,
    rate: float,
    decay: float,
    seed: int,
    Dk: int = 16,
    Dv: int = 16,
    jitter: float = 0.4,
    n_needles: int = 0,
) -> Stream:
    """A piecewise-stationary stream whose regimes begin at ``rate`` per token (``0 < rate <= 1``).

    Regime lengths are ``1 + Geometric`` with mean ``1 / rate`` (``piecewise_stationary`` with
    ``regime_length = 1 / rate``, ``min_regime_length = 1``); the per-step decay is ``decay`` in ``(0, 1]``.
    ``n_needles`` needles replace tokens at random positions at least 4 apart in the middle 90% of the
    stream: a fresh random unit key (no regime's direction) and a fresh random unit value, each used once.
    """
    if not 0 < rate <= 1:
        raise ValueError(f"rate: expected 0 < rate <= 1, got {rate}")
    _, k, v, g, _, regimes = piecewise_stationary(
        1, T, 1, Dk, Dv, 2, regime_length=1.0 / rate, min_regime_length=1, jitter=jitter, decay=decay,
        seed=seed, return_regimes=True,
    )  # fmt: skip
    k, v, g, regimes = k[0, :, 0].copy(), v[0, :, 0].copy(), g[0, :, 0].copy(), regimes[0, :, 0].copy()
    needles = np.zeros(0, dtype=np.int64)
    if n_needles:
        rng = np.random.default_rng([seed, 7919])
        candidates = np.arange(T // 20, T - T // 20, 4)
        if len(candidates) < n_needles:
            raise ValueError(f"n_needles: {n_needles} needles do not fit in T = {T}")
        needles = np.sort(rng.choice(candidates, n_needles, replace=False)).astype(np.int64)
        unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
        k[needles] = unit(rng.standard_normal((n_needles, Dk)))
        v[needles] = unit(rng.standard_normal((n_needles, Dv)))
    return Stream(k=k, v=v, g=g, regimes=regimes, needles=needles)
