"""The table kernel as it was before 2026-11-30 (full [C, C] table, 12 gathers for the orbits): the baseline of
``benchmarks/table_bench.py``, which checks the current ``dla_table_kernel`` against it bit for bit."""

from __future__ import annotations

import triton
import triton.language as tl

from dla_fast.ops.common.score import expm1_triton, information_score_triton
from dla_fast.ops.common.triton_utils import chunk_tokens, decay_scan_combine, decay_to_end, load_rows, load_scalars
from dla_fast.ops.scalar_decay.chunk_fwd_decide import (
    CARRY_ROWS,
    CV_A,
    CV_ASH,
    CV_EG,
    CV_EM1,
    CV_NP0,
    CV_SS,
    CV_WD,
    CV_X0,
)


@triton.jit(do_not_specialize=["T"])
def dla_table_kernel_baseline(
    k_ptr, v_ptr, g_ptr, rlen_ptr,
    itab_ptr, anc_ptr, cvec_ptr, decay_ptr,
    T, H, Dk, Dv, tau, eps, norm_eps,
    C: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
    NEED_ANC: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, LOGC: tl.constexpr, SCAN: tl.constexpr,
):
    """Program (chunk c, bh): score table I[t, p] for p < t, orbit bitmasks, and the carry scan's per-token
    vectors (the chunk-start column and the decay terms, ``cvec``) and the chunk's total decay.

    FLOPs per chunk: 2 C^2 (Dk + Dv) (Gram) + 4 C^3 (two table matmuls, fp32); bytes: C (Dk + Dv) input
    elements in, 4 C^2 (table) + 8 C (bitmasks) + 32 C (carry vectors) out.
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
    # The carry scan's inputs that do not depend on the carried slot: the chunk-start column (p = 0) and the
    # decay terms, so that its sequential loop only loads them.
    cvec = cvec_ptr + base * CARRY_ROWS * C + t_idx
    tl.store(cvec + CV_X0 * C, tl.sum(tl.where(col == 0, X, 0.0), 1))
    tl.store(cvec + CV_NP0 * C, tl.sum(tl.where(col == 0, nPt, 0.0), 1))
    tl.store(cvec + CV_SS * C, ss)
    tl.store(cvec + CV_EG * C, tl.exp(Gm1))
    tl.store(cvec + CV_ASH * C, tl.where(t_idx > 0, tl.exp(tl.gather(g, tl.maximum(t_idx - 1, 0), 0)), 1.0))
    tl.store(cvec + CV_A * C, a)
    tl.store(cvec + CV_EM1 * C, expm1_triton(2.0 * g))
    wd, eGl = decay_to_end(g)
    tl.store(cvec + CV_WD * C, tl.where(valid, wd, 0.0))
    tl.store(decay_ptr + base, eGl)
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
