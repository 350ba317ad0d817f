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

from ..common.score import expm1_triton, information_score_from_decay_triton
from ..common.triton_utils import (
    bit_count,
    bit_index,
    chunk_tokens,
    decay_scan_combine,
    decay_to_end,
    div2_rn,
    div_rn,
    dot_split,
    dot_split_parts_t,
    highest_bit_index,
    load_rows,
    load_scalars,
    load_state,
    prefetch_lines,
    split3,
    store_state,
)

# Rows of ``cvec`` ([BH, NC, CARRY_ROWS, C] float32): per token t of a chunk, what the carry scan needs besides
# the carried slot: the chunk-start column X0, NP0 of the score table, ss = |k|^2 |v|^2, eG = exp(Gc[t-1]), the
# scan's factor exp(g[t-1]) (1 at t = 0), a = exp(g), expm1(2 g), and the weight exp(Gc[C-1] - Gc[t]) of token
# t in the chunk-end state (float64 sums and exp; 0 past T).
CV_X0 = tl.constexpr(0)
CV_NP0 = tl.constexpr(1)
CV_SS = tl.constexpr(2)
CV_EG = tl.constexpr(3)
CV_ASH = tl.constexpr(4)
CV_A = tl.constexpr(5)
CV_EM1 = tl.constexpr(6)
CV_WD = tl.constexpr(7)
CARRY_ROWS = tl.constexpr(8)

# The three carry-scan kernels (the plain walk, the guess kernel, the walk over the breaks) compile without
# floating-point contraction. The guessed chunks must get the plain walk's bits, and the same expressions (the
# scores, the decay scan, the slot update) are compiled into three kernels; where LLVM or ptxas fuses a product and a
# sum into an FMA depends on the code around it (H200, runs 40-41: 0.1 % of the scores 1-2 ulps apart between the
# walk kernel and the plain one, the PTX showing `a r + rp` fused in one and not in the other). Without contraction
# each operation rounds once wherever it is compiled; the FMAs wanted are written out (``slot_after_chunk``).
CARRY_COMPILE_OPTIONS = dict(enable_fp_fusion=False)


# Long: one program's table, orbit and columns; splitting costs a [C, C] round trip through memory.
@triton.jit(do_not_specialize=["T"])
def dla_table_kernel(
    k_ptr, v_ptr, g_ptr, rlen_ptr,
    itab_ptr, anc_ptr, cvec_ptr, decay_ptr, tflag_ptr,
    T, H, BH, Dk, Dv, tau, eps, norm_eps,
    C: tl.constexpr, BK: tl.constexpr, BVF: tl.constexpr,
    NEED_ANC: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, LOGC: tl.constexpr, SCAN: tl.constexpr,
    PUBLISH: tl.constexpr, c0=0,
):
    """Program (chunk c, bh), numbered chunk-major (all rows' chunk c0 first: chunks c0 on, for a launch by blocks of
    chunks, ``TritonSettings.decision_blocks``): score table I[t, p] for p < t,
    orbit bitmasks, and the carry scan's per-token vectors (the chunk-start column and the decay terms,
    ``cvec``) and the chunk's total decay. PUBLISH: then set the (bh, c) flag (bit c % 32 of the row's word
    c // 32) for a carry scan that runs concurrently and waits on it (chunk-major numbering: the chunks are done
    roughly in the order it needs them).

    FLOPs per chunk: 2 C^2 (Dk + Dv) (Gram) + 4 C^3 (two table matmuls, fp32); bytes: C (Dk + Dv) input
    elements in, 4 C^2 (table) + 8 C (bitmasks) + 32 C (carry vectors) out.
    """
    c = c0 + tl.program_id(0) // BH
    bh = tl.program_id(0) % BH
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
    # From here on, tile column q holds pair column p = pc = C - 1 - q (the scan's tiles, the score, and itab in
    # memory): X's suffix sum is then a forward scan of the reversed row. Triton reverses a reverse scan's rows
    # before and after (5 butterfly shuffles a register each way, sm_90: ~160 SHFL); here the reversal rides on
    # the gather below, and the columns stay reversed (relabelled) through the store. Same sums, same order.
    pc = C - 1 - col
    if SCAN:
        # X[t, p] = sum_{s=p}^{t-1} exp(Gc[t-1] - Gc[s]) Gram[t, s]: a suffix sum along each row.
        # The gather along the rows pins the scan to a layout with each row in one warp (sm_90: a warp
        # scan, then one transpose into the column scan's layout); left alone, Triton scans in the column scan's
        # layout, across the 8 warps through shared memory (~240 instructions more, 3x the shared loads).
        X = tl.cumsum(tl.gather(Dm * gram, pc + 0 * row, 1), 1)
        # Y[u, p] = (2 a_u X[u, p] + ss_u) [u >= p];  nP[t, p] = sum_{u < t} exp(2(Gc[t-1] - Gc[u])) Y[u, p]:
        # the scan nP[t] = a_{t-1}^2 nP[t-1] + Y[t-1] down each column (Y and a shifted by one token).
        Y = tl.where(row >= pc, 2.0 * a[:, None] * X + ss[:, None], 0.0)
        sh = tl.maximum(row - 1, 0) + col * 0
        Ysh = tl.where(row > 0, tl.gather(Y, sh, 0), 0.0)
        a2 = tl.where(row > 0, tl.exp(2.0 * tl.gather(g, tl.maximum(t_idx - 1, 0), 0))[:, None] + 0.0 * Y, 1.0)
        _, nPt = tl.associative_scan((a2, Ysh), 0, decay_scan_combine)
    else:
        ge = tl.where(row >= pc, 1.0, 0.0)  # ge[s, q] = [s >= p]
        X = tl.dot(Dm * gram, ge, input_precision=PREC)
        Y = tl.where(row >= pc, 2.0 * a[:, None] * X + ss[:, None], 0.0)
        nPt = tl.dot(Dm * Dm, Y, input_precision=PREC)
    N = (Dk * Dv).to(tl.float32)
    I = information_score_from_decay_triton(nPt, X, ss[:, None], a[:, None], expm1_triton(2.0 * g)[:, None], N,
                                            eps, norm_eps, RSQRT=True)
    lower_p = pc < row  # p < t in the reversed tile columns
    I = tl.where(lower_p & valid[:, None], I, 0.0)
    base = bh * NC + c
    # itab[t, C - 1 - p] (reversed columns, read back by itab_index): stored as the tile is, 16-byte stores along
    # the rows; p-ordered, Triton stores a reversed tile one float a thread, down the columns (uncoalesced)
    tl.store(itab_ptr + base * C * C + row * C + col, I)
    # The carry scan's inputs that do not depend on the carried slot: the chunk-start column (p = 0) and the
    # decay terms, so that its sequential loop only loads them.
    cvec = cvec_ptr + base * CARRY_ROWS * C + t_idx
    # X's column p = 0 by a gather in the row scan's layout (a shuffle per row, no reduction)
    tl.store(cvec + CV_X0 * C, tl.reshape(tl.gather(X, tl.full([C, 1], C - 1, tl.int32), 1), [C]))
    # nP's column p = 0 by a masked store of the tile (Triton stores it with the table, the column's 4-row runs
    # vectorised), not a reduction across the 8 warps (sm_90: 24 instructions and a barrier fewer)
    tl.store(cvec_ptr + base * CARRY_ROWS * C + CV_NP0 * C + row + col * 0, nPt, mask=col == C - 1)
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
        hit = lower_p & (valid & own)[:, None] & (tau <= I)
        nxt = tl.min(tl.where(hit, row, C), 0)  # next(p) of tile column q, C if none in the chunk
        nxt = tl.gather(nxt, C - 1 - t_idx, 0)  # p order: through shared memory, where a layout conversion was
        # The pointer doubling on [C, 8] copies (one column a warp at 8 warps): a gather along axis 0 is then
        # warp-local (shuffles), where a [C] gather goes through shared memory and a barrier each time
        # (sm_90: ~470 instructions fewer). Warp 0's column is stored.
        w8 = tl.arange(0, 8)[None, :]
        J = tl.broadcast_to(nxt[:, None], (C, 8))
        pp = tl.broadcast_to(t_idx[:, None], (C, 8)).to(tl.int64)
        one = tl.full([C, 8], 1, tl.int64)
        A = (one << pp) | tl.where(J < C, one << tl.minimum(J, C - 1).to(tl.int64), 0)
        for _ in tl.static_range(LOGC):
            has = J < C
            Jc = tl.where(has, J, 0)
            AJ = tl.gather(A, Jc, 0)
            JJ = tl.gather(J, Jc, 0)
            A = tl.where(has, A | AJ, A)
            J = tl.where(has, JJ, C)
        tl.store(anc_ptr + base * C + t_idx[:, None] + w8 * 0, A, mask=w8 == 0)
    if PUBLISH:  # every thread's stores above, then the flag (release: they are visible before it is)
        tl.debug_barrier()
        tl.atomic_or(tflag_ptr + bh * tl.cdiv(NC, 32) + c // 32, 1 << (c % 32), sem="release")


# ---------------------------------------------------------------------------------------------------
# 2. Carry scan: first boundary per chunk, boundary masks, scores, the carried open slot (sequential)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def itab_index(chunk, t, p, C: tl.constexpr):
    """The offset of the score I[t, p] of table ``chunk`` (the flat chunk number bh * NC + c) in ``itab``:
    row-major ``[C, C]`` tables with the columns reversed (column C - 1 - p), as the table kernel's tiles hold
    them; p < 0 reads column C - 1 (p = 0), for masked loads."""
    return chunk * C * C + t * C + (C - 1 - tl.maximum(p, 0))


@triton.jit
def load_carry_vectors(cvec_ptr, row_chunk, t_idx, inb, C: tl.constexpr):
    """The table's carry vectors of one chunk (``row_chunk = bh * NC + c``; 0 where ``inb`` is false), in the
    order of the ``CV_*`` rows. Read through L2 only (``.cg``): the table kernel may write them while the carry
    scan runs, and L1 is not coherent."""
    p = cvec_ptr + row_chunk * CARRY_ROWS * C + t_idx
    return (tl.load(p + CV_X0 * C, mask=inb, other=0.0, cache_modifier=".cg"),
            tl.load(p + CV_NP0 * C, mask=inb, other=0.0, cache_modifier=".cg"),
            tl.load(p + CV_SS * C, mask=inb, other=0.0, cache_modifier=".cg"),
            tl.load(p + CV_EG * C, mask=inb, other=0.0, cache_modifier=".cg"),
            tl.load(p + CV_ASH * C, mask=inb, other=0.0, cache_modifier=".cg"),
            tl.load(p + CV_A * C, mask=inb, other=0.0, cache_modifier=".cg"),
            tl.load(p + CV_EM1 * C, mask=inb, other=0.0, cache_modifier=".cg"),
            tl.load(p + CV_WD * C, mask=inb, other=0.0, cache_modifier=".cg"))


@triton.jit
def wait_for_tables(tflag_ptr, c):
    """Spin until the table kernel has published chunk ``c`` of this row (bit ``c % 32`` of word ``c // 32`` of
    the row's flags, ``tflag_ptr``), then return the end of the run of published chunks from ``c`` within that
    word: the carry scan need not read the flags again before that chunk. Scalars only, no vector reduction:
    the loop around it keeps its registers and barriers."""
    word = tl.atomic_add(tflag_ptr + c // 32, 0, sem="acquire")
    while ((word >> (c % 32)) & 1) == 0:
        word = tl.atomic_add(tflag_ptr + c // 32, 0, sem="acquire")
    holes = ~((word.to(tl.int64) & 0xFFFFFFFF) >> (c % 32)) & 0x1FFFFFFFF  # a zero past the word: never empty
    return c + bit_index(holes & -holes)


@triton.jit
def wait_published(ready_ptr, x, ready):
    """Decisions by blocks of chunks (``TritonSettings.decision_blocks``): the chunks before ``ready`` are known to be
    published (their tables, guesses and closing-slot tables written); if chunk ``x`` is not among them, spin until
    the counter ``ready_ptr`` (int32, the chunks published so far, set by ``dla_publish_chunks_kernel`` after each
    block) passes it, and return the new count. Scalars only, as ``wait_for_tables``."""
    if x >= ready:
        ready = tl.atomic_add(ready_ptr, 0, sem="acquire")
        while ready <= x:
            ready = tl.atomic_add(ready_ptr, 0, sem="acquire")
    return ready


@triton.jit
def dla_publish_chunks_kernel(ready_ptr, chunks):
    """One program, launched on the decisions' stream after a block's table, guess and closing-table kernels: the
    chunks before ``chunks`` are published (stream order: those kernels have ended; release: their writes are
    visible to a reader that acquires the count)."""
    tl.atomic_xchg(ready_ptr, chunks, sem="release")


@triton.jit
def first_hit_combine(t1, orbit1, t2, orbit2):
    """Of two (position, orbit) pairs the one at the lower position: the chunk's first boundary and its orbit
    (the chunk's boundary mask) in one reduction instead of a minimum and then a select."""
    first = t1 <= t2
    return tl.where(first, t1, t2), tl.where(first, orbit1, orbit2)


@triton.jit
def carry_products(kc, vc, P, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """``(y, |P|^2)``: y_t = k_t^T P v_t for a chunk's tokens against an open slot P (fp32 ``[BK, BV]``, the whole
    of it); bf16 keys against P split in three (SPLIT), else fp32 dots at PREC."""
    vf = vc.to(tl.float32)
    if SPLIT:
        y = tl.sum(dot_split(kc, P) * vf, 1)
    else:
        y = tl.sum(tl.dot(kc.to(tl.float32), P, input_precision=PREC) * vf, 1)
    return y, tl.sum(tl.sum(P * P, 1), 0)


@triton.jit
def carry_scores(y, nP0, t_idx, X0, NP0, ss, eG, ash, a, em1, N, eps, norm_eps):
    """Every token's score against the slot entered with (``carry_products``) grown by the chunk's tokens before
    it: z_t = sum_{s<t} exp(Gc[t-1] - Gc[s]) y_s (the scan z <- a_{t-1} z + y_{t-1}), then the table's
    columns X0, NP0 completed by the slot's terms (``cvec``'s rows)."""
    ysh = tl.where(t_idx > 0, tl.gather(y, tl.maximum(t_idx - 1, 0), 0), 0.0)
    _, z = tl.associative_scan((ash, ysh), 0, decay_scan_combine)
    nPc = eG * eG * nP0 + 2.0 * eG * z + NP0
    xc = eG * y + X0
    return information_score_from_decay_triton(nPc, xc, ss, a, em1, N, eps, norm_eps)


@triton.jit
def weighted_key_parts(kc, wd, SPLIT: tl.constexpr):
    """The chunk's keys weighted for the chunk-end state (``wd``: each token's decay to the chunk end), in the
    three bf16 parts of ``split3`` (SPLIT), else the fp32 keys three times (``slot_since`` reads the first)."""
    kw = kc.to(tl.float32) * wd[:, None]
    if SPLIT:
        hi, mid, lo = split3(kw)
    else:
        hi, mid, lo = kw, kw, kw
    return hi, mid, lo


@triton.jit
def slot_since(kw_hi, kw_mid, kw_lo, vc, opened, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """The open slot at the chunk end grown from the tokens where ``opened`` ([C, 1]) holds: ``sum_t w_t k_t v_t^T``
    from ``weighted_key_parts``. From the chunk's last start L on (opened = t >= L) it is the slot itself."""
    if SPLIT:
        zero = tl.zeros_like(kw_hi)
        grown = dot_split_parts_t(tl.where(opened, kw_hi, zero), tl.where(opened, kw_mid, zero),
                                  tl.where(opened, kw_lo, zero), vc)
    else:
        grown = tl.dot(tl.trans(tl.where(opened, kw_hi, 0.0)), vc.to(tl.float32), input_precision=PREC)
    return grown


@triton.jit
def slot_after_chunk(P, eGl, L, grown):
    """The open slot leaving a chunk: from its last start L on, the run since L (``grown``, exactly: no 0 * P term,
    so that the guess kernel's slot is the same bits), else P decayed through the chunk (``eGl``) and grown, in one
    rounding (an explicit fma: the carry kernels compile without contraction, ``CARRY_COMPILE_OPTIONS``)."""
    return tl.where(L >= 0, grown, tl.fma(eGl + tl.zeros_like(P), P, grown))


@triton.jit
def decide_chunk(k_ptr, v_ptr, bnd_ptr, mask_ptr, cscore_ptr, pbase, kc, vc, P, c, bh, NC, trow, tok, valid, Tr,
                 emp, anc_row, X0, NP0, ss, eG, ash, a, em1, Dk, Dv, N, tau, eps, norm_eps, C: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr, OVERRIDE: tl.constexpr,
                 SPLIT: tl.constexpr, PREC: tl.constexpr, STORE: tl.constexpr = True):
    """One chunk's decisions against the open slot it is entered with (P in registers, or at ``pbase`` in Dv
    blocks when NVB > 1): its carry scores and boundary mask, stored (STORE) and returned. The first boundary and
    its orbit are one two-operand reduction; the first token of an empty cache opens a slot."""
    t_idx = tl.arange(0, C)
    if NVB == 1:
        y, nP0 = carry_products(kc, vc, P, SPLIT, PREC)
    else:
        kd = tl.arange(0, BK)
        vd = tl.arange(0, BV)
        kf = kc.to(tl.float32)
        y = tl.zeros([C], dtype=tl.float32)
        nP0 = 0.0
        for vb in tl.static_range(NVB):
            vcb = load_rows(v_ptr, trow, valid, vb * BV + vd, Dv)
            Pb = load_state(pbase, kd, vb * BV + vd, Dk, Dv)
            y += tl.sum(tl.dot(kf, Pb, input_precision=PREC) * vcb.to(tl.float32), 1)
            nP0 += tl.sum(tl.sum(Pb * Pb, 1), 0)
    Ic = carry_scores(y, nP0, t_idx, X0, NP0, ss, eG, ash, a, em1, N, eps, norm_eps)
    fe = (t_idx == 0) & ((t_idx * 0 + c) == 0) & ((t_idx * 0 + emp) != 0)  # first token, empty cache
    Ic = tl.where(fe, 0.0, Ic)
    if OVERRIDE:
        ob = tl.load(bnd_ptr + trow, mask=valid, other=0) != 0
        ob = ob | fe
        bits = tl.where(ob & valid & (tok < Tr), tl.full([C], 1, tl.int64) << t_idx.to(tl.int64), 0)
        mask = tl.sum(bits, 0)
    else:
        hit = ((Ic >= tau) | fe) & valid & (tok < Tr)
        _, mask = tl.reduce((tl.where(hit, t_idx, C), tl.where(hit, anc_row, 0)), 0, first_hit_combine)
    if STORE:
        tl.store(mask_ptr + bh * NC + c, mask)
        tl.store(cscore_ptr + bh * NC * C + tok, Ic)
    return mask, Ic


@triton.jit
def fresh_slot_before(k_ptr, v_ptr, anc_ptr, cvec_ptr, bh, c, NC, trow, t_idx, kd, vd, Dk, Dv, H,
                      C: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """Chunk c's guessed entry slot: the slot leaving chunk c - 1 (c >= 1) along the path from a fresh slot at its
    first token, i.e. the run since the last start of that path (its orbit from token 0, ``anc``)."""
    prow = trow - C * H  # chunk c - 1's tokens, all in the row
    kp = load_rows(k_ptr, prow, t_idx < C, kd, Dk)
    vp = load_rows(v_ptr, prow, t_idx < C, vd, Dv)
    wdp = tl.load(cvec_ptr + ((bh * NC + c - 1) * CARRY_ROWS + CV_WD) * C + t_idx, cache_modifier=".cg")
    last = highest_bit_index(tl.load(anc_ptr + (bh * NC + c - 1) * C, cache_modifier=".cg"))
    hi, mid, lo = weighted_key_parts(kp, wdp, SPLIT)
    return slot_since(hi, mid, lo, vp, (t_idx >= last)[:, None], SPLIT, PREC)


@triton.jit
def carry_row(bh, T, H, Dk, Dv, size_ptr, rlen_ptr, p_ptr, C: tl.constexpr):
    """A carry scan program's row ``bh``: ``(b, h, NC, N = Dk Dv, whether the cache is empty, the row's length (no
    decision on the padding after it), its open slot's address)``."""
    return (bh // H, bh % H, tl.cdiv(T, C), (Dk * Dv).to(tl.float32), (tl.load(size_ptr + bh) == 0).to(tl.int32),
            tl.load(rlen_ptr + bh), p_ptr + bh * Dk * Dv)


@triton.jit
def carry_inputs(k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, c, T, H, NC, kd, vd, Dk, Dv,
                 C: tl.constexpr):
    """Chunk c's inputs to a carry step, 0 past the row's chunks: ``(keys, values, the table's eight carry vectors
    (``load_carry_vectors``), the chunk's decay eGl, its orbit row)``."""
    t_idx = tl.arange(0, C)
    tok = c * C + t_idx
    inb = tok < NC * C
    row = (b * T + tok) * H + h
    X0, NP0, ss, eG, ash, a, em1, wd = load_carry_vectors(cvec_ptr, bh * NC + c, t_idx, inb, C)
    return (load_rows(k_ptr, row, tok < T, kd, Dk), load_rows(v_ptr, row, tok < T, vd, Dv),
            X0, NP0, ss, eG, ash, a, em1, wd,
            tl.load(decay_ptr + bh * NC + c, mask=c < NC, other=0.0, cache_modifier=".cg"),
            tl.load(anc_ptr + bh * NC * C + tok, mask=inb, other=0, cache_modifier=".cg"))


# Long: the sequential carry scan is one dependent chain per (b, h); the prefetch needs it in one body.
@triton.jit(do_not_specialize=["T"])
def dla_carry_kernel(
    k_ptr, v_ptr, bnd_ptr, rlen_ptr,
    anc_ptr, cvec_ptr, decay_ptr, tflag_ptr,
    p_ptr, size_ptr, mask_ptr, cscore_ptr,
    T, H, Dk, Dv, tau, eps, norm_eps,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr,
    OVERRIDE: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, PIPE: tl.constexpr, flag_ptr,
    WAIT_TABLES: tl.constexpr,
):
    """Program (bh): walks the chunks. P (the open slot, fp32 [Dk, Dv]) stays in registers when Dv fits
    one block (NVB == 1), else lives in p_ptr (L2-resident) and is processed in Dv blocks of BV.
    Per chunk: 2 C Dk Dv FLOPs for k^T P v, 2 C Dk Dv for the update, a C-long decayed scan.
    Only what depends on P is in the loop's dependent chain (docs/performance.md, "Carry scan"): the product
    y_t = k_t^T P v_t, the decayed scan of y, the scores, one reduction for the first boundary and its orbit
    (the chunk's mask), the last boundary L by bit arithmetic on the mask, and the update, whose keys are
    masked to t >= L. The per-token decay terms come from the table kernel (``cvec``); the next chunk's inputs
    are loaded, and this chunk's weighted keys formed (and split), before the chain.
    Writes the carry scores (the score of t against the carried slot, valid up to the first boundary)
    and the chunk's boundary mask; dla_scores_kernel assembles the final scores in parallel.
    WAIT_TABLES: the table kernel runs concurrently (``PUBLISH``); a chunk's table outputs are read only after
    its flag is seen (``wait_for_tables``: one atomic read per 32 chunks while the tables are ahead)."""
    bh = tl.program_id(0)
    b, h, NC, N, emp, Tr, pbase = carry_row(bh, T, H, Dk, Dv, size_ptr, rlen_ptr, p_ptr, C)
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BV)
    Preg = load_state(pbase, kd, vd, Dk, Dv)
    # chunk 0's inputs
    tok = t_idx
    valid = tok < T
    trow = (b * T + tok) * H + h
    kc = load_rows(k_ptr, trow, valid, kd, Dk)
    vc = load_rows(v_ptr, trow, valid, vd, Dv)
    tflags = tflag_ptr + bh * tl.cdiv(NC, 32)
    ready = 0  # chunks [0, ready) of the tables are known to be written
    if WAIT_TABLES:
        ready = wait_for_tables(tflags, 0)
    X0, NP0, ss, eG, ash, a, em1, wd = load_carry_vectors(cvec_ptr, bh * NC, t_idx, t_idx < C, C)
    eGl = tl.load(decay_ptr + bh * NC, cache_modifier=".cg")
    anc_row = tl.load(anc_ptr + bh * NC * C + tok, cache_modifier=".cg")
    for c in range(NC):
        tok = c * C + t_idx
        valid = tok < T
        trow = (b * T + tok) * H + h
        # prefetch chunk c + 1 (masked off past the end)
        tokn = tok + C
        validn = tokn < T
        inb = tokn < NC * C
        rown = (b * T + tokn) * H + h
        kn = load_rows(k_ptr, rown, validn, kd, Dk)
        vn = load_rows(v_ptr, rown, validn, vd, Dv)
        if WAIT_TABLES:  # noqa: SIM102 (a compile-time branch around a run-time one)
            if (c + 1 < NC) & (c + 1 >= ready):
                ready = wait_for_tables(tflags, c + 1)
        X0n, NP0n, ssn, eGn, ashn, an, em1n, wdn = load_carry_vectors(cvec_ptr, bh * NC + c + 1, t_idx, inb, C)
        eGln = tl.load(decay_ptr + bh * NC + c + 1, mask=c + 1 < NC, other=0.0, cache_modifier=".cg")
        ancn = tl.load(anc_ptr + bh * NC * C + tokn, mask=inb, other=0, cache_modifier=".cg")
        # Off the chain: every token's key weighted for the chunk-end state (and split for the bf16 product);
        # the update masks the tokens before the last boundary.
        kw_hi, kw_mid, kw_lo = weighted_key_parts(kc, wd, SPLIT)
        mask, _ = decide_chunk(k_ptr, v_ptr, bnd_ptr, mask_ptr, cscore_ptr, pbase, kc, vc, Preg, c, bh, NC, trow,
                               tok, valid, Tr, emp, anc_row, X0, NP0, ss, eG, ash, a, em1, Dk, Dv, N, tau, eps,
                               norm_eps, C, BK, BV, NVB, OVERRIDE, SPLIT, PREC)
        if PIPE:  # publish chunk c to the concurrently running merge simulation
            tl.debug_barrier()
            tl.atomic_xchg(flag_ptr + bh, c + 1, sem="release")
        # The open slot at the chunk end: the tokens from the last boundary L on (all, decayed P, if none).
        L = highest_bit_index(mask)
        opened = (t_idx >= L)[:, None]
        if NVB == 1:
            Preg = slot_after_chunk(Preg, eGl, L, slot_since(kw_hi, kw_mid, kw_lo, vc, opened, SPLIT, PREC))
        else:
            tl.debug_barrier()
            kw = kc.to(tl.float32) * wd[:, None]  # Dv blocks: fp32 keys at PREC, the values unsplit
            for vb in tl.static_range(NVB):
                vcb = load_rows(v_ptr, trow, valid, vb * BV + vd, Dv)
                P = load_state(pbase, kd, vb * BV + vd, Dk, Dv)
                Pn = slot_after_chunk(P, eGl, L, slot_since(kw, kw, kw, vcb, opened, False, PREC))
                store_state(pbase, Pn, kd, vb * BV + vd, Dk, Dv)
            tl.debug_barrier()
        kc, vc, anc_row, eGl = kn, vn, ancn, eGln
        X0, NP0, ss, eG, ash, a, em1, wd = X0n, NP0n, ssn, eGn, ashn, an, em1n, wdn
    if NVB == 1:
        store_state(pbase, Preg, kd, vd, Dk, Dv)


# The carry scan from guessed chunks (``TritonSettings.carry_guesses``; issue #11, runs 39-41). A chunk's decisions
# depend on the slot it is entered with only up to its first boundary; from a boundary on the slot is the run since
# it. So chunk c's *guessed* entry slot, the slot leaving chunk c - 1 along the path from a fresh slot at c - 1's
# first token (``fresh_slot_before``), is its true entry slot whenever chunk c - 1's true path has a boundary on
# that fresh path: from a shared boundary on the two paths are one. Chunk c - 1 then *follows* its guess chain:
# its last boundary L is the fresh path's last start (``follows``). ``dla_carry_guess_kernel`` decides every chunk
# c >= 1 from its guessed slot in parallel and marks the chunks that do not follow (the *breaks*, and the last);
# ``dla_carry_walk_kernel`` then decides in series only the chunks entered with a slot that is not their guess
# (chunk 0, and each chunk after one that does not follow), and forms the slot leaving each break. The step's code
# is shared (``decide_chunk``, ``slot_after_chunk``, ...), so the guessed chunks get the plain walk's bits where the
# compiler rounds that code alike in every kernel: without contraction (``CARRY_COMPILE_OPTIONS``, run 41) and,
# up to 64 features, with the same layouts for its reductions (``chunk_fwd.takes_carry_guesses``).


@triton.jit
def follows(mask, orbit_word, BFIND: tl.constexpr = False):
    """Whether a chunk with boundary mask ``mask`` passes its slot to the next chunk as that chunk's guess: it has a
    boundary, and its last is the last start of the fresh path from its first token (``orbit_word``, ``anc`` at
    the chunk's token 0)."""
    L = highest_bit_index(mask, BFIND)
    return (L >= 0) & (highest_bit_index(orbit_word, BFIND) == L)


@triton.jit
def guess_holds(mask_row, anc_chunks, c, d, mask_prev, orbit_prev, C: tl.constexpr, BFIND: tl.constexpr = False):
    """Whether chunk c >= 1 holds its guessed decisions, judged on the final masks of the chunks before it. Its
    guess starts ``d`` chunks back (1, or the depth ``dla_carry_deep_guess_kernel`` recorded): the slot that leaves
    chunk c - d along its fresh path, grown through the chunks after it. It holds if chunk c - d follows and the
    chunks after it up to c - 1 have no boundary. ``mask_prev``, ``orbit_prev``: chunk c - 1's mask and orbit word
    (the callers hold them); for d > 1 the others are read from ``mask_row`` (the row's ``[NC]`` masks) and
    ``anc_chunks`` (the row's orbits, chunk j's word at ``j * C``)."""
    m_first = mask_prev
    o_first = orbit_prev
    between_empty = mask_prev == mask_prev
    if d > 1:
        first = c - d
        m_first = tl.load(mask_row + first, cache_modifier=".cg")
        o_first = tl.load(anc_chunks + first * C, cache_modifier=".cg")
        between_empty = mask_prev == 0
        for i in range(first + 1, c - 1):
            between_empty = between_empty & (tl.load(mask_row + i, cache_modifier=".cg") == 0)
    return between_empty & follows(m_first, o_first, BFIND)


@triton.jit
def next_break(brk_row, c, ready_ptr=None, ready=0, last=0, BLOCKED: tl.constexpr = False):
    """The first chunk >= c whose bit is set in a row's words (int32, 32 chunks a word: the guess kernel's breaks or
    ``dla_carry_suspects_kernel``'s suspects); the row's last chunk has its bit set, so the search ends. BLOCKED (the
    decisions by blocks of chunks, ``TritonSettings.decision_blocks``): the search ends at ``last`` (the block's last
    chunk, taken as a break) and reads only published chunks' bits (``wait_published``), through L2 (an earlier read
    of the word's line may sit in L1); returns ``(chunk, ready)``."""
    w = c // 32
    if BLOCKED:
        ready = wait_published(ready_ptr, c, ready)
        word = published_bits(brk_row, w, c, ready, last)
        while word == 0:  # none among the published chunks from c on
            c = tl.minimum((w + 1) * 32, ready)
            w = c // 32
            ready = wait_published(ready_ptr, c, ready)
            word = published_bits(brk_row, w, c, ready, last)
    else:
        word = (tl.load(brk_row + w).to(tl.int64) & 0xFFFFFFFF) >> (c % 32) << (c % 32)
        while word == 0:
            w += 1
            word = tl.load(brk_row + w).to(tl.int64) & 0xFFFFFFFF
    return w * 32 + bit_index(word & -word), ready


@triton.jit
def published_bits(brk_row, w, c, ready, last):
    """Word ``w``'s bits of the published chunks (before ``ready``) from ``c`` (in the word) on, through L2, with
    ``last``'s bit set once it is published (so that no bit past it is ever the lowest)."""
    word = tl.load(brk_row + w, cache_modifier=".cg").to(tl.int64) & 0xFFFFFFFF
    word = tl.where((last // 32 == w) & (ready > last), word | (tl.full((), 1, tl.int64) << (last % 32)), word)
    below = tl.minimum(ready - w * 32, 32).to(tl.int64)
    return (word >> (c % 32) << (c % 32)) & ((tl.full((), 1, tl.int64) << below) - 1)


@triton.jit
def chunk_scores(mask, carry_scores, row_chunk, t_idx, itab_ptr, C: tl.constexpr, BFIND: tl.constexpr = False):
    """A chunk's final scores: the carry score up to its first boundary, else the table entry I[t, p(t)] with p(t)
    the last boundary before t (``row_chunk = bh * NC + c``)."""
    pt = highest_bit_index(mask & ((tl.full([C], 1, tl.int64) << t_idx.to(tl.int64)) - 1), BFIND)
    it = tl.load(itab_ptr + itab_index(row_chunk, t_idx, pt, C), mask=pt >= 0, other=0.0)
    return tl.where(pt >= 0, it, carry_scores)


@triton.jit
def run_since(k_ptr, v_ptr, cvec_ptr, b, h, bh, x, L, T, H, NC, kd, vd, Dk, Dv, C: tl.constexpr, SPLIT: tl.constexpr,
              PREC: tl.constexpr):
    """The run of chunk x's tokens from position L on (all of them for L < 0), weighted to the chunk end: the
    walk's ``slot_since`` on the same operands."""
    t_idx = tl.arange(0, C)
    tok = x * C + t_idx
    row = (b * T + tok) * H + h
    wd = tl.load(cvec_ptr + ((bh * NC + x) * CARRY_ROWS + CV_WD) * C + t_idx, cache_modifier=".cg")
    hi, mid, lo = weighted_key_parts(load_rows(k_ptr, row, tok < T, kd, Dk), wd, SPLIT)
    return slot_since(hi, mid, lo, load_rows(v_ptr, row, tok < T, vd, Dv), (t_idx >= L)[:, None], SPLIT, PREC)


@triton.jit
def grown_through(S, k_ptr, v_ptr, cvec_ptr, decay_ptr, b, h, bh, x, T, H, NC, kd, vd, Dk, Dv, C: tl.constexpr,
                  SPLIT: tl.constexpr, PREC: tl.constexpr):
    """The slot S that enters chunk x, which has no boundary, as it leaves the chunk: decayed through it and grown by
    all its tokens, the plain walk's update (``slot_after_chunk``) on the same operands."""
    grown = run_since(k_ptr, v_ptr, cvec_ptr, b, h, bh, x, -1, T, H, NC, kd, vd, Dk, Dv, C, SPLIT, PREC)
    return slot_after_chunk(S, tl.load(decay_ptr + bh * NC + x, cache_modifier=".cg"), -1, grown)


@triton.jit
def guessed_entry_slot(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, b, h, bh, x, d, T, H, NC, kd, vd, Dk, Dv,
                       C: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """Chunk x's guessed entry slot, ``d`` chunks deep: the run that ends the fresh path of chunk x - d, grown
    through chunks x - d + 1 .. x - 1 (``grown_through``)."""
    first = x - d
    trow = (b * T + (first + 1) * C + tl.arange(0, C)) * H + h
    S = fresh_slot_before(k_ptr, v_ptr, anc_ptr, cvec_ptr, bh, first + 1, NC, trow, tl.arange(0, C), kd, vd, Dk, Dv,
                          H, C, SPLIT, PREC)
    for y in range(first + 1, x):
        S = grown_through(S, k_ptr, v_ptr, cvec_ptr, decay_ptr, b, h, bh, y, T, H, NC, kd, vd, Dk, Dv, C, SPLIT, PREC)
    return S


@triton.jit
def exit_slot(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, mask_row, b, h, bh, x, d, T, H, NC, kd, vd, Dk, Dv,
              C: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """The slot leaving chunk x >= 1, whose guess (``d`` deep) held, as did those of the chunks before it: the run
    since its last boundary, or, without one, its guessed entry slot grown through it. The same operations on the
    same operands as the plain walk's update, so the same bits."""
    L = highest_bit_index(tl.load(mask_row + x, cache_modifier=".cg"))
    if L >= 0:
        S = run_since(k_ptr, v_ptr, cvec_ptr, b, h, bh, x, L, T, H, NC, kd, vd, Dk, Dv, C, SPLIT, PREC)
    else:
        S = guessed_entry_slot(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, b, h, bh, x, d, T, H, NC, kd, vd, Dk, Dv,
                               C, SPLIT, PREC)
        S = grown_through(S, k_ptr, v_ptr, cvec_ptr, decay_ptr, b, h, bh, x, T, H, NC, kd, vd, Dk, Dv, C, SPLIT, PREC)
    return S


@triton.jit
def takes_deeper_guesses(free_ptr, bh, min_free):
    """Whether row bh takes the deeper guesses (``carry_guess_depth`` > 1): the guess kernel found at least
    ``min_free`` of its chunks without a boundary (``free_ptr``: its counts per row). The other rows are left to the
    one-deep walk, faster where few guesses fail (the deep kernels' fixed costs, runs 47-48)."""
    return tl.load(free_ptr + bh) >= min_free


@triton.jit(do_not_specialize=["T"])
def dla_carry_guess_kernel(
    k_ptr, v_ptr, rlen_ptr, anc_ptr, cvec_ptr, size_ptr, mask_ptr, cscore_ptr, itab_ptr, score_ptr, brk_ptr,
    T, H, Dk, Dv, tau, eps, norm_eps,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
    SCORES: tl.constexpr, free_ptr=None, orbit_ptr=None, DEEP: tl.constexpr = False, c_first=1,
):
    """Program (chunk c >= 1, bh): chunk c decided as the carry scan would from its guessed entry slot (the comment
    above): its carry scores and mask, and its break bit (``brk_ptr``, zeroed, ``[BH, cdiv(NC, 32)]`` int32) set
    unless it follows, or it is the last. SCORES (the merge simulation pipelined): also the chunk's final scores,
    which the merge simulation reads where the guess holds. DEEP (deeper guesses follow): the chunks found without a
    boundary counted per row in ``free_ptr`` ([BH] int32, zeroed), and each chunk's orbit word (``anc`` at its first
    token) copied to ``orbit_ptr`` (``[BH, NC, C]``, word 0 of each chunk; chunk 0's by the program of chunk 1) for
    the merge simulation, which the deeper guesses then edit. The same code as the carry scan's (the comment
    above). ``c_first``: the first chunk of the launch (1, or a block's first, ``TritonSettings.decision_blocks``)."""
    c = tl.program_id(0) + c_first
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    b, h, t_idx, tok, valid, trow = chunk_tokens(bh, c, T, H, C)
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BV)
    G = fresh_slot_before(k_ptr, v_ptr, anc_ptr, cvec_ptr, bh, c, NC, trow, t_idx, kd, vd, Dk, Dv, H, C, SPLIT, PREC)
    kc = load_rows(k_ptr, trow, valid, kd, Dk)
    vc = load_rows(v_ptr, trow, valid, vd, Dv)
    X0, NP0, ss, eG, ash, a, em1, _ = load_carry_vectors(cvec_ptr, bh * NC + c, t_idx, t_idx < C, C)
    anc_row = tl.load(anc_ptr + bh * NC * C + tok, cache_modifier=".cg")
    emp = (tl.load(size_ptr + bh) == 0).to(tl.int32)
    Tr = tl.load(rlen_ptr + bh)
    mask, Ic = decide_chunk(k_ptr, v_ptr, mask_ptr, mask_ptr, cscore_ptr, mask_ptr, kc, vc, G, c, bh, NC, trow, tok,
                            valid, Tr, emp, anc_row, X0, NP0, ss, eG, ash, a, em1, Dk, Dv, (Dk * Dv).to(tl.float32),
                            tau, eps, norm_eps, C, BK, BV, 1, False, SPLIT, PREC)
    orbit_word = tl.load(anc_ptr + (bh * NC + c) * C, cache_modifier=".cg")
    brk = (follows(mask, orbit_word) == 0) | (c == NC - 1)
    tl.atomic_or(brk_ptr + bh * tl.cdiv(NC, 32) + c // 32, tl.full((), 1, tl.int32) << (c % 32), mask=brk)
    if DEEP:
        tl.atomic_add(free_ptr + bh, 1, mask=mask == 0)
        tl.store(orbit_ptr + (bh * NC + c) * C, orbit_word)
        tl.store(orbit_ptr + bh * NC * C, tl.load(anc_ptr + bh * NC * C), mask=c == 1)
    if SCORES:
        sc = chunk_scores(mask, Ic, bh * NC + c, t_idx, itab_ptr, C)
        tl.store(score_ptr + bh * NC * C + tok, sc, mask=tok < tl.minimum(T, Tr))


@triton.jit(do_not_specialize=["T"])
def dla_carry_deep_guess_kernel(
    k_ptr, v_ptr, rlen_ptr, anc_ptr, cvec_ptr, decay_ptr, guess_ptr, mask_ptr, cscore_ptr, depth_ptr, free_ptr,
    min_free, orbit_ptr, T, H, Dk, Dv, tau, eps, norm_eps,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
    DEPTH: tl.constexpr,
):
    """Program (i, bh), after ``dla_carry_guess_kernel`` (its masks in ``guess_ptr``, a copy), for chunks c = 2 + i,
    2 + i + P, ... (P programs a row: few chunks need this, and an idle program of this size costs more than a loop
    step). Where that kernel found no boundary in chunk c - 1, chunk c's guess fails if that is so, and c is decided
    again from a deeper guess: the slot that leaves the nearest chunk before it with a boundary (at most DEPTH back,
    not chunk 0) along that chunk's fresh path, grown through the chunks after it, provided that those have no
    boundary when entered so. Its mask and carry scores replace the guess kernel's, and ``depth_ptr`` ([BH, NC]
    int32, ones) records how many chunks back its guess starts, and the orbit word of chunk c - 1 in ``orbit_ptr``
    (the guess kernel's copy) is zeroed, so that the merge simulation waits for the walk at chunk c. Whether a guess
    holds is judged on the true masks (``guess_holds``); which chunks are guessed how deep only sets how many the walk
    decides (sparse inputs: ~45 % of chunks one deep, ~7 % four deep; benchmarks/carry_deep_guesses.py). Only in the
    rows that take the deeper guesses (``takes_deeper_guesses``)."""
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    b = bh // H
    h = bh % H
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BV)
    guess_row = guess_ptr + bh * NC
    N = (Dk * Dv).to(tl.float32)
    Tr = tl.load(rlen_ptr + bh)
    if takes_deeper_guesses(free_ptr, bh, min_free):
        for c in range(2 + tl.program_id(0), NC, tl.num_programs(0)):
            _deeper_guess(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, guess_row, mask_ptr, cscore_ptr, depth_ptr,
                          orbit_ptr, b, h, bh, c, T, H, NC, Tr, Dk, Dv, N, tau, eps, norm_eps, kd, vd, C, BK, BV, PREC,
                          SPLIT, DEPTH)


@triton.jit
def _deeper_guess(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, guess_row, mask_ptr, cscore_ptr, depth_ptr, orbit_ptr, b,
                  h, bh, c, T, H, NC, Tr, Dk, Dv, N, tau, eps, norm_eps, kd, vd, C: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, DEPTH: tl.constexpr):
    """``dla_carry_deep_guess_kernel``'s work for chunk c."""
    if tl.load(guess_row + c - 1) == 0:
        d = 2
        m = tl.load(guess_row + c - 2, mask=c - 2 >= 1, other=0)  # chunk 0's mask is the walk's, not yet there
        while (m == 0) & (d < DEPTH) & (c - d > 1):
            d += 1
            m = tl.load(guess_row + c - d)
        if m != 0:
            # chunk c - d + 1 had no boundary when entered with that slot (the guess kernel's decision); check the rest
            S = guessed_entry_slot(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, b, h, bh, c - d + 2, 2, T, H, NC,
                                   kd, vd, Dk, Dv, C, SPLIT, PREC)
            x = c - d + 2
            clear = tl.full((), 1, tl.int32)
            while (x < c) & (clear != 0):
                kx, vx, X0, NP0, ss, eG, ash, a, em1, _, _, anc_row = carry_inputs(
                    k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, x, T, H, NC, kd, vd, Dk, Dv, C)
                tok = x * C + tl.arange(0, C)
                mx, _ = decide_chunk(k_ptr, v_ptr, mask_ptr, mask_ptr, cscore_ptr, mask_ptr, kx, vx, S, x, bh, NC,
                                     (b * T + tok) * H + h, tok, tok < T, Tr, 0, anc_row, X0, NP0, ss, eG, ash, a,
                                     em1, Dk, Dv, N, tau, eps, norm_eps, C, BK, BV, 1, False, SPLIT, PREC, False)
                clear = (mx == 0).to(tl.int32)
                S = grown_through(S, k_ptr, v_ptr, cvec_ptr, decay_ptr, b, h, bh, x, T, H, NC, kd, vd, Dk, Dv, C,
                                  SPLIT, PREC)
                x += 1
            if clear != 0:
                kc, vc, X0, NP0, ss, eG, ash, a, em1, _, _, anc_row = carry_inputs(
                    k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, c, T, H, NC, kd, vd, Dk, Dv, C)
                tok = c * C + tl.arange(0, C)
                decide_chunk(k_ptr, v_ptr, mask_ptr, mask_ptr, cscore_ptr, mask_ptr, kc, vc, S, c, bh, NC,
                             (b * T + tok) * H + h, tok, tok < T, Tr, 0, anc_row, X0, NP0, ss, eG, ash, a, em1, Dk, Dv,
                             N, tau, eps, norm_eps, C, BK, BV, 1, False, SPLIT, PREC)
                tl.store(depth_ptr + bh * NC + c, d)
                tl.store(orbit_ptr + (bh * NC + c - 1) * C, tl.zeros([], dtype=tl.int64))


@triton.jit(do_not_specialize=["T"])
def dla_carry_suspects_kernel(mask_ptr, anc_ptr, depth_ptr, sus_ptr, free_ptr, min_free, T, C: tl.constexpr):
    """Program (chunk c >= 1, bh), after the guess kernels (``carry_guess_depth`` > 1): chunk c's bit in the row's
    words ``sus_ptr`` ([BH, cdiv(NC, 32)] int32, zeroed) set where its guess may not hold, judged on the guessed
    masks (``guess_holds``), and for the last chunk. The walk takes the chunks without a bit as guessed: a guess that
    starts after the last chunk the walk decided is judged on true masks here. (Chunk 1's judgement reads chunk 0's
    mask, not yet written: the walk decides chunk 0 and checks the chunks after it one by one.) Only in the rows that
    take the deeper guesses."""
    c = tl.program_id(0) + 1
    bh = tl.program_id(1)
    if takes_deeper_guesses(free_ptr, bh, min_free):
        NC = tl.cdiv(T, C)
        mask_row = mask_ptr + bh * NC
        anc_chunks = anc_ptr + bh * NC * C
        d = tl.load(depth_ptr + bh * NC + c)
        orbit_prev = tl.load(anc_chunks + (c - 1) * C)
        holds = guess_holds(mask_row, anc_chunks, c, d, tl.load(mask_row + c - 1), orbit_prev, C)
        suspect = (holds == 0) | (c == NC - 1)
        tl.atomic_or(sus_ptr + bh * tl.cdiv(NC, 32) + c // 32, tl.full((), 1, tl.int32) << (c % 32), mask=suspect)


@triton.jit(do_not_specialize=["T"])
def dla_carry_walk_kernel(
    k_ptr, v_ptr, rlen_ptr, anc_ptr, cvec_ptr, decay_ptr, brk_ptr,
    p_ptr, size_ptr, mask_ptr, cscore_ptr,
    T, H, Dk, Dv, tau, eps, norm_eps,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
    PIPE: tl.constexpr, flag_ptr, sus_ptr=None, depth_ptr=None, free_ptr=None, min_free=0, DEPTH: tl.constexpr = 1,
    ready_ptr=None, c_begin=0, c_end=0, BLOCKED: tl.constexpr = False,
):
    """Program (bh), after the guess kernels: the carry scan (``dla_carry_kernel``, P in registers, decided
    boundaries) over the chunks whose guesses may not hold, published as it goes (PIPE: the flag then says only that
    chunks up to c are final, the merge simulation waits on it for such chunks alone). One deep (``_walk_breaks``),
    or DEPTH > 1 in the rows that take the deeper guesses (``takes_deeper_guesses``: ``_walk_suspects``, with the
    suspects kernel's bits ``sus_ptr`` and the depths ``depth_ptr``). One launch for both kinds of row: run 48's two
    walk kernels one after the other were not faster, and a kernel launched only to find no row of its own kind may
    still wait for room on the GPU (docs/performance.md, run 48). BLOCKED (one deep,
    ``TritonSettings.decision_blocks``): chunks ``c_begin .. c_end - 1`` only, a block that is being published while
    the walk runs (``wait_published``), from the slot ``p_ptr`` holds (the one leaving chunk ``c_begin - 1``), to which
    the slot leaving the block is stored; the flag then says that chunks up to ``c_end`` are final."""
    bh = tl.program_id(0)
    row = carry_row(bh, T, H, Dk, Dv, size_ptr, rlen_ptr, p_ptr, C)  # (b, h, NC, N, emp, Tr, pbase)
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BV)
    Preg = load_state(row[6], kd, vd, Dk, Dv)
    if DEPTH > 1:
        if takes_deeper_guesses(free_ptr, bh, min_free):
            Preg = _walk_suspects(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, sus_ptr, depth_ptr, mask_ptr, cscore_ptr,
                                  bh, row, Preg, kd, vd, T, H, Dk, Dv, tau, eps, norm_eps, C, BK, BV, PREC, SPLIT,
                                  PIPE, DEPTH, flag_ptr)
        else:
            Preg = _walk_breaks(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, brk_ptr, mask_ptr, cscore_ptr, bh, row,
                                Preg, kd, vd, T, H, Dk, Dv, tau, eps, norm_eps, C, BK, BV, PREC, SPLIT, PIPE, flag_ptr)
    else:
        Preg = _walk_breaks(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, brk_ptr, mask_ptr, cscore_ptr, bh, row, Preg,
                            kd, vd, T, H, Dk, Dv, tau, eps, norm_eps, C, BK, BV, PREC, SPLIT, PIPE, flag_ptr, ready_ptr,
                            c_begin, c_end, BLOCKED)
    store_state(row[6], Preg, kd, vd, Dk, Dv)
    if PIPE:  # every chunk final: a merge simulation that waited for a chunk the walk took as guessed (a bug) ends
        if BLOCKED:
            tl.atomic_xchg(flag_ptr + bh, c_end, sem="release")
        else:
            tl.atomic_xchg(flag_ptr + bh, row[2], sem="release")


# Long: the carry scan's walk over the breaks is one dependent chain per (b, h), its prefetch in the same body.
@triton.jit
def _walk_breaks(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, brk_ptr, mask_ptr, cscore_ptr, bh, row, Preg, kd, vd,
                 T, H, Dk, Dv, tau, eps, norm_eps, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 PREC: tl.constexpr, SPLIT: tl.constexpr, PIPE: tl.constexpr, flag_ptr, ready_ptr=None, c_begin=0,
                 c_end=0, BLOCKED: tl.constexpr = False):
    """``dla_carry_walk_kernel`` one deep, row bh. A chunk entered with a slot that is not its guess (chunk 0, or the
    one after a chunk that does not follow) is decided here, its mask and carry scores overwriting the guess
    kernel's, and published. After a chunk that follows, the walk jumps to the next break, whose guessed decisions
    hold, and forms the slot leaving it: the run since its last boundary, or its guessed slot decayed and grown
    through it if it has none. The next chunk's inputs are loaded before each step, as in the plain walk. Returns
    the slot leaving the row's last chunk (``row``, ``Preg``: ``carry_row``'s and the slot entering chunk 0).
    BLOCKED: chunks ``c_begin .. c_end - 1`` (``dla_carry_walk_kernel``), each read once published
    (``wait_published``); the block's last is taken as a break, so that the slot leaving it is formed."""
    b, h, NC, N, emp, Tr, pbase = row
    t_idx = tl.arange(0, C)
    brk_row = brk_ptr + bh * tl.cdiv(NC, 32)
    c = 0  # chunk 0 is walked
    c_hi = NC
    guessed = tl.full((), 0, tl.int32)  # whether chunk c is entered with its guessed slot
    if BLOCKED:
        c = c_begin
        c_hi = c_end
        ready = wait_published(ready_ptr, c_begin + tl.zeros([], tl.int32), tl.zeros([], tl.int32))
        if c_begin > 0:  # the chunk before the block passes its guess on if it follows (its mask is final)
            guessed = follows(tl.load(mask_ptr + bh * NC + c_begin - 1, cache_modifier=".cg"),
                              tl.load(anc_ptr + (bh * NC + c_begin - 1) * C, cache_modifier=".cg")).to(tl.int32)
            if PIPE:  # if so the block's first chunk is final: the merge simulation reads it at once
                tl.atomic_xchg(flag_ptr + bh, c_begin + 1, sem="release", mask=guessed != 0)
    kc, vc, X0, NP0, ss, eG, ash, a, em1, wd, eGl, anc_row = carry_inputs(
        k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, c, T, H, NC, kd, vd, Dk, Dv, C)
    while c < c_hi:
        if guessed != 0:
            if BLOCKED:
                c, ready = next_break(brk_row, c, ready_ptr, ready, c_hi - 1, True)
            else:
                c, _ = next_break(brk_row, c)
        tok = c * C + t_idx
        valid = tok < T
        trow = (b * T + tok) * H + h
        orbit_word = tl.load(anc_ptr + (bh * NC + c) * C, cache_modifier=".cg")
        # chunk c + 1's inputs, for its step (a chunk after a break is walked; after a walked chunk, unless it
        # follows)
        if BLOCKED:  # (the chunk after the block: read, not used)
            ready = wait_published(ready_ptr, tl.minimum(c + 1, c_hi - 1), ready)
        kn, vn, X0n, NP0n, ssn, eGn, ashn, an, em1n, wdn, eGln, ancn = carry_inputs(
            k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, c + 1, T, H, NC, kd, vd, Dk, Dv, C)
        if guessed != 0:  # a break: its guessed decisions hold; its own inputs, for the slot leaving it
            # by blocks through L2: an earlier read of the mask's line may sit in L1
            mask = tl.load(mask_ptr + bh * NC + c, cache_modifier=".cg" if BLOCKED else "")
            own = carry_inputs(k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, c, T, H, NC, kd, vd, Dk, Dv, C)
            kc, vc, wd, eGl = own[0], own[1], own[9], own[10]  # the rest unused (and not loaded)
            if highest_bit_index(mask) < 0:  # no boundary: the guessed slot, decayed and grown below
                Preg = fresh_slot_before(k_ptr, v_ptr, anc_ptr, cvec_ptr, bh, c, NC, trow, t_idx, kd, vd, Dk, Dv,
                                         H, C, SPLIT, PREC)
        else:
            mask, _ = decide_chunk(k_ptr, v_ptr, mask_ptr, mask_ptr, cscore_ptr, pbase, kc, vc, Preg, c, bh, NC,
                                   trow, tok, valid, Tr, emp, anc_row, X0, NP0, ss, eG, ash, a, em1, Dk, Dv, N, tau,
                                   eps, norm_eps, C, BK, BV, 1, False, SPLIT, PREC)
            if PIPE:  # chunks up to c are final: the merge simulation may read this one
                tl.debug_barrier()
                tl.atomic_xchg(flag_ptr + bh, c + 1, sem="release")
        passes = follows(mask, orbit_word)
        if (passes == 0) | (c == c_hi - 1):  # the slot leaving the chunk (the last one's: the call's open slot)
            L = highest_bit_index(mask)
            kw_hi, kw_mid, kw_lo = weighted_key_parts(kc, wd, SPLIT)
            Preg = slot_after_chunk(Preg, eGl, L, slot_since(kw_hi, kw_mid, kw_lo, vc, (t_idx >= L)[:, None], SPLIT,
                                                             PREC))
        guessed = passes.to(tl.int32)
        c += 1
        kc, vc, anc_row, eGl = kn, vn, ancn, eGln
        X0, NP0, ss, eG, ash, a, em1, wd = X0n, NP0n, ssn, eGn, ashn, an, em1n, wdn
    return Preg


@triton.jit
def processed(sus_row, depth_row, x, last_walked):
    """Whether the deep walk processes chunk x: its suspect bit is set, or its guess starts at or before the last
    chunk the walk decided (whose true mask may differ from the guessed one the bit was judged on)."""
    bit = (tl.load(sus_row + x // 32) >> (x % 32)) & 1
    return (bit != 0) | (x - tl.load(depth_row + x) <= last_walked)


@triton.jit
def next_processed(sus_row, depth_row, c, last_walked, NC, DEPTH: tl.constexpr):
    """The first chunk >= c the deep walk processes: within DEPTH chunks of the last one it decided, chunk by chunk
    (``processed``); past them the next suspect chunk (``next_break``; the last chunk is one)."""
    x = c
    while (x <= last_walked + DEPTH) & (x < NC - 1) & (processed(sus_row, depth_row, x, last_walked) == 0):
        x += 1
    if x > last_walked + DEPTH:
        x, _ = next_break(sus_row, x)
    return x


# Long: the carry scan's walk over the suspect chunks is one dependent chain per (b, h), its prefetch in one body.
@triton.jit
def _walk_suspects(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, sus_ptr, depth_ptr, mask_ptr, cscore_ptr, bh, row,
                   Preg, kd, vd, T, H, Dk, Dv, tau, eps, norm_eps, C: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, PIPE: tl.constexpr,
                   DEPTH: tl.constexpr, flag_ptr):
    """``dla_carry_walk_kernel`` DEPTH > 1 deep, row bh. It processes chunk 0, each chunk with a bit in ``sus_ptr``
    (``dla_carry_suspects_kernel``) and, within DEPTH chunks after each chunk it decides, those whose guesses start at
    or before that one (its true mask may differ from the guessed one the bits were judged on; ``processed``). A
    processed chunk whose guess holds on the true masks (``guess_holds``) keeps the guessed decisions; the others
    are decided here from the slot they are entered with, their masks and carry scores overwriting the guessed ones.
    It jumps over the rest, whose guesses hold, and forms the slot leaving the chunk before the next one it processes
    (``exit_slot``). PIPE: it publishes how far the masks are final (``flag_ptr``), at each jump and after each
    processed chunk: the merge simulation reads the one-deep guessed chunks ahead and waits on it for the others. The
    next chunk's inputs are loaded before each step, as in the plain walk. Returns the slot leaving the row's last
    chunk, as ``_walk_breaks``."""
    b, h, NC, N, emp, Tr, pbase = row
    t_idx = tl.arange(0, C)
    sus_row = sus_ptr + bh * tl.cdiv(NC, 32)
    mask_row = mask_ptr + bh * NC
    anc_chunks = anc_ptr + bh * NC * C
    c = 0
    kc, vc, X0, NP0, ss, eG, ash, a, em1, wd, eGl, anc_row = carry_inputs(
        k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, c, T, H, NC, kd, vd, Dk, Dv, C)
    depth_row = depth_ptr + bh * NC
    entered = tl.full((), 1, tl.int32)  # whether Preg is chunk c's entry slot (else chunk c is reached by a jump)
    last_walked = tl.full((), -DEPTH - 1, tl.int32)  # the last chunk decided here
    mask_prev = tl.zeros([], dtype=tl.int64)  # chunk c - 1's final mask
    while c < NC:
        if entered == 0:  # the chunks jumped over hold their guesses: the slot leaving the last of them
            c = next_processed(sus_row, depth_row, c, last_walked, NC, DEPTH)
            Preg = exit_slot(k_ptr, v_ptr, anc_ptr, cvec_ptr, decay_ptr, mask_row, b, h, bh, c - 1,
                             tl.load(depth_row + c - 1), T, H, NC, kd, vd, Dk, Dv, C,
                             SPLIT, PREC)
            mask_prev = tl.load(mask_row + c - 1, cache_modifier=".cg")
            kc, vc, X0, NP0, ss, eG, ash, a, em1, wd, eGl, anc_row = carry_inputs(
                k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, c, T, H, NC, kd, vd, Dk, Dv, C)
            if PIPE:  # the chunks before c are final
                tl.atomic_xchg(flag_ptr + bh, c, sem="release")
        tok = c * C + t_idx
        valid = tok < T
        trow = (b * T + tok) * H + h
        # chunk c + 1's inputs, for its step if it is processed
        kn, vn, X0n, NP0n, ssn, eGn, ashn, an, em1n, wdn, eGln, ancn = carry_inputs(
            k_ptr, v_ptr, cvec_ptr, decay_ptr, anc_ptr, b, h, bh, c + 1, T, H, NC, kd, vd, Dk, Dv, C)
        d = tl.load(depth_row + c)
        orbit_prev = tl.load(anc_chunks + (c - 1) * C, mask=c > 0, other=0, cache_modifier=".cg")
        holds = (c > 0) & guess_holds(mask_row, anc_chunks, c, d, mask_prev, orbit_prev, C)
        if holds:
            mask = tl.load(mask_row + c, cache_modifier=".cg")
        else:
            mask, _ = decide_chunk(k_ptr, v_ptr, mask_ptr, mask_ptr, cscore_ptr, pbase, kc, vc, Preg, c, bh, NC,
                                   trow, tok, valid, Tr, emp, anc_row, X0, NP0, ss, eG, ash, a, em1, Dk, Dv, N, tau,
                                   eps, norm_eps, C, BK, BV, 1, False, SPLIT, PREC)
            last_walked = c
            tl.debug_barrier()  # the mask in memory for every thread (later chunks' guesses may read it)
        if PIPE:  # chunks up to c are final: the merge simulation may read this one
            tl.atomic_xchg(flag_ptr + bh, c + 1, sem="release")
        go_on = (c + 1 < NC) & processed(sus_row, depth_row, tl.minimum(c + 1, NC - 1), last_walked)
        if go_on | (c == NC - 1):  # the slot leaving the chunk (the last one's: the call's open slot)
            L = highest_bit_index(mask)
            kw_hi, kw_mid, kw_lo = weighted_key_parts(kc, wd, SPLIT)
            Preg = slot_after_chunk(Preg, eGl, L, slot_since(kw_hi, kw_mid, kw_lo, vc, (t_idx >= L)[:, None], SPLIT,
                                                             PREC))
        entered = go_on.to(tl.int32)
        mask_prev = mask
        c += 1
        kc, vc, anc_row, eGl = kn, vn, ancn, eGln
        X0, NP0, ss, eG, ash, a, em1, wd = X0n, NP0n, ssn, eGn, ashn, an, em1n, wdn
    return Preg


# ---------------------------------------------------------------------------------------------------
# 3. Merge simulation: the structure over the call (sequential over boundary events)
# ---------------------------------------------------------------------------------------------------
#
# Just before the merge of an event the cache holds K items X_0..X_{K-1}: the closed slots and, last, the
# slot O_e that the boundary closes. O_e, and the slot O_{e+1} that the next boundary closes, depend on the
# boundaries and scores alone, never on the merges (a merge never touches the slot opened after it), so they
# are formed per chunk, vectorised over its positions (`closing_slots`), and where the chunk is final before the
# merges start, by a parallel kernel beforehand (`dla_closing_tables_kernel`). The event loop (`merge_event`) keeps
# the pair densities D_i = d(X_i, X_{i+1}) and, from X alone, the three densities that the merge can create,
# whichever pair it takes (X_K = O_{e+1}):
#     dR_i = d(X_i + X_{i+1}, X_{i+2})   the merged pair with its right neighbour, if pair i merges
#     dL_i = d(X_i, X_{i+1} + X_{i+2})   the left neighbour with the merged pair, if pair i + 1 merges
#     dN_i = d(X_{i+1}, X_{i+2})         the pair shifted into place i, if a pair left of i merges
# computed while the argmin of D runs: from one event to the next the dependency chain is the argmin and a
# few selects (docs/performance.md, "merge simulation"). Each is the float64 expression the direct formula
# d(a, b) = (Ibar_a + Ibar_b) / (n_a + n_b) evaluates on the same operands, so every density, decision and sum
# is bit-identical to recomputing all densities at every event.


@triton.jit
def lowest_set_lane(flag, j, KW: tl.constexpr, VOTE: tl.constexpr):
    """The lowest lane where ``flag`` is set, as a [KW] vector (all lanes equal). VOTE (a GPU, KW == 32: one
    lane per element): one warp ballot and a bit scan, instead of a reduction."""
    if VOTE:
        return tl.inline_asm_elementwise(
            """{
            .reg .pred p;
            .reg .b32 m;
            setp.ne.s32 p, $1, 0;
            vote.sync.ballot.b32 m, p, 0xffffffff;
            brev.b32 m, m;
            bfind.shiftamt.u32 $0, m;
            }""", "=r,r", [flag.to(tl.int32)], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return tl.zeros([KW], dtype=tl.int32) + tl.min(tl.where(flag, j, KW), 0)


@triton.jit
def argmin_nonneg(d, valid, j, KW: tl.constexpr, VOTE: tl.constexpr):
    """The smallest lane i with valid[i] and d[i] == min(d[valid]), for float64 d >= 0 (not NaN), as a [KW]
    vector (all lanes equal), by 32-bit warp collectives (``redux.sync`` on sm_80+, then a ballot) instead of a
    float64 shuffle tree: for such values the numeric order is the unsigned order of the bit patterns, and
    equal values have equal patterns once -0.0 is folded into +0.0 (the sign bit cleared)."""
    bits = d.to(tl.int64, bitcast=True) & 0x7FFFFFFFFFFFFFFF
    hi = tl.where(valid, (bits >> 32).to(tl.int32), 2147483647)
    lo = ((bits & 0xFFFFFFFF) - 2147483648).to(tl.int32)  # the unsigned order of the low halves, as signed
    tie = hi == tl.min(hi, 0)
    lo = tl.where(tie, lo, 2147483647)
    return lowest_set_lane(tie & (lo == tl.min(lo, 0)), j, KW, VOTE)


@triton.jit
def lane_shift(x, j, by: tl.constexpr, KW: tl.constexpr):
    """``x[min(j + by, KW - 1)]``: the neighbour ``by`` lanes up (one warp shuffle)."""
    return tl.gather(x, tl.minimum(j + by, KW - 1), 0)


@triton.jit
def closing_slots(mask, sc64, cs, t_idx, C: tl.constexpr, FAST: tl.constexpr):
    """Per position t of the chunk (meaningful where t is a boundary): the information sum of the slot that t closes
    as far as the chunk holds it (the chunk's tokens before t, for its first boundary), count and sum of the slot that
    the chunk's next boundary closes (junk after its last boundary), and the density of the two as a pair. The sums are
    formed as the event-by-event updates form them (``cs``: the chunk's inclusive prefix sums of the float64
    scores): a slot opened at p < t in the chunk has ``score[p] + ((cs[t] - score[t]) - cs[p])``, the first
    boundary's ``0 + ((cs[t] - score[t]) - 0)``. The densities take ``div_rn``'s conditions where they are read
    (counts >= 2); junk positions may divide 0 by 0 (never read)."""
    tt = t_idx.to(tl.int64)
    p = highest_bit_index(mask & ((tl.full([C], 1, tl.int64) << tt) - 1), FAST)  # the last boundary before t
    has = p >= 0
    pc = tl.maximum(p, 0)
    add_i = cs - sc64 - tl.where(has, tl.gather(cs, pc, 0), 0.0)
    ino = tl.where(has, tl.gather(sc64, pc, 0), 0.0) + add_i
    nno = tl.where(has, t_idx - p, t_idx).to(tl.float64)
    after = (((mask >> tt) >> 1) << 1) << tt  # the boundaries after t
    q = tl.minimum(tl.maximum(bit_index(after & (-after), FAST), 0), C - 1)
    nnx = tl.gather(nno, q, 0)
    inx = tl.gather(ino, q, 0)
    return ino, nnx, inx, div_rn(ino + inx, nno + nnx, FAST)


@triton.jit
def pair_densities(n, info, j, K, KW: tl.constexpr, FAST: tl.constexpr):
    """d_i = (Ibar_i + Ibar_{i+1}) / (n_i + n_{i+1}) for the pairs i < K - 1, +inf elsewhere."""
    dens = div_rn(info + lane_shift(info, j, 1, KW), tl.maximum(n + lane_shift(n, j, 1, KW), 1.0), FAST)
    return tl.where(j < K - 1, dens, float("inf"))


@triton.jit
def by_parity(x, C: tl.constexpr):
    """A chunk's per-position values ``x [C]`` as their even and odd positions (``[C // 2]`` each): the layout holds
    positions 2l and 2l + 1 in lane l, so this moves no data, and ``at_position`` reads one with one shuffle a word
    instead of two and a select (sm_90, run 49: the merge event loop 301 -> 287 modeled cycles)."""
    return tl.split(tl.reshape(x, [C // 2, 2]))


@triton.jit
def at_position(x2, u, zk):
    """``x[u]`` (``u`` a position, the same in all lanes) from ``by_parity(x)``, as a vector like ``zk``."""
    even, odd = x2
    return tl.gather(tl.where((u & 1) != 0, odd, even), zk + (u >> 1), 0)


# Rows of a chunk's closing-slot tables (``dla_closing_tables_kernel``, ``[BH, NC, CT_ROWS, C]`` float64). Per
# boundary t of the chunk, the slot that the next boundary closes (``closing_slots``' ``nnx``, ``inx``, ``dnx``);
# that is also how the merge simulation knows the slot each boundary but the first closes. The first closes the slot
# carried into the chunk, grown by the chunk's tokens before it: ``CT_ENDS`` holds their information sum (position
# 0), that of the chunk's tokens in the slot open at its end (position 1) and ``inx`` at the first boundary (position
# 2). The counts (at most C) are float32, in the first half of their row: held a chunk ahead in half the registers,
# they let ptxas schedule the event loop as fast as before the tables (sm_90 model, run 53: 386 -> 321 cycles an event
# after the walk, 299 -> 294 pipelined); its second half starts with the first boundary's position and its ``nnx``.
# Those three (``at_first``) let the merge kernel divide for the carried slot without a bit scan or a shuffle first.
CT_NX = tl.constexpr(0)  # count of the slot that the next boundary closes (float32)
CT_IX = tl.constexpr(1)  # its information sum
CT_DX = tl.constexpr(2)  # the density of the pair (the slot that t closes, that one)
CT_ENDS = tl.constexpr(3)
CT_ROWS = tl.constexpr(4)


@triton.jit
def valid_scores64(sc, nvalid, t_idx):
    """A chunk's scores in float64, 0 past its ``nvalid`` tokens (the padding counts in no slot)."""
    return tl.where(t_idx < nvalid, sc, 0.0).to(tl.float64)


@triton.jit
def chunk_closing_tables(mask, sc, nvalid, t_idx, zk, C: tl.constexpr, FAST: tl.constexpr):
    """A chunk's closing-slot tables (``nnx`` float32, ``inx``, ``dnx`` [C]; ``head``, ``tail`` shaped like ``zk``, all
    equal) from its mask and scores: what the merge simulation needs of the chunk that depends on the chunk alone. The
    sums are added as the event-by-event updates add them: ``head`` is the first boundary's prefix sum less its score,
    ``tail`` the last boundary's score plus the prefix sums' difference to the chunk end (the whole chunk's ``tl.sum``
    without a boundary); ``dnx`` at the first boundary lacks the carried slot (``with_carried_open``)."""
    sc64 = valid_scores64(sc, nvalid, t_idx)
    cs = tl.cumsum(sc64, 0)  # inclusive prefix sums of the chunk's scores
    ino, nnx, inx, dnx = closing_slots(mask, sc64, cs, t_idx, C, FAST)
    first = tl.maximum(bit_index(mask & (-mask), FAST), 0)
    last = highest_bit_index(mask, FAST)
    lastc = tl.maximum(last, 0)
    cs2 = by_parity(cs, C)
    tail = at_position(by_parity(sc64, C), lastc, zk) + (at_position(cs2, C - 1, zk) - at_position(cs2, lastc, zk))
    head = at_position(by_parity(ino, C), first, zk)
    # the first boundary's position and its nnx, inx: with_carried_open's operands besides the carried slot
    at_first = (first.to(tl.float32) + tl.zeros(zk.shape, tl.float32),
                at_position(by_parity(nnx, C), first, zk).to(tl.float32), at_position(by_parity(inx, C), first, zk))
    return nnx.to(tl.float32), inx, dnx, head, tl.where(last >= 0, tail, tl.sum(sc64, 0)), at_first


@triton.jit
def load_closing_tables(tab_ptr, row, ok, t_idx, zk, C: tl.constexpr, AT_FIRST: tl.constexpr):
    """Chunk ``row``'s (``bh * NC + c``) closing-slot tables as ``chunk_closing_tables`` returns them (zeros where not
    ``ok``; ``at_first`` zeros unless AT_FIRST)."""
    base = tab_ptr + row * (CT_ROWS * C)
    oks = t_idx < tl.where(ok, C, 0)
    counts = base.to(tl.pointer_type(tl.float32)) + CT_NX * 2 * C
    nnx = tl.load(counts + t_idx, mask=oks, other=0.0)
    inx = tl.load(base + CT_IX * C + t_idx, mask=oks, other=0.0)
    dnx = tl.load(base + CT_DX * C + t_idx, mask=oks, other=0.0)
    zero = tl.zeros(zk.shape, dtype=tl.float64)
    ends = base + CT_ENDS * C
    head = tl.load(ends, mask=ok, other=0.0) + zero
    tail = tl.load(ends + 1, mask=ok, other=0.0) + zero
    zero32 = tl.zeros(zk.shape, dtype=tl.float32)
    at_first = (zero32, zero32, zero)
    if AT_FIRST:
        at_first = (tl.load(counts + C, mask=ok, other=0.0) + zero32,
                    tl.load(counts + C + 1, mask=ok, other=0.0) + zero32, tl.load(ends + 2, mask=ok, other=0.0) + zero)
    return nnx, inx, dnx, head, tail, at_first


@triton.jit
def prefetch_tables(tab_ptr, row, lane, C: tl.constexpr, ON: tl.constexpr):
    """Chunk ``row``'s (``bh * NC + c``) closing-slot tables on their way to L1 (``prefetch_lines``): lane l asks for
    their line l mod 16 (128 bytes each)."""
    prefetch_lines(tab_ptr + row * (CT_ROWS * C) + (lane % (CT_ROWS * C * 8 // 128)) * 16, ON)


@triton.jit(do_not_specialize=["T"])
def dla_closing_tables_kernel(
    mask_ptr, score_ptr, rlen_ptr, tab_ptr, T, itab_ptr, cscore_ptr,
    C: tl.constexpr, SCORES: tl.constexpr, FAST: tl.constexpr, c0=0,
):
    """Program (chunk c0 + i, bh), one warp: the chunk's closing-slot tables (``chunk_closing_tables``) for the merge
    simulation, from its mask and final scores. SCORES: the scores are first assembled from the carry scores and the
    score table (``chunk_scores``) and stored; else read. The warp lays the chunk out as the merge kernel does, so
    that the sums add in its order."""
    c = c0 + tl.program_id(0)
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    t_idx = tl.arange(0, C)
    tok = c * C + t_idx
    mask = tl.load(mask_ptr + bh * NC + c)
    if SCORES:
        Ic = tl.load(cscore_ptr + bh * NC * C + tok)
        sc = chunk_scores(mask, Ic, bh * NC + c, t_idx, itab_ptr, C)
        tl.store(score_ptr + bh * NC * C + tok, sc, mask=tok < T)
    else:
        sc = tl.load(score_ptr + bh * NC * C + tok, mask=tok < T, other=0.0)
    nvalid = tl.maximum(tl.minimum(tl.minimum(T, tl.load(rlen_ptr + bh)) - c * C, C), 0)
    nnx, inx, dnx, head, tail, at_first = chunk_closing_tables(mask, sc, nvalid, t_idx, tl.zeros([C], dtype=tl.int32),
                                                               C, FAST)
    first, n_first, i_first = at_first  # (Triton 3.6 unpacks no nested tuple)
    base = tab_ptr + (bh * NC + c) * (CT_ROWS * C)
    counts = base.to(tl.pointer_type(tl.float32)) + CT_NX * 2 * C
    tl.store(counts + t_idx, nnx)
    tl.store(counts + C + t_idx, tl.where(t_idx == 0, first, n_first), mask=t_idx < 2)
    tl.store(base + CT_IX * C + t_idx, inx)
    tl.store(base + CT_DX * C + t_idx, dnx)
    ends = tl.where(t_idx == 0, head, tl.where(t_idx == 1, tail, i_first))
    tl.store(base + CT_ENDS * C + t_idx, ends, mask=t_idx < 3)


@triton.jit
def with_carried_open(dnx, first, at_first, head, n_open, i_open, t_idx, zc, FAST: tl.constexpr):
    """The slot that a chunk's first boundary ``first`` closes, ``(n, info)`` ([KW], all equal): the open slot carried
    into the chunk (``n_open``, ``i_open``) grown by the chunk's tokens before it, whose sum is ``head``; and the
    chunk's ``dnx`` with that slot's density with the next closing slot, by the additions ``closing_slots`` makes.
    ``at_first``: ``first``, and ``nnx``, ``inx`` there ([KW]; float32, float32, float64), as the tables hold them."""
    first_f, n_next, i_next = at_first
    n_f = n_open + first_f.to(tl.float64)
    i_f = i_open + head
    d_f = div_rn(i_f + i_next, n_f + n_next.to(tl.float64), FAST)
    return n_f, i_f, tl.where(t_idx == first, tl.gather(d_f, zc, 0), dnx)


@triton.jit
def merge_event(n, info, pos, d, n_next, i_next, d_next, tglob, j, K, KW: tl.constexpr, FAST: tl.constexpr):
    """One boundary with a full cache: ``(n, info, pos, d)`` hold the K items (the last is the slot the
    boundary closes) and their pair densities. Returns the items after the lowest-density merge (tie: the
    oldest pair) with the slot the next boundary closes (``n_next``, ``i_next``, starting at ``tglob``)
    appended, their pair densities (``d_next``: the density of the closing slot with the next one), the
    merged pair ([KW], all lanes equal) and, at the merged lane, the start that dies (INT32_MAX elsewhere)."""
    last = j == K - 1
    n1 = tl.where(last, n_next, lane_shift(n, j, 1, KW))
    i1 = tl.where(last, i_next, lane_shift(info, j, 1, KW))
    p1 = tl.where(last, tglob, lane_shift(pos, j, 1, KW))
    n2 = tl.where(j == K - 2, n_next, lane_shift(n, j, 2, KW))
    i2 = tl.where(j == K - 2, i_next, lane_shift(info, j, 2, KW))
    d_n = tl.where(j == K - 2, d_next, lane_shift(d, j, 1, KW))  # d(X_{i+1}, X_{i+2})
    a0 = info + i1  # X_i + X_{i+1}
    c0 = n + n1
    # d(X_i + X_{i+1}, X_{i+2}) and d(X_i, X_{i+1} + X_{i+2}): one divisor, as counts add exactly
    d_r, d_l = div2_rn(a0 + i2, info + (i1 + i2), c0 + n2, FAST)
    istar = argmin_nonneg(d, j < K - 1, j, KW, FAST and KW == 32)
    left = j < istar
    here = j == istar
    n = tl.where(left, n, tl.where(here, c0, n1))
    info = tl.where(left, info, tl.where(here, a0, i1))
    pos = tl.where(left | here, pos, p1)
    d = tl.where(j < istar - 1, d, tl.where(j == istar - 1, d_l, tl.where(here, d_r, d_n)))
    return n, info, pos, d, istar, tl.where(here, p1, 2147483647)


@triton.jit
def pipelined_scores(mask, bh, c, NC, nvalid, t_idx, score_ptr, itab_ptr, cscore_ptr, C: tl.constexpr,
                     FAST: tl.constexpr):
    """The chunk's scores assembled by the merge simulation itself (pipelined mode, ``chunk_scores``) and stored,
    from the carry scan's carry scores."""
    cs0 = tl.load(cscore_ptr + bh * NC * C + c * C + t_idx, volatile=True)
    sc = tl.where(t_idx < nvalid, chunk_scores(mask, cs0, bh * NC + c, t_idx, itab_ptr, C, FAST), 0.0)
    tl.store(score_ptr + bh * NC * C + c * C + t_idx, sc, mask=t_idx < nvalid)
    return sc


# Long: the merge simulation keeps the K slots in registers across all events of the call.
@triton.jit(do_not_specialize=["T"])
def dla_merge_kernel(
    mask_ptr, score_ptr, rlen_ptr, cnt_ptr, info_ptr, size_ptr,
    death_ptr, death0_ptr, merged_ptr, live_ptr, livem_ptr, fpos_ptr,
    T, K, itab_ptr, cscore_ptr, flag_ptr, anc_ptr, tab_ptr,
    C: tl.constexpr, KP: tl.constexpr, KW: tl.constexpr, PIPE: tl.constexpr, FAST: tl.constexpr,
    GUESSED: tl.constexpr = False, ready_ptr=None, size0_ptr=None, c_begin=0, c_end=0, BLOCKED: tl.constexpr = False,
    PREFETCH: tl.constexpr = False,
):
    """Program (bh), one warp: counts n and information sums Ibar (float64) and start positions of the <= K slots
    in KW-wide vectors (KW = max(KP, 32): one lane per slot); one lowest-density merge (tie: the oldest pair) per
    new slot with a full cache. Counts in float64 are exact below 2**53 (the cache checks keep a row's sum below
    2**52); as int64 their sums and conversion cost the event loop ~70 of its ~370 cycles (sm_90, modeled by
    ``benchmarks/sass_loop_model.py``). Initial slots have pseudo start positions -m0..-1. The open slot's count
    and sum are kept apart (``n_open``, ``i_open``, all lanes equal): the lanes hold it only while it is being
    closed. Per chunk its closing-slot tables (``chunk_closing_tables``), read from ``tab_ptr`` where
    ``dla_closing_tables_kernel`` made them before this kernel started, else made here; per event O(1) shuffles and
    reductions.
    Not PIPE: every chunk's tables are made beforehand, and read a chunk ahead.
    PIPE: runs concurrently with the carry scan, waiting on its per-chunk flag, and assembles the scores
    itself (carry score up to the first boundary, else the table entry I[t, p(t)]).
    GUESSED (with PIPE; the carry scan from guessed chunks): a chunk after one that ``follows`` holds the guess
    kernel's decisions and scores, final before this kernel starts, and its tables: they are read a chunk ahead,
    without waiting. The others are waited for: those the walk decides, and those guessed deeper, whose guesses the
    walk judges as it passes them (``anc_ptr`` then holds the orbit words with the word of the chunk before each
    deeper-guessed one zeroed, which no chunk ``follows``: ``dla_carry_guess_kernel``'s ``orbit_ptr``). The merge
    kernel reads no depth of its own: a load of them per chunk moved the event loop's schedule (H200, run 48: 2.96 ->
    3.12 cycles an instruction, the same 124 instructions; +5 % at dense inputs).
    BLOCKED (with GUESSED; ``TritonSettings.decision_blocks``): chunks ``c_begin .. c_end - 1`` only, a block that is
    being published while this kernel runs (``wait_published``; a chunk is read ahead once it is, its mask through
    L2), from the state the block before left (counts, sums, size and the slots' starts, ``fpos_ptr``; the call's
    initial size at ``size0_ptr``), to which the state after the block is stored.
    PREFETCH (not PIPE; ``TritonSettings.deep_merge_prefetch``): each chunk's tables also asked of L1 two chunks
    ahead (with FAST: inline PTX), where most chunks have few events: its presence moves the event loop's schedule
    (sm_90 model: 321 -> 382 cycles an event).
    FAST (a GPU; False under the interpreter): branch-free divisions and a warp ballot in inline PTX."""
    bh = tl.program_id(0)
    NC = tl.cdiv(T, C)
    j = tl.arange(0, KW)
    t_idx = tl.arange(0, C)
    zk = tl.zeros([KW], dtype=tl.int32)
    zc = tl.zeros([C], dtype=tl.int32)
    m0 = tl.load(size_ptr + bh).to(tl.int32)
    Tr = tl.load(rlen_ptr + bh)  # the row's length: its padding counts in no slot
    m = m0
    # lanes >= K hold count 1 (never read as a slot; keeps every shifted density finite)
    n = tl.load(cnt_ptr + bh * K + j, mask=j < K, other=1).to(tl.float64)
    info = tl.load(info_ptr + bh * K + j, mask=j < K, other=0.0).to(tl.float64)
    pos = tl.where(j < m0, j - m0, 2147483647)
    c_lo = 0
    c_hi = NC
    if BLOCKED:  # m0: the call's initial size (the initial slots' pseudo starts); m the size the block starts with
        c_lo = c_begin
        c_hi = c_end
        m0 = tl.load(size0_ptr + bh).to(tl.int32)
        later = (zk + c_begin) > 0  # a block after the first: the slots' starts as the block before left them
        pos = tl.where(later, tl.load(fpos_ptr + bh * KP + j, mask=(j < KP) & later, other=2147483647),
                       tl.where(j < m0, j - m0, 2147483647))
    n_open = tl.gather(n, tl.maximum(zk + m - 1, 0), 0)
    i_open = tl.gather(info, tl.maximum(zk + m - 1, 0), 0)
    # the next chunk's mask and tables where they were made beforehand (not PIPE: chunk 0's, read now)
    if PIPE:
        mask_n = tl.zeros([], dtype=tl.int64)
        none = tl.zeros([C], dtype=tl.float64)
        zw = tl.zeros([KW], dtype=tl.float64)
        tabs_n = (none.to(tl.float32), none, none, zw, zw, (zw.to(tl.float32), zw.to(tl.float32), zw))
    else:
        mask_n = tl.load(mask_ptr + bh * NC)
        tabs_n = load_closing_tables(tab_ptr, bh * NC, bh >= 0, t_idx, zk, C, AT_FIRST=False)
    guessed = tl.full((), 0, tl.int32)  # GUESSED: whether chunk c holds its guess (chunk 0 is walked)
    orbit_word = tl.zeros([], dtype=tl.int64)  # GUESSED: ``anc`` at chunk c's first token
    if GUESSED:
        if BLOCKED:  # the block's first chunk is read as a walked one (the walk publishes it first if guessed)
            ready = wait_published(ready_ptr, c_begin + tl.zeros([], tl.int32), tl.zeros([], tl.int32))
        orbit_word = tl.load(anc_ptr + (bh * NC + c_lo) * C)
    for c in range(c_lo, c_hi):
        tl.store(live_ptr + (bh * NC + c) * KP + j, pos, mask=j < KP)
        tl.store(livem_ptr + bh * NC + c, m)
        nvalid = tl.maximum(tl.minimum(tl.minimum(T, Tr) - c * C, C), 0)
        mask = mask_n
        nnx, inx, dnx, head, tail, at_first = tabs_n
        if PIPE:
            if guessed == 0:  # the carry scan decides the chunk: wait for it
                while tl.atomic_add(flag_ptr + bh, 0, sem="acquire") <= c:
                    pass
                mask = tl.load(mask_ptr + bh * NC + c, volatile=True)
                sc = pipelined_scores(mask, bh, c, NC, nvalid, t_idx, score_ptr, itab_ptr, cscore_ptr, C, FAST)
                if mask != 0:
                    nnx, inx, dnx, head, tail, at_first = chunk_closing_tables(mask, sc, nvalid, t_idx, zk, C, FAST)
                else:  # the chunk's sum alone, as chunk_closing_tables forms it
                    tail = tl.sum(valid_scores64(sc, nvalid, t_idx), 0) + tl.zeros([KW], tl.float64)
            if GUESSED:  # the next chunk's decisions and tables, read now where it holds its guess
                guessed = follows(mask, orbit_word, FAST).to(tl.int32)
                ahead = tl.where(guessed != 0, c + 1 < c_hi, False)
                if BLOCKED:
                    ready = wait_published(ready_ptr, tl.minimum(c + 1, c_hi - 1), ready)
                # by blocks the mask through L2 (the masks' lines are shared; the tables' and orbits' are the chunk's)
                mask_n = tl.load(mask_ptr + bh * NC + c + 1, mask=ahead, other=0,
                                 cache_modifier=".cg" if BLOCKED else "")
                tabs_n = load_closing_tables(tab_ptr, bh * NC + c + 1, ahead, t_idx, zk, C, AT_FIRST=True)
                orbit_word = tl.load(anc_ptr + (bh * NC + c + 1) * C, mask=c + 1 < c_hi, other=0)
        else:
            mask_n = tl.load(mask_ptr + bh * NC + c + 1, mask=c + 1 < NC, other=0)
            tabs_n = load_closing_tables(tab_ptr, bh * NC + c + 1, c + 1 < NC, t_idx, zk, C, AT_FIRST=False)
            if PREFETCH:  # and the chunk after it on its way to L1 (``TritonSettings.deep_merge_prefetch``)
                prefetch_tables(tab_ptr, bh * NC + tl.minimum(c + 2, NC - 1), j, C, FAST)
        # The two divisions a chunk with a boundary starts with, side by side and beside the next chunk's loads (in
        # their block; for a chunk without a boundary they are junk, never read): the density of the slot carried in
        # (``with_carried_open``) and, for a cache full already, the pair densities with that slot in the last lane.
        nnx2, inx2 = by_parity(nnx.to(tl.float64), C), by_parity(inx, C)
        first = tl.maximum(bit_index(mask & (-mask), FAST), 0)
        if not PIPE:  # every chunk's tables are read a chunk ahead: these three from them would hold registers
            # across the event loop (sm_90: its schedule 321 -> 399 cycles), so they are gathered here
            at_first = (first.to(tl.float32) + tl.zeros([KW], tl.float32),
                        at_position(nnx2, first, zk).to(tl.float32), at_position(inx2, first, zk))
        # (n_c, i_c): the slot the next boundary closes, first the one carried in
        n_c, i_c, dnx = with_carried_open(dnx, first, at_first, head, n_open, i_open, t_idx, zc, FAST)
        d = pair_densities(tl.where(j == K - 1, n_c, n), tl.where(j == K - 1, i_c, info), j, K, KW, FAST)
        nb = bit_count(mask, FAST)
        if nb > 0:
            rem = mask
            nadd = tl.minimum(nb, K - m)
            if nadd > 0:  # room left (rare: a cache filling up)
                for _ in range(nadd):  # close the open slot, open one
                    low = rem & (-rem)
                    rem = rem ^ low
                    uu = bit_index(low, FAST)
                    n = tl.where(j == m - 1, n_c, n)
                    info = tl.where(j == m - 1, i_c, info)
                    pos = tl.where(j == m, c * C + uu, pos)
                    m += 1
                    n_c = at_position(nnx2, uu, zk)
                    i_c = at_position(inx2, uu, zk)
                d = pair_densities(tl.where(j == K - 1, n_c, n), tl.where(j == K - 1, i_c, info), j, K, KW, FAST)
            if nadd < nb:  # full: the closing slot into the last lane, then one merge per boundary
                low = rem & (-rem)
                rem = rem ^ low
                u = bit_index(low, FAST)
                n = tl.where(j == K - 1, n_c, n)
                info = tl.where(j == K - 1, i_c, info)
                dnx2 = by_parity(dnx, C)
                for _ in range(nb - nadd):
                    tglob = c * C + u
                    n, info, pos, d, istar, dying = merge_event(
                        n, info, pos, d, at_position(nnx2, u, zk), at_position(inx2, u, zk), at_position(dnx2, u, zk),
                        tglob, j, K, KW, FAST)
                    tl.store(merged_ptr + bh * NC * C + tglob + zk, istar.to(tl.int64), mask=j == 0)
                    tl.store(death_ptr + bh * NC * C + dying, zk + tglob, mask=(dying >= 0) & (dying < 2147483647))
                    tl.store(death0_ptr + bh * K + dying + m0, zk + tglob, mask=dying < 0)
                    low = rem & (-rem)  # the next event's position, one event ahead (junk after the last)
                    rem = rem ^ low
                    u = tl.maximum(bit_index(low, FAST), 0)
            # the open slot at the chunk end was opened at its last boundary
            n_open = (zk + nvalid - highest_bit_index(mask, FAST)).to(tl.float64)
            i_open = tail
        else:
            n_open = n_open + nvalid
            i_open = i_open + tail
    is_open = j == m - 1
    tl.store(cnt_ptr + bh * K + j, tl.where(j < m, tl.where(is_open, n_open, n), 0), mask=j < K)
    tl.store(info_ptr + bh * K + j, tl.where(j < m, tl.where(is_open, i_open, info), 0.0), mask=j < K)
    tl.store(size_ptr + bh, m.to(tl.int64))
    tl.store(fpos_ptr + bh * KP + j, pos, mask=j < KP)
