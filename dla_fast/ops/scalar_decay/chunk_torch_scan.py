"""Numba kernels: the scalar, sequential core of the chunked algorithm (docs/chunked-algorithm.md §1-3).

Everything here is scalar work per (batch, head): the boundary decisions of a chunk's tokens, the
lowest-density merges, and the small per-chunk tables the torch orchestration (``chunked.py``) turns
into matrix products. No ``Dk x Dv`` data is touched. The scan runs in float64 whatever the input dtype.

Compiled with ``cache=True`` (the machine code is stored in ``__pycache__`` and reused by later
processes; ``ops/common/numba.py``).
"""

from __future__ import annotations

from math import exp

import numpy as np

from ..common.numba import njit
from ..common.score import information_score_numba as information_score


@njit
def lowest_density_pair(counts, info, m):
    """Index i of the adjacent pair (i, i+1) among the first m slots with the lowest density; ties: oldest."""
    best = 0
    best_density = (info[0] + info[1]) / (counts[0] + counts[1])
    for i in range(1, m - 1):
        density = (info[i] + info[i + 1]) / (counts[i] + counts[i + 1])
        if density < best_density:
            best = i
            best_density = density
    return best


@njit
def merge_pair(counts, info, pos, i, m):
    """Merge slots (i, i+1) of the first m in place: sums of counts and info, the left slot's start."""
    counts[i] += counts[i + 1]
    info[i] += info[i + 1]
    for j in range(i + 1, m - 1):
        counts[j] = counts[j + 1]
        info[j] = info[j + 1]
        pos[j] = pos[j + 1]
    counts[m - 1] = 0
    info[m - 1] = 0.0
    pos[m - 1] = 0


@njit
def _slot_of(pos, m, position):
    """The live slot (of the first m, starts ``pos`` increasing) holding token ``position``."""
    j = m - 1
    while pos[j] > position:
        j -= 1
    return j


@njit
def _score_token(r, t, m, c0, pos, kP, v, dgram, ss, g, carry_decay, nP, numel, eps, norm_eps):
    """``(score, x)`` of token t of row r against its open slot (the last of ``m >= 1`` live slots)."""
    first = pos[r, m - 1]
    x = 0.0
    lo = 0
    if first < c0:  # the open slot began before the chunk: its carried state, then this chunk's tokens
        for e in range(v.shape[2]):
            x += float(kP[r, t, e]) * float(v[r, t, e])
        x *= carry_decay[r, t]
    else:
        lo = first - c0
    for s in range(lo, t):
        x += dgram[r, t, s]
    return information_score(nP, x, ss[r, t], g[r, t], numel, eps, norm_eps), x


@njit
def _apply_decision(r, t, c0, start, score, x, nP, ss_t, g_t, m, counts, info, pos):
    """Open a slot for token t (merging the lowest-density pair of a full cache first) or extend the open
    one. Returns ``(m, nP, merged index or -1)``."""
    K = counts.shape[1]
    mi = -1
    if start:
        if m == K:
            mi = lowest_density_pair(counts[r], info[r], m)
            merge_pair(counts[r], info[r], pos[r], mi, m)
            m -= 1
        counts[r, m] = 1
        info[r, m] = score
        pos[r, m] = c0 + t
        return m + 1, ss_t, mi
    a = exp(g_t)
    counts[r, m - 1] += 1
    info[r, m - 1] += score
    return m, max(a * a * nP + 2.0 * a * x + ss_t, 0.0), mi


@njit
def _read_operands(r, t, m, m0, c0, pos, start_pos, start_phys, lam, decay_in, q, n_store, W, X, coef):
    """Token t's read weights: of the chunk's tokens (``W``) and of the storages live at the chunk start
    (``X``, each start slot now inside one live slot)."""
    C = W.shape[1]
    Dk = q.shape[2]
    j = m - 1
    for s in range(t, -1, -1):  # walk the live slots from the newest back
        while pos[r, j] > c0 + s:
            j -= 1
        W[r, t, s] = lam[r, t, m - 1 - j]
    for s in range(t + 1, C):
        W[r, t, s] = 0.0
    for p in range(n_store):
        coef[p] = 0.0
    j = m - 1
    for i in range(m0 - 1, -1, -1):
        while pos[r, j] > start_pos[i]:
            j -= 1
        coef[start_phys[i]] = lam[r, t, m - 1 - j] * decay_in[r, t]
    for p in range(n_store):
        for d in range(Dk):
            X[r, t, p * Dk + d] = coef[p] * q[r, t, d]


@njit
def _clear_padding(r, n, n_store, Dk, scores, starts, merged, W, X):
    """The padded tokens ``n..C-1`` of the last chunk: no decision, no weights."""
    for t in range(n, W.shape[1]):
        scores[r, t] = 0.0
        starts[r, t] = False
        merged[r, t] = -1
        for s in range(W.shape[1]):
            W[r, t, s] = 0.0
        for p in range(n_store * Dk):
            X[r, t, p] = 0.0


@njit
def _assign_storages(r, m, m0, pos, phys, start_pos, start_phys, add_src, add_dst, zero_rows, n_add, n_zero):
    """Storages at the chunk end: an end slot keeps the storage of its oldest start slot (the others are
    added into it); slots made only of this chunk's tokens take free storages. Returns ``(n_add, n_zero)``."""
    K = phys.shape[1]
    anchor = np.full(K, -1, dtype=np.int64)
    for i in range(m0):
        j = _slot_of(pos[r], m, start_pos[i])
        if anchor[j] < 0:
            anchor[j] = start_phys[i]
        else:
            add_src[n_add] = r * K + start_phys[i]
            add_dst[n_add] = r * K + anchor[j]
            n_add += 1
    used = np.zeros(K, dtype=np.bool_)
    for j in range(m):
        if anchor[j] >= 0:
            used[anchor[j]] = True
    free = 0
    for j in range(m):
        if anchor[j] < 0:
            while used[free]:
                free += 1
            used[free] = True
            anchor[j] = free
            zero_rows[n_zero] = r * K + free
            n_zero += 1
        phys[r, j] = anchor[j]
    for j in range(m, K):
        phys[r, j] = -1
        pos[r, j] = 0
    return n_add, n_zero


@njit
def _token_targets(r, n, c0, m, pos, phys, tok_slot, tok_target):
    """Where the chunk's tokens land: the end slots ``first..m-1`` (a suffix: the tokens are the newest).
    Writes each token's slot relative to ``first`` and those slots' flat storages; returns ``m - first``."""
    R, K = phys.shape
    if n == 0:  # a row past its end (variable-length batches): nothing lands, possibly no slot at all
        for s in range(tok_slot.shape[1]):
            tok_slot[r, s] = -1
        for i in range(K):
            tok_target[r, i] = R * K
        return 0
    first = _slot_of(pos[r], m, c0)
    for s in range(n):
        tok_slot[r, s] = _slot_of(pos[r], m, c0 + s) - first
    for s in range(n, tok_slot.shape[1]):
        tok_slot[r, s] = -1
    for i in range(K):
        tok_target[r, i] = r * K + phys[r, first + i] if first + i < m else R * K  # R * K: the trash row
    return m - first


@njit
def _update_operand(Rt, token_decay, k, tok_slot, L):
    """``L[r, i * Dk + d, s] = exp(Gc[C-1] - Gc[s]) k_s[d]`` if token s lands in the i-th token slot, else 0."""
    R, C, Dk = k.shape
    for r in range(R):
        for i in range(Rt * Dk):
            for s in range(C):
                L[r, i, s] = 0.0
        for s in range(C):
            i = tok_slot[r, s]
            if i >= 0:
                for d in range(Dk):
                    L[r, i * Dk + d, s] = token_decay[r, s] * k[r, s, d]


@njit
def _open_norm(P, r):
    total = 0.0
    for d in range(P.shape[1]):
        for e in range(P.shape[2]):
            total += float(P[r, d, e]) * float(P[r, d, e])
    return total


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
        nP = _open_norm(P, r) if m0 > 0 else 0.0
        n = n_rows[r]
        for t in range(n):
            if m == 0:
                score, x, start = 0.0, 0.0, True  # the first token of an empty cache always opens a slot
            else:
                score, x = _score_token(r, t, m, c0, pos, kP, v, dgram, ss, g, carry_decay, nP, numel, eps, norm_eps)
                start = boundaries[r, t] if use_boundaries else score >= tau
            m, nP, mi = _apply_decision(r, t, c0, start, score, x, nP, ss[r, t], g[r, t], m, counts, info, pos)
            scores[r, t] = score
            starts[r, t] = start
            merged[r, t] = mi
            _read_operands(r, t, m, m0, c0, pos, start_pos, start_phys, lam, decay_in, q, n_store, W, X, coef)
        _clear_padding(r, n, n_store, Dk, scores, starts, merged, W, X)
        size[r] = m
        n_add, n_zero = _assign_storages(r, m, m0, pos, phys, start_pos, start_phys, add_src, add_dst, zero_rows,
                                         n_add, n_zero)
        Rt = max(Rt, _token_targets(r, n, c0, m, pos, phys, tok_slot, tok_target))
    _update_operand(Rt, token_decay, k, tok_slot, L)  # for the Rt end slots that can receive tokens in any row
    return n_store, Rt, n_add, n_zero
