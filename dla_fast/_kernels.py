"""Numba kernels: the scalar, sequential core of the chunked algorithm (docs/chunked-algorithm.md §1-3).

Everything here is scalar work per (batch, head): the boundary decisions of a chunk's tokens, the
lowest-density merges, and the small per-chunk tables the torch orchestration (``chunked.py``) turns
into matrix products. No ``Dk x Dv`` data is touched. The scan runs in float64 whatever the input dtype.

Compiled with ``cache=True`` (the machine code is stored in ``__pycache__`` and reused by later
processes); ``docs/fast-path.md`` gives the first-call compile time.
"""

from __future__ import annotations

from math import exp, expm1, sqrt

import numpy as np

try:
    import numba as nb

    njit = nb.njit(cache=True, nogil=True)
except ImportError:  # numba is a dependency; without it the same code runs as (slow) Python, for tiny checks

    def njit(fn):
        return fn


@njit
def information_score(nP, x, ss, g, numel, eps, norm_eps):
    """The score ``I_t`` from three scalars of the open state (stable form, docs/chunked-algorithm.md §1).

    Args (float64 scalars):
        nP: ``||P||^2``, the open state before the step.
        x: ``<P, u>`` with ``u = P' - a P`` the token's increment (scalar decay: ``u = k v^T``).
        ss: ``||u||^2``.
        g: the log decay, ``a = exp(g)``.
        numel: ``N = Dk * Dv``.
    """
    a = exp(g)
    r2 = nP / numel + norm_eps  # r^2
    w = 2.0 * a * x + ss  # ||P'||^2 - a^2 ||P||^2
    rp2 = max((a * a * nP + w) / numel + norm_eps, norm_eps)  # r'^2 (>= norm_eps exactly; guard the rounding)
    r = sqrt(r2)
    rp = sqrt(rp2)
    c = (expm1(2.0 * g) * norm_eps - w / numel) / r / rp / (a * r + rp)  # a/r' - 1/r = (a^2 r^2 - r'^2) / ...
    d2 = max(c * c * nP + 2.0 * c * x / rp + ss / rp2, 0.0)
    return sqrt(d2) / (sqrt(nP) / r + eps)


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
def scan_chunk(
    n, c0, kP, v, P, q, k, dgram, ss, g, carry_decay, decay_in, token_decay, lam, boundaries, use_boundaries,
    tau, eps, norm_eps,
    counts, info, size, pos, phys,
    scores, starts, merged, W, X, L, tok_target, add_src, add_dst, zero_rows,
):
    """Decisions, merges and the read / update operands of one chunk, for every (batch, head) row.

    Sizes: ``R`` rows (batch x heads), chunk length ``C`` (the first ``n`` tokens are valid), capacity
    ``K``. Slot states live in a buffer of ``R * K`` *storages* plus one trash row (index ``R * K``);
    ``phys`` maps each row's live slots to its storages, so a merge never moves a state: the left
    slot's storage absorbs the right one's, and a new slot takes a free storage.

    Args (``cd``: the compute dtype, float32 or float64):
        n, c0: the number of valid tokens and the index (in this call) of the chunk's first token.
        kP: ``[R, C, Dv]`` cd, ``k_t^T P_c`` for the open state ``P_c`` at the chunk start.
        v: ``[R, C, Dv]``, q, k: ``[R, C, Dk]`` cd, the chunk's tokens.  P: ``[R, Dk, Dv]`` cd, ``P_c``.
        dgram: ``[R, C, C]`` cd, ``exp(Gc[t-1] - Gc[s]) (k_t.k_s)(v_t.v_s)`` for ``s < t``.
        ss: ``[R, C]`` float64, ``||k_t||^2 ||v_t||^2``.   g: ``[R, C]`` float64 log decays.
        carry_decay, decay_in, token_decay: ``[R, C]`` cd, ``exp(Gc[t-1])``, ``exp(Gc[t])``,
            ``exp(Gc[C-1] - Gc[t])`` (``Gc``: the chunk's cumulative log decay).
        lam: ``[R, C, K]`` cd, the read weights.  boundaries: ``[R, C]`` bool, used iff ``use_boundaries``.
        counts, info, size: ``[R, K]`` int64, ``[R, K]`` float64, ``[R]`` int64: the scalar cache, in place.
        pos: ``[R, K]`` int64, the first token of every live slot (initial-cache slots negative), in place.
        phys: ``[R, K]`` int64, the storage (``0..K-1`` within the row) of every live slot, in place.

    Outputs (written):
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
    R, K = counts.shape
    C = W.shape[1]
    Dk = q.shape[2]
    Dv = v.shape[2]
    numel = float(Dk * Dv)
    trash = R * K
    start_pos = np.empty(K, dtype=np.int64)
    start_phys = np.empty(K, dtype=np.int64)
    anchor = np.empty(K, dtype=np.int64)
    used = np.empty(K, dtype=np.bool_)
    coef = np.empty(K, dtype=np.float64)
    tok_slot = np.empty((R, C), dtype=np.int64)
    n_store = 0
    for r in range(R):
        for i in range(size[r]):
            n_store = max(n_store, phys[r, i] + 1)
    Rt = 0
    n_add = 0
    n_zero = 0
    for r in range(R):
        m0 = size[r]
        for i in range(m0):
            start_pos[i] = pos[r, i]
            start_phys[i] = phys[r, i]
        m = m0
        nP = 0.0
        if m0 > 0:
            for d in range(Dk):
                for e in range(Dv):
                    nP += float(P[r, d, e]) * float(P[r, d, e])
        for t in range(n):
            gt = g[r, t]
            x = 0.0
            if m == 0:
                score = 0.0
                start = True  # the first token of an empty cache always opens a slot
            else:
                first = pos[r, m - 1]
                lo = 0
                if first < c0:
                    for e in range(Dv):
                        x += float(kP[r, t, e]) * float(v[r, t, e])
                    x *= carry_decay[r, t]
                else:
                    lo = first - c0
                for s in range(lo, t):
                    x += dgram[r, t, s]
                score = information_score(nP, x, ss[r, t], gt, numel, eps, norm_eps)
                start = boundaries[r, t] if use_boundaries else score >= tau
            mi = -1
            if start:
                if m == K:
                    mi = lowest_density_pair(counts[r], info[r], m)
                    merge_pair(counts[r], info[r], pos[r], mi, m)
                    m -= 1
                counts[r, m] = 1
                info[r, m] = score
                pos[r, m] = c0 + t
                m += 1
                nP = ss[r, t]
            else:
                a = exp(gt)
                nP = max(a * a * nP + 2.0 * a * x + ss[r, t], 0.0)
                counts[r, m - 1] += 1
                info[r, m - 1] += score
            scores[r, t] = score
            starts[r, t] = start
            merged[r, t] = mi
            # Intra-chunk read weights: walk the live slots from the newest back.
            j = m - 1
            for s in range(t, -1, -1):
                while pos[r, j] > c0 + s:
                    j -= 1
                W[r, t, s] = lam[r, t, m - 1 - j]
            for s in range(t + 1, C):
                W[r, t, s] = 0.0
            # Reads of the slots live at the chunk start (each now inside one live slot).
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
        for t in range(n, C):
            scores[r, t] = 0.0
            starts[r, t] = False
            merged[r, t] = -1
            for s in range(C):
                W[r, t, s] = 0.0
            for p in range(n_store * Dk):
                X[r, t, p] = 0.0
        size[r] = m

        # Storages at the chunk end: an end slot keeps the storage of its oldest start slot (the others
        # are added into it); slots made only of this chunk's tokens take free storages.
        for j in range(m):
            anchor[j] = -1
        for i in range(m0):
            j = _slot_of(pos[r], m, start_pos[i])
            if anchor[j] < 0:
                anchor[j] = start_phys[i]
            else:
                add_src[n_add] = r * K + start_phys[i]
                add_dst[n_add] = r * K + anchor[j]
                n_add += 1
        for p in range(K):
            used[p] = False
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
        # Where the chunk's tokens land: the end slots first..m-1 (a suffix: the tokens are the newest).
        first = _slot_of(pos[r], m, c0)
        for s in range(n):
            tok_slot[r, s] = _slot_of(pos[r], m, c0 + s) - first
        for s in range(n, C):
            tok_slot[r, s] = -1
        for i in range(K):
            tok_target[r, i] = r * K + phys[r, first + i] if first + i < m else trash
        Rt = max(Rt, m - first)
    # The update operand, for the Rt end slots that can receive tokens in any row.
    for r in range(R):
        for i in range(Rt * Dk):
            for s in range(C):
                L[r, i, s] = 0.0
        for s in range(C):
            i = tok_slot[r, s]
            if i >= 0:
                for d in range(Dk):
                    L[r, i * Dk + d, s] = token_decay[r, s] * k[r, s, d]
    return n_store, Rt, n_add, n_zero
