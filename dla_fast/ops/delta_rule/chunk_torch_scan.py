"""Numba kernel: the delta rule's sequential scan of one chunk (docs/delta-rule-chunked.md sections 2-3).

The decisions need, per token, the open slot's ``y_t = P^T k_t`` (a ``Dv`` vector): the carried state's part
``P_c^T kt_t`` plus ``sum_s Akap[t, s] b_s v_s`` over the open slot's tokens of this chunk. From it come
``w = v - a y``, ``x = b y.w`` and ``ss = b^2 ||k||^2 ||w||^2``, all in float64 (``w`` cancels when the slot
already holds ``v`` along ``k``: docs/precision.md section 9). Merges, read and update operands and the
storages map are the scalar-decay scan's (``ops/common/chunk_scan.py``), fed with the transported queries and
keys, so that the torch products are the same.
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
def _open_slot_scalars(r, t, first, c0, y_carry, akap, bv, v, kk, beta, a):
    """``(x, ss)`` of token t of row r against its open slot (first token ``first``): ``y`` built in float64."""
    Dv = v.shape[2]
    y = np.zeros(Dv)
    lo = 0
    if first < c0:  # the open slot was carried into the chunk: its state's part
        for e in range(Dv):
            y[e] = y_carry[r, t, e]
    else:
        lo = first - c0
    for s in range(lo, t):
        coef = akap[r, t, s]
        if coef != 0.0:
            for e in range(Dv):
                y[e] += coef * bv[r, s, e]
    yw = 0.0
    ww = 0.0
    for e in range(Dv):
        w = v[r, t, e] - a * y[e]
        yw += y[e] * w
        ww += w * w
    b = beta[r, t]
    return b * yw, b * b * kk[r, t] * ww


@njit
def scan_chunk_delta(n_rows, c0, tau, eps, norm_eps, use_boundaries, tokens, cache, out):
    """Decisions, merges and the read / update operands of one chunk of the delta rule, for every row.

    As ``scalar_decay.chunk_torch_scan.scan_chunk`` (the cache, the outputs and the return value are the same),
    with the delta rule's tokens:
        tokens = (y_carry, akap, bv, v, kk, beta, g, P, qt, kh, token_decay, lam, boundaries):
        y_carry: ``[R, C, Dv]`` float64, ``P_c^T kt_t`` for the open state ``P_c`` at the chunk start.
        akap: ``[R, C, C]`` float64, ``k_t^T Phi(s, t-1] k_s`` (``s < t``).
        bv, v: ``[R, C, Dv]`` float64, ``b_s v_s`` and ``v_s``.  kk, beta, g: ``[R, C]`` float64, ``||k_t||^2``,
            ``beta_t``, ``g_t``.  P: ``[R, Dk, Dv]``, ``P_c``.
        qt: ``[R, C, Dk]`` cd, the transported queries ``Phi(c0-1, t]^T q_t`` (the read operand, decay included).
        kh: ``[R, C, Dk]`` cd, the keys at the chunk end ``T^T K``; token_decay ``[R, C]`` cd,
            ``exp(Gc[C-1] - Gc[s])`` (the update operand).
        lam: ``[R, C, K]`` cd; boundaries: ``[R, C]`` bool.
    """
    y_carry, akap, bv, v, kk, beta, g, P, qt, kh, token_decay, lam, boundaries = tokens
    counts, info, size, pos, phys = cache
    scores, starts, merged, W, X, L, tok_target, add_src, add_dst, zero_rows = out
    R, K = counts.shape
    Dk = qt.shape[2]
    numel = float(Dk * v.shape[2])
    ones = np.ones(qt.shape[:2], dtype=qt.dtype)  # the read operand's decay is inside qt
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
        for t in range(n_rows[r]):
            a = exp(g[r, t])
            score, x, ss, start = 0.0, 0.0, 0.0, True  # the first token of an empty cache always opens a slot
            if m > 0:
                x, ss = _open_slot_scalars(r, t, pos[r, m - 1], c0, y_carry, akap, bv, v, kk, beta, a)
                score = information_score(nP, x, ss, g[r, t], numel, eps, norm_eps)
                start = boundaries[r, t] if use_boundaries else score >= tau
            m, mi = open_or_join(r, t, c0, start, score, m, counts, info, pos)
            if start:  # the new slot holds b k v^T
                vv = 0.0
                for e in range(v.shape[2]):
                    vv += v[r, t, e] * v[r, t, e]
                nP = beta[r, t] * beta[r, t] * kk[r, t] * vv
            else:  # ||a P + b k w^T||^2
                nP = max(a * a * nP + 2.0 * a * x + ss, 0.0)
            scores[r, t] = score
            starts[r, t] = start
            merged[r, t] = mi
            read_operands(r, t, m, m0, c0, pos, start_pos, start_phys, lam, ones, qt, n_store, W, X, coef)
        clear_padding(r, n_rows[r], n_store, Dk, scores, starts, merged, W, X)
        size[r] = m
        n_add, n_zero = assign_storages(r, m, m0, pos, phys, start_pos, start_phys, add_src, add_dst, zero_rows,
                                        n_add, n_zero)
        Rt = max(Rt, token_targets(r, n_rows[r], c0, m, pos, phys, tok_slot, tok_target))
    update_operand(Rt, token_decay, kh, tok_slot, L)  # for the Rt end slots that can receive tokens in any row
    return n_store, Rt, n_add, n_zero
