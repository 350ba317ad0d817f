"""Numba kernel: the delta rule's sequential scan of one chunk (docs/delta-rule-chunked.md sections 2-3).

The decisions need, per token, the open slot's state ``P`` before it: ``y_t = P^T k_t`` and ``||P||^2``. The scan
keeps that one slot explicitly, in float64, and advances it per token exactly as the reference does
(``P <- a (P - b k (k^T P)) + b k v^T``, or ``b k v^T`` for a new slot): ``O(Dk Dv)`` per token. Scores from a
norm recursion (``||P'||^2 = a^2 ||P||^2 + 2 a x + ss``) or from tables cancel where the delta rule erases the
state (``b = 1`` along a unit key): a residue of ~1e-16 of the erased norm then meets the score's guard ``eps``
and moves guard-dominated scores by orders of magnitude (docs/delta-rule-chunked.md section 3). From ``y`` come
``w = v - a y``, ``x = b y.w`` and ``ss = b^2 ||k||^2 ||w||^2`` (docs/precision.md section 9). The open state
at the chunk end goes back to its storage. Merges, read and update operands and the storages map are the
scalar-decay scan's (``ops/common/chunk_scan.py``), fed with the transported queries and keys, so that the
torch products are the same.
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
def _open_slot_scalars(Popen, k, v, kk, b, a):
    """``(x, ss, y)`` of a token (key ``k``, value ``v``, ``b``, ``a``) against the open state ``Popen``."""
    Dk, Dv = Popen.shape
    y = np.zeros(Dv)
    for d in range(Dk):
        for e in range(Dv):
            y[e] += k[d] * Popen[d, e]
    yw = 0.0
    ww = 0.0
    for e in range(Dv):
        w = v[e] - a * y[e]
        yw += y[e] * w
        ww += w * w
    return b * yw, b * b * kk * ww, y


@njit
def _advance_open_slot(Popen, start, k, v, y, b, a):
    """The open state after the token, in the reference's order: ``b k v^T`` for a new slot, else
    ``a (P - b k y^T) + b k v^T`` with ``y = P^T k``. Returns its squared norm (the next token's ``nP``)."""
    Dk, Dv = Popen.shape
    nP = 0.0
    for d in range(Dk):
        for e in range(Dv):
            if start:
                p = b * k[d] * v[e]
            else:
                p = a * (Popen[d, e] - b * k[d] * y[e]) + b * k[d] * v[e]
            Popen[d, e] = p
            nP += p * p
    return nP


@njit
def scan_chunk_delta(n_rows, c0, tau, eps, norm_eps, use_boundaries, tokens, cache, out):
    """Decisions, merges and the read / update operands of one chunk of the delta rule, for every row.

    As ``scalar_decay.chunk_torch_scan.scan_chunk`` (the cache, the outputs and the return value are the same),
    with the delta rule's tokens:
        tokens = (k, v, kk, beta, g, P, qt, kh, token_decay, lam, boundaries):
        k: ``[R, C, Dk]`` and v: ``[R, C, Dv]`` float64.  kk, beta, g: ``[R, C]`` float64, ``||k_t||^2``, ``beta_t``,
            ``g_t``.  P: ``[R, Dk, Dv]`` float64, in: the open states at the chunk start (zero for an empty
            cache), out: those at the chunk end.
        qt: ``[R, C, Dk]`` cd, the transported queries ``Phi(c0-1, t]^T q_t`` (the read operand, decay included).
        kh: ``[R, C, Dk]`` cd, the keys at the chunk end ``T^T K``; token_decay ``[R, C]`` cd,
            ``exp(Gc[C-1] - Gc[s])`` (the update operand).
        lam: ``[R, C, K]`` cd; boundaries: ``[R, C]`` bool.
    """
    k, v, kk, beta, g, P, qt, kh, token_decay, lam, boundaries = tokens
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
        Popen = P[r]  # the open slot, advanced in place
        nP = open_norm(P, r)
        for t in range(n_rows[r]):
            a = exp(g[r, t])
            score, start, y = 0.0, True, np.zeros(v.shape[2])  # an empty cache's first token opens a slot
            if m > 0:
                x, ss, y = _open_slot_scalars(Popen, k[r, t], v[r, t], kk[r, t], beta[r, t], a)
                score = information_score(nP, x, ss, g[r, t], numel, eps, norm_eps)
                start = boundaries[r, t] if use_boundaries else score >= tau
            m, mi = open_or_join(r, t, c0, start, score, m, counts, info, pos)
            nP = _advance_open_slot(Popen, start, k[r, t], v[r, t], y, beta[r, t], a)
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
