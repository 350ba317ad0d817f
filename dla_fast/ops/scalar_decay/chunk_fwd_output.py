"""Triton forward, scalar decay, the output: masked intra-chunk attention plus the telescoped slot reads.

Stage 6 of ``chunk_fwd`` (docs/triton.md): parallel over (chunk, bh, Dv block), reading the structure of
``chunk_fwd_decide`` and the prefix states of ``chunk_fwd_states``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.triton_utils import chunk_tokens, load_rows, load_scalars, load_state, mask_bits, qdot


def output_value_block(BK: int, BVF: int, lowp: bool) -> int:
    """The Dv block of one ``dla_output_kernel`` program. 16-bit inputs at 128 features take the whole row: one
    program forms the chunk's own reads (and, before run 44, each old start's scaled query) once, not once per
    64-wide block (sm_90, Triton 3.6: 310 instructions a start against 2 x 230 in two programs of G = 2, the same
    products; H200, run 43: bitwise the same ``o``, the forward -0.5 to -2 % at (8, 4096, 16, 128): the kernel is not
    issue-bound)."""
    return BVF if lowp and BK == BVF == 128 else min(BVF, 64)


def output_group(KP: int, BK: int, BV: int, lowp: bool, group: int) -> int:
    """Old slot states per product in the output kernel: 1 for 16-bit inputs (``read_start_states`` scales their
    product, not the query); else ``group`` capped so that a [G*BK, BV] operand tile fits shared memory (and at the
    padded capacity KP)."""
    return 1 if lowp else max(1, min(group, 64 * 64 // (BK * BV), KP))


def output_launch(BK: int, BV: int, G: int, lowp: bool, grouped: bool) -> dict:
    """Launch options of ``dla_output_kernel`` (``grouped`` false) and ``dla_output_grouped_kernel``: 16-bit inputs
    one warpgroup, capped where that does not spill on sm_90 (Dk <= 64, G <= 2): the materialised kernel at 128
    registers (four programs per SM; run 64: -6 to -13 % of the output stage at (1, 65536)), the grouped one at 168
    (three; at 128 it spills 88 B); two load stages for whole 128-wide rows (82 KB of shared memory: two programs per
    SM; three stages take 115 KB); fp32 (tf32x3 products) 8 warps (it spills either way on sm_90)."""
    if not lowp:
        return dict(num_warps=8)
    if BV > 64:
        return dict(num_warps=4, num_stages=2)
    if BK <= 64 and G <= 2:
        return dict(num_warps=4, maxnreg=168 if grouped else 128)
    return dict(num_warps=4)


@triton.jit
def live_starts(mask_ptr, death_ptr, bh, c, NC, C: tl.constexpr):
    """``[C, C]`` bool: ``[t, s]`` whether the chunk's token s opened a slot (its boundary bit) that is still live
    at token t >= s."""
    t_idx = tl.arange(0, C)
    row = t_idx[:, None]
    bvec = mask_bits(tl.load(mask_ptr + bh * NC + c), t_idx)
    dth = tl.load(death_ptr + bh * NC * C + c * C + t_idx)
    return bvec[None, :] & (t_idx[None, :] <= row) & (dth[None, :] > (c * C + row))


@triton.jit
def intra_decay(Gc, causal):
    """``Dm[t, s] = e^{Gc[t] - Gc[s]}`` on the ``causal`` part of the chunk, 0 elsewhere."""
    return tl.where(causal, tl.exp(tl.minimum(Gc[:, None] - Gc[None, :], 0.0)), 0.0)


@triton.jit
def live_in_chunk(mask_ptr, death_ptr, bh, c, NC, C: tl.constexpr, COUNT: tl.constexpr):
    """The chunk's starts live at each of its tokens: ``(n_in [C] int32, J [C, C] int32)`` with ``n_in(t)``
    the starts u <= t of the chunk still live at t and ``J[t, s]`` those in (s, t] (as the forward). ``COUNT``:
    the dtype they are counted in (exact either way). sm_90, Triton 3.6: int32 takes ~25 % fewer instructions in the
    forward's kernels; float32 keeps the backward's dq kernel at 128 / 712 B of stack (int32: 496 / 1,136 B) at 64 /
    128 features."""
    A = live_starts(mask_ptr, death_ptr, bh, c, NC, C).to(COUNT)
    n_in = tl.sum(A, 1)
    J = (n_in[:, None] - tl.cumsum(A, 1)).to(tl.int32)
    return n_in.to(tl.int32), J


@triton.jit
def intra_weights(w_ptr, mask_ptr, death_ptr, b, h, bh, c, NC, T, H, K, Gc, C: tl.constexpr, COUNT: tl.constexpr):
    """The chunk's intra-attention weights, as the forward's output kernel: ``(n_in, J, lamJ, Dm)`` with
    ``lamJ[t, s] = lam_t[J[t, s]]`` and ``Dm[t, s] = e^{Gc[t] - Gc[s]}`` on the causal part (0 elsewhere); ``COUNT``
    as in ``live_in_chunk``."""
    t_idx = tl.arange(0, C)
    tok = c * C + t_idx
    valid = tok < T
    causal = (t_idx[None, :] <= t_idx[:, None]) & valid[:, None]
    n_in, J = live_in_chunk(mask_ptr, death_ptr, bh, c, NC, C, COUNT)
    wrow = w_ptr + ((b * T + tok) * H + h) * K
    lamJ = tl.load(wrow[:, None] + J, mask=causal, other=0.0).to(tl.float32)
    return n_in, J, lamJ, intra_decay(Gc, causal)


@triton.jit
def live_in_chunk_packed(mask_ptr, death_ptr, bh, c, NC, C: tl.constexpr):
    """``live_in_chunk``'s ``(n_in, J)`` (int32, the same values) with the scan along the rows at half the shuffles:
    columns s and s + C/2 of a row are counted in one int32, s in its low byte and s + C/2 in the next (each count
    at most C/2 < 256, so no carry crosses a byte). sm_90, Triton 3.6, in the output kernel: the rows' scan then runs
    in the layout of the register gather of ``lamJ`` (one row a warp) with 5 shuffle levels for two columns."""
    A = live_starts(mask_ptr, death_ptr, bh, c, NC, C).to(tl.int32)
    alo, ahi = tl.split(tl.permute(tl.reshape(A, [C, 2, C // 2]), [0, 2, 1]))  # columns s and s + C/2
    pk = alo + (ahi << 8)
    ntot = tl.sum(pk, 1)
    n_hi = ntot >> 8
    n_in = (ntot & 0xFF) + n_hi
    cs = tl.cumsum(pk, 1)
    J = tl.join(n_in[:, None] - (cs & 0xFF), n_hi[:, None] - (cs >> 8))
    return n_in, tl.reshape(tl.permute(J, [0, 2, 1]), [C, C])


@triton.jit
def old_starts(live_ptr, livem_ptr, bh, c, NC, KP: tl.constexpr):
    """The slots live at chunk c's start (its old starts), oldest first: ``(lpos [KP], m0, m0init)``, their first
    tokens (the initial slots' pseudo starts ``-m0init .. -1``; entries from ``m0`` on are not listed), their
    number, and the initial cache's size (the live list of chunk 0)."""
    lpos = tl.load(live_ptr + (bh * NC + c) * KP + tl.arange(0, KP))
    return lpos, tl.load(livem_ptr + bh * NC + c), tl.load(livem_ptr + bh * NC)


@triton.jit
def old_start_groups(live_ptr, livem_ptr, gst_row, bh, c, NC, C: tl.constexpr, KP: tl.constexpr, KD: tl.constexpr):
    """The live old starts at chunk c's start grouped by their chunk, for the reads by chunk (the forward's and the
    backward's grouped kernels): ``(lst, jd, m0, lpos, aloc, ngrp)``, the live list's address, its indices (at least
    16: the indicator products' inner size), length and first tokens (-1 past ``m0``), each start's position in its
    chunk and the number of groups. j = 0 (the oldest, prefix state 0) takes no group, nor do the initial slots'
    pseudo starts. Each group's first list index (and ``m0`` after the last) goes to the program's scratch row
    ``gst_row [KP]``, read back by ``start_group``: the loop over groups then takes no reduction over the list."""
    jd = tl.arange(0, KD)
    lst = live_ptr + (bh * NC + c) * KP
    m0 = tl.load(livem_ptr + bh * NC + c)
    lpos = tl.load(lst + jd, mask=jd < m0, other=-1)
    lprev = tl.load(lst + jd - 1, mask=(jd >= 1) & (jd - 1 < m0), other=-1)
    real = (jd >= 1) & (jd < m0) & (lpos >= 0)  # token starts (in an earlier chunk)
    cpj = lpos // C
    first = real & ((lprev < 0) | (jd == 1) | (lprev // C != cpj))
    gid = tl.cumsum(first.to(tl.int32), 0) - 1
    ngrp = tl.sum(first.to(tl.int32), 0)
    tl.store(gst_row + gid, jd, mask=first)
    tl.store(gst_row + jd, m0, mask=jd == ngrp)
    tl.debug_barrier()  # other threads of the program read the row
    return lst, jd, m0, lpos, lpos - cpj * C, ngrp


@triton.jit
def start_group(gst_row, lst, jd, gsrow, gx, ngrp, C: tl.constexpr):
    """Group ``gx`` of ``old_start_groups``' ``ngrp``: ``(member [KD] bool, cp, Glp)``, its list entries, its chunk
    c' (full: no padding) and the sum of g over c' (from the float64 sums ``gsrow`` of g before each chunk). For
    ``gx >= ngrp`` (a group looked up ahead that does not exist) no entry, chunk 0 and 0, from no load."""
    ok = gx < ngrp
    j0 = tl.load(gst_row + gx, mask=ok, other=0)
    j1 = tl.load(gst_row + gx + 1, mask=ok, other=0)
    cp = tl.load(lst + j0, mask=ok, other=0) // C
    Glp = (tl.load(gsrow + cp + 1, mask=ok, other=0.0) - tl.load(gsrow + cp, mask=ok, other=0.0)).to(tl.float32)
    return (jd >= j0) & (jd < j1), cp, Glp


@triton.jit
def old_chunk_piece(k_ptr, dte_ptr, b, h, bh, cp, hh, T, H, NC, kd, Dk, member, aloc, C: tl.constexpr,
                    CS: tl.constexpr):
    """Piece ``hh`` (``CS`` tokens) of the old chunk ``cp`` in the grouped reads: ``(trowp, validp, kp, dec, ind)``,
    its tokens' rows and validity, keys ``[CS, BK]``, decays to the chunk's end and the group's indicator
    ``ind [KD, CS] = member_j & (a_j > s)`` (start j's state holds token s)."""
    sp = hh * CS + tl.arange(0, CS)
    tokp = cp * C + sp
    validp = tokp < T
    trowp = (b * T + tokp) * H + h
    kp = load_rows(k_ptr, trowp, validp, kd, Dk)
    dec = tl.load(dte_ptr + bh * NC * C + tokp, mask=validp, other=0.0)
    return trowp, validp, kp, dec, member[:, None] & (aloc[:, None] > sp[None, :])


@triton.jit
def start_state_index(bidx_ptr, binit, lpos, inlist, m0init, bh, NC, K, C: tl.constexpr):
    """Each listed old start's prefix state in the compact start-state buffer: a surviving start's by ``bidx``, an
    initial slot's pseudo start after the ``binit`` surviving ones (-1 for an unlisted token start)."""
    return tl.where(lpos >= 0, tl.load(bidx_ptr + bh * NC * C + tl.maximum(lpos, 0), mask=inlist, other=-1),
                    binit + bh * K + lpos + m0init)


@triton.jit(do_not_specialize=["T", "binit"])
def dla_read_scales_kernel(
    g_ptr, w_ptr, mask_ptr, death_ptr, death0_ptr, live_ptr, livem_ptr, gs_ptr, sc_ptr,
    bidx_ptr, binit, rk_ptr, dgj_ptr, bsj_ptr,
    T, H, K,
    C: tl.constexpr, KP: tl.constexpr, BWD: tl.constexpr, dte_ptr=None, DTE: tl.constexpr = False,
    INV: tl.constexpr = False,
):
    """Program (chunk c, bh): the read scales of the old starts,

        sc[t, j] = alive_j(t) (lambda_t[r_j(t) + 1] - lambda_t[r_j(t)]) e^{Gc[t] + G(c0) - G(ref_j)}

    for the old starts j >= 1 live at the chunk's start (0 for j = 0, whose prefix state is 0, and past the list),
    with r_j(t) = n_in(t) + the old starts after j still live at t, and ref_j the end of start j's chunk (its
    prefix state's decay reference). Depends on the decided structure, g and lambda only. Work O(C KP) per program;
    reads the chunk's lambda rows (C K).

    Forward (``BWD`` false): ``sc [C, KP]`` fp32 at ``(bh NC + c) C KP``, for the output kernel (launched before the
    forward's host synchronisation, off that kernel's registers); the other pointers are not read.
    Backward (``BWD``): what the dq kernel's loop over the old starts needs besides dO, one row per start: ``sc``
    transposed, ``[KP, C]`` fp32 (also the dB kernel's weights); ``rk [KP, C]`` int8 (int16 past 128 slots), the rank
    r_j(t) where the start is read (alive, j >= 1, t < T), else -1; ``dgj [KP]`` fp32 the decay offset ``G(c0) -
    G(ref_j)`` (the read's decay is ``e^{min(Gc[t] + dgj, 0)}``); ``bsj [KP]`` int32 the start's prefix state in
    ``bidx``'s compact order (the initial slots' pseudo starts from ``binit``).
    ``INV`` (backward, grouped reads): ``rk`` is the inverse map instead, ``[C, KP]`` int8 the list index of the
    start read with rank r at t (-1 where none), and ``bsj`` is not written (``dla_bwd_q_grouped_kernel``).
    ``DTE`` (grouped reads): also the chunk's decays to its end ``e^{Gc[C-1] - Gc[t]}`` fp32 at ``dte [BH, NC C]``
    (the grouped kernels read them for the older chunks' tokens)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    b, h, t_idx, tok, valid, trow = chunk_tokens(bh, c, T, H, C)
    row = t_idx[:, None]
    jj = tl.arange(0, KP)
    Gc = tl.cumsum(load_scalars(g_ptr, trow, valid), 0)
    # lambda_t[i + 1] - lambda_t[i] for every rank i, from two coalesced loads issued first; each start's rank then
    # selects its entry in registers (a gather from memory would wait at the end of the chain live -> death -> rank).
    wrow = w_ptr + trow * K  # lambda_t
    lam = tl.load(wrow[:, None] + jj[None, :], mask=valid[:, None] & (jj[None, :] < K), other=0.0).to(tl.float32)
    lam1 = tl.load(wrow[:, None] + jj[None, :] + 1, mask=valid[:, None] & (jj[None, :] + 1 < K),
                   other=0.0).to(tl.float32)
    n_in, _ = live_in_chunk(mask_ptr, death_ptr, bh, c, NC, C, tl.int32)
    lpos, m0, m0init = old_starts(live_ptr, livem_ptr, bh, c, NC, KP)
    inlist = jj < m0
    dpos = tl.where(lpos >= 0, lpos, 0)
    d_old = tl.where(lpos >= 0, tl.load(death_ptr + bh * NC * C + dpos, mask=inlist, other=2147483647),
                     tl.load(death0_ptr + bh * K + tl.where(lpos < 0, lpos + m0init, 0), mask=inlist, other=2147483647))
    alive = inlist[None, :] & (d_old[None, :] > (c * C + row))  # [C, KP]
    alf = alive.to(tl.float32)
    after = tl.sum(alf, 1)[:, None] - tl.cumsum(alf, 1)  # alive starts after j
    r = (after + n_in.to(tl.float32)[:, None]).to(tl.int32)
    cmask = alive & valid[:, None] & (jj[None, :] >= 1)
    coef = tl.where(cmask, tl.gather(lam1 - lam, tl.minimum(r, KP - 1), 1), 0.0)
    gs_c = tl.load(gs_ptr + bh * (NC + 1) + c)  # float64: sum of g before chunk c
    gref = tl.where(lpos >= 0, tl.load(gs_ptr + bh * (NC + 1) + dpos // C + 1, mask=inlist, other=0.0), 0.0)
    dG = (gs_c - gref).to(tl.float32)
    scale = coef * tl.exp(tl.minimum(Gc[:, None] + dG[None, :], 0.0))
    prog = (bh * NC + c).to(tl.int64)
    if BWD:
        tl.store(sc_ptr + prog * KP * C + jj[None, :] * C + row, scale)
        tl.store(dgj_ptr + prog * KP + jj, dG)
        if INV:
            # rk [C, KP]: at (t, r) the list index of the start read with rank r at t, -1 where none (the ranks of
            # the starts read at t are distinct)
            tl.store(rk_ptr + prog * C * KP + row * KP + jj[None, :], tl.full([C, KP], -1, rk_ptr.dtype.element_ty))
            tl.debug_barrier()  # the same addresses, other threads
            tl.store(rk_ptr + prog * C * KP + row * KP + r, (jj[None, :] + 0 * row).to(rk_ptr.dtype.element_ty),
                     mask=cmask)
        else:
            tl.store(rk_ptr + prog * KP * C + jj[None, :] * C + row, tl.where(cmask, r, -1).to(rk_ptr.dtype.element_ty))
            tl.store(bsj_ptr + prog * KP + jj, start_state_index(bidx_ptr, binit, lpos, inlist, m0init, bh, NC, K, C))
    else:
        tl.store(sc_ptr + prog * C * KP + row * KP + jj[None, :], scale)
    if DTE:
        Gl = tl.sum(tl.where(t_idx == C - 1, Gc, 0.0), 0)  # the last valid token's (g = 0 past T)
        tl.store(dte_ptr + prog * C + t_idx, tl.where(valid, tl.exp(tl.minimum(Gl - Gc, 0.0)), 0.0))


@triton.jit
def read_scales(sc_ptrs, sc_ok, C: tl.constexpr, G: tl.constexpr):
    """The read scales of G old starts, ``[C, G]`` loaded from ``sc_ptrs`` (0 where not ``sc_ok``); for G = 1 a
    ``[C]`` vector (as a ``[C, 1]`` tile in the query's layout every thread loaded all C scales)."""
    if G == 1:
        sg = tl.load(tl.reshape(sc_ptrs, [C]), mask=tl.reshape(tl.broadcast_to(sc_ok, [C, 1]), [C]), other=0.0)
    else:
        sg = tl.load(sc_ptrs, mask=sc_ok, other=0.0)
    return sg


@triton.jit
def read_start_states(o, qc, qf, bst_ptr, bs, ok, sg, kd, vd, Dk, Dv, C: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, G: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr):
    """``o + sum_g sg[:, g] q^T B_g``: G materialised start states (``bst`` rows ``bs [G]``, zero where not ``ok``)
    and their scales ``sg`` (``read_scales``'), in one tensor-core product.

    16-bit inputs (G = 1) scale the product, ``o + sg * (q^T B)``, as the backward's dq kernel does: a scaled query,
    the product's A operand in registers, was rewritten k-step by k-step into the same registers, and each step's
    wgmma waited for the one before (sm_90, Triton 3.6: 8 waits a start, 34 % of the loop's samples stalled at them
    on an H200, run 43); the unchanging query takes 4 waits in the whole kernel. H200, run 44: the forward -5 to -7 %
    at (8, 4096, 16, 128) moderate, within +-1 % at 64 features; o's error against float32 inputs the same to four
    digits. Float32 inputs (tf32x3) scale the query, G states at a time (scaling after spills more there: 136 B
    against 40 at 64 features)."""
    bm = ok[:, None, None] & (kd[None, :, None] < Dk) & (vd[None, None, :] < Dv)
    Bt = tl.load(bst_ptr + bs[:, None, None] * Dk * Dv + kd[None, :, None] * Dv + vd[None, None, :], mask=bm, other=0.0)
    Bt = tl.reshape(Bt, [G * BK, BV])
    if G == 1:
        if LOWP:
            return o + sg[:, None] * tl.dot(qc, Bt.to(qc.dtype))
        Qs = qf * sg[:, None]
    else:
        tl.static_assert(not LOWP, "16-bit inputs read one start state per product")
        Qs = tl.reshape(qf[:, None, :] * sg[:, :, None], [C, G * BK])
    return o + tl.dot(Qs, Bt.to(tl.float32), input_precision=PREC)


@triton.jit
def chunk_own_reads(q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, mask_ptr, death_ptr, hs_ptr, c, bh, vb, T, H, Dk, Dv, K,
                    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, LOWP: tl.constexpr,
                    PREC: tl.constexpr):
    """Both output kernels' reads that need no old start: the masked intra-chunk attention and the read of the state
    before the chunk (the docstring's first two lines). Returns ``(o [C, BV] fp32, qc, qf, trow, valid)``."""
    NC = tl.cdiv(T, C)
    b, h, t_idx, tok, valid, trow = chunk_tokens(bh, c, T, H, C)
    row = t_idx[:, None]
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    qc = load_rows(q_ptr, trow, valid, kd, Dk)
    kc = load_rows(k_ptr, trow, valid, kd, Dk)
    vc = load_rows(v_ptr, trow, valid, vd, Dv)
    g = load_scalars(g_ptr, trow, valid)
    Gc = tl.cumsum(g, 0)
    wrow = w_ptr + trow * K  # lambda_t
    # intra_weights' values, lamJ gathered in registers from the chunk's lambda rows (loaded coalesced) rather than
    # from memory: the global gather's [C, C] tile reached the products' layout through shared memory in 8 rounds
    # (16 barriers), and the row scan ran across warps (sm_90, Triton 3.6: docs/performance.md, "Output stage").
    # J < K on the causal part (a live start's rank); the clamp keeps the masked rows' gather in range.
    causal = (t_idx[None, :] <= row) & valid[:, None]
    if KP <= 64:
        # At least 4 lambda columns: a 2-wide gather in the fp32 kernel (8 warps) fails Triton 3.6's
        # thread-locality pass on sm_90 (found on the H200, 2026-12-03; K <= 2).
        KL: tl.constexpr = KP if KP >= 4 else 4
        n_in, J = live_in_chunk_packed(mask_ptr, death_ptr, bh, c, NC, C)
        jl = tl.arange(0, KL)
        lam = tl.load(wrow[:, None] + jl[None, :], mask=valid[:, None] & (jl[None, :] < K), other=0.0).to(tl.float32)
        lamJ = tl.where(causal, tl.gather(lam, tl.minimum(J, KL - 1), 1), 0.0)
        Dm = intra_decay(Gc, causal)
    else:
        n_in, _, lamJ, Dm = intra_weights(w_ptr, mask_ptr, death_ptr, b, h, bh, c, NC, T, H, K, Gc, C, tl.int32)
    if LOWP:
        S = tl.dot(qc, tl.trans(kc))
        o = tl.dot((S * Dm * lamJ).to(vc.dtype), vc)
    else:
        S = tl.dot(qc.to(tl.float32), tl.trans(kc.to(tl.float32)), input_precision=PREC)
        o = tl.dot(S * Dm * lamJ, vc.to(tl.float32), input_precision=PREC)
    qf = qc.to(tl.float32)
    eGc = tl.exp(Gc)
    # The state before the chunk, read with the recency of the piece holding token c0-1.
    Hc = load_state(hs_ptr + (bh * (NC + 1) + c) * Dk * Dv, kd, vd, Dk, Dv)
    # n_in(t) = K only with an empty cache before the chunk (H = 0): no weight to read (and none in bounds).
    lam_in = tl.load(wrow + n_in, mask=valid & (n_in < K), other=0.0).to(tl.float32)
    o += (lam_in * eGc)[:, None] * qdot(qc, qf, Hc, LOWP, PREC)
    return o, qc, qf, trow, valid


# 16-bit inputs: launched with 4 warps (one warpgroup), one old start per product. sm_90, Triton 3.6 (run 44): at Dk =
# 64 164 registers under the 168 cap, no spills, 41 KB of shared memory: three programs per SM; at Dk = Dv = 128
# (whole rows) 254 registers, no spills, 82 KB: two.
# Long: one program's three reads accumulate into one register tile; splitting would re-read q and o.
@triton.jit(do_not_specialize=["T", "binit"])
def dla_output_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, o_ptr,
    mask_ptr, death_ptr, live_ptr, livem_ptr, hs_ptr, bidx_ptr, bst_ptr, binit, sc_ptr, bsc_ptr,
    T, H, Dk, Dv, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    G: tl.constexpr,
):
    """Program (chunk c, bh, Dv block).

    o_t = sum_{s in chunk, s <= t} lambda_t[J[t,s]] e^{Gc[t]-Gc[s]} (q_t.k_s) v_s
        + lambda_t[n_in(t)] e^{Gc[t]} q_t^T H(c0-1)
        + sum_{live old starts a_j, j >= 1} alive_j(t) (lambda_t[r_j+1] - lambda_t[r_j]) q_t^T H_d(a_j - 1)
    where H_d(a-1) is the prefix state before a, decayed to t. FLOPs per chunk: 2 C^2 (Dk + BV) + 2 C Dk BV for the
    chunk itself, and per live old start one read of its materialised prefix state (dla_bstate_kernel;
    2 C Dk BV FLOPs, Dk BV elements from L2), G starts per tensor-core product. Bytes besides the inputs: the
    chunk's read scales ``sc [C, KP]`` fp32 (``dla_read_scales_kernel``'s) and this program's scratch row ``bsc
    [KP]`` int32 (the starts' state indices), each written once and read back once.
    """
    c = tl.program_id(0)
    bh = tl.program_id(1)
    vb = tl.program_id(2)
    NC = tl.cdiv(T, C)
    row = tl.arange(0, C)[:, None]
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    jj = tl.arange(0, KP)
    o, qc, qf, trow, valid = chunk_own_reads(q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, mask_ptr, death_ptr, hs_ptr, c, bh, vb,
                                             T, H, Dk, Dv, K, C, BK, BV, KP, LOWP, PREC)
    # Old live starts (at the chunk start), oldest first; j = 0 (the oldest) has H(a_0 - 1) = 0. Each one's prefix
    # state in the compact buffer (the initial slots' pseudo starts after the nsurv surviving starts).
    lpos, m0, m0init = old_starts(live_ptr, livem_ptr, bh, c, NC, KP)
    inlist = jj < m0
    bslot = start_state_index(bidx_ptr, binit, lpos, inlist, m0init, bh, NC, K, C)
    bslot = tl.where(inlist & (jj >= 1), bslot, -1)
    # Reads of the old starts' states, G at a time (``read_start_states``: 16-bit inputs o += scale_j * (q @ B_j),
    # float32 ones o += (q * scale_j)[C, G*Dk] @ B[G*Dk, BV]). The group's scales
    # (dla_read_scales_kernel's rows) and state indices (this program's scratch row) are loaded from L2 straight
    # into the dot's operand layout: picking a group out of a [C, KP] register tile took a shuffle reduction and
    # four shared-memory layout conversions per group (docs/performance.md, "Output stage").
    prog = ((c * tl.num_programs(1) + bh) * tl.num_programs(2) + vb).to(tl.int64)
    sc_row = sc_ptr + (bh * NC + c).to(tl.int64) * C * KP
    bs_row = bsc_ptr + prog * KP
    tl.store(bs_row + jj, bslot)
    tl.debug_barrier()  # other threads of the program read these rows
    gj = tl.arange(0, G)
    # The next group's indices and scales one iteration ahead, in registers: the state loads then depend on no load
    # of their own iteration, and Triton's pipeliner keeps two groups of states in flight (one otherwise). The scales
    # loaded in their own iteration: ~18 % of the loop's samples waited on them (H200, run 44, (8, 4096, 64)
    # moderate); ahead, the forward moved within +-1 %.
    sc_all = gj[None, :] >= 0
    bs_next = tl.load(bs_row + gj)
    sg_next = read_scales(sc_row + row * KP + gj[None, :], sc_all, C, G)
    for gx in range(0, tl.cdiv(m0, G)):
        bs = bs_next.to(tl.int64)
        sg = sg_next
        nxt = tl.minimum(gx + 1, KP // G - 1) * G
        bs_next = tl.load(bs_row + nxt + gj)
        sg_next = read_scales(sc_row + row * KP + nxt + gj[None, :], sc_all, C, G)
        o = read_start_states(o, qc, qf, bst_ptr, tl.maximum(bs, 0), bs >= 0, sg, kd, vd, Dk, Dv, C, BK, BV, G, LOWP,
                              PREC)
    tl.store(o_ptr + trow[:, None] * Dv + vd[None, :], o.to(o_ptr.dtype.element_ty),
             mask=valid[:, None] & (vd[None, :] < Dv))


# Grouped reads (TritonSettings.grouped_reads; H200, run 37, bf16: the output stage 722 -> 580 us at (8, 4096, 16,
# 64) dense, 2,755 -> 1,832 at 128 features, 474 -> 1,215 at sparse: taken where the starts crowd their chunks).
# Long: as dla_output_kernel, every read accumulates into one register tile; splitting would re-read q and o.
@triton.jit(do_not_specialize=["T"])
def dla_output_grouped_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, o_ptr,
    mask_ptr, death_ptr, live_ptr, livem_ptr, hs_ptr, gs_ptr, bst_ptr, sc_ptr, gst_ptr, dte_ptr,
    T, H, Dk, Dv, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    G: tl.constexpr, HAS_INIT: tl.constexpr, SPLITS: tl.constexpr,
):
    """Program (chunk c, bh, Dv block): ``dla_output_kernel``'s ``o`` with the old starts
    read by their chunk, from the prefix states ``hs`` and the old chunk's tokens, without their materialised states
    (no ``dla_bstate_kernel``). A start a in an earlier chunk c' has B_a = e^{Gl'} H(c') + sum_{s in c', s < a}
    e^{Gl' - Gc'[s]} k_s v_s^T (Gc' the inclusive cumsum of g over c', Gl' its last entry), so the group A(c') of
    live old starts in c' (consecutive in the live list, oldest first) is read at once:

        sum_{j in A(c')} sc[t, j] q_t^T B_{a_j} = alpha_t e^{Gl'} q_t^T H(c') + sum_{s in c'} W[t, s] v_s,
        alpha_t = sum_{j in A(c')} sc[t, j],  W[t, s] = (sum_{j in A(c'), a_j > s} sc[t, j]) e^{Gl' - Gc'[s]} q_t.k_s

    the inner sum a [C, KP] x [KP, C] product of the group's scales with the indicator (a_j > s). Per distinct old
    chunk: q^T H (2 C Dk BV FLOPs), Q K'^T (2 C^2 Dk), the indicator product (2 C^2 KP), W V' (2 C^2 BV); reads
    H(c') and the chunk's k, v and decays. The initial cache's pseudo starts (lpos < 0, ``HAS_INIT``) are read from
    their states ``bst [BH K, Dk, Dv]`` (``hinit``), G per product, as ``dla_output_kernel`` reads its starts.

    ``gs``: the float64 sums of g before every chunk (e^{Gl'} from two of them); ``dte [BH, NC C]`` the decays to each
    chunk's end (``dla_read_scales_kernel``'s ``DTE``: scanning g per old chunk here took 4 more barriers a chunk,
    sm_90); ``gst [programs, KP]`` int32 scratch, each group's first list index, written and read back by this
    program. ``SPLITS``: pieces of the old chunk's tokens per W V' product (sm_90, Triton 3.6, bf16 at 64 features, 168
    registers: 1 spills 176 B, 2 none). Per old chunk (that build): 632 instructions, 8 barriers, 24 HGMMA, against
    256, 2 and 8 per two starts in ``dla_output_kernel``'s loop.
    """
    c = tl.program_id(0)
    bh = tl.program_id(1)
    vb = tl.program_id(2)
    NC = tl.cdiv(T, C)
    b = bh // H
    h = bh % H
    row = tl.arange(0, C)[:, None]
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    o, qc, qf, trow, valid = chunk_own_reads(q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, mask_ptr, death_ptr, hs_ptr, c, bh, vb,
                                             T, H, Dk, Dv, K, C, BK, BV, KP, LOWP, PREC)
    KD: tl.constexpr = KP if KP >= 16 else 16
    prog = ((c * tl.num_programs(1) + bh) * tl.num_programs(2) + vb).to(tl.int64)
    lst, jd, m0, lpos, aloc, ngrp = old_start_groups(live_ptr, livem_ptr, gst_ptr + prog * KP, bh, c, NC, C, KP, KD)
    sc_row = sc_ptr + (bh * NC + c).to(tl.int64) * C * KP
    CS: tl.constexpr = C // SPLITS  # the old chunk's tokens per piece of the W V' product
    # Each group's list entries, chunk and decay one iteration ahead: three dependent loads (the group's first
    # index, its first start, the chunk's g sums) that the group's state and token loads wait for. H200, run 44,
    # (8, 4096, 64) dense: 45 % of the loop's samples waited on loads before; ahead, the forward -2.3 % there.
    gsrow = gs_ptr + bh * (NC + 1)
    member_next, cp_next, Glp_next = start_group(gst_ptr + prog * KP, lst, jd, gsrow, 0, ngrp, C)
    for gx in tl.range(0, ngrp, num_stages=1):  # pipelined (2-3 stages): 82 KB of shared memory and spills
        member, cp, Glp = member_next, cp_next, Glp_next
        member_next, cp_next, Glp_next = start_group(gst_ptr + prog * KP, lst, jd, gsrow, gx + 1, ngrp, C)
        # The group's scales from L2 (dla_read_scales_kernel's [C, KP] rows), 0 off the group: a [C, KP] tile kept
        # in registers across the loop spilled (sm_90, Triton 3.6, 168 registers).
        scg = tl.load(sc_row + row * KP + jd[None, :], mask=member[None, :], other=0.0)  # [C, KD]
        alpha = tl.sum(scg, 1)
        Hp = load_state(hs_ptr + (bh * (NC + 1) + cp) * Dk * Dv, kd, vd, Dk, Dv)
        o += (alpha * tl.exp(Glp))[:, None] * qdot(qc, qf, Hp, LOWP, PREC)
        for hh in tl.static_range(SPLITS):
            trowp, validp, kp, dec, ind = old_chunk_piece(k_ptr, dte_ptr, b, h, bh, cp, hh, T, H, NC, kd, Dk, member,
                                                          aloc, C, CS)
            vp = load_rows(v_ptr, trowp, validp, vd, Dv)
            # tf32: the scales rounded to 10 bits (16-bit ones spilled, sm_90); the indicator is exact
            wsum = tl.dot(scg, ind.to(tl.float32), input_precision="tf32" if LOWP else PREC)
            if LOWP:
                Sp = tl.dot(qc, tl.trans(kp))
                o += tl.dot((wsum * dec[None, :] * Sp).to(vp.dtype), vp)
            else:
                Sp = tl.dot(qf, tl.trans(kp.to(tl.float32)), input_precision=PREC)
                o += tl.dot(wsum * dec[None, :] * Sp, vp.to(tl.float32), input_precision=PREC)
    if HAS_INIT:
        # The initial slots' pseudo starts (the list's first entries, lpos < 0), G per product as dla_output_kernel.
        m0init = tl.load(livem_ptr + bh * NC)
        npseudo = tl.sum(((jd < m0) & (lpos < 0)).to(tl.int32), 0)
        gj = tl.arange(0, G)
        for gx in range(0, tl.cdiv(npseudo, G)):
            jg = gx * G + gj
            lp = tl.load(lst + jg, mask=jg < npseudo, other=0)
            ok = (jg < npseudo) & (jg >= 1) & (lp < 0)
            bs = tl.where(ok, bh * K + lp + m0init, 0).to(tl.int64)
            sg = read_scales(sc_row + row * KP + jg[None, :], (jg < npseudo)[None, :], C, G)
            o = read_start_states(o, qc, qf, bst_ptr, bs, ok, sg, kd, vd, Dk, Dv, C, BK, BV, G, LOWP, PREC)
    tl.store(o_ptr + trow[:, None] * Dv + vd[None, :], o.to(o_ptr.dtype.element_ty),
             mask=valid[:, None] & (vd[None, :] < Dv))
