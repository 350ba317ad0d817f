"""Numba kernels: the scalar, sequential core of the chunked algorithm (docs/chunked-algorithm.md §1-3).

Everything here is scalar work per (batch, head): the boundary decisions of a chunk's tokens (the scalar-decay
score from Gram tables); the merges and the small per-chunk tables the torch orchestration (``chunk_torch.py``)
turns into matrix products come from ``ops/common/chunk_scan.py``, shared with the delta rule. No ``Dk x Dv`` data
is touched. The scan runs in float64 whatever the input dtype.

Compiled with ``cache=True`` (the machine code is stored in ``__pycache__`` and reused by later
processes; ``ops/common/numba.py``).
"""

from __future__ import annotations

from math import exp

import numpy as np

from ..common.chunk_scan import (
    assign_storages,
    clear_padding,
    open_norm,
    open_or_join,
    read_operands,
    token_targets,
    update_operand,
)
from ..common.numba import njit
from ..common.score import information_score_numba as information_score


@njit
def _score_token(r, t, m, c0, pos, kP, v, dgram, ss, g, carry_decay, nP, numel, eps, norm_eps):
    """``(score, x)`` of token t of row r against its open slot (the last of ``m >= 1`` live slots)."""
    first = pos[r, m - 1]
    x = 0.0
    lo = 0
    if first < c0:  # the open slot began before the chunk: its carried state, then this chunk's tokens
        for e in range(v.shape[2]):
            x += np.float64(kP[r, t, e]) * np.float64(v[r, t, e])  # float64 (numba's float() keeps float32)
        x *= carry_decay[r, t]
    else:
        lo = first - c0
    for s in range(lo, t):
        x += dgram[r, t, s]
    return information_score(nP, x, ss[r, t], g[r, t], numel, eps, norm_eps), x


@njit
def _decide(r, t, c0, start, score, x, nP, ss_t, g_t, m, counts, info, pos):
    """``open_or_join`` and the open slot's new ``||P||^2``: ``ss_t`` for a new slot, ``||a P + k v^T||^2`` for a
    join. Returns ``(m, nP, merged index or -1)``."""
    m, mi = open_or_join(r, t, c0, start, score, m, counts, info, pos)
    if start:
        return m, ss_t, mi
    a = exp(g_t)
    return m, max(a * a * nP + 2.0 * a * x + ss_t, 0.0), mi


@njit
def scan_chunk(n_rows, c0, tau, eps, norm_eps, use_boundaries, tokens, cache, out):
    """Decisions, merges and the read / update operands of one chunk, for every (batch, head) row.

    Sizes: ``R`` rows (batch x heads), chunk length ``C`` (the first ``n`` tokens are valid), capacity
    ``K``. Slot states live in a buffer of ``R * K`` *storages* plus one trash row (index ``R * K``);
    ``phys`` maps each row's live slots to its storages, so a merge never moves a state: the left
    slot's storage absorbs the right one's, and a new slot takes a free storage.

    Args (``cd``: the compute dtype, float32 or float64), grouped in three tuples:
        n_rows, c0: ``[R]`` int64, the number of valid tokens of each row in this chunk (0 to C: rows end at
            their own lengths), and the index (in this call) of the chunk's first token.
        tau, eps, norm_eps, use_boundaries: the decision's scalars.
        tokens = (kP, v, P, q, k, dgram, ss, g, carry_decay, decay_in, token_decay, lam, boundaries):
        kP: ``[R, C, Dv]`` cd, ``k_t^T P_c`` for the open state ``P_c`` at the chunk start.
        v: ``[R, C, Dv]``, q, k: ``[R, C, Dk]`` cd, the chunk's tokens.  P: ``[R, Dk, Dv]`` cd, ``P_c``.
        dgram: ``[R, C, C]`` cd, ``exp(Gc[t-1] - Gc[s]) (k_t.k_s)(v_t.v_s)`` for ``s < t``.
        ss: ``[R, C]`` float64, ``||k_t||^2 ||v_t||^2``.   g: ``[R, C]`` float64 log decays.
        carry_decay, decay_in, token_decay: ``[R, C]`` cd, ``exp(Gc[t-1])``, ``exp(Gc[t])``,
            ``exp(Gc[C-1] - Gc[t])`` (``Gc``: the chunk's cumulative log decay).
        lam: ``[R, C, K]`` cd, the read weights.  boundaries: ``[R, C]`` bool, used iff ``use_boundaries``.
        cache = (counts, info, size, pos, phys):
        counts, info, size: ``[R, K]`` int64, ``[R, K]`` float64, ``[R]`` int64: the scalar cache, in place.
        pos: ``[R, K]`` int64, the first token of every live slot (initial-cache slots negative), in place.
        phys: ``[R, K]`` int64, the storage (``0..K-1`` within the row) of every live slot, in place.

    Outputs (written), out = (scores, starts, merged, W, X, L, tok_target, add_src, add_dst, zero_rows):
        scores, starts, merged: ``[R, C]`` float64 / bool / int64, the chunk's trace.
        W: ``[R, C, C]`` cd: ``lam_t[recency of token s at t]`` for ``s <= t``, else 0.
        X: ``[R, C, K * Dk]`` cd, the read operand: ``X[t, p * Dk + d] = exp(Gc[t]) lam_t[recency at t of
            the slot in storage p] q_t[d]`` for the storages ``p < n_store`` live at the chunk start.
        L: ``[R, K * Dk, C]`` cd, the update operand: ``L[i * Dk + d, s] = exp(Gc[C-1] - Gc[s]) k_s[d]`` if
            token s lands in the i-th end slot holding chunk tokens, else 0 (rows ``i < Rt`` written).
        tok_target: ``[R, K]`` int64: the flat storage ``r * K + p`` of that i-th end slot; trash beyond.
        add_src, add_dst: ``[R * K]`` int64, flat storages: add ``src`` into ``dst`` (start slots merged into
            an older start slot's storage). zero_rows: ``[R * K]`` int64, storages that new slots take.

    Returns ``(n_store, Rt, n_add, n_zero)``: storages ``[0, n_store)`` hold every slot live at the chunk
    start, at most ``Rt`` end slots per row receive tokens, and the list lengths.
    """
    kP, v, P, q, k, dgram, ss, g, carry_decay, decay_in, token_decay, lam, boundaries = tokens
    counts, info, size, pos, phys = cache
    scores, starts, merged, W, X, L, tok_target, add_src, add_dst, zero_rows = out
    R, K = counts.shape
    Dk = q.shape[2]
    numel = float(Dk * v.shape[2])
    start_pos = np.empty(K, dtype=np.int64)
    start_phys = np.empty(K, dtype=np.int64)
    coef = np.empty(K, dtype=np.float64)
    tok_slot = np.empty((R, W.shape[1]), dtype=np.int64)
    n_store = 0
    for r in range(R):
        for i in range(size[r]):
            n_store = max(n_store, phys[r, i] + 1)
    Rt, n_add, n_zero = 0, 0, 0
    for r in range(R):
        m0 = size[r]
        for i in range(m0):
            start_pos[i] = pos[r, i]
            start_phys[i] = phys[r, i]
        m = m0
        nP = open_norm(P, r) if m0 > 0 else 0.0
        n = n_rows[r]
        for t in range(n):
            if m == 0:
                score, x, start = 0.0, 0.0, True  # the first token of an empty cache always opens a slot
            else:
                score, x = _score_token(r, t, m, c0, pos, kP, v, dgram, ss, g, carry_decay, nP, numel, eps, norm_eps)
                start = boundaries[r, t] if use_boundaries else score >= tau
            m, nP, mi = _decide(r, t, c0, start, score, x, nP, ss[r, t], g[r, t], m, counts, info, pos)
            scores[r, t] = score
            starts[r, t] = start
            merged[r, t] = mi
            read_operands(r, t, m, m0, c0, pos, start_pos, start_phys, lam, decay_in, q, n_store, W, X, coef)
        clear_padding(r, n, n_store, Dk, scores, starts, merged, W, X)
        size[r] = m
        n_add, n_zero = assign_storages(r, m, m0, pos, phys, start_pos, start_phys, add_src, add_dst, zero_rows,
                                         n_add, n_zero)
        Rt = max(Rt, token_targets(r, n, c0, m, pos, phys, tok_slot, tok_target))
    update_operand(Rt, token_decay, k, tok_slot, L)  # for the Rt end slots that can receive tokens in any row
    return n_store, Rt, n_add, n_zero
