"""Triton prefill forward of DLA, scalar-decay backbone (NVIDIA GPUs; also runs under TRITON_INTERPRET=1).

The call is five kernels and a little torch glue. Notation as in ``docs/chunked-algorithm.md``: chunk
``c`` covers tokens ``[c*C, c*C + C)``, ``Gc`` is the cumulative log decay inside the chunk, ``N = Dk*Dv``.
See ``docs/triton.md`` for the design, the FLOP and byte counts and the precision choices.

1. ``_dla_table_kernel`` (parallel over (bh, chunk)): the chunk's score table ``I[t, p]`` (the score of
   token ``t`` if the open slot is exactly ``p..t-1``) from the decayed Gram matrix by two ``C^3``
   matmuls; ``next(p)`` (first ``t > p`` with ``I[t, p] >= tau``); and for every ``p`` the bitmask of its
   orbit under ``next`` by pointer doubling (6 rounds of ``tl.gather``).
2. ``_dla_carry_kernel`` (one program per (bh), sequential over chunks, FLA ``chunk_fwd_h``-shaped): the
   scores of the tokens up to the chunk's first boundary against the carried open slot (one matmul),
   the first boundary ``f``, the chunk's boundary mask ``= orbit(f)``, every token's score, and the open
   slot carried into the next chunk (one masked matmul).
3. ``_dla_merge_kernel`` (one program per (bh), sequential over boundary events): the cache-structure
   simulation (counts, information sums, lowest-density merge) on K-wide vectors; writes each slot
   start's death time, the merged index per token, the live slot starts at every chunk start and the
   final counts / info / size.
4. ``_dla_hstate_kernel`` (per (bh, Dv block), sequential over chunks): the single-state backbone's state
   ``H`` at every chunk start (the prefix states the output is telescoped on).
5. ``_dla_output_kernel`` (parallel over (bh, chunk, Dv block)): masked intra-chunk attention with the
   recency weights, plus the slots before the chunk through the telescoped prefix states.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext as _nullcontext

import torch
import triton
import triton.language as tl

CHUNK = 64
INT32_MAX = 2**31 - 1
OUTPUT_GROUP = 4  # old slot states read per tensor-core product in the output kernel


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _expm1(x):
    """expm1 for x <= 0 in float32 (Kahan's trick: exact at small |x|, no cancellation)."""
    u = tl.exp(x)
    lu = tl.log(u)
    r = tl.where(u == 1.0, x, (u - 1.0) * x / tl.where(lu == 0.0, 1.0, lu))
    return tl.where(u == 0.0, -1.0, r)


@triton.jit
def _decay_to_end(g):
    """exp(sum of g after s, through the chunk end) per token s and exp(sum of the chunk's g), in float64
    (cumulative sums and exps): the weights that build states, where strong decay (|G| ~ 10-40) would lose
    ~|G| * 2^-24 relative accuracy in float32 exponents."""
    g64 = g.to(tl.float64)
    G = tl.cumsum(g64, 0)
    Gl = tl.sum(g64, 0)
    return tl.exp(Gl - G).to(tl.float32), tl.exp(Gl).to(tl.float32)


@triton.jit
def _score(nP, x, ss, g, N, eps, norm_eps):
    """The stable score from ||P||^2, <P, s_t>, ||s_t||^2 and g_t (docs/chunked-algorithm.md, section 1):
    c = a/r' - 1/r from ((a^2 - 1) norm_eps - w/N) with w = 2 a x + ss, no difference of close numbers."""
    em1 = _expm1(2.0 * g)
    a = tl.exp(g)
    r2 = nP / N + norm_eps
    w = 2.0 * a * x + ss
    rp2 = tl.maximum((a * a * nP + w) / N + norm_eps, 0.0)
    r = tl.sqrt(r2)
    rp = tl.sqrt(rp2)
    c = (em1 * norm_eps - w / N) / r / rp / (a * r + rp)
    D2 = tl.maximum(c * c * nP + 2.0 * c * x / rp + ss / rp2, 0.0)
    return tl.sqrt(D2) / (tl.sqrt(nP) / r + eps)


@triton.jit
def _split3(x):
    """x (fp32) = hi + mid + lo, three bf16 parts (~24 significant bits): a bf16 operand times these
    in three bf16 tensor-core dots is as accurate as an fp32 product, with fewer registers than tf32x3."""
    hi = x.to(tl.bfloat16)
    r = x - hi.to(tl.float32)
    mid = r.to(tl.bfloat16)
    lo = (r - mid.to(tl.float32)).to(tl.bfloat16)
    return hi, mid, lo


@triton.jit
def _dot_split(a16, b32, PREC: tl.constexpr):
    """a16 (bf16, exact) @ b32 (fp32) at fp32 accuracy by splitting b."""
    hi, mid, lo = _split3(b32)
    acc = tl.dot(a16, hi)
    acc = tl.dot(a16, mid, acc)
    return tl.dot(a16, lo, acc)


@triton.jit
def _dot_split_t(a32, b16, PREC: tl.constexpr):
    """a32^T (fp32, split) @ b16 (bf16, exact) at fp32 accuracy."""
    hi, mid, lo = _split3(a32)
    acc = tl.dot(tl.trans(hi), b16)
    acc = tl.dot(tl.trans(mid), b16, acc)
    return tl.dot(tl.trans(lo), b16, acc)


@triton.jit
def _qdot(qc, qf, Hm, LOWP: tl.constexpr, PREC: tl.constexpr):
    """q^T H for a [C, Dk] query tile and an fp32 [Dk, BV] state: 16-bit operands for 16-bit inputs (as FLA
    does), else fp32 at PREC."""
    if LOWP:
        return tl.dot(qc, Hm.to(qc.dtype))
    else:
        return tl.dot(qf, Hm, input_precision=PREC)


# ---------------------------------------------------------------------------------------------------
# 1. Per-chunk score tables and orbits (parallel)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _dla_table_kernel(
    k_ptr, v_ptr, g_ptr,
    itab_ptr, anc_ptr, x0_ptr, np0_ptr, ss_ptr,
    T, H, Dk, Dv, tau, eps, norm_eps,
    C: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
    NEED_ANC: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, LOGC: tl.constexpr, SCAN: tl.constexpr,
):
    """Program (chunk c, bh): score table I[t, p] for p < t, orbit bitmasks, and the chunk-start column.

    FLOPs per chunk: 2 C^2 (Dk + Dv) (Gram) + 4 C^3 (two table matmuls, fp32); bytes: C (Dk + Dv) input
    elements in, 4 C^2 (table) + 8 C (bitmasks) + 12 C (columns) out.
    """
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    tok = c * C + t_idx
    valid = tok < T
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BVF)
    kmask = valid[:, None] & (kd[None, :] < Dk)
    vmask = valid[:, None] & (vd[None, :] < Dv)
    kc = tl.load(k_ptr + ((b * T + tok) * H + h)[:, None] * Dk + kd[None, :], mask=kmask, other=0.0)
    vc = tl.load(v_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vd[None, :], mask=vmask, other=0.0)
    g = tl.load(g_ptr + (b * T + tok) * H + h, mask=valid, other=0.0).to(tl.float32)
    Gc = tl.cumsum(g, 0)
    Gm1 = Gc - g  # Gc[t-1]
    kf = kc.to(tl.float32)
    vf = vc.to(tl.float32)
    ss = tl.sum(kf * kf, 1) * tl.sum(vf * vf, 1)
    if LOWP:
        KK = tl.dot(kc, tl.trans(kc))
        VV = tl.dot(vc, tl.trans(vc))
    else:
        KK = tl.dot(kf, tl.trans(kf), input_precision=PREC)
        VV = tl.dot(vf, tl.trans(vf), input_precision=PREC)
    gram = KK * VV
    row = t_idx[:, None]
    col = t_idx[None, :]
    lower = col < row  # s < t
    Dm = tl.where(lower, tl.exp(tl.minimum(Gm1[:, None] - Gc[None, :], 0.0)), 0.0)
    a = tl.exp(g)
    if SCAN:
        # X[t, p] = sum_{s=p}^{t-1} exp(Gc[t-1] - Gc[s]) Gram[t, s]: a suffix sum along each row.
        X = tl.cumsum(Dm * gram, 1, reverse=True)
        # Y[u, p] = (2 a_u X[u, p] + ss_u) [u >= p];  nP[t, p] = sum_{u < t} exp(2(Gc[t-1] - Gc[u])) Y[u, p]:
        # the scan nP[t] = a_{t-1}^2 nP[t-1] + Y[t-1] down each column (Y and a shifted by one token).
        Y = tl.where(row >= col, 2.0 * a[:, None] * X + ss[:, None], 0.0)
        sh = tl.maximum(row - 1, 0) + col * 0
        Ysh = tl.where(row > 0, tl.gather(Y, sh, 0), 0.0)
        a2 = tl.where(row > 0, tl.exp(2.0 * tl.gather(g, tl.maximum(t_idx - 1, 0), 0))[:, None] + 0.0 * Y, 1.0)
        _, nPt = tl.associative_scan((a2, Ysh), 0, _decay_scan_combine)
    else:
        ge = tl.where(row >= col, 1.0, 0.0)  # ge[s, p] = [s >= p]
        X = tl.dot(Dm * gram, ge, input_precision=PREC)
        Y = tl.where(row >= col, 2.0 * a[:, None] * X + ss[:, None], 0.0)
        nPt = tl.dot(Dm * Dm, Y, input_precision=PREC)
    N = (Dk * Dv).to(tl.float32)
    I = _score(nPt, X, ss[:, None], g[:, None], N, eps, norm_eps)
    I = tl.where(lower & valid[:, None], I, 0.0)
    base = bh * NC + c
    tl.store(itab_ptr + base * C * C + row * C + col, I)
    # The chunk-start column (p = 0) for the carry scan.
    X0 = tl.sum(tl.where(col == 0, X, 0.0), 1)
    NP0 = tl.sum(tl.where(col == 0, nPt, 0.0), 1)
    tl.store(x0_ptr + bh * NC * C + tok, X0)
    tl.store(np0_ptr + bh * NC * C + tok, NP0)
    tl.store(ss_ptr + bh * NC * C + tok, ss)
    if NEED_ANC:
        hit = lower & valid[:, None] & (I >= tau)
        nxt = tl.min(tl.where(hit, row, C), 0)  # next(p), C if none in the chunk
        one = tl.full([C], 1, tl.int64)
        A = (one << t_idx.to(tl.int64)) | tl.where(nxt < C, one << tl.minimum(nxt, C - 1).to(tl.int64), 0)
        J = nxt
        for _ in tl.static_range(LOGC):
            has = J < C
            Jc = tl.where(has, J, 0)
            AJ = tl.gather(A, Jc, 0)
            JJ = tl.gather(J, Jc, 0)
            A = tl.where(has, A | AJ, A)
            J = tl.where(has, JJ, C)
        tl.store(anc_ptr + base * C + t_idx, A)


# ---------------------------------------------------------------------------------------------------
# 2. Carry scan: first boundary per chunk, boundary masks, scores, the carried open slot (sequential)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _decay_scan_combine(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2) for the recurrence z <- a z + b."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _dla_carry_kernel(
    k_ptr, v_ptr, g_ptr, bnd_ptr,
    anc_ptr, x0_ptr, np0_ptr, ss_ptr,
    p_ptr, size_ptr, mask_ptr, cscore_ptr,
    T, H, Dk, Dv, tau, eps, norm_eps,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr,
    OVERRIDE: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, PIPE: tl.constexpr, flag_ptr,
):
    """Program (bh): walks the chunks. P (the open slot, fp32 [Dk, Dv]) stays in registers when Dv fits
    one block (NVB == 1), else lives in p_ptr (L2-resident) and is processed in Dv blocks of BV.
    Per chunk: 2 C Dk Dv FLOPs for k^T P v, 2 C Dk Dv for the update, a C-long decayed scan.
    The next chunk's inputs are loaded before this chunk's dependent chain (software prefetch).
    Writes the carry scores (the score of t against the carried slot, valid up to the first boundary)
    and the chunk's boundary mask; _dla_scores_kernel assembles the final scores in parallel."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BV)
    N = (Dk * Dv).to(tl.float32)
    emp = (tl.load(size_ptr + bh) == 0).to(tl.int32)
    pbase = p_ptr + bh * Dk * Dv
    pm0 = (kd[:, None] < Dk) & (vd[None, :] < Dv)
    Preg = tl.load(pbase + kd[:, None] * Dv + vd[None, :], mask=pm0, other=0.0)
    shift = tl.maximum(t_idx - 1, 0)
    # chunk 0's inputs
    tok = t_idx
    valid = tok < T
    kc = tl.load(k_ptr + ((b * T + tok) * H + h)[:, None] * Dk + kd[None, :], mask=valid[:, None] & (kd[None, :] < Dk), other=0.0)
    vc = tl.load(v_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vd[None, :], mask=valid[:, None] & (vd[None, :] < Dv), other=0.0)
    g = tl.load(g_ptr + (b * T + tok) * H + h, mask=valid, other=0.0).to(tl.float32)
    X0 = tl.load(x0_ptr + bh * NC * C + tok)
    NP0 = tl.load(np0_ptr + bh * NC * C + tok)
    ss = tl.load(ss_ptr + bh * NC * C + tok)
    anc_row = tl.load(anc_ptr + bh * NC * C + tok)
    for c in range(NC):
        tok = c * C + t_idx
        valid = tok < T
        # prefetch chunk c + 1 (masked off past the end)
        tokn = tok + C
        validn = tokn < T
        kn = tl.load(k_ptr + ((b * T + tokn) * H + h)[:, None] * Dk + kd[None, :], mask=validn[:, None] & (kd[None, :] < Dk), other=0.0)
        vn = tl.load(v_ptr + ((b * T + tokn) * H + h)[:, None] * Dv + vd[None, :], mask=validn[:, None] & (vd[None, :] < Dv), other=0.0)
        gn = tl.load(g_ptr + (b * T + tokn) * H + h, mask=validn, other=0.0)
        inb = tokn < NC * C
        X0n = tl.load(x0_ptr + bh * NC * C + tokn, mask=inb, other=0.0)
        NP0n = tl.load(np0_ptr + bh * NC * C + tokn, mask=inb, other=0.0)
        ssn = tl.load(ss_ptr + bh * NC * C + tokn, mask=inb, other=0.0)
        ancn = tl.load(anc_ptr + bh * NC * C + tokn, mask=inb, other=0)
        kf = kc.to(tl.float32)
        Gc = tl.cumsum(g, 0)
        Gm1 = Gc - g
        # y_t = k_t^T P_c v_t and ||P_c||^2
        if NVB == 1:
            vf = vc.to(tl.float32)
            if SPLIT:
                y = tl.sum(_dot_split(kc, Preg, PREC) * vf, 1)
            else:
                y = tl.sum(tl.dot(kf, Preg, input_precision=PREC) * vf, 1)
            nPc0 = tl.sum(tl.sum(Preg * Preg, 1), 0)
        else:
            y = tl.zeros([C], dtype=tl.float32)
            nPc0 = 0.0
            for vb in tl.static_range(NVB):
                vmask = valid[:, None] & ((vb * BV + vd)[None, :] < Dv)
                vcb = tl.load(v_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vb * BV + vd[None, :], mask=vmask, other=0.0)
                pm = (kd[:, None] < Dk) & ((vb * BV + vd)[None, :] < Dv)
                P = tl.load(pbase + kd[:, None] * Dv + vb * BV + vd[None, :], mask=pm, other=0.0)
                y += tl.sum(tl.dot(kf, P, input_precision=PREC) * vcb.to(tl.float32), 1)
                nPc0 += tl.sum(tl.sum(P * P, 1), 0)
        # z_t = sum_{s<t} exp(Gc[t-1] - Gc[s]) y_s: the scan z <- a_{t-1} z + y_{t-1}
        ysh = tl.where(t_idx > 0, tl.gather(y, shift, 0), 0.0)
        ash = tl.where(t_idx > 0, tl.exp(tl.gather(g, shift, 0)), 1.0)
        _, z = tl.associative_scan((ash, ysh), 0, _decay_scan_combine)
        eG = tl.exp(Gm1)
        nPc = eG * eG * nPc0 + 2.0 * eG * z + NP0
        xc = eG * y + X0
        Ic = _score(nPc, xc, ss, g, N, eps, norm_eps)
        fe = (t_idx == 0) & ((t_idx * 0 + c) == 0) & ((t_idx * 0 + emp) != 0)  # first token, empty cache
        Ic = tl.where(fe, 0.0, Ic)
        if OVERRIDE:
            ob = tl.load(bnd_ptr + (b * T + tok) * H + h, mask=valid, other=0) != 0
            ob = ob | fe
            bits = tl.where(ob & valid, tl.full([C], 1, tl.int64) << t_idx.to(tl.int64), 0)
            mask = tl.sum(bits, 0)
        else:
            hit = ((Ic >= tau) | fe) & valid
            f = tl.min(tl.where(hit, t_idx, C), 0)
            mask = tl.sum(tl.where(t_idx == f, anc_row, 0), 0)  # 0 when f == C (no boundary)
        tl.store(mask_ptr + bh * NC + c, mask)
        tl.store(cscore_ptr + bh * NC * C + tok, Ic)
        if PIPE:  # publish chunk c to the concurrently running merge simulation
            tl.debug_barrier()
            tl.atomic_xchg(flag_ptr + bh, c + 1, sem="release")
        # The open slot at the chunk end.
        bvec = ((mask >> t_idx.to(tl.int64)) & 1) != 0
        L = tl.max(tl.where(bvec, t_idx, -1), 0)
        wd, eGl = _decay_to_end(g)
        w = tl.where(valid & (t_idx >= L), wd, 0.0)
        keep = tl.where(L >= 0, 0.0, eGl)
        kw = kf * w[:, None]
        if NVB == 1:
            if SPLIT:
                Preg = keep * Preg + _dot_split_t(kw, vc, PREC)
            else:
                Preg = keep * Preg + tl.dot(tl.trans(kw), vf, input_precision=PREC)
        else:
            tl.debug_barrier()
            for vb in tl.static_range(NVB):
                vmask = valid[:, None] & ((vb * BV + vd)[None, :] < Dv)
                vcb = tl.load(v_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vb * BV + vd[None, :], mask=vmask, other=0.0)
                pm = (kd[:, None] < Dk) & ((vb * BV + vd)[None, :] < Dv)
                P = tl.load(pbase + kd[:, None] * Dv + vb * BV + vd[None, :], mask=pm, other=0.0)
                Pn = keep * P + tl.dot(tl.trans(kw), vcb.to(tl.float32), input_precision=PREC)
                tl.store(pbase + kd[:, None] * Dv + vb * BV + vd[None, :], Pn, mask=pm)
            tl.debug_barrier()
        kc, vc, g, X0, NP0, ss, anc_row = kn, vn, gn.to(tl.float32), X0n, NP0n, ssn, ancn
    if NVB == 1:
        tl.store(pbase + kd[:, None] * Dv + vd[None, :], Preg, mask=pm0)


@triton.jit
def _dla_scores_kernel(
    itab_ptr, mask_ptr, cscore_ptr, score_ptr, T,
    C: tl.constexpr,
):
    """Program (chunk, bh): score[t] = carry score up to the chunk's first boundary, else I[t, p(t)] with
    p(t) the last boundary before t. Reads C^2/.. a gather of C table entries."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    row = t_idx[:, None]
    col = t_idx[None, :]
    tok = c * C + t_idx
    mask = tl.load(mask_ptr + bh * NC + c)
    bvec = ((mask >> t_idx.to(tl.int64)) & 1) != 0
    pt = tl.max(tl.where(bvec[None, :] & (col < row), col, -1), 1)
    itab = tl.load(itab_ptr + (bh * NC + c) * C * C + t_idx * C + tl.maximum(pt, 0), mask=pt >= 0, other=0.0)
    Ic = tl.load(cscore_ptr + bh * NC * C + tok)
    tl.store(score_ptr + bh * NC * C + tok, tl.where(pt >= 0, itab, Ic), mask=tok < T)


# ---------------------------------------------------------------------------------------------------
# 3. Structure simulation (sequential over boundary events)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _dla_merge_kernel(
    mask_ptr, score_ptr, cnt_ptr, info_ptr, size_ptr,
    death_ptr, death0_ptr, merged_ptr, live_ptr, livem_ptr, fpos_ptr,
    T, K, itab_ptr, cscore_ptr, flag_ptr,
    C: tl.constexpr, KP: tl.constexpr, PIPE: tl.constexpr,
):
    """Program (bh): counts n, information sums Ibar (float64) and start positions of the <= K slots
    in K-wide vectors; one lowest-density merge (tie: oldest pair) per new slot with a full cache.
    Initial slots have pseudo start positions -m0..-1. Costs O(K) per event, O(C) per chunk.
    PIPE: runs concurrently with the carry scan, waiting on its per-chunk flag, and assembles the scores
    itself (carry score up to the first boundary, else the table entry I[t, p(t)])."""
    bh = tl.program_id(0)
    NC = tl.cdiv(T, C)
    j = tl.arange(0, KP)
    t_idx = tl.arange(0, C)
    m0 = tl.load(size_ptr + bh).to(tl.int32)
    m = m0
    n = tl.load(cnt_ptr + bh * K + j, mask=j < K, other=0).to(tl.int64)
    info = tl.load(info_ptr + bh * K + j, mask=j < K, other=0.0).to(tl.float64)
    pos = tl.where(j < m0, j - m0, 2147483647)
    shift_idx = tl.minimum(j + 1, KP - 1)
    if not PIPE:
        mask = tl.load(mask_ptr + bh * NC)
        sc = tl.load(score_ptr + bh * NC * C + t_idx, mask=t_idx < T, other=0.0)
    else:
        mask = tl.zeros([], dtype=tl.int64)
        sc = tl.zeros([C], dtype=tl.float32)
    for c in range(NC):
        tl.store(live_ptr + (bh * NC + c) * KP + j, pos)
        tl.store(livem_ptr + bh * NC + c, m)
        nvalid = tl.minimum(T - c * C, C)
        if PIPE:
            while tl.atomic_add(flag_ptr + bh, 0, sem="acquire") <= c:
                pass
            mask = tl.load(mask_ptr + bh * NC + c, volatile=True)
            lt = mask & ((tl.full([C], 1, tl.int64) << t_idx.to(tl.int64)) - 1)  # boundaries before t
            hi = lt >> 32
            lo = lt & 0xFFFFFFFF
            msb_hi = ((hi.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023 + 32
            msb_lo = ((lo.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023
            pt = tl.where(lt == 0, -1, tl.where(hi > 0, msb_hi, msb_lo)).to(tl.int32)
            it = tl.load(itab_ptr + (bh * NC + c) * C * C + t_idx * C + tl.maximum(pt, 0), mask=pt >= 0, other=0.0)
            cs0 = tl.load(cscore_ptr + bh * NC * C + c * C + t_idx, volatile=True)
            sc = tl.where(pt >= 0, it, cs0)
            sc = tl.where(t_idx < nvalid, sc, 0.0)
            tl.store(score_ptr + bh * NC * C + c * C + t_idx, sc, mask=t_idx < nvalid)
            mask_n = mask
            sc_n = sc
        else:
            # prefetch the next chunk's mask and scores
            mask_n = tl.load(mask_ptr + bh * NC + c + 1, mask=c + 1 < NC, other=0)
            sc_n = tl.load(score_ptr + bh * NC * C + (c + 1) * C + t_idx, mask=(c + 1) * C + t_idx < T, other=0.0)
        sc64 = sc.to(tl.float64)
        cs = tl.cumsum(sc64, 0)  # inclusive prefix sums of the chunk's scores
        nb = tl.sum((((mask >> t_idx.to(tl.int64)) & 1) != 0).to(tl.int32), 0)
        rem = mask
        prev = 0
        cprev = tl.zeros([], dtype=tl.float64)  # prefix sum before `prev`
        for e in range(nb):
            low = rem & (-rem)  # the lowest boundary left in the chunk, as a bit
            rem = rem ^ low
            u = (((low.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023).to(tl.int32)
            su = tl.sum(tl.where(t_idx == u, sc64, 0.0), 0)
            csu = tl.sum(tl.where(t_idx == u, cs, 0.0), 0)
            add_n = (u - prev).to(tl.int64)
            add_i = csu - su - cprev
            is_open = j == m - 1
            n = tl.where(is_open, n + add_n, n)
            info = tl.where(is_open, info + add_i, info)
            tglob = c * C + u
            if m == K:
                n1 = tl.gather(n, shift_idx, 0)
                i1 = tl.gather(info, shift_idx, 0)
                p1 = tl.gather(pos, shift_idx, 0)
                dens = tl.where(j < K - 1, (info + i1) / tl.maximum(n + n1, 1).to(tl.float64), float("inf"))
                istar = tl.argmin(dens, 0, tie_break_left=True).to(tl.int32)
                dpos = tl.sum(tl.where(j == istar, p1, 0), 0)
                if dpos >= 0:
                    tl.store(death_ptr + bh * NC * C + dpos, tglob)
                else:
                    tl.store(death0_ptr + bh * K + dpos + m0, tglob)
                tl.store(merged_ptr + bh * NC * C + tglob, istar.to(tl.int64))
                n = tl.where(j < istar, n, tl.where(j == istar, n + n1, n1))
                info = tl.where(j < istar, info, tl.where(j == istar, info + i1, i1))
                pos = tl.where(j <= istar, pos, p1)
                n = tl.where(j == K - 1, 1, n)
                info = tl.where(j == K - 1, su, info)
                pos = tl.where(j == K - 1, tglob, pos)
            else:
                n = tl.where(j == m, 1, n)
                info = tl.where(j == m, su, info)
                pos = tl.where(j == m, tglob, pos)
                m += 1
            prev = u + 1
            cprev = csu
        is_open = j == m - 1
        n = tl.where(is_open, n + (nvalid - prev).to(tl.int64), n)
        info = tl.where(is_open, info + (tl.sum(sc64, 0) - cprev), info)
        mask = mask_n
        sc = sc_n
    tl.store(cnt_ptr + bh * K + j, tl.where(j < m, n, 0), mask=j < K)
    tl.store(info_ptr + bh * K + j, tl.where(j < m, info, 0.0), mask=j < K)
    tl.store(size_ptr + bh, m.to(tl.int64))
    tl.store(fpos_ptr + bh * KP + j, pos)


# ---------------------------------------------------------------------------------------------------
# 4. Prefix states of the single-state backbone at every chunk start (FLA chunk_fwd_h shape)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _dla_chunkstate_kernel(
    k_ptr, v_ptr, g_ptr, hs_ptr,
    T, H, Dk, Dv,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
):
    """Program (chunk c, bh, Dv block): u_c = sum_{s in c} exp(Gc[last] - Gc[s]) k_s v_s^T, written to
    hs[c + 1] (the scan kernel turns it into H at the chunk end). 2 C Dk BV FLOPs (x3 split)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    vb = tl.program_id(2)
    b = bh // H
    h = bh % H
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    tok = c * C + t_idx
    valid = tok < T
    kc = tl.load(k_ptr + ((b * T + tok) * H + h)[:, None] * Dk + kd[None, :], mask=valid[:, None] & (kd[None, :] < Dk), other=0.0)
    vc = tl.load(v_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vd[None, :], mask=valid[:, None] & (vd[None, :] < Dv), other=0.0)
    g = tl.load(g_ptr + (b * T + tok) * H + h, mask=valid, other=0.0).to(tl.float32)
    wd, _ = _decay_to_end(g)
    w = tl.where(valid, wd, 0.0)
    kw = kc.to(tl.float32) * w[:, None]
    if SPLIT:
        u = _dot_split_t(kw, vc, PREC)
    else:
        u = tl.dot(tl.trans(kw), vc.to(tl.float32), input_precision=PREC)
    sm = (kd[:, None] < Dk) & (vd[None, :] < Dv)
    tl.store(hs_ptr + (bh * (NC + 1) + c + 1) * Dk * Dv + kd[:, None] * Dv + vd[None, :], u, mask=sm)


@triton.jit
def _dla_hscan_kernel(
    h0_ptr, hs_ptr, gs_ptr, T, DD,
    C: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (bh, block of BLOCK state entries): H(c0 - 1) for every chunk, in place:
    hs[0] = h0, hs[c + 1] = exp(sum of g over chunk c) hs[c] + u_c. Bandwidth-bound (8 bytes per entry
    per chunk); every entry of the state is its own independent recurrence."""
    bh = tl.program_id(0)
    blk = tl.program_id(1)
    NC = tl.cdiv(T, C)
    e = blk * BLOCK + tl.arange(0, BLOCK)
    em = e < DD
    S = tl.load(h0_ptr + bh * DD + e, mask=em, other=0.0)
    tl.store(hs_ptr + bh * (NC + 1) * DD + e, S, mask=em)
    g0 = tl.load(gs_ptr + bh * (NC + 1))
    for c in range(NC):
        g1 = tl.load(gs_ptr + bh * (NC + 1) + c + 1)
        u = tl.load(hs_ptr + (bh * (NC + 1) + c + 1) * DD + e, mask=em, other=0.0)
        S = tl.exp(g1 - g0).to(tl.float32) * S + u
        tl.store(hs_ptr + (bh * (NC + 1) + c + 1) * DD + e, S, mask=em)
        g0 = g1


@triton.jit
def _dla_bstate_kernel(
    k_ptr, v_ptr, g_ptr, hs_ptr, mask_ptr, death_ptr, bidx_ptr, bst_ptr,
    T, H, Dk, Dv,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
):
    """Program (chunk c, bh, Dv block): for every slot start a of this chunk still live at the chunk end
    (so that later chunks may read it), the prefix state before a decayed to the chunk end,
    B_a = e^{Gc[last]} H(c0-1) + sum_{s < a} e^{Gc[last] - Gc[s]} k_s v_s^T, at bst[bidx[a]] (compact).
    Later chunks read it with one q^T B product. 2 C Dk BV FLOPs and Dk BV elements written per start;
    16-bit storage and dots for 16-bit inputs (B only feeds the output)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    vb = tl.program_id(2)
    b = bh // H
    h = bh % H
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    tok = c * C + t_idx
    valid = tok < T
    mask = tl.load(mask_ptr + bh * NC + c)
    bvec = ((mask >> t_idx.to(tl.int64)) & 1) != 0
    dth = tl.load(death_ptr + bh * NC * C + tok)
    surv = bvec & (dth >= (c + 1) * C) & valid
    nsurv = tl.sum(surv.to(tl.int32), 0)
    if nsurv > 0:
        kc = tl.load(k_ptr + ((b * T + tok) * H + h)[:, None] * Dk + kd[None, :], mask=valid[:, None] & (kd[None, :] < Dk), other=0.0)
        vc = tl.load(v_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vd[None, :], mask=valid[:, None] & (vd[None, :] < Dv), other=0.0)
        g = tl.load(g_ptr + (b * T + tok) * H + h, mask=valid, other=0.0).to(tl.float32)
        Gc = tl.cumsum(g, 0)
        Glast = tl.sum(g, 0)
        w = tl.where(valid, tl.exp(tl.minimum(Glast - Gc, 0.0)), 0.0)
        sm = (kd[:, None] < Dk) & (vd[None, :] < Dv)
        Hc = tl.exp(Glast) * tl.load(hs_ptr + (bh * (NC + 1) + c) * Dk * Dv + kd[:, None] * Dv + vd[None, :], mask=sm, other=0.0)
        kf = kc.to(tl.float32)
        rem = tl.sum(tl.where(surv, tl.full([C], 1, tl.int64) << t_idx.to(tl.int64), 0), 0)
        for r in range(nsurv):
            low = rem & (-rem)
            rem = rem ^ low
            a = (((low.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023).to(tl.int32)
            kw = kf * tl.where(t_idx < a, w, 0.0)[:, None]
            if LOWP:
                Bm = Hc + tl.dot(tl.trans(kw.to(vc.dtype)), vc)
            else:
                Bm = Hc + tl.dot(tl.trans(kw), vc.to(tl.float32), input_precision=PREC)
            slot = tl.load(bidx_ptr + bh * NC * C + c * C + a).to(tl.int64)
            tl.store(bst_ptr + slot * Dk * Dv + kd[:, None] * Dv + vd[None, :], Bm.to(bst_ptr.dtype.element_ty), mask=sm)


@triton.jit
def _prefix_before(k_ptr, v_ptr, g_ptr, hs_ptr, gs_ptr, hinit_ptr, bh, b, h, a, m0, gtot, T, H, Dk, Dv, K, NC,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
                   HAS_INIT: tl.constexpr, vb):
    """H(a - 1) decayed to T-1 (a pseudo start a < 0 indexes the initial slots), [BK, BV] fp32."""
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    sm = (kd[:, None] < Dk) & (vd[None, :] < Dv)
    out = tl.zeros([BK, BV], dtype=tl.float32)
    if a < 0:
        if HAS_INIT:
            out = tl.exp(gtot).to(tl.float32) * tl.load(hinit_ptr + (bh * K + a + m0) * Dk * Dv + kd[:, None] * Dv + vd[None, :], mask=sm, other=0.0)
    else:
        cp = a // C
        aloc = a - cp * C
        tok = cp * C + t_idx
        pm = t_idx < aloc
        kc = tl.load(k_ptr + ((b * T + tok) * H + h)[:, None] * Dk + kd[None, :], mask=pm[:, None] & (kd[None, :] < Dk), other=0.0)
        vc = tl.load(v_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vd[None, :], mask=pm[:, None] & (vd[None, :] < Dv), other=0.0)
        g = tl.load(g_ptr + (b * T + tok) * H + h, mask=tok < T, other=0.0).to(tl.float32)
        wd, eGl = _decay_to_end(g)
        w = tl.where(pm, wd, 0.0)
        kw = kc.to(tl.float32) * w[:, None]
        Hc = eGl * tl.load(hs_ptr + (bh * (NC + 1) + cp) * Dk * Dv + kd[:, None] * Dv + vd[None, :], mask=sm, other=0.0)
        if SPLIT:
            X = Hc + _dot_split_t(kw, vc, PREC)
        else:
            X = Hc + tl.dot(tl.trans(kw), vc.to(tl.float32), input_precision=PREC)
        out = tl.exp(gtot - tl.load(gs_ptr + bh * (NC + 1) + cp + 1)).to(tl.float32) * X
    return out


@triton.jit
def _dla_final_kernel(
    k_ptr, v_ptr, g_ptr, hs_ptr, gs_ptr, fpos_ptr, size_ptr, hinit_ptr, m0_ptr, p_ptr, out_ptr,
    T, H, Dk, Dv, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """Program (bh, final slot i, Dv block): the final cache state of slot i, float32. Closed slot i
    (covering a_i .. a_{i+1} - 1) = H(a_{i+1} - 1) - H(a_i - 1), both decayed to T-1 (H before the oldest
    start is 0); the open slot is the carry scan's P; unused slots are 0. <= 4 C Dk BV FLOPs (x3 split)."""
    bh = tl.program_id(0)
    i = tl.program_id(1)
    vb = tl.program_id(2)
    b = bh // H
    h = bh % H
    NC = tl.cdiv(T, C)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    sm = (kd[:, None] < Dk) & (vd[None, :] < Dv)
    m = tl.load(size_ptr + bh)
    m0 = tl.load(m0_ptr + bh)
    gtot = tl.load(gs_ptr + bh * (NC + 1) + NC)
    out = tl.zeros([BK, BV], dtype=tl.float32)
    if i == m - 1:
        out = tl.load(p_ptr + bh * Dk * Dv + kd[:, None] * Dv + vd[None, :], mask=sm, other=0.0)
    elif i < m - 1:
        a1 = tl.load(fpos_ptr + bh * KP + i + 1)
        out = _prefix_before(k_ptr, v_ptr, g_ptr, hs_ptr, gs_ptr, hinit_ptr, bh, b, h, a1, m0, gtot, T, H, Dk, Dv, K, NC,
                             C, BK, BV, SPLIT, PREC, HAS_INIT, vb)
        if i > 0:
            a0 = tl.load(fpos_ptr + bh * KP + i)
            out -= _prefix_before(k_ptr, v_ptr, g_ptr, hs_ptr, gs_ptr, hinit_ptr, bh, b, h, a0, m0, gtot, T, H, Dk, Dv, K,
                                  NC, C, BK, BV, SPLIT, PREC, HAS_INIT, vb)
    tl.store(out_ptr + ((bh * K + i) * Dk) * Dv + kd[:, None] * Dv + vd[None, :], out, mask=sm)


# ---------------------------------------------------------------------------------------------------
# 5. Output (parallel over chunks)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _dla_output_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, o_ptr,
    mask_ptr, death_ptr, death0_ptr, live_ptr, livem_ptr, hs_ptr, gs_ptr, bidx_ptr, bst_ptr, binit,
    T, H, Dk, Dv, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    G: tl.constexpr,
):
    """Program (chunk c, bh, Dv block).

    o_t = sum_{s in chunk, s <= t} lambda_t[J[t,s]] e^{Gc[t]-Gc[s]} (q_t.k_s) v_s
        + lambda_t[n_in(t)] e^{Gc[t]} q_t^T H(c0-1)
        + sum_{live old starts a_j, j >= 1} alive_j(t) (lambda_t[r_j+1] - lambda_t[r_j]) q_t^T H_d(a_j - 1)
    where H_d(a-1) is the prefix state before a, decayed to t. FLOPs per chunk: 2 C^2 (Dk + BV) + 2 C Dk BV for the
    chunk itself, and per live old start one read of its materialised prefix state (_dla_bstate_kernel;
    2 C Dk BV FLOPs, Dk BV elements from L2), G starts per tensor-core product.
    """
    c = tl.program_id(0)
    bh = tl.program_id(1)
    vb = tl.program_id(2)
    b = bh // H
    h = bh % H
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    row = t_idx[:, None]
    col = t_idx[None, :]
    tok = c * C + t_idx
    valid = tok < T
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    jj = tl.arange(0, KP)
    kmask = valid[:, None] & (kd[None, :] < Dk)
    qc = tl.load(q_ptr + ((b * T + tok) * H + h)[:, None] * Dk + kd[None, :], mask=kmask, other=0.0)
    kc = tl.load(k_ptr + ((b * T + tok) * H + h)[:, None] * Dk + kd[None, :], mask=kmask, other=0.0)
    vc = tl.load(v_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vd[None, :], mask=valid[:, None] & (vd[None, :] < Dv), other=0.0)
    g = tl.load(g_ptr + (b * T + tok) * H + h, mask=valid, other=0.0).to(tl.float32)
    Gc = tl.cumsum(g, 0)
    wrow = w_ptr + ((b * T + tok) * H + h) * K  # lambda_t
    # Live starts inside the chunk at time t: A[t, u] = start(u) & u <= t & death(u) > t.
    mask = tl.load(mask_ptr + bh * NC + c)
    bvec = ((mask >> t_idx.to(tl.int64)) & 1) != 0
    dth = tl.load(death_ptr + bh * NC * C + tok)
    A = bvec[None, :] & (col <= row) & (dth[None, :] > (c * C + row))
    Af = A.to(tl.float32)
    n_in = tl.sum(Af, 1)
    J = (n_in[:, None] - tl.cumsum(Af, 1)).to(tl.int32)  # live starts in (s, t]
    causal = (col <= row) & valid[:, None]
    lamJ = tl.load(wrow[:, None] + J, mask=causal, other=0.0).to(tl.float32)
    Dm = tl.where(causal, tl.exp(tl.minimum(Gc[:, None] - Gc[None, :], 0.0)), 0.0)
    if LOWP:
        S = tl.dot(qc, tl.trans(kc))
        o = tl.dot((S * Dm * lamJ).to(vc.dtype), vc)
    else:
        S = tl.dot(qc.to(tl.float32), tl.trans(kc.to(tl.float32)), input_precision=PREC)
        o = tl.dot(S * Dm * lamJ, vc.to(tl.float32), input_precision=PREC)
    qf = qc.to(tl.float32)
    n_in_i = n_in.to(tl.int32)
    eGc = tl.exp(Gc)
    # The state before the chunk, read with the recency of the piece holding token c0-1.
    sm = (kd[:, None] < Dk) & (vd[None, :] < Dv)
    Hc = tl.load(hs_ptr + (bh * (NC + 1) + c) * Dk * Dv + kd[:, None] * Dv + vd[None, :], mask=sm, other=0.0)
    # n_in(t) = K only with an empty cache before the chunk (H = 0): no weight to read (and none in bounds).
    lam_in = tl.load(wrow + n_in_i, mask=valid & (n_in_i < K), other=0.0).to(tl.float32)
    o += (lam_in * eGc)[:, None] * _qdot(qc, qf, Hc, LOWP, PREC)
    # Old live starts (at the chunk start), oldest first; j = 0 (the oldest) has H(a_0 - 1) = 0.
    m0 = tl.load(livem_ptr + bh * NC + c)
    lpos = tl.load(live_ptr + (bh * NC + c) * KP + jj)
    inlist = jj < m0
    m0init = tl.load(livem_ptr + bh * NC)  # the initial cache's size (live list of chunk 0)
    dpos = tl.where(lpos >= 0, lpos, 0)
    d_old = tl.where(lpos >= 0, tl.load(death_ptr + bh * NC * C + dpos, mask=inlist, other=2147483647),
                     tl.load(death0_ptr + bh * K + tl.where(lpos < 0, lpos + m0init, 0), mask=inlist, other=2147483647))
    alive = inlist[None, :] & (d_old[None, :] > (c * C + row))  # [C, KP]
    alf = alive.to(tl.float32)
    after = tl.sum(alf, 1)[:, None] - tl.cumsum(alf, 1)  # alive starts after j
    r = (after + n_in[:, None]).to(tl.int32)
    cmask = alive & valid[:, None] & (jj[None, :] >= 1)
    lam_r = tl.load(wrow[:, None] + r, mask=cmask, other=0.0).to(tl.float32)
    lam_r1 = tl.load(wrow[:, None] + r + 1, mask=cmask, other=0.0).to(tl.float32)
    coef = tl.where(cmask, lam_r1 - lam_r, 0.0)
    gs_c = tl.load(gs_ptr + bh * (NC + 1) + c)  # float64: sum of g before chunk c
    # Each old start's prefix state B (compact buffer) and its reference log decay (end of its chunk).
    bslot = tl.where(lpos >= 0, tl.load(bidx_ptr + bh * NC * C + dpos, mask=inlist, other=-1).to(tl.int64),
                     (binit + bh * K + lpos + m0init).to(tl.int64))
    bslot = tl.where(inlist & (jj >= 1), bslot, -1)
    gref = tl.where(lpos >= 0, tl.load(gs_ptr + bh * (NC + 1) + dpos // C + 1, mask=inlist, other=0.0), 0.0)
    dG = (gs_c - gref).to(tl.float32)
    scale = coef * tl.exp(tl.minimum(Gc[:, None] + dG[None, :], 0.0))  # [C, KP]
    # Reads of the old starts' states, G at a time: o += (q * scale_j)[C, G*Dk] @ B[G*Dk, BV].
    scale3 = tl.reshape(scale, [C, KP // G, G])
    bslot2 = tl.reshape(bslot, [KP // G, G])
    grp = tl.arange(0, KP // G)
    for gx in range(0, tl.cdiv(m0, G)):
        sg = tl.sum(tl.where(grp[None, :, None] == gx, scale3, 0.0), 1)  # [C, G]
        bs = tl.sum(tl.where(grp[:, None] == gx, bslot2, 0), 0)  # [G]
        bm = (bs >= 0)[:, None, None] & (kd[None, :, None] < Dk) & (vd[None, None, :] < Dv)
        Bt = tl.load(bst_ptr + tl.maximum(bs, 0)[:, None, None] * Dk * Dv + kd[None, :, None] * Dv + vd[None, None, :],
                     mask=bm, other=0.0)
        Bt = tl.reshape(Bt, [G * BK, BV])
        Qs = tl.reshape(qf[:, None, :] * sg[:, :, None], [C, G * BK])
        if LOWP:
            o += tl.dot(Qs.to(qc.dtype), Bt.to(qc.dtype))
        else:
            o += tl.dot(Qs, Bt.to(tl.float32), input_precision=PREC)
    tl.store(o_ptr + ((b * T + tok) * H + h)[:, None] * Dv + vd[None, :], o.to(o_ptr.dtype.element_ty),
             mask=valid[:, None] & (vd[None, :] < Dv))


# ---------------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------------


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _group(KP: int, BK: int, lowp: bool) -> int:
    """Old slot states per product in the output kernel: a [G*BK, BV] operand tile within shared memory."""
    cap = (256 if lowp else 64) // BK
    return max(1, min(int(os.environ.get("DLA_TRITON_OUTPUT_GROUP", OUTPUT_GROUP)), cap, KP))


def _check_dims(Dk: int, Dv: int) -> None:
    if Dk > 256 or Dv > 256:
        raise ValueError(f"dla triton forward: Dk and Dv up to 256 are supported, got Dk={Dk}, Dv={Dv}")


# On an H200 (2026-11-27) the forward's output was wrong at Dk = Dv = 16 (relative error 4e-2, states and
# decisions right; benchmarks/gpu_size_check.py) and one small-head harness run hit an illegal memory
# access; 32, 64 and 128 matched to 7e-7. The interpreter computes 16 correctly, so the fault is in how the
# small tiles compile. Until it is found, the GPU forward refuses heads below 32 (dla_fast.forward routes
# them to the torch path).
MIN_GPU_FORWARD_DIM = 32


def _check_forward_dims(Dk: int, Dv: int) -> None:
    _check_dims(Dk, Dv)
    if not _interpret() and min(Dk, Dv) < MIN_GPU_FORWARD_DIM:
        raise ValueError(
            f"dla triton forward: on a GPU Dk and Dv must be at least {MIN_GPU_FORWARD_DIM} (a known fault at "
            f"smaller heads, docs/triton.md), got Dk={Dk}, Dv={Dv}; dla_fast.forward runs them on the torch path"
        )


def _log_decay_sums(g, NC: int) -> torch.Tensor:
    """``gs [BH, NC + 1]`` float64: the sum of ``g`` before each chunk (and over the whole call, last)."""
    B, T, H = g.shape
    gpad = torch.zeros(B * H, NC * CHUNK, device=g.device, dtype=torch.float64)
    gpad[:, :T] = g.double().permute(0, 2, 1).reshape(B * H, T)
    gs = torch.zeros(B * H, NC + 1, device=g.device, dtype=torch.float64)
    gs[:, 1:] = gpad.view(B * H, NC, CHUNK).sum(-1).cumsum(-1)
    return gs


def _initial_prefixes(states0, BH: int, Dk: int, Dv: int, dev):
    """``(h0, hinit)``: the sum of the initial slots (the prefix state before the call) and, per initial
    slot i, the sum of the slots before it (its pseudo start's prefix state); zeros without a cache."""
    if states0 is None:
        h0 = torch.zeros(BH, Dk, Dv, device=dev, dtype=torch.float32)
        return h0, h0  # hinit is never read: no pseudo starts without an initial cache
    return states0.sum(1).contiguous(), (torch.cumsum(states0, 1) - states0).contiguous()


def _prefix_states(k, v, g, gs, h0, *, split: bool, prec: str) -> torch.Tensor:
    """``hs [BH, NC + 1, Dk, Dv]`` float32: the single-state prefix state H(c0 - 1) before every chunk
    (and after the last), on the current stream."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    NC = gs.shape[1] - 1
    BK, BVF = max(_next_pow2(Dk), 16), max(_next_pow2(Dv), 16)
    BV = min(BVF, 64)
    hs = torch.empty(B * H, NC + 1, Dk, Dv, device=k.device, dtype=torch.float32)
    _dla_chunkstate_kernel[(NC, B * H, triton.cdiv(BVF, BV))](k, v, g, hs, T, H, Dk, Dv, C=CHUNK, BK=BK, BV=BV,
                                                             SPLIT=split, PREC=prec, num_warps=4)
    HBLK = 1024
    _dla_hscan_kernel[(B * H, triton.cdiv(Dk * Dv, HBLK))](h0, hs, gs, T, Dk * Dv, C=CHUNK, BLOCK=HBLK, num_warps=4)
    return hs


def _surviving_starts(masks, death, T: int):
    """Slot starts that outlive their chunk (later chunks read their prefix state): ``(surv [BH, NC*C]
    bool, their number, bidx [BH, NC*C] int32)`` with ``bidx`` the compact index (row-major), -1 elsewhere."""
    BH, NC = masks.shape
    C = CHUNK
    dev = masks.device
    tpos = torch.arange(NC * C, device=dev)
    bits = ((masks[:, :, None] >> torch.arange(C, device=dev, dtype=torch.int64)) & 1).bool().reshape(BH, NC * C)
    surv = bits & (death >= (tpos // C + 1) * C) & (tpos < T)
    nsurv = int(surv.sum())
    bidx = torch.where(surv, torch.cumsum(surv.reshape(-1), 0).reshape(BH, NC * C) - 1, -1).to(torch.int32)
    return surv, nsurv, bidx


def _start_states(k, v, g, hs, masks, death, bidx, nsurv: int, hinit, K: int, *, lowp: bool, prec: str):
    """The compact prefix states ``bst [nsurv (+ BH K), Dk, Dv]`` of the surviving starts, each decayed to
    its chunk end, then the initial slots' pseudo starts (``hinit``, reference: the call's start)."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    BH, NC = masks.shape
    BK, BVF = max(_next_pow2(Dk), 16), max(_next_pow2(Dv), 16)
    BV = min(BVF, 64)
    ninit = BH * K if hinit is not None else 0
    bst = torch.empty(nsurv + ninit, Dk, Dv, device=k.device, dtype=k.dtype if lowp else torch.float32)
    if ninit:
        bst[nsurv:] = hinit.reshape(BH * K, Dk, Dv).to(bst.dtype)
    _dla_bstate_kernel[(NC, BH, triton.cdiv(BVF, BV))](k, v, g, hs, masks, death, bidx, bst, T, H, Dk, Dv, C=CHUNK,
                                                      BK=BK, BV=BV, LOWP=lowp, PREC=prec, num_warps=8)
    return bst


def forward_scalar_decay_triton(
    q, k, v, g, slot_weights, *, tau, boundaries=None, states=None, counts=None, info=None, size=None,
    eps=1e-6, norm_eps=1e-6, return_trace=True, profile=None, keep=None,
):
    """DLA forward, scalar-decay backbone, on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1).

    Args:
        q, k: ``[B, T, H, Dk]``; v: ``[B, T, H, Dv]`` (float32, bfloat16 or float16, one dtype).
        g: ``[B, T, H]`` log decays (any float dtype, read as float32).
        slot_weights: ``[B, T, H, K]`` the read weights lambda (any float dtype).
        tau: the boundary threshold (float).
        boundaries: bool ``[B, T, H]`` overriding the decisions, or None.
        states, counts, info, size: the initial cache (``[B, H, K, Dk, Dv]`` float32, ``[B, H, K]`` int64,
            ``[B, H, K]`` float32, ``[B, H]`` int64), or all None for an empty cache.
        eps, norm_eps: the score's guards.
        return_trace: also return ``(scores float32, starts bool, merged int64)``, each ``[B, T, H]``.
        profile: a dict, or None: if given, each stage's time in ms (CUDA events, synchronising) and
            the mean number of live slot starts at chunk starts are written into it (benchmarks only).
        keep: a dict, or None: if given, the decided structure in the kernels' own form is written into it
            (``Structure.triton``: what ``dla_fast.triton_backward`` needs; ``O(T)`` integers per row).

    Returns:
        ``(o, (states, counts, info, size), trace)`` with ``o`` ``[B, T, H, Dv]`` in q's dtype, the final
        cache in the layout above and ``trace`` (or None).
    """
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    K = slot_weights.shape[-1]
    _check_forward_dims(Dk, Dv)
    dev = q.device
    C = CHUNK
    BH = B * H
    NC = triton.cdiv(T, C)
    KP = max(_next_pow2(K), 2)
    BK = max(_next_pow2(Dk), 16)
    BVF = max(_next_pow2(Dv), 16)
    BV = min(BVF, 64)
    NVB = triton.cdiv(BVF, BV)
    # 16-bit tensor-core dots on the GPU; the interpreter (Triton 3.9) computes bf16 tl.dot wrongly, so
    # it gets fp32 dots on the upcast operands.
    lowp = q.dtype in (torch.bfloat16, torch.float16) and not _interpret()
    prec = "ieee" if _interpret() else "tf32x3"
    if T == 0:  # nothing to do: empty outputs, the cache unchanged
        if states is None:
            cache = (torch.zeros(B, H, K, Dk, Dv, device=dev), torch.zeros(B, H, K, device=dev, dtype=torch.int64),
                     torch.zeros(B, H, K, device=dev), torch.zeros(B, H, device=dev, dtype=torch.int64))
        else:
            cache = (states.float().clone(), counts.long().clone(), info.float().clone(), size.long().clone())
        empty = torch.zeros(B, 0, H, device=dev)
        trace = (empty, empty.bool(), empty.long()) if return_trace else None
        return torch.zeros(B, 0, H, Dv, device=dev, dtype=q.dtype), cache, trace
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g = g.contiguous()
    slot_weights = slot_weights.contiguous()
    f32 = dict(device=dev, dtype=torch.float32)

    if states is None:
        states0 = None
        counts0 = torch.zeros(B, H, K, device=dev, dtype=torch.int64)
        info0 = torch.zeros(B, H, K, **f32)
        size_flat = torch.zeros(BH, device=dev, dtype=torch.int64)
        P = torch.zeros(BH, Dk, Dv, **f32)
    else:
        states0 = states.float().reshape(BH, K, Dk, Dv)
        counts0, info0 = counts.long(), info.float()
        size_flat = size.long().reshape(BH).contiguous()
        open_idx = (size_flat - 1).clamp(min=0)
        P = (states0[torch.arange(BH, device=dev), open_idx] * (size_flat > 0)[:, None, None]).contiguous()
    # 1. tables
    _mark(profile, 'table')
    itab = torch.empty(BH, NC, C, C, **f32)
    anc = torch.empty(BH, NC, C, device=dev, dtype=torch.int64)
    x0 = torch.empty(BH, NC * C, **f32)
    np0 = torch.empty(BH, NC * C, **f32)
    ssb = torch.empty(BH, NC * C, **f32)
    override = boundaries is not None
    _dla_table_kernel[(NC, BH)](
        k, v, g, itab, anc, x0, np0, ssb, T, H, Dk, Dv, float(tau), float(eps), float(norm_eps),
        C=C, BK=BK, BVF=BVF, NEED_ANC=not override, LOWP=lowp, PREC=os.environ.get("DLA_TRITON_TABLE_PREC", "ieee"),
        LOGC=int(math.log2(C)), SCAN=os.environ.get("DLA_TRITON_TABLE_SCAN", "1") == "1",
        num_warps=8,
    )
    # 4. prefix states at chunk starts: independent of the decisions, so on CUDA it runs on a side stream
    # while the sequential carry scan and merge simulation (B*H programs) leave most of the GPU idle.
    gs = _log_decay_sums(g, NC)
    split = q.dtype == torch.bfloat16 and not _interpret()
    h0, hinit = _initial_prefixes(states0, BH, Dk, Dv, dev)
    use_side = dev.type == "cuda" and not _interpret() and os.environ.get("DLA_TRITON_SIDE_STREAM", "1") == "1"
    side = torch.cuda.Stream(device=dev) if use_side else None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream(dev))
    with (torch.cuda.stream(side) if side is not None else _nullcontext()):
        hs = _prefix_states(k, v, g, gs, h0, split=split, prec=prec)

    # 2. carry scan
    _mark(profile, 'carry')
    masks = torch.empty(BH, NC, device=dev, dtype=torch.int64)
    cscores = torch.empty(BH, NC * C, **f32)
    scores = torch.empty(BH, NC * C, **f32)
    bnd = boundaries.contiguous().to(torch.int8) if override else masks
    cnt = counts0.reshape(BH, K).clone().contiguous()
    inf64 = info0.reshape(BH, K).double().contiguous()
    msize = size_flat.clone()
    death = torch.full((BH, NC * C), INT32_MAX, device=dev, dtype=torch.int32)
    death0 = torch.full((BH, K), INT32_MAX, device=dev, dtype=torch.int32)
    merged = torch.full((BH, NC * C), -1, device=dev, dtype=torch.int64)
    live = torch.empty(BH, NC, KP, device=dev, dtype=torch.int32)
    livem = torch.empty(BH, NC, device=dev, dtype=torch.int32)
    fpos = torch.empty(BH, KP, device=dev, dtype=torch.int32)
    # PIPE: the merge simulation runs concurrently with the carry scan (its own stream), one chunk behind,
    # synchronised by a per-(b, h) flag; the two sequential passes then overlap.
    pipe = os.environ.get("DLA_TRITON_PIPELINE", "0") == "1"
    flag = torch.zeros(BH, device=dev, dtype=torch.int32)
    mstream = torch.cuda.Stream(device=dev) if (pipe and dev.type == "cuda" and not _interpret()) else None
    if mstream is not None:
        mstream.wait_stream(torch.cuda.current_stream(dev))
    BVC = BVF if BVF <= 128 else 64  # the carry kernel keeps P in registers up to Dv = 128
    _dla_carry_kernel[(BH,)](
        k, v, g, bnd, anc, x0, np0, ssb, P, size_flat, masks, cscores,
        T, H, Dk, Dv, float(tau), float(eps), float(norm_eps),
        C=C, BK=BK, BV=BVC, NVB=triton.cdiv(BVF, BVC), OVERRIDE=override, PREC=prec,
        SPLIT=q.dtype == torch.bfloat16 and not _interpret(), PIPE=pipe, flag_ptr=flag,
        num_warps=int(os.environ.get("DLA_TRITON_CARRY_WARPS", 8 if BK * BVC > 64 * 64 else 4)),
    )
    if not pipe:
        _dla_scores_kernel[(NC, BH)](itab, masks, cscores, scores, T, C=C, num_warps=4)
    # 3. structure simulation
    _mark(profile, 'merge')
    with (torch.cuda.stream(mstream) if mstream is not None else _nullcontext()):
        _dla_merge_kernel[(BH,)](
            masks, scores, cnt, inf64, msize, death, death0, merged, live, livem, fpos, T, K, itab, cscores, flag,
            C=C, KP=KP, PIPE=pipe, num_warps=1,
        )
    if mstream is not None:
        torch.cuda.current_stream(dev).wait_stream(mstream)
    if side is not None:
        torch.cuda.current_stream(dev).wait_stream(side)
    # 5. output
    _mark(profile, 'output')
    surv, nsurv, bidx = _surviving_starts(masks, death, T)
    bst = _start_states(k, v, g, hs, masks, death, bidx, nsurv, None if states is None else hinit, K,
                        lowp=lowp, prec=prec)
    o = torch.empty(B, T, H, Dv, device=dev, dtype=q.dtype)
    _dla_output_kernel[(NC, BH, NVB)](
        q, k, v, g, slot_weights, o, masks, death, death0, live, livem, hs, gs, bidx, bst, nsurv,
        T, H, Dk, Dv, K, C=C, BK=BK, BV=BV, KP=KP, LOWP=lowp, PREC=prec, G=_group(KP, BK, lowp), num_warps=8,
    )
    # Final cache: the open slot from the carry scan; closed slots as differences of prefix states.
    _mark(profile, 'final')
    final_states = torch.empty(BH, K, Dk, Dv, **f32)
    _dla_final_kernel[(BH, K, NVB)](
        k, v, g, hs, gs, fpos, msize, hinit, size_flat, P, final_states, T, H, Dk, Dv, K,
        C=C, BK=BK, BV=BV, KP=KP, SPLIT=split, PREC=prec, HAS_INIT=states is not None, num_warps=4,
    )
    if keep is not None:
        keep.update(masks=masks, death=death, death0=death0, live=live, livem=livem, fpos=fpos, size=msize)
    cache = (
        final_states.reshape(B, H, K, Dk, Dv),
        cnt.reshape(B, H, K),
        inf64.float().reshape(B, H, K),
        msize.reshape(B, H),
    )
    _mark(profile, "trace")
    trace = None
    if return_trace:
        bits = ((masks[:, :, None] >> torch.arange(C, device=dev, dtype=torch.int64)) & 1).bool()
        starts = bits.reshape(BH, NC * C)[:, :T].reshape(B, H, T).permute(0, 2, 1)
        trace = (
            scores[:, :T].reshape(B, H, T).permute(0, 2, 1),
            starts,
            merged[:, :T].reshape(B, H, T).permute(0, 2, 1),
        )
    _mark(profile, None)
    if profile is not None:
        profile["mean_live_at_chunk_start"] = float(livem.float().mean())
    return o, cache, trace


def _mark(profile, name):
    """Record a CUDA event at a stage boundary; on the last call (name None) turn them into ms."""
    if profile is None or not torch.cuda.is_available() or _interpret():
        return
    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    marks = profile.setdefault("_events", [])
    marks.append((name, ev))
    if name is None:
        torch.cuda.synchronize()
        for (n0, e0), (_, e1) in zip(marks[:-1], marks[1:]):
            profile[n0 + "_ms"] = e0.elapsed_time(e1)
        del profile["_events"]
