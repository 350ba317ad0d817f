"""Triton forward, scalar decay, the decisions: score tables, the carry scan, the scores, the merges.

Stages 1-3 of ``chunk_fwd`` (docs/triton.md): which tokens open a slot and which pairs merge, and the
structure tensors the state and output stages read. Notation as in ``docs/chunked-algorithm.md``: chunk
``c`` covers tokens ``[c*C, c*C + C)``, ``Gc`` is the cumulative log decay inside the chunk, ``N = Dk*Dv``.

The kernels are single bodies on purpose (the long ones say so): each is one program's dependent chain,
and splitting it would add launches or round trips through global memory.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.score import information_score_triton
from ..common.triton_utils import (
    bit_index,
    chunk_tokens,
    decay_scan_combine,
    decay_to_end,
    dot_split,
    dot_state_update,
    load_rows,
    load_scalars,
    load_state,
    mask_bits,
    store_state,
)


# Long: one program's table, orbit and columns; splitting costs a [C, C] round trip through memory.
@triton.jit(do_not_specialize=["T"])
def dla_table_kernel(
    k_ptr, v_ptr, g_ptr, rlen_ptr,
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
    NC = tl.cdiv(T, C)
    b, h, t_idx, tok, valid, trow = chunk_tokens(bh, c, T, H, C)
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BVF)
    kc = load_rows(k_ptr, trow, valid, kd, Dk)
    vc = load_rows(v_ptr, trow, valid, vd, Dv)
    g = load_scalars(g_ptr, trow, valid)
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
        _, nPt = tl.associative_scan((a2, Ysh), 0, decay_scan_combine)
    else:
        ge = tl.where(row >= col, 1.0, 0.0)  # ge[s, p] = [s >= p]
        X = tl.dot(Dm * gram, ge, input_precision=PREC)
        Y = tl.where(row >= col, 2.0 * a[:, None] * X + ss[:, None], 0.0)
        nPt = tl.dot(Dm * Dm, Y, input_precision=PREC)
    N = (Dk * Dv).to(tl.float32)
    I = information_score_triton(nPt, X, ss[:, None], g[:, None], N, eps, norm_eps)
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
        own = tok < tl.load(rlen_ptr + bh)  # the row's own tokens (variable-length batches end early)
        hit = lower & (valid & own)[:, None] & (tau <= I)
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


# Long: the sequential carry scan is one dependent chain per (b, h); the prefetch needs it in one body.
@triton.jit(do_not_specialize=["T"])
def dla_carry_kernel(
    k_ptr, v_ptr, g_ptr, bnd_ptr, rlen_ptr,
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
    and the chunk's boundary mask; dla_scores_kernel assembles the final scores in parallel."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BV)
    N = (Dk * Dv).to(tl.float32)
    emp = (tl.load(size_ptr + bh) == 0).to(tl.int32)
    Tr = tl.load(rlen_ptr + bh)  # the row's length: no decision on the padding after it
    pbase = p_ptr + bh * Dk * Dv
    Preg = load_state(pbase, kd, vd, Dk, Dv)
    shift = tl.maximum(t_idx - 1, 0)
    # chunk 0's inputs
    tok = t_idx
    valid = tok < T
    trow = (b * T + tok) * H + h
    kc = load_rows(k_ptr, trow, valid, kd, Dk)
    vc = load_rows(v_ptr, trow, valid, vd, Dv)
    g = load_scalars(g_ptr, trow, valid)
    X0 = tl.load(x0_ptr + bh * NC * C + tok)
    NP0 = tl.load(np0_ptr + bh * NC * C + tok)
    ss = tl.load(ss_ptr + bh * NC * C + tok)
    anc_row = tl.load(anc_ptr + bh * NC * C + tok)
    for c in range(NC):
        tok = c * C + t_idx
        valid = tok < T
        trow = (b * T + tok) * H + h
        # prefetch chunk c + 1 (masked off past the end)
        tokn = tok + C
        validn = tokn < T
        rown = (b * T + tokn) * H + h
        kn = load_rows(k_ptr, rown, validn, kd, Dk)
        vn = load_rows(v_ptr, rown, validn, vd, Dv)
        gn = load_scalars(g_ptr, rown, validn)
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
                y = tl.sum(dot_split(kc, Preg) * vf, 1)
            else:
                y = tl.sum(tl.dot(kf, Preg, input_precision=PREC) * vf, 1)
            nPc0 = tl.sum(tl.sum(Preg * Preg, 1), 0)
        else:
            y = tl.zeros([C], dtype=tl.float32)
            nPc0 = 0.0
            for vb in tl.static_range(NVB):
                vcb = load_rows(v_ptr, trow, valid, vb * BV + vd, Dv)
                P = load_state(pbase, kd, vb * BV + vd, Dk, Dv)
                y += tl.sum(tl.dot(kf, P, input_precision=PREC) * vcb.to(tl.float32), 1)
                nPc0 += tl.sum(tl.sum(P * P, 1), 0)
        # z_t = sum_{s<t} exp(Gc[t-1] - Gc[s]) y_s: the scan z <- a_{t-1} z + y_{t-1}
        ysh = tl.where(t_idx > 0, tl.gather(y, shift, 0), 0.0)
        ash = tl.where(t_idx > 0, tl.exp(tl.gather(g, shift, 0)), 1.0)
        _, z = tl.associative_scan((ash, ysh), 0, decay_scan_combine)
        eG = tl.exp(Gm1)
        nPc = eG * eG * nPc0 + 2.0 * eG * z + NP0
        xc = eG * y + X0
        Ic = information_score_triton(nPc, xc, ss, g, N, eps, norm_eps)
        fe = (t_idx == 0) & ((t_idx * 0 + c) == 0) & ((t_idx * 0 + emp) != 0)  # first token, empty cache
        Ic = tl.where(fe, 0.0, Ic)
        if OVERRIDE:
            ob = tl.load(bnd_ptr + trow, mask=valid, other=0) != 0
            ob = ob | fe
            bits = tl.where(ob & valid & (tok < Tr), tl.full([C], 1, tl.int64) << t_idx.to(tl.int64), 0)
            mask = tl.sum(bits, 0)
        else:
            hit = ((Ic >= tau) | fe) & valid & (tok < Tr)
            f = tl.min(tl.where(hit, t_idx, C), 0)
            mask = tl.sum(tl.where(t_idx == f, anc_row, 0), 0)  # 0 when f == C (no boundary)
        tl.store(mask_ptr + bh * NC + c, mask)
        tl.store(cscore_ptr + bh * NC * C + tok, Ic)
        if PIPE:  # publish chunk c to the concurrently running merge simulation
            tl.debug_barrier()
            tl.atomic_xchg(flag_ptr + bh, c + 1, sem="release")
        # The open slot at the chunk end.
        bvec = mask_bits(mask, t_idx)
        L = tl.max(tl.where(bvec, t_idx, -1), 0)
        wd, eGl = decay_to_end(g)
        w = tl.where(valid & (t_idx >= L), wd, 0.0)
        keep = tl.where(L >= 0, 0.0, eGl)
        kw = kf * w[:, None]
        if NVB == 1:
            Preg = keep * Preg + dot_state_update(kw, vc, SPLIT, PREC)
        else:
            tl.debug_barrier()
            for vb in tl.static_range(NVB):
                vcb = load_rows(v_ptr, trow, valid, vb * BV + vd, Dv)
                P = load_state(pbase, kd, vb * BV + vd, Dk, Dv)
                Pn = keep * P + tl.dot(tl.trans(kw), vcb.to(tl.float32), input_precision=PREC)
                store_state(pbase, Pn, kd, vb * BV + vd, Dk, Dv)
            tl.debug_barrier()
        kc, vc, g, X0, NP0, ss, anc_row = kn, vn, gn, X0n, NP0n, ssn, ancn
    if NVB == 1:
        store_state(pbase, Preg, kd, vd, Dk, Dv)


@triton.jit(do_not_specialize=["T"])
def dla_scores_kernel(
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
    bvec = mask_bits(mask, t_idx)
    pt = tl.max(tl.where(bvec[None, :] & (col < row), col, -1), 1)
    itab = tl.load(itab_ptr + (bh * NC + c) * C * C + t_idx * C + tl.maximum(pt, 0), mask=pt >= 0, other=0.0)
    Ic = tl.load(cscore_ptr + bh * NC * C + tok)
    tl.store(score_ptr + bh * NC * C + tok, tl.where(pt >= 0, itab, Ic), mask=tok < T)




# Long: the merge simulation keeps the K slots in registers across all events of the call.
@triton.jit(do_not_specialize=["T"])
def dla_merge_kernel(
    mask_ptr, score_ptr, rlen_ptr, cnt_ptr, info_ptr, size_ptr,
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
    Tr = tl.load(rlen_ptr + bh)  # the row's length: its padding counts in no slot
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
        nvalid = tl.maximum(tl.minimum(tl.minimum(T, Tr) - c * C, C), 0)
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
        sc64 = tl.where(t_idx < nvalid, sc, 0.0).to(tl.float64)
        cs = tl.cumsum(sc64, 0)  # inclusive prefix sums of the chunk's scores
        nb = tl.sum((mask_bits(mask, t_idx)).to(tl.int32), 0)
        rem = mask
        prev = 0
        cprev = tl.zeros([], dtype=tl.float64)  # prefix sum before `prev`
        for _ in range(nb):
            low = rem & (-rem)  # the lowest boundary left in the chunk, as a bit
            rem = rem ^ low
            u = bit_index(low)
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


