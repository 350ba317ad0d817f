"""Numba kernels shared by the backbones' chunked torch paths: the structure-side scalar work of a chunk.

A chunk's scan (``scalar_decay/chunk_torch_scan.py``, ``delta_rule/chunk_torch_scan.py``) decides the chunk's
tokens with its backbone's score, then calls these to apply the decisions (the lowest-density merge on a new
slot in a full cache), to write the read operand (``W``, ``X``) and the update operand (``L``) of the torch
products, and to map the slots at the chunk end onto storages (docs/chunked-algorithm.md sections 2-3; the
delta rule transports queries and keys instead of decaying them, docs/delta-rule-chunked.md). No ``Dk x Dv``
data is touched.
"""

from __future__ import annotations

import numpy as np

from .numba import njit


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
def open_or_join(r, t, c0, start, score, m, counts, info, pos):
    """Open a slot for token t (merging the lowest-density pair of a full cache first) or extend the open
    one: counts, information sums and slot starts of row r, in place. Returns ``(m, merged index or -1)``."""
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
        return m + 1, mi
    counts[r, m - 1] += 1
    info[r, m - 1] += score
    return m, mi


@njit
def slot_of(pos, m, position):
    """The live slot (of the first m, starts ``pos`` increasing) holding token ``position``."""
    j = m - 1
    while pos[j] > position:
        j -= 1
    return j


@njit
def read_operands(r, t, m, m0, c0, pos, start_pos, start_phys, lam, decay_in, q, n_store, W, X, coef):
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
def clear_padding(r, n, n_store, Dk, scores, starts, merged, W, X):
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
def assign_storages(r, m, m0, pos, phys, start_pos, start_phys, add_src, add_dst, zero_rows, n_add, n_zero):
    """Storages at the chunk end: an end slot keeps the storage of its oldest start slot (the others are
    added into it); slots made only of this chunk's tokens take free storages. Returns ``(n_add, n_zero)``."""
    K = phys.shape[1]
    anchor = np.full(K, -1, dtype=np.int64)
    for i in range(m0):
        j = slot_of(pos[r], m, start_pos[i])
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
def token_targets(r, n, c0, m, pos, phys, tok_slot, tok_target):
    """Where the chunk's tokens land: the end slots ``first..m-1`` (a suffix: the tokens are the newest).
    Writes each token's slot relative to ``first`` and those slots' flat storages; returns ``m - first``."""
    R, K = phys.shape
    if n == 0:  # a row past its end (variable-length batches): nothing lands, possibly no slot at all
        for s in range(tok_slot.shape[1]):
            tok_slot[r, s] = -1
        for i in range(K):
            tok_target[r, i] = R * K
        return 0
    first = slot_of(pos[r], m, c0)
    for s in range(n):
        tok_slot[r, s] = slot_of(pos[r], m, c0 + s) - first
    for s in range(n, tok_slot.shape[1]):
        tok_slot[r, s] = -1
    for i in range(K):
        tok_target[r, i] = r * K + phys[r, first + i] if first + i < m else R * K  # R * K: the trash row
    return m - first


@njit
def update_operand(Rt, token_decay, k, tok_slot, L):
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
def open_norm(P, r):
    """``||P[r]||^2`` in float64. (``np.float64``, not ``float``: numba's ``float()`` of a float32 stays float32, and a
    float32 ``nP`` against float64 ``x``, ``ss`` is the inconsistency docs/precision.md section 9 is about.)"""
    total = 0.0
    for d in range(P.shape[1]):
        for e in range(P.shape[2]):
            p = np.float64(P[r, d, e])
            total += p * p
    return total
