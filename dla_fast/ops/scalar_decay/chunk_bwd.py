"""Triton backward of DLA, scalar-decay backbone, with the forward's partition held fixed (docs/training.md).

The forward (``chunk_fwd``) writes the output in telescoped form: for token ``t`` of chunk ``c``,

    o_t = sum_{s in chunk, s <= t} lam_t[J[t,s]] e^{Gc[t]-Gc[s]} (q_t.k_s) v_s           (intra)
        + lam_t[n_in(t)] e^{Gc[t]} q_t^T Hc                                               (Hc = H(c0 - 1))
        + sum_{old live starts j >= 1} scale[t, j] q_t^T B_j                               (telescoped slots)

with ``H`` the single-state prefix state and ``B_j`` the prefix state before start ``j`` (decayed to the
end of its chunk; ``scale`` holds ``lam_t[r + 1] - lam_t[r]`` and the decay). With the partition fixed every
term is linear in ``v``, bilinear in ``q`` and ``k``, linear in ``lam``. The backward is four kernels after a
pre-pass:

0. ``dla_read_scales_kernel`` (chunk, bh; the forward's, in its backward mode): per old start its ``scale`` row
   (the forward's values), its ranks, decay offset and state index, which depend on the structure, g and lambda only.
1. ``dla_bwd_q_kernel`` (chunk, bh): ``dq`` complete, ``dlam`` complete, and ``dHc`` per chunk — the
   transposes of the three reads above (the old starts' ``B_j`` recomputed by the forward's own kernels). Where
   the starts crowd their chunks (``TritonSettings.grouped_reads``, as the forward) ``dla_bwd_q_grouped_kernel``
   instead reads each older chunk's starts together from ``H`` and that chunk's tokens: no ``B_j`` is built, and
   stages 2-4 take ranges of chunks (``start_range_count``), so that neither stage holds every start's state.
2. ``dla_bwd_db_kernel`` (surviving start, Dv block): ``dB_j = sum_t scale[t, j] q_t dO_t^T`` over the
   chunks where start ``j`` is live and old: the adjoint of each materialised prefix state.
3. ``dla_bwd_scan_kernel`` (bh, state block): the reverse scan over chunks of the single state's adjoint,
   ``Y[c] = dHc[c] + e^{sum of g over chunk c} (Y[c + 1] + sum of the dB_j of chunk c's starts)``, the
   transpose of ``dla_hscan_kernel``.
4. ``dla_bwd_kv_kernel`` (chunk, bh): ``dk`` and ``dv``: the intra-chunk transpose plus
   ``D_s = e^{GL - Gc[s]} (Y[c + 1] + sum_{starts j of the chunk after s} dB_j)`` applied to ``v_s`` and ``k_s``.

``dg`` follows from the identity ``dL/dG[t] = q_t.dq_t - k_t.dk_t (+ <S_final, dS_final> at T - 1)`` and a
reverse cumulative sum (the kernels write the two row sums). The final cache's gradient enters as
``Y[NC]`` (the open slot is ``H(T-1)`` minus a prefix) and as ``dB`` of the final slots' starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ...settings import DEFAULT_SETTINGS, TritonSettings
from ..common.profiling import mark_stage
from ..common.triton_utils import (
    block_sizes,
    chunk_tokens,
    decay_to_end,
    dot_nn,
    dot_nt,
    load_rows,
    load_scalars,
    load_state,
    store_state,
)
from .chunk_fwd import DecidedStructure, LaunchConfig, launch_config, takes_grouped_reads
from .chunk_fwd_output import dla_read_scales_kernel, intra_weights, old_chunk_piece, old_start_groups, start_group
from .chunk_fwd_states import CHUNK, Survivors, initial_prefixes, prefix_states, start_states, surviving_starts


@triton.jit
def bwd_chunk_own(q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, do_ptr, dhc_ptr, mask_ptr, death_ptr, hs_ptr, c, bh,
                  T, H, Dk, Dv, K, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr,
                  KP: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    """Both dq kernels' transposes of the reads that need no old start (the intra-chunk attention and the read of
    the state before the chunk): ``(dq [C, BK], dlam [C, KP], qc, qf, Gc, trow, valid, tok)``; writes the chunk's
    ``dHc = sum_t cin_t q_t dO_t^T``."""
    NC = tl.cdiv(T, C)
    b, h, t_idx, tok, valid, trow = chunk_tokens(bh, c, T, H, C)
    kd = tl.arange(0, BK)
    jj = tl.arange(0, KP)
    qc = load_rows(q_ptr, trow, valid, kd, Dk)
    kc = load_rows(k_ptr, trow, valid, kd, Dk)
    qf = qc.to(tl.float32)
    g = load_scalars(g_ptr, trow, valid)
    Gc = tl.cumsum(g, 0)
    eGc = tl.exp(Gc)
    wrow = w_ptr + trow * K
    n_in, J, lamJ, Dm = intra_weights(w_ptr, mask_ptr, death_ptr, b, h, bh, c, NC, T, H, K, Gc, C, tl.float32)
    # n_in(t) = K only with an empty cache before the chunk (H = 0): no weight to read (and none in bounds).
    lam_in = tl.load(wrow + n_in, mask=valid & (n_in < K), other=0.0).to(tl.float32)
    cin = tl.where(valid, lam_in * eGc, 0.0)
    # dP = dO V^T and Z_H = dO Hc^T over the Dv blocks; dHc per block.
    dP = tl.zeros([C, C], dtype=tl.float32)
    ZH = tl.zeros([C, BK], dtype=tl.float32)
    for vb in range(NVB):
        vd = vb * BV + tl.arange(0, BV)
        vc = load_rows(v_ptr, trow, valid, vd, Dv)
        doc = load_rows(do_ptr, trow, valid, vd, Dv)
        Hc = load_state(hs_ptr + (bh * (NC + 1) + c) * Dk * Dv, kd, vd, Dk, Dv)
        dP += dot_nt(doc, vc, LOWP, PREC)
        ZH += dot_nt(doc, Hc, LOWP, PREC)
        dHc = dot_nn(tl.trans(qf * cin[:, None]), doc, LOWP, PREC, qc.dtype)
        tl.debug_barrier()  # dhc may alias hs: every thread has read this block of Hc before any writes it
        store_state(dhc_ptr + (bh * (NC + 1) + c) * Dk * Dv, dHc, kd, vd, Dk, Dv)
    # Intra-chunk attention.
    S = dot_nt(qc, kc, LOWP, PREC)
    dq = dot_nn(dP * lamJ * Dm, kc, LOWP, PREC, qc.dtype)
    X = dP * S * Dm
    dlam = tl.zeros([C, KP], dtype=tl.float32)
    for jx in range(0, tl.max(n_in, 0) + 1):  # J takes the values 0 .. n_in(t)
        colx = tl.sum(tl.where(jx == J, X, 0.0), 1)
        dlam += tl.where(jj[None, :] == jx, colx[:, None], 0.0)
    # The state before the chunk, read with recency n_in(t).
    dq += cin[:, None] * ZH
    dlam += tl.where(jj[None, :] == n_in[:, None], (eGc * tl.sum(qf * ZH, 1))[:, None], 0.0)
    return dq, dlam, qc, qf, Gc, trow, valid, tok


@triton.jit
def bwd_q_store(dq_ptr, dgq_ptr, dw_ptr, dq, dlam, Y, qf, trow, valid, tok, bh, T, Dk, K, C: tl.constexpr,
                BK: tl.constexpr, KP: tl.constexpr):
    """Both dq kernels' end: ``Y [C, KP]`` holds at rank r the old start read with rank r (``e^{..} q_t^T B_j
    dO_t``); dlam gets +Y shifted by one rank and -Y: the same sums in the same order as adding and subtracting each
    start's term one by one (the start of rank r - 1 comes before that of rank r). Stores dq, q_t.dq_t and dlam."""
    kd = tl.arange(0, BK)
    jj = tl.arange(0, KP)
    Ym = tl.gather(Y, tl.maximum(jj[None, :] - 1, 0) + tl.zeros([C, KP], dtype=tl.int32), 1)  # rank r - 1
    dlam = (dlam + tl.where(jj[None, :] >= 1, Ym, 0.0)) - Y
    tl.store(dq_ptr + trow[:, None] * Dk + kd[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=valid[:, None] & (kd[None, :] < Dk))
    tl.store(dgq_ptr + bh * T + tok, tl.sum(qf * dq, 1), mask=valid)
    tl.store(dw_ptr + trow[:, None] * K + jj[None, :], dlam.to(dw_ptr.dtype.element_ty),
             mask=valid[:, None] & (jj[None, :] < K))


@triton.jit
def old_start_read(doc0, do_ptr, b_ptr, trow, valid, kd, Dk, Dv, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   NVB: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    """``Z = dO B^T [C, BK]`` for the state at ``b_ptr`` (``doc0``: dO's tile, used when it is one Dv block)."""
    if NVB == 1:  # dO's tile stays in registers
        Z = dot_nt(doc0, load_state(b_ptr, kd, tl.arange(0, BV), Dk, Dv), LOWP, PREC)
    else:
        Z = tl.zeros([C, BK], dtype=tl.float32)
        for vb in range(NVB):
            vd = vb * BV + tl.arange(0, BV)
            Z += dot_nt(load_rows(do_ptr, trow, valid, vd, Dv), load_state(b_ptr, kd, vd, Dk, Dv), LOWP, PREC)
    return Z


@triton.jit(do_not_specialize=["T"])
def dla_bwd_q_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, do_ptr, dq_ptr, dw_ptr, dgq_ptr, dhc_ptr,
    mask_ptr, death_ptr, livem_ptr, hs_ptr, sc_ptr, rk_ptr, dgj_ptr, bsj_ptr, bst_ptr,
    T, H, Dk, Dv, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr, KP: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr,
):
    """Program (chunk c, bh): the transposes of the forward's three reads.

    dq_t = sum_s dP[t,s] lam_t[J] e^{..} k_s + cin_t Hc dO_t + sum_j sc[t,j] B_j dO_t   (dP = dO V^T)
    dlam_t[J[t,s]] += dP[t,s] (q_t.k_s) e^{..};  dlam_t[n_in] += e^{Gc[t]} q_t^T Hc dO_t;
    dlam_t[r_j + 1] += e^{..} q_t^T B_j dO_t, dlam_t[r_j] -= the same;  dHc = sum_t cin_t q_t dO_t^T.
    The old starts' read scales ``sc``, ranks ``rk``, decay offsets ``dgj`` and state indices ``bsj`` are
    ``dla_read_scales_kernel``'s (backward mode: one row per start). Also writes q_t.dq_t (for dg).
    FLOPs: 2 C^2 (Dk + Dv) + 2 C^2 Dk + 4 C Dk Dv + 2 C Dk Dv per live old start."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    dq, dlam, qc, qf, Gc, trow, valid, tok = bwd_chunk_own(q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, do_ptr, dhc_ptr,
                                                           mask_ptr, death_ptr, hs_ptr, c, bh, T, H, Dk, Dv, K,
                                                           C, BK, BV, NVB, KP, LOWP, PREC)
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    jj = tl.arange(0, KP)
    # Old live starts, from the newest (list index m0 - 1) to index 1 (the oldest, index 0, has H = 0 before it);
    # each start's rows come from the pre-pass. The start's dlam term e^{..} q_t^T B_j dO_t goes to column r_j(t)
    # of Y (one start per rank).
    prog = (bh * NC + c).to(tl.int64)
    m0 = tl.load(livem_ptr + bh * NC + c)
    sc_rows = sc_ptr + prog * KP * C
    rk_rows = rk_ptr + prog * KP * C
    bs_row = bsj_ptr + prog * KP
    dg_row = dgj_ptr + prog * KP
    doc0 = tl.load(do_ptr + trow[:, None] * Dv + tl.arange(0, BV)[None, :],
                   mask=valid[:, None] & (tl.arange(0, BV)[None, :] < Dv), other=0.0)
    Y = tl.zeros([C, KP], dtype=tl.float32)
    # The next start's state index one iteration ahead, in registers: its state load then depends on no load of its
    # own iteration and can be pipelined (as the forward's output kernel).
    bs_next = tl.load(bs_row + tl.maximum(m0 - 1, 0))
    for ii in tl.range(1, m0, num_stages=STAGES):
        jx = m0 - ii
        bs = bs_next.to(tl.int64)
        bs_next = tl.load(bs_row + tl.maximum(jx - 1, 0))
        sc_j = tl.load(sc_rows + jx * C + t_idx)
        r_j = tl.load(rk_rows + jx * C + t_idx).to(tl.int32)
        dG_j = tl.load(dg_row + jx)
        Z = old_start_read(doc0, do_ptr, bst_ptr + bs * Dk * Dv, trow, valid, kd, Dk, Dv, C, BK, BV, NVB, LOWP, PREC)
        dq += sc_j[:, None] * Z
        dc = tl.sum(qf * Z, 1) * tl.exp(tl.minimum(Gc + dG_j, 0.0))
        Y = tl.where(jj[None, :] == r_j[:, None], dc[:, None], Y)  # r_j = -1 where start j is not read
    bwd_q_store(dq_ptr, dgq_ptr, dw_ptr, dq, dlam, Y, qf, trow, valid, tok, bh, T, Dk, K, C, BK, KP)


# Long: as dla_bwd_q_kernel, every read's transpose accumulates into the chunk's dq and per-start tiles.
@triton.jit(do_not_specialize=["T"])
def dla_bwd_q_grouped_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, do_ptr, dq_ptr, dw_ptr, dgq_ptr, dhc_ptr,
    mask_ptr, death_ptr, live_ptr, livem_ptr, hs_ptr, gs_ptr, sc_ptr, inv_ptr, dgj_ptr, dte_ptr, gst_ptr, bst_ptr,
    T, H, Dk, Dv, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr, KP: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, HAS_INIT: tl.constexpr, SPLITS: tl.constexpr,
):
    """Program (chunk c, bh): ``dla_bwd_q_kernel``'s gradients with the old starts read by their chunk, as the
    forward's ``dla_output_grouped_kernel`` reads them (no start state: B_a = e^{Gl'} H(c') + sum_{s in c', s < a}
    e^{Gl' - Gc'[s]} k_s v_s^T). For the group A(c') of live old starts in an earlier chunk c':

        sum_{j in A(c')} sc[t, j] B_j dO_t = alpha_t e^{Gl'} H(c') dO_t + sum_{s in c'} wsum[t, s] e^{..} (dO_t.v_s) k_s
        q_t^T B_j dO_t = e^{Gl'} q_t^T H(c') dO_t + sum_{s in c', s < a_j} e^{..} (q_t.k_s) (dO_t.v_s)     (j in A(c'))

    (``alpha_t``, ``wsum`` as in the forward); the second, one column per start, is a [C, C] x [C, KD] product with
    the indicator (a_j > s). Its decay e^{min(Gc[t] + dgj, 0)} and its rank come after the loop: the per-start
    values go to their ranks by one gather through the pre-pass's inverse rank map ``inv [C, KP]`` (``INV``). Per
    distinct old chunk: dO H^T (2 C Dk Dv FLOPs), dO V'^T and Q K'^T (2 C^2 (Dv + Dk)), two indicator products
    (4 C^2 KD), the dq product (2 C^2 Dk); reads H(c') and the old chunk's k, v and decays. ``hs`` is read for
    older chunks: ``dhc`` must not alias it. The initial slots' pseudo starts (``HAS_INIT``) are read one at a time
    from their states ``bst [BH K, Dk, Dv]``. ``gst [BH NC, KP]`` int32 scratch (``old_start_groups``)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    b = bh // H
    h = bh % H
    dq, dlam, qc, qf, Gc, trow, valid, tok = bwd_chunk_own(q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, do_ptr, dhc_ptr,
                                                           mask_ptr, death_ptr, hs_ptr, c, bh, T, H, Dk, Dv, K,
                                                           C, BK, BV, NVB, KP, LOWP, PREC)
    row = tl.arange(0, C)[:, None]
    kd = tl.arange(0, BK)
    jj = tl.arange(0, KP)
    KD: tl.constexpr = KP if KP >= 16 else 16
    prog = (bh * NC + c).to(tl.int64)
    gst_row = gst_ptr + prog * KP
    lst, jd, m0, lpos, aloc, ngrp = old_start_groups(live_ptr, livem_ptr, gst_row, bh, c, NC, C, KP, KD)
    sc_rows = sc_ptr + prog * KP * C  # one row per start
    doc0 = tl.load(do_ptr + trow[:, None] * Dv + tl.arange(0, BV)[None, :],
                   mask=valid[:, None] & (tl.arange(0, BV)[None, :] < Dv), other=0.0)
    DC = tl.zeros([C, KD], dtype=tl.float32)  # q_t^T B_j dO_t at list index j
    CS: tl.constexpr = C // SPLITS
    IND_PREC: tl.constexpr = "tf32" if LOWP else PREC  # the indicator is exact; the other operand rounded to tf32
    for gx in tl.range(0, ngrp, num_stages=1):
        member, cp, Glp = start_group(gst_row, lst, jd, gs_ptr + bh * (NC + 1), gx, ngrp, C)
        eGl = tl.exp(Glp)
        scg = tl.load(sc_rows + jd[None, :] * C + row, mask=member[None, :], other=0.0)  # [C, KD]
        ZH = old_start_read(doc0, do_ptr, hs_ptr + (bh * (NC + 1) + cp) * Dk * Dv, trow, valid, kd, Dk, Dv, C, BK,
                            BV, NVB, LOWP, PREC)
        dq += (tl.sum(scg, 1) * eGl)[:, None] * ZH
        U = tl.zeros([C, KD], dtype=tl.float32) + (eGl * tl.sum(qf * ZH, 1))[:, None]
        for hh in tl.static_range(SPLITS):
            trowp, validp, kp, dec, ind = old_chunk_piece(k_ptr, dte_ptr, b, h, bh, cp, hh, T, H, NC, kd, Dk, member,
                                                          aloc, C, CS)
            if NVB == 1:
                P = dot_nt(doc0, load_rows(v_ptr, trowp, validp, tl.arange(0, BV), Dv), LOWP, PREC)
            else:
                P = tl.zeros([C, CS], dtype=tl.float32)
                for vb in range(NVB):
                    vd = vb * BV + tl.arange(0, BV)
                    P += dot_nt(load_rows(do_ptr, trow, valid, vd, Dv), load_rows(v_ptr, trowp, validp, vd, Dv),
                                LOWP, PREC)
            P *= dec[None, :]  # decays to the end of c'
            ind = ind.to(tl.float32)
            wsum = tl.dot(scg, ind, input_precision=IND_PREC)
            dq += dot_nn(wsum * P, kp, LOWP, PREC, qc.dtype)
            U += tl.dot(dot_nt(qc, kp, LOWP, PREC) * P, tl.trans(ind), input_precision=IND_PREC)
        DC += tl.where(member[None, :], U, 0.0)
    if HAS_INIT:
        # The initial slots' pseudo starts (the list's first entries, lpos < 0; index 0 is never read).
        m0init = tl.load(livem_ptr + bh * NC)
        npseudo = tl.sum(((jd < m0) & (lpos < 0)).to(tl.int32), 0)
        for jx in range(1, npseudo):
            bst_j = bst_ptr + (bh * K + tl.load(lst + jx) + m0init).to(tl.int64) * Dk * Dv
            Z = old_start_read(doc0, do_ptr, bst_j, trow, valid, kd, Dk, Dv, C, BK, BV, NVB, LOWP, PREC)
            dq += tl.load(sc_rows + jx * C + tl.arange(0, C))[:, None] * Z
            DC += tl.where(jd[None, :] == jx, tl.sum(qf * Z, 1)[:, None], 0.0)
    dgv = tl.load(dgj_ptr + prog * KP + jd, mask=jd < KP, other=0.0)
    DC *= tl.exp(tl.minimum(Gc[:, None] + dgv[None, :], 0.0))
    inv = tl.load(inv_ptr + prog * C * KP + row * KP + jj[None, :]).to(tl.int32)
    Y = tl.where(inv >= 0, tl.gather(DC, tl.maximum(inv, 0), 1), 0.0)
    bwd_q_store(dq_ptr, dgq_ptr, dw_ptr, dq, dlam, Y, qf, trow, valid, tok, bh, T, Dk, K, C, BK, KP)


@triton.jit(do_not_specialize=["T", "nsurv"])
def dla_bwd_db_kernel(
    q_ptr, do_ptr, scale_ptr, live_ptr, livem_ptr, death_ptr, death0_ptr, sbh_ptr, spos_ptr, db_ptr, nsurv,
    T, H, Dk, Dv, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, LOWP: tl.constexpr,
    PREC: tl.constexpr,
):
    """Program (compact start n, Dv block): dB_n = sum over the chunks where start n is live and old of
    sum_t scale[t, n] q_t dO_t^T, with the pre-pass's read scales (fp32, rounded to q's dtype: the products'
    operands). Starts ``n < nsurv`` are real (bh, position); the others the initial slots' pseudo starts
    (bh * K + i). The oldest start (H = 0 before it, never read) and unused pseudo starts get 0. 2 C Dk BV FLOPs
    per chunk of life. The scales may come in q's dtype (16-bit inputs: rounded by torch, the same values)."""
    n = tl.program_id(0)
    vb = tl.program_id(1)
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    jj = tl.arange(0, KP)
    real = n < nsurv
    nr = tl.minimum(n, tl.maximum(nsurv - 1, 0))
    i = tl.maximum(n - nsurv, 0) % K  # pseudo start: initial slot i
    bh = tl.where(real, tl.load(sbh_ptr + nr, mask=real, other=0), tl.maximum(n - nsurv, 0) // K)
    m0init = tl.load(livem_ptr + bh * NC)
    a = tl.where(real, tl.load(spos_ptr + nr, mask=real, other=0), i - m0init)
    dth = tl.where(real, tl.load(death_ptr + bh * NC * C + tl.maximum(a, 0), mask=real, other=0),
                   tl.load(death0_ptr + bh * K + i, mask=~real, other=0))
    first = tl.where(real, a // C + 1, 0)
    skip = tl.where(real, (m0init == 0) & (a == 0), (i < 1) | (i >= m0init))
    first = tl.where(skip, NC, first)
    b = bh // H
    h = bh % H
    last = tl.cdiv(tl.minimum(dth, T), C)  # live at the start of chunks first .. last - 1
    acc = tl.zeros([BK, BV], dtype=tl.float32)
    for c in range(first, last):
        tok = c * C + t_idx
        valid = tok < T
        trow = (b * T + tok) * H + h
        lpos = tl.load(live_ptr + (bh * NC + c) * KP + jj)
        m0 = tl.load(livem_ptr + bh * NC + c)
        j = tl.sum(tl.where((jj < m0) & (lpos == a), jj, 0), 0)  # its index in the chunk's live list
        qc = load_rows(q_ptr, trow, valid, kd, Dk)
        sc = tl.load(scale_ptr + ((bh * NC + c) * KP + j) * C + t_idx).to(qc.dtype).to(tl.float32)
        doc = load_rows(do_ptr, trow, valid, vd, Dv)
        acc += dot_nn(tl.trans(qc.to(tl.float32) * sc[:, None]), doc, LOWP, PREC, qc.dtype)
    store_state(db_ptr + n.to(tl.int64) * Dk * Dv, acc, kd, vd, Dk, Dv)  # past 2**31 from 2**19 starts at Dk = Dv = 64


@triton.jit(do_not_specialize=["T", "c0", "c1"])
def dla_bwd_scan_kernel(
    dhc_ptr, db_ptr, off_ptr, shift_ptr, gs_ptr, T, DD, c0, c1,
    C: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (bh, block of state entries): in place, for c = c1-1 .. c0, from Y[c1] (= dHc[NC] at c1 = NC)
    Y[c] = dHc[c] + e^{sum of g over chunk c} (Y[c + 1] + sum of dB over the starts of chunk c)
    (the starts of chunk c are the compact range off[bh NC + c] .. off[bh NC + c + 1]; their dB at that index plus
    ``shift[bh]`` in ``db``, which holds the range's starts only)."""
    bh = tl.program_id(0)
    blk = tl.program_id(1)
    NC = tl.cdiv(T, C)
    e = blk * BLOCK + tl.arange(0, BLOCK)
    em = e < DD
    shift = tl.load(shift_ptr + bh)
    Y = tl.load(dhc_ptr + (bh * (NC + 1) + c1) * DD + e, mask=em, other=0.0)
    g1 = tl.load(gs_ptr + bh * (NC + 1) + c1)
    for cc in range(c1 - c0):
        c = c1 - 1 - cc
        n0 = tl.load(off_ptr + bh * NC + c) + shift
        n1 = tl.load(off_ptr + bh * NC + c + 1) + shift
        for nn in range(n0, n1):
            Y += tl.load(db_ptr + nn * DD + e, mask=em, other=0.0).to(tl.float32)
        g0 = tl.load(gs_ptr + bh * (NC + 1) + c)
        Y = tl.load(dhc_ptr + (bh * (NC + 1) + c) * DD + e, mask=em, other=0.0) + tl.exp(g1 - g0).to(tl.float32) * Y
        tl.store(dhc_ptr + (bh * (NC + 1) + c) * DD + e, Y, mask=em)
        g1 = g0


# Long: dk and dv of a chunk from its intra part and every state that read it, one register tile each.
@triton.jit(do_not_specialize=["T", "c0"])
def dla_bwd_kv_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, do_ptr, dk_ptr, dv_ptr, dgk_ptr,
    mask_ptr, death_ptr, y_ptr, db_ptr, off_ptr, shift_ptr, spos_ptr,
    T, H, Dk, Dv, K, c0,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr, LOWP: tl.constexpr,
    PREC: tl.constexpr,
):
    """Program (chunk c = c0 + program 0, bh): dk and dv (``db`` and ``shift`` as in ``dla_bwd_scan_kernel``).

    Intra: dv_s += sum_t P[t,s] dO_t (P the forward's weights), dk_s += sum_t dP[t,s] lam_t[J] e^{..} q_t.
    States: D_s = e^{GL - Gc[s]} (Y[c + 1] + sum_{starts j of this chunk, a_j > s} dB_j);
    dk_s += D_s v_s, dv_s += D_s^T k_s. Also writes k_t.dk_t (for dg). FLOPs: 2 C^2 (2 Dk + 2 Dv) +
    4 C Dk Dv per state (Y, and each surviving start of the chunk)."""
    c = c0 + tl.program_id(0)
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    b, h, t_idx, tok, valid, trow = chunk_tokens(bh, c, T, H, C)
    kd = tl.arange(0, BK)
    kmask = valid[:, None] & (kd[None, :] < Dk)
    qc = load_rows(q_ptr, trow, valid, kd, Dk)
    kc = load_rows(k_ptr, trow, valid, kd, Dk)
    g = load_scalars(g_ptr, trow, valid)
    Gc = tl.cumsum(g, 0)
    wd, _ = decay_to_end(g)
    wd = tl.where(valid, wd, 0.0)
    _, _, lamJ, Dm = intra_weights(w_ptr, mask_ptr, death_ptr, b, h, bh, c, NC, T, H, K, Gc, C, tl.float32)
    M = lamJ * Dm
    P = dot_nt(qc, kc, LOWP, PREC) * M
    dP = tl.zeros([C, C], dtype=tl.float32)
    for vb in range(NVB):
        vd = vb * BV + tl.arange(0, BV)
        vc = load_rows(v_ptr, trow, valid, vd, Dv)
        doc = load_rows(do_ptr, trow, valid, vd, Dv)
        dP += dot_nt(doc, vc, LOWP, PREC)
    dk = dot_nn(tl.trans(dP * M), qc, LOWP, PREC, qc.dtype)
    n0 = tl.load(off_ptr + bh * NC + c)
    n1 = tl.load(off_ptr + bh * NC + c + 1)
    shift = tl.load(shift_ptr + bh)
    for vb in range(NVB):
        vd = vb * BV + tl.arange(0, BV)
        vmask = valid[:, None] & (vd[None, :] < Dv)
        vc = load_rows(v_ptr, trow, valid, vd, Dv)
        doc = load_rows(do_ptr, trow, valid, vd, Dv)
        dv = dot_nn(tl.trans(P), doc, LOWP, PREC, qc.dtype)
        Y = load_state(y_ptr + (bh * (NC + 1) + c + 1) * Dk * Dv, kd, vd, Dk, Dv)
        dv += wd[:, None] * dot_nn(kc, Y, LOWP, PREC, qc.dtype)
        dk += wd[:, None] * dot_nt(vc, Y, LOWP, PREC)
        for nn in range(n0, n1):  # the chunk's surviving starts: tokens before a_j are in B_j
            aloc = tl.load(spos_ptr + nn) - c * C
            Bj = load_state(db_ptr + (nn + shift) * Dk * Dv, kd, vd, Dk, Dv)
            wm = tl.where(t_idx < aloc, wd, 0.0)
            dv += wm[:, None] * dot_nn(kc, Bj, LOWP, PREC, qc.dtype)
            dk += wm[:, None] * dot_nt(vc, Bj, LOWP, PREC)
        tl.store(dv_ptr + trow[:, None] * Dv + vd[None, :], dv.to(dv_ptr.dtype.element_ty),
                 mask=vmask)
    tl.store(dk_ptr + trow[:, None] * Dk + kd[None, :], dk.to(dk_ptr.dtype.element_ty), mask=kmask)
    tl.store(dgk_ptr + bh * T + tok, tl.sum(kc.to(tl.float32) * dk, 1), mask=valid)


def _old_start_rows(cfg: LaunchConfig, g, slot_weights, s: DecidedStructure, gs, bidx, nsurv: int, grouped: bool,
                    settings: TritonSettings):
    """The pre-pass: what the dq kernel's loop over the old starts needs besides dO, one row per (bh, chunk, start),
    from ``dla_read_scales_kernel`` in its backward mode: ``(sc, rk, dgj, bsj, dte)``, the read scales ``[BH, NC,
    KP, C]`` fp32 (the forward's values, transposed), the ranks ``[BH, NC, KP, C]`` int8 (int16 past 128 slots; -1
    where not read), the decay offsets ``[BH, NC, KP]`` fp32 and the state indices ``[BH, NC, KP]`` int32: 10.5 KB per
    (bh, chunk) at K = 30.
    ``grouped`` (``dla_bwd_q_grouped_kernel``): ``rk`` the inverse rank map ``[BH, NC, C, KP]``, no ``bsj``, and
    ``dte [BH, NC C]`` fp32 the decays to each chunk's end (else None)."""
    shape = (cfg.BH, cfg.NC, cfg.KP)
    dev = g.device
    sc = torch.empty(*shape, CHUNK, device=dev, dtype=torch.float32)
    # ranks and list indices < KP: int8 up to 128 slots (int16 beyond: an int8 overflowed there, dropping reads)
    rk = torch.empty(*shape, CHUNK, device=dev, dtype=torch.int8 if cfg.KP <= 128 else torch.int16)
    dgj = torch.empty(shape, device=dev, dtype=torch.float32)
    bsj = torch.empty(1 if grouped else shape, device=dev, dtype=torch.int32)
    dte = torch.empty(cfg.BH, cfg.NC * CHUNK, device=dev, dtype=torch.float32) if grouped else None
    dla_read_scales_kernel[(cfg.NC, cfg.BH)](g, slot_weights, s.masks, s.death, s.death0, s.live, s.livem, gs, sc, bidx,
                                             nsurv, rk, dgj, bsj, cfg.T, cfg.H, cfg.K, C=CHUNK, KP=cfg.KP, BWD=True,
                                             dte_ptr=dte, DTE=grouped, INV=grouped,
                                             **settings.launch(dla_read_scales_kernel, num_warps=4))
    return sc, rk, dgj, bsj, dte


def _recompute(cfg: LaunchConfig, k, v, g, init_states, s: DecidedStructure, settings: TritonSettings):
    """The forward's prefix states (recomputed, not stored): ``(states0, gs, hs, survivors, bidx, bst, grouped)``;
    ``grouped``: whether the dq stage reads the old starts by chunk (``takes_grouped_reads``, as the forward), then
    ``bst`` holds only the initial slots' pseudo starts' states."""
    states0 = None if init_states is None else init_states.float().reshape(cfg.BH, cfg.K, cfg.Dk, cfg.Dv)
    h0, hinit = initial_prefixes(states0, cfg.BH, cfg.Dk, cfg.Dv, k.device)
    hs, gs = prefix_states(k, v, g, h0, split=cfg.split, prec=cfg.prec)
    sv = s.survivors or surviving_starts(s.masks, s.death, cfg.T)[0]  # the forward's, if kept
    grouped = takes_grouped_reads(cfg, settings, sv.count)
    bst, bidx = start_states(k, v, g, hs, s.masks, s.death, sv.off, sv.count, hinit if states0 is not None else None,
                             cfg.K, lowp=cfg.lowp, prec=cfg.prec, settings=settings, states=not grouped)
    return states0, gs, hs, sv, bidx, bst, grouped


def _dq_stage(cfg: LaunchConfig, q, k, v, g, slot_weights, dO, s: DecidedStructure, gs, hs, bidx, bst, nsurv: int,
              grouped: bool, has_init: bool, settings: TritonSettings):
    """Stage 1: dq, dlam, dHc after the old starts' rows: ``(dq, dlam, dgq, dhc, sc)``, ``dgq [BH, T]`` the rows'
    q_t.dq_t, ``dhc`` written over ``hs`` (materialised reads) or in a buffer of its own (grouped: the programs read
    older chunks' H), ``sc`` the read scales, kept as the dB kernel's weights (in q's dtype for 16-bit inputs)."""
    B, T, H, K, NC, BH, C = cfg.B, cfg.T, cfg.H, cfg.K, cfg.NC, cfg.BH, CHUNK
    BK, BVF, BV = block_sizes(cfg.Dk, cfg.Dv)
    NVB, dev = triton.cdiv(BVF, BV), q.device
    sc, rk, dgj, bsj, dte = _old_start_rows(cfg, g, slot_weights, s, gs, bidx, nsurv, grouped, settings)
    dq = torch.empty_like(q)
    # dlam in the read weights' dtype: one rounding, as autograd's of a float32 one (half the bytes at the peak).
    dlam = torch.empty(B, T, H, K, device=dev, dtype=slot_weights.dtype)
    dgq = torch.empty(BH, T, device=dev, dtype=torch.float32)  # time contiguous: the cumsum below
    launch = settings.launch(dla_bwd_q_kernel, num_warps=settings.bwd_warps)  # the grouped kernel's too
    if grouped:
        dhc = torch.empty_like(hs)
        gst = torch.empty(BH * NC * cfg.KP, device=dev, dtype=torch.int32)
        dla_bwd_q_grouped_kernel[(NC, BH)](
            q, k, v, g, slot_weights, dO, dq, dlam, dgq, dhc, s.masks, s.death, s.live, s.livem, hs, gs, sc, rk, dgj,
            dte, gst, bst, T, H, cfg.Dk, cfg.Dv, K, C=C, BK=BK, BV=BV, NVB=NVB, KP=cfg.KP, LOWP=cfg.lowp,
            PREC=cfg.prec, HAS_INIT=has_init, SPLITS=2, **launch,
        )
    else:
        dhc = hs  # each program reads its chunk's H before writing that chunk's dHc in its place (H is then dead)
        dla_bwd_q_kernel[(NC, BH)](
            q, k, v, g, slot_weights, dO, dq, dlam, dgq, dhc, s.masks, s.death, s.livem, hs, sc, rk, dgj, bsj, bst,
            T, H, cfg.Dk, cfg.Dv, K, C=C, BK=BK, BV=BV, NVB=NVB, KP=cfg.KP, LOWP=cfg.lowp,
            PREC=cfg.prec, STAGES=settings.bwd_stages, **launch,
        )
    # the dB kernel rounds its weights to q's dtype: rounded here, half the bytes held through stages 2-4
    return dq, dlam, dgq, dhc, sc.to(q.dtype) if cfg.lowp else sc


def _final_cache_adjoint(cfg: LaunchConfig, s: DecidedStructure, dS_final, dhc, gs, bidx, nsurv: int, size0):
    """The final cache's gradient. Closed slot i = H_d(a_{i+1} - 1) - H_d(a_i - 1), the open slot =
    H(T-1) - H_d(a_last - 1), H_d decayed to T - 1: H(T-1) receives dS[last] (set here in ``dhc[:, NC]``) and the
    starts a_i (i >= 1) of final slots receive dS[i-1] - dS[i], returned for ``_inject`` (None without dS_final):
    ``(cidx [BH, K] compact index, fp [BH, K] start position (< 0: pseudo start), use [BH, K], inject [BH, K,
    Dk, Dv])``."""
    BH, K, NC, C = cfg.BH, cfg.K, cfg.NC, CHUNK
    dhc[:, NC].zero_()
    if dS_final is None:
        return None
    dev = dhc.device
    rows = torch.arange(BH, device=dev)
    last = (s.size - 1).clamp(min=0)
    dhc[:, NC] = dS_final[rows, last] * (s.size > 0).view(BH, 1, 1)
    fp = s.fpos[:, :K].to(torch.int64)
    i = torch.arange(K, device=dev).view(1, K)
    use = (i >= 1) & (i < s.size.view(BH, 1))
    real = fp >= 0
    cidx = torch.where(real, bidx.gather(1, fp.clamp(min=0, max=NC * C - 1)).to(torch.int64),
                       nsurv + rows.view(BH, 1) * K + fp + size0.view(BH, 1))
    gref = torch.where(real, gs.gather(1, (fp.clamp(min=0) // C + 1).clamp(max=NC)), torch.zeros_like(gs[:, :1]))
    decay = torch.exp(gs[:, NC:NC + 1] - gref).float()  # [BH, K]
    prev = torch.cat([torch.zeros_like(dS_final[:, :1]), dS_final[:, :-1]], 1)
    return cidx, fp, use, (prev - dS_final) * (decay * use).view(BH, K, 1, 1)


def _inject(db, rng: StartRange, injections, nsurv: int) -> None:
    """Add the final cache's injections whose start lies in ``rng`` to its dB (``db``: the range's starts, then
    one spare row that takes the others)."""
    if injections is None:
        return
    cidx, fp, use, inject = injections
    BH, K = use.shape
    rows = torch.arange(BH, device=db.device).view(BH, 1)
    chunk = fp.clamp(min=0) // CHUNK
    here = use & torch.where(fp >= 0, (chunk >= rng.c0) & (chunk < rng.c1), rng.c0 == 0)
    local = torch.where(fp >= 0, cidx + rng.shift[rows], rng.nreal + cidx - nsurv)  # pseudo starts follow the real
    local = torch.where(here, local, db.shape[0] - 1)
    DD = db.shape[1] * db.shape[2]
    db.view(-1, DD).index_add_(0, local.reshape(-1), inject.reshape(-1, DD).to(db.dtype))


def _survivor_positions(bidx, nsurv: int):
    """``(bh, position)`` int32 ``[nsurv]`` of the surviving starts in their compact order ``bidx``
    (``start_states``): ``torch.nonzero(bidx >= 0)`` without its host synchronisation (nsurv is known)."""
    BH, N = bidx.shape
    dev = bidx.device
    slot = torch.where(bidx >= 0, bidx.long(), nsurv).reshape(-1)  # entry nsurv takes the rest and is dropped
    out = []
    for coord in (torch.arange(BH, device=dev).repeat_interleave(N), torch.arange(N, device=dev).repeat(BH)):
        out.append(torch.empty(nsurv + 1, device=dev, dtype=torch.int32).scatter_(0, slot, coord.to(torch.int32)))
    return out[0][:nsurv], out[1][:nsurv]


# One range's dB is held to half the state adjoint dHc on rows of up to this many chunks, to dHc on longer ones
# (``start_range_count``). The ranges run one after another, and each costs about the serial life of its oldest
# starts (a start's dB program loops over every chunk it lives in, up to the row's end): H200, run 39, ~80 / 140 us a
# range at 64 chunks a row (64 / 128 features), 190 / 740 us at 256 / 1,024 chunks.
SHORT_ROW_CHUNKS = 64


@dataclass
class StartRange:
    """Chunks ``c0 .. c1 - 1`` of every row, whose surviving starts' dB are held together (stages 2-4 run a range
    at a time, last first: docs/training.md, "Memory"). ``sbh``, ``spos``: the range's starts in their local order
    (the compact order restricted to the range, row by row); ``shift [BH]`` int64: local index - compact index;
    ``nreal`` their number. The first range's dB also holds the initial slots' pseudo starts, after its own."""

    c0: int
    c1: int
    nreal: int
    sbh: torch.Tensor
    spos: torch.Tensor
    shift: torch.Tensor


def start_range_count(cfg: LaunchConfig, nsurv: int, db_bytes: int, io_bytes: int, requested: int | None,
                      grouped: bool = False) -> int:
    """How many ranges of chunks stages 2-4 take (``db_bytes``, ``io_bytes``: the element sizes of dB and of dk, dv;
    ``grouped``: the dq stage read the old starts by chunk, without their states).

    ``requested`` (clamped to 1 .. NC), or by default: one where the dq stage holds the peak anyway (with one range
    and materialised reads it holds the start states, as large as dB, the state buffer and the read scales and
    ranks; the dk/dv stage holds dB, the state buffer, dk and dv), else as many as keep one range's dB no larger
    than the state adjoint dHc (``(NC + 1) Dk Dv`` float32 per row), or half of it on rows of up to
    ``SHORT_ROW_CHUNKS`` chunks, where a range costs least. So ranges are taken after grouped reads, and after
    materialised ones when dk and dv outweigh twice the scales and ranks (128 features in 16 bits; H200, run 23:
    -0.17 GiB for +0.8-3.7 % at (8, 4096, 16, 128); at 64 features -0.02 to -0.05 GiB for +2-5 %: not taken; run 39,
    dense after grouped reads, half of dHc at (8, 4096): -0.07 / -0.25 GiB for +4.7 / +3.1 % at 64 / 128 features).
    One without surviving starts (the pseudo starts are all in the first range)."""
    if nsurv == 0:
        return 1
    if requested is not None:
        return max(1, min(requested, cfg.NC))
    dkdv = cfg.B * cfg.T * cfg.H * (cfg.Dk + cfg.Dv) * io_bytes
    scales = cfg.BH * cfg.NC * cfg.KP * CHUNK * (4 + 1)  # the read scales (float32), ranks (int8; int16 past 128 slots)
    if not grouped and dkdv <= 2 * scales:
        return 1
    states = nsurv * cfg.Dk * cfg.Dv * db_bytes
    dhc = cfg.BH * (cfg.NC + 1) * cfg.Dk * cfg.Dv * 4
    held = dhc // 2 if cfg.NC <= SHORT_ROW_CHUNKS else dhc
    return max(1, min(cfg.NC, -(-states // held)))


def start_ranges(cfg: LaunchConfig, sv: Survivors, sbh, spos, count: int) -> list[StartRange]:
    """``count`` ranges of (nearly) equal numbers of chunks, last first; their sizes from the forward's per-chunk
    counts (host), their index maps on the device: no host synchronisation."""
    BH, NC, dev = cfg.BH, cfg.NC, sv.off.device
    if count == 1:
        return [StartRange(0, NC, sv.count, sbh, spos, torch.zeros(BH, device=dev, dtype=torch.int64))]
    bounds = [r * NC // count for r in range(count + 1)]
    sizes = [sum(sv.per_chunk[bounds[r]:bounds[r + 1]]) for r in range(count)]
    starts = [sum(sizes[:r]) for r in range(count)]
    edges = torch.arange(count + 1, device=dev) * NC // count  # the bounds, made on the device (no copy to it)
    at = sv.off[(torch.arange(BH, device=dev) * NC).view(BH, 1) + edges.view(1, -1)]  # [BH, count + 1]
    counts = at[:, 1:] - at[:, :-1]  # [BH, count] the starts of each row in each range
    shift = counts.cumsum(0) - counts - at[:, :-1]  # local (rows before, within the range) - compact index
    per_range = counts.sum(0)  # the host's ``sizes``, on the device (no copy to it)
    first = per_range.cumsum(0) - per_range
    rng = torch.bucketize(spos.long() // CHUNK, edges[1:-1], right=True)
    place = first[rng] + torch.arange(sv.count, device=dev) + shift[sbh.long(), rng]  # in the ranges, concatenated
    order = torch.empty_like(place).scatter_(0, place, torch.arange(sv.count, device=dev))
    sbh, spos = sbh[order], spos[order]
    return [StartRange(bounds[r], bounds[r + 1], sizes[r], sbh[starts[r]:starts[r] + sizes[r]],
                       spos[starts[r]:starts[r] + sizes[r]], shift[:, r].contiguous()) for r in reversed(range(count))]


def _start_buffers(cfg: LaunchConfig, bidx, sv: Survivors, ninit: int, dtype, requested: int | None, grouped: bool):
    """``(ranges, spos, db)``: the ranges of chunks (``start_range_count``, last first), the surviving starts'
    positions in the compact order and one range's dB buffer: the largest range's starts (the first's with the
    pseudo starts) and a spare row for ``_inject``; 16-bit for 16-bit inputs (every consumer casts dB to 16 bits for
    its products anyway)."""
    sbh, spos = _survivor_positions(bidx, sv.count)
    db_dtype = dtype if cfg.lowp else torch.float32
    count = start_range_count(cfg, sv.count, db_dtype.itemsize, dtype.itemsize, requested, grouped)
    ranges = start_ranges(cfg, sv, sbh, spos, count)
    rows = max(r.nreal + (ninit if r.c0 == 0 else 0) for r in ranges) + 1
    return ranges, spos, torch.empty(rows, cfg.Dk, cfg.Dv, device=bidx.device, dtype=db_dtype)


def _start_adjoints(cfg: LaunchConfig, q, dO, scale, s: DecidedStructure, rng: StartRange, db, ninit: int,
                    settings: TritonSettings):
    """Stage 2 for one range: dB of its surviving starts (and, in the first range, of the initial slots' pseudo
    starts) into ``db``, in the range's local order."""
    n = rng.nreal + (ninit if rng.c0 == 0 else 0)
    BK, BVF, BV = block_sizes(cfg.Dk, cfg.Dv)
    if n:
        dla_bwd_db_kernel[(n, triton.cdiv(BVF, BV))](
            q, dO, scale, s.live, s.livem, s.death, s.death0, rng.sbh, rng.spos, db, rng.nreal, cfg.T, cfg.H,
            cfg.Dk, cfg.Dv, cfg.K, C=CHUNK, BK=BK, BV=BV, KP=cfg.KP, LOWP=cfg.lowp, PREC=cfg.prec,
            **settings.launch(dla_bwd_db_kernel, num_warps=4),
        )


def _reverse_scan(cfg: LaunchConfig, dhc, db, off, gs, rng: StartRange, settings: TritonSettings) -> None:
    """Stage 3 for one range: Y over its chunks, in place in ``dhc``."""
    DD = cfg.Dk * cfg.Dv
    HBLK = 256  # small blocks: B*H*DD/256 sequential programs hide each other's latency
    dla_bwd_scan_kernel[(cfg.BH, triton.cdiv(DD, HBLK))](dhc, db, off, rng.shift, gs, cfg.T, DD, rng.c0, rng.c1,
                                                         C=CHUNK, BLOCK=HBLK,
                                                         **settings.launch(dla_bwd_scan_kernel, num_warps=2))


def _initial_adjoint(cfg: LaunchConfig, dhc, db, nsurv: int, size0):
    """d states0[i'] = Y[0] (through h0 = the sum of the initial slots) + the dB of every later pseudo start."""
    dpseudo = db[nsurv:nsurv + cfg.BH * cfg.K].view(cfg.BH, cfg.K, cfg.Dk, cfg.Dv).float()
    later = dpseudo.flip(1).cumsum(1).flip(1) - dpseudo
    used = (torch.arange(cfg.K, device=db.device).view(1, cfg.K) < size0.view(cfg.BH, 1)).view(cfg.BH, cfg.K, 1, 1)
    return (dhc[:, 0].unsqueeze(1) + later) * used  # unused slots (zero by the semantics) are not read


def backward_scalar_decay_triton(q, k, v, g, slot_weights, init_states, size0, structure: DecidedStructure, dO,
                                 dS_final, final_states=None, *, settings: TritonSettings = DEFAULT_SETTINGS,
                                 profile=None):
    """Gradients of ``<dO, o> + <dS_final, S_final>`` for a forward run by ``forward_scalar_decay_triton``.

    Args:
        q, k ``[B, T, H, Dk]``; v, dO ``[B, T, H, Dv]`` (one dtype: float32, bfloat16 or float16); g
        ``[B, T, H]``; slot_weights ``[B, T, H, K]``: the forward's inputs.
        init_states: ``[B, H, K, Dk, Dv]`` or None (empty initial cache); size0 ``[B * H]`` int64.
        structure: the forward's :class:`DecidedStructure`.
        dS_final: ``[B * H, K, Dk, Dv]`` float32 (zero on unused slots) or None.
        final_states: the forward's final states (any shape with ``B * H * K * Dk * Dv`` elements); needed
            with ``dS_final`` (their product enters ``dg``).
        settings: kernel tuning (``bwd_stages``, ``bwd_warps``, ``launch_overrides``).
        profile: a dict or None: each stage's time in ms (synchronising; benchmarks only).

    Returns:
        ``(dq, dk, dv)`` in q's dtype, ``dg [B, T, H]`` float64, ``dlam [B, T, H, K]`` in slot_weights' dtype and
        ``dinit [B * H, K, Dk, Dv]`` float32 (None without an initial cache).
    """
    cfg = launch_config(q, v, slot_weights)
    B, T, H, K, BH, C = cfg.B, cfg.T, cfg.H, cfg.K, cfg.BH, CHUNK
    BK, BVF, BV = block_sizes(cfg.Dk, cfg.Dv)
    NVB, dev = triton.cdiv(BVF, BV), q.device
    q, k, v, dO = (x.contiguous() for x in (q, k, v, dO.to(q.dtype)))
    g, slot_weights = g.contiguous(), slot_weights.contiguous()
    s = structure
    mark_stage(profile, "recompute")
    states0, gs, hs, sv, bidx, bst, grouped = _recompute(cfg, k, v, g, init_states, s, settings)
    off, nsurv = sv.off, sv.count
    ninit = BH * K if states0 is not None else 0
    mark_stage(profile, "dq")
    dq, dlam, dgq, dhc, sc = _dq_stage(cfg, q, k, v, g, slot_weights, dO, s, gs, hs, bidx, bst, nsurv, grouped,
                                       states0 is not None, settings)
    del hs, bst  # dhc took hs's place (materialised reads: its memory)
    # 2-4. dB of the surviving starts, the reverse scan of the single state's adjoint and dk, dv, a range of chunks
    # at a time, last first (the scan carries Y[c1] from one range to the next): one range's dB is held at a time.
    mark_stage(profile, "dB")
    ranges, spos, db = _start_buffers(cfg, bidx, sv, ninit, q.dtype, settings.bwd_start_ranges, grouped)
    injections = _final_cache_adjoint(cfg, s, dS_final, dhc, gs, bidx, nsurv, size0)
    dk = dv = dgk = None
    for i, rng in enumerate(ranges):
        mark_stage(profile, "dB")
        _start_adjoints(cfg, q, dO, sc, s, rng, db, ninit, settings)
        if i == len(ranges) - 1:
            sc = None  # the read scales are dead after the last range's dB (with one range: before dk, dv exist)
        _inject(db, rng, injections, nsurv)
        mark_stage(profile, "scan")
        _reverse_scan(cfg, dhc, db, off, gs, rng, settings)
        mark_stage(profile, "dkv")
        if dk is None:  # allocated at their first use, not beside the first range's dB kernel
            dk, dv = torch.empty_like(k), torch.empty_like(v)
            dgk = torch.empty(BH, T, device=dev, dtype=torch.float32)
        dla_bwd_kv_kernel[(rng.c1 - rng.c0, BH)](
            q, k, v, g, slot_weights, dO, dk, dv, dgk, s.masks, s.death, dhc, db, off, rng.shift, spos,
            T, H, cfg.Dk, cfg.Dv, K, rng.c0, C=C, BK=BK, BV=BV, NVB=NVB, LOWP=cfg.lowp, PREC=cfg.prec,
            **settings.launch(dla_bwd_kv_kernel, num_warps=4 if cfg.lowp else 8),  # 16-bit: 3-8 % off, run 29
        )
    dinit = None if states0 is None else _initial_adjoint(cfg, dhc, db, ranges[-1].nreal, size0)
    del db, dhc  # the largest buffers, dead from here: not alive under dg's float64 temporaries
    # dg: dL/dG[t] = q_t.dq_t - k_t.dk_t (+ <S_final, dS_final> at T - 1), reverse cumulative sum.
    mark_stage(profile, "dg")
    dG = (dgq.double() - dgk.double()).flip(1).cumsum(1).flip(1)
    if dS_final is not None:
        dG += (final_states.double().reshape(BH, K, cfg.Dk, cfg.Dv) * dS_final.double()).sum((1, 2, 3)).view(BH, 1)
    dG = dG.view(B, H, T).permute(0, 2, 1)
    mark_stage(profile, None)
    if profile is not None:
        profile["surviving_starts"] = nsurv
    return dq, dk, dv, dG, dlam, dinit
