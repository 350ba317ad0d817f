"""Synthetic piecewise-stationary inputs for DLA: the demo, the benchmarks and the property suite use them.

Each (batch, head) pair gets its own sequence of *regimes*. A regime lasts a random number of tokens and
has its own key direction and value direction; inside it, keys and values jitter around those
directions. A token that begins a new regime therefore turns the open slot's state towards a new
direction, which is what the state information score measures, so boundaries cluster at regime changes.

How strongly they cluster depends on the decay. The score compares the open slot with what it would
become: a unit token orthogonal to an open state that has settled under decay ``a`` turns it by an
angle ``theta`` with ``tan(theta) ~ (1 - a) / a``, and ``I_t = 2 sin(theta / 2)`` (up to the guards).
``I_t >= 0.6`` needs ``theta >= 35`` degrees, i.e. ``a <~ 0.59``. At the default ``decay = 0.5`` a token
that begins a regime scores about 0.8 and a token of the current regime about 0.3 (0.4 at the 95th
percentile, default jitter), so the paper's ``tau = 0.6`` separates the two; with a slower decay the open
slot becomes too stiff for a single token to reach ``tau`` and regime changes go unnoticed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["piecewise_stationary", "regime_starts"]


def piecewise_stationary(
    B: int = 1,
    T: int = 512,
    H: int = 4,
    Dk: int = 16,
    Dv: int = 16,
    K: int = 8,
    *,
    regime_length: float = 32.0,
    min_regime_length: int = 8,
    jitter: float = 0.4,
    decay: float | Sequence[float] = 0.5,
    decay_jitter: float = 0.0,
    recency: float = 0.7,
    beta: float | None = None,
    seed: int | None = 0,
    return_regimes: bool = False,
):
    """Random DLA inputs whose statistics change at random regime boundaries.

    Args:
        B, T, H, Dk, Dv, K: batch, time, heads, key and value width, cache capacity (``K >= 2``).
        regime_length: mean regime length in tokens. Lengths are ``min_regime_length`` plus a geometric
            number with the remaining mean, so changes are memoryless and never closer than the minimum.
        min_regime_length: the shortest regime, ``>= 1``.
        jitter: the size of the per-token noise relative to the regime's direction (0: every token of
            a regime is identical, so only regime changes score above zero).
        decay: ``a = exp(g)`` in ``(0, 1]``, one value for every head or a sequence of ``H`` values
            (one per head). See the module docstring for why ``0.5`` is the default.
        decay_jitter: standard deviation of a per-token perturbation of ``g = log(a)`` (clipped to
            ``g <= 0``).
        recency: the read weights are ``lambda_t[j] = recency ** j`` for every token: the open slot
            weighs 1, the one before it ``recency``, and so on.
        beta: None for the scalar-decay backbone (``beta`` is not returned); a value in ``[0, 1]`` to
            return a constant ``beta`` array as a sixth array for the delta-rule backbone.
        seed: seed of the NumPy generator (None: fresh entropy).
        return_regimes: also return the regime index of every token, int64 ``[B, T, H]``.

    Returns:
        ``(q, k, v, g, slot_weights)`` as float64 NumPy arrays in ``dla_ref.forward``'s layout
        (``[B, T, H, Dk]``, ``[B, T, H, Dk]``, ``[B, T, H, Dv]``, ``[B, T, H]``, ``[B, T, H, K]``), then
        ``beta`` ``[B, T, H]`` if ``beta`` is given, then ``regimes`` if ``return_regimes``.
        Keys and queries have unit norm; values have norm about 1.
    """
    if K < 2:
        raise ValueError(f"K: the cache capacity must be >= 2, got {K}")
    if min_regime_length < 1 or regime_length < min_regime_length:
        raise ValueError("regime_length: expected regime_length >= min_regime_length >= 1")
    decays = np.broadcast_to(np.asarray(decay, dtype=np.float64), (H,))
    if not np.all((decays > 0) & (decays <= 1)):
        raise ValueError(f"decay: expected values in (0, 1], got {decay!r}")
    if beta is not None and not 0 <= beta <= 1:
        raise ValueError(f"beta: expected a value in [0, 1], got {beta!r}")
    rng = np.random.default_rng(seed)

    regimes = np.zeros((B, T, H), dtype=np.int64)
    k = np.zeros((B, T, H, Dk))
    v = np.zeros((B, T, H, Dv))
    for b in range(B):
        for h in range(H):
            regimes[b, :, h] = _regime_index(T, regime_length, min_regime_length, rng)
            n_regimes = int(regimes[b, -1, h]) + 1 if T else 0
            key_dirs = _unit(rng.standard_normal((n_regimes, Dk)))
            value_dirs = _unit(rng.standard_normal((n_regimes, Dv)))
            r = regimes[b, :, h]
            k[b, :, h] = _unit(key_dirs[r] + jitter * rng.standard_normal((T, Dk)) / np.sqrt(Dk))
            v[b, :, h] = value_dirs[r] + jitter * rng.standard_normal((T, Dv)) / np.sqrt(Dv)

    q = _unit(rng.standard_normal((B, T, H, Dk)))
    g = np.log(decays) + decay_jitter * rng.standard_normal((B, T, H))
    g = np.minimum(g, 0.0)
    slot_weights = np.broadcast_to(recency ** np.arange(K, dtype=np.float64), (B, T, H, K)).copy()

    out = [q, k, v, g, slot_weights]
    if beta is not None:
        out.append(np.full((B, T, H), float(beta)))
    if return_regimes:
        out.append(regimes)
    return tuple(out)


def regime_starts(regimes: np.ndarray) -> np.ndarray:
    """Boolean ``[B, T, H]``: true where a token begins a new regime (including t = 0)."""
    starts = np.ones(regimes.shape, dtype=bool)
    starts[:, 1:] = regimes[:, 1:] != regimes[:, :-1]
    return starts


def _regime_index(T: int, mean_length: float, min_length: int, rng: np.random.Generator) -> np.ndarray:
    """The regime index of each of T tokens: lengths min_length + Geometric(mean - min_length)."""
    index = np.zeros(T, dtype=np.int64)
    t, r = 0, 0
    extra_mean = mean_length - min_length
    while t < T:
        extra = rng.geometric(1.0 / (extra_mean + 1.0)) - 1 if extra_mean > 0 else 0
        length = min_length + int(extra)
        index[t : t + length] = r
        t, r = t + length, r + 1
    return index


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def jittered_regimes(B, T, H, Dk, Dv, K, *, seed, regime_length=12.0, jitter=0.3, decay=0.5):
    """Tokens jittering around per-regime directions; g around log(decay); random read weights."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, Dk))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    change = rng.random((B, T, H)) < 1.0 / regime_length
    change[:, 0] = True
    idx = np.cumsum(change, axis=1)  # regime index per token
    dk = rng.standard_normal((B, int(idx.max()) + 1, H, Dk))
    dv = rng.standard_normal((B, int(idx.max()) + 1, H, Dv))
    dk /= np.linalg.norm(dk, axis=-1, keepdims=True)
    dv /= np.linalg.norm(dv, axis=-1, keepdims=True)
    bi, hi = np.arange(B)[:, None, None], np.arange(H)[None, None, :]
    k = dk[bi, idx, hi] + jitter * rng.standard_normal((B, T, H, Dk)) / np.sqrt(Dk)
    v = dv[bi, idx, hi] + jitter * rng.standard_normal((B, T, H, Dv)) / np.sqrt(Dv)
    g = np.minimum(np.log(decay) + 0.1 * rng.standard_normal((B, T, H)), 0.0)
    w = rng.random((B, T, H, K))
    return q, k, v, g, w
