"""Triton, gated delta rule: the decisions a chunk at a time from the WY tables (docs/delta-rule-chunked.md §8).

The token walk (``chunk_fwd_decide``) advances the open slot token by token: 64 dependent steps a chunk. Here only
the open slot at each chunk start ``P_c`` crosses chunks. Everything a score needs comes from the chunk's float64
tables (``wy_tables_triton``: ``kt``, ``akap``, ``khd``, ``Phi``), the slot read at token t being::

    y_t = [slot carried in] kt_t^T P_c + sum_{s in the slot's run, s < t} akap[t, s] b_s v_s

and the slot's squared norm following ``nP <- a^2 nP + 2 a x + ss`` (fresh: ``b^2 |k|^2 |v|^2``). Three stages:

1. The pair kernels (every chunk at once: ``dla_delta_pair_sums_kernel``, ``dla_delta_pair_scores_kernel`` by
   groups of starts, ``dla_delta_pair_paths_kernel``): for every in-chunk start p the scores of the tokens t > p
   against the slot opened at p up to ``next[p]``, the token that would close it (no path reads a score past it);
   from ``next`` by pointer doubling, for every entry e the starts on the path from e (a bit mask) and its last
   start. Also the run sums
   ``Y0[t] = sum_{s < t} akap[t, s] b_s v_s`` the carried slot reads, and per start the smallest ratio of the
   norm recursion's result to its terms' magnitudes (how much it cancelled).
2. ``dla_delta_guess_kernel`` (every chunk but the block's first at once): the chunk decided as the chain would
   from a guessed ``P_c``, the run since the previous chunk's last start on entry 0's path: the true slot wherever
   that chunk had a boundary and its entry's path ends where entry 0's does (section 8.3 there).
3. ``dla_delta_chain_kernel`` (one program per row, chunks in order): the carried slot's reads (float64
   tensor-core products with ``P_c``, which stays in global memory, ``dot_from_memory``), its scores and its first
   boundary e, the chunk's starts from e's path, every token's score, then ``P_{c+1} = Phi P_c + khd^T (b v)``
   (no start) or the run since the last start. After a chunk whose path converged it skips the following guessed
   chunks up to the first whose own guess for the next fails, and takes the slot after it from its guess.

The recursion cancels where the rule erases the state (section 2 there); a row where some ratio falls below
``GUARD`` is decided again by the token walk (only those rows; the launch costs the others nothing).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from ...backend import interpreting
from ..common.layout import chunk_major
from ..common.score import expm1_triton, information_score_from_decay_triton
from ..common.triton_utils import (
    FP64_DOT_K,
    chunk_tokens,
    div_f64,
    dot_from_memory,
    float64_on,
    highest_bit_index,
    load_rows,
    next_pow2,
    score_fast_f64,
    stream_besides_current,
)
from .chunk_fwd_decide import CHUNK, walk_rows
from .wy_tables_triton import score_tables_triton

GUARD = 1e-4  # a norm recursion that cancels below this share of its terms sends its row to the token walk
MAX_WIDTH = 128  # widest head (Dk and Dv) the kernels take (their float64 tiles hold whole value rows)
# The pair kernel's scores: PAIR_GROUP starts PAIR_PIECE tokens at a time ([G, PW] tiles, 4 a lane); a group of
# starts stops after the piece that holds its last boundary (run 71). H100, run 72: the forward -2 to -4.5 % against
# whole rows of two starts; shapes of 4 a lane (8 x 16, 4 x 32, 16 x 16, 2 x 64) within one launch's noise of 16 x 8.
PAIR_GROUP = 16
PAIR_PIECE = 8
# The pair kernel's sums take [BV, QW] float64 tiles of at most 1024 values (32 a lane: 16 tokens up to 64 features,
# 8 at 128; sm_90 builds of wider tiles spill).
PAIR_TOKENS, PAIR_TILE = 16, 1024
_PAIR_TILE = tl.constexpr(PAIR_TILE)  # the same, for the kernels (they read module constants as constexpr only)
CHAIN_BLOCK = 64  # the chain's Dv block: its [C, block] float64 reads stay in registers
CHAIN_STAGES = 2  # the chain's products: loads in flight
GUESS_MAXNREG = 128  # the guess kernel's registers a thread: two programs a SM (H200, run 33: 0.168 -> 0.141 ms)
_TABLE_ELEMENTS = 1 << 22  # elements of a block's largest tables ([block, R, C, C] float64, 32 MB)


@triton.jit
def _linear_step(a1, b1, a2, b2):
    """Composition of ``x -> a1 x + b1`` then ``x -> a2 x + b2`` (the norm recursion as a scan)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _take(x, idx, C: tl.constexpr):
    """``x[idx]`` for a vector of indices into a length-C vector (indices past the end read the last element)."""
    return tl.gather(x, tl.minimum(idx, C - 1), 0)


@triton.jit
def _norms_through(A, B, first, C: tl.constexpr):
    """Per row of ``[rows, C]`` tiles, the norm before each token, ``n[0] = first``, ``n[t + 1] = A[t] n[t] + B[t]``
    (a scan of the linear maps, then a one-place shift), and the norm after the last token, ``n[C]`` (``[rows, 1]``)."""
    sa, sb = tl.associative_scan((A, B), 1, _linear_step)
    through = sa * first + sb
    t = tl.arange(0, C)[None, :]
    before = tl.gather(through, tl.broadcast_to(tl.maximum(t - 1, 0), A.shape), 1)
    return tl.where(t == 0, first, before), tl.sum(tl.where(t == C - 1, through, 0.0), 1)[:, None]


@triton.jit
def _scores(nP, x, ss, a, em1, N, eps, norm_eps, FAST_F64: tl.constexpr):
    """The scores of the tokens and the ratio of each norm update to its terms' magnitudes (1: nothing cancels).
    FAST_F64: float64 divisions and square roots without slow-path branches (``score_fast_f64``)."""
    score = information_score_from_decay_triton(nP, x, ss, a, em1, N, eps, norm_eps, FAST_F64=FAST_F64)
    grown = a * a * nP + 2.0 * a * x + ss
    ratio = div_f64(grown, tl.maximum(a * a * nP + tl.abs(2.0 * a * x) + ss, 1e-300), FAST_F64)
    return score, ratio


@triton.jit
def _paths(nxt, low, path_ptr, last_ptr, low_ptr, base, C: tl.constexpr):
    """From each start's next boundary ``nxt``, by pointer doubling: per entry e the starts on its path (bit mask),
    its last start and the smallest norm ratio along it (``low``: each start's own)."""
    t = tl.arange(0, C)
    path = tl.full([C], 1, tl.int64) << t.to(tl.int64)
    J = nxt
    for _ in range(6):  # after round r, path[e] holds the starts of the first 2^r slots from e, J[e] the next one
        inside = J < C
        path = tl.where(inside, path | _take(path, J, C), path)
        low = tl.where(inside, tl.minimum(low, _take(low, J, C)), low)
        J = tl.where(inside, _take(J, J, C), J)
    bit = tl.full([C], 1, tl.int64) << t.to(tl.int64)
    last = tl.max(tl.where((path[:, None] & bit[None, :]) != 0, t[None, :], -1), 1)
    tl.store(path_ptr + base * C + t, path)
    tl.store(last_ptr + base * C + t, last)
    tl.store(low_ptr + base * C + t, low)


@triton.jit
def _start_operands(akapT_ptr, v_ptr, b_ptr, base, p, tq, vd, Dv, C: tl.constexpr):
    """Start p's operands for the tokens ``tq``: ``akap[tq, p]`` and ``b_p v_p``."""
    col = tl.load(akapT_ptr + (base * C + p) * C + tq)
    return col, tl.load(b_ptr + base * C + p) * tl.load(v_ptr + (base * C + p) * Dv + vd, mask=vd < Dv, other=0.0)


@triton.jit
def _pair_sums_step(Y, col, bv, vTq, a, b, bbkk, p, tq, pair_ptr, base, C: tl.constexpr):
    """Start p: ``Y += b_p v_p akap[t, p]``, then ``X[p, t]`` and ``SS[p, t]`` stored (see ``_pair_sums``)."""
    Y += bv[:, None] * col[None, :]
    W = vTq - a[None, :] * Y
    after = tq > p
    tl.store(pair_ptr + (base * C + p) * C + tq, b * tl.sum(Y * W, 0), mask=after)
    tl.store(pair_ptr + (base * C + tq) * C + p, bbkk * tl.sum(W * W, 0), mask=after)
    return Y


@triton.jit
def _pair_sums(akapT_ptr, v_ptr, vT_ptr, g_ptr, b_ptr, kk_ptr, pair_ptr, y0T_ptr, base, q, Dv,
               C: tl.constexpr, BV: tl.constexpr, QW: tl.constexpr):
    """Tokens ``t = q QW .. q QW + QW - 1`` against every start ``p`` before the block's end: ``X[p, t] = b_t Y.W``
    written at ``pair[p, t]`` (upper triangle) and ``SS[p, t] = b_t^2 |k_t|^2 |W|^2`` at ``pair[t, p]`` (lower), with
    ``Y = sum_{p <= s < t} akap[t, s] b_s v_s``, ``W = v_t - a_t Y``; then the run sums ``y0T`` (``Y`` at p = 0).
    The tile is ``[BV, QW]`` in one warp: the sums over the features stay within the warp (no barrier)."""
    tq = q * QW + tl.arange(0, QW)
    vd = tl.arange(0, BV)
    vTq = tl.load(vT_ptr + (base * Dv + vd[:, None]) * C + tq[None, :], mask=vd[:, None] < Dv, other=0.0)
    a = tl.exp(tl.load(g_ptr + base * C + tq))
    b = tl.load(b_ptr + base * C + tq)
    bbkk = b * b * tl.load(kk_ptr + base * C + tq)
    n_starts = (q + 1) * QW  # starts at or after the block's end add nothing here (akap[t, s] = 0 for s >= t)
    Y = tl.zeros([BV, QW], dtype=tl.float64)
    p = n_starts - 1
    col, bv = _start_operands(akapT_ptr, v_ptr, b_ptr, base, p, tq, vd, Dv, C)
    for _ in range(n_starts):  # from the last start down, the next start's operands loaded a step ahead
        col_n, bv_n = _start_operands(akapT_ptr, v_ptr, b_ptr, base, tl.maximum(p - 1, 0), tq, vd, Dv, C)
        Y = _pair_sums_step(Y, col, bv, vTq, a, b, bbkk, p, tq, pair_ptr, base, C)
        p -= 1
        col, bv = col_n, bv_n
    tl.store(y0T_ptr + (base * Dv + vd[:, None]) * C + tq[None, :], Y, mask=vd[:, None] < Dv)


@triton.jit
def _squared_value_norms(v_ptr, base, Dv, C: tl.constexpr, BD: tl.constexpr):
    """``|v_t|^2`` for the chunk's tokens (``[C]``), ``BD`` features at a time. The sum's first butterfly step may be
    contracted (sm_90: ``fma(x_L, x_L, shfl)``); the lanes still agree, as v (a 16- or 32-bit input widened to
    float64) squares exactly."""
    t = tl.arange(0, C)
    acc = tl.zeros([C], dtype=tl.float64)
    for d0 in range(0, Dv, BD):
        d = d0 + tl.arange(0, BD)
        x = tl.load(v_ptr + (base * C + t[:, None]) * Dv + d[None, :], mask=d[None, :] < Dv, other=0.0)
        acc += tl.sum(x * x, 1)
    return acc


# The pair kernel's per-token and per-start vectors, held in a scratch row each (``[5, C]`` a program) so that a
# piece of tokens loads its own (a gather from a register vector is two shuffles a float64 a lane).
PAIR_VECTORS = 5
_DECAY, _EXPM1, _FRESH, _NEXT, _LOW, _PAIR_VECTORS = (tl.constexpr(i) for i in range(PAIR_VECTORS + 1))
NEXT_ROW, LOW_ROW = _NEXT.value, _LOW.value  # the starts' next boundaries and ratios, for tools reading the rows


# Long: a group's pieces in one loop, so that it can stop at the group's last boundary.
@triton.jit
def _group_boundaries(pair_ptr, vec_ptr, bnd_ptr, base, i, n_here, tau, N, eps, norm_eps,
                      C: tl.constexpr, G: tl.constexpr, PW: tl.constexpr, OVERRIDE: tl.constexpr,
                      FAST_F64: tl.constexpr):
    """Starts ``p = i G .. i G + G - 1``: their tokens' scores, ``PW`` tokens at a time from the first after ``i G``,
    written over the sums ``X``, until each start has met its next boundary; then each start's next boundary (C:
    none) and smallest norm ratio before it, stored in its scratch rows (``vec_ptr``: ``[5, C]``). Scores past a
    start's boundary are never read (a path leaves a slot at the token that closes it), so a group stops at its last
    boundary: on a row with none, at the row's end."""
    p = i * G + tl.arange(0, G)[:, None]
    vec = vec_ptr + base * _PAIR_VECTORS * C
    fresh_p = tl.load(vec + _FRESH * C + p)
    nP = tl.zeros([G, 1], dtype=tl.float64)  # the norm before the piece's first token
    nx = tl.full([G, 1], C, tl.int32)
    low = tl.full([G, 1], 1.0, tl.float64)
    j = (i * G + 1) // PW
    while (j * PW < n_here) & (tl.max(nx) == C):
        t = j * PW + tl.arange(0, PW)[None, :]
        after = t > p
        written = after & (t < n_here)  # the sums' blocks end at the row's last token
        X = tl.load(pair_ptr + (base * C + p) * C + t, mask=written, other=0.0)
        SS = tl.load(pair_ptr + (base * C + t) * C + p, mask=written, other=0.0)
        a = tl.load(vec + _DECAY * C + t)
        before, nP = _norms_through(tl.where(after, a * a, 0.0), tl.where(after, 2.0 * a * X + SS, fresh_p), nP, PW)
        score, ratio = _scores(before, X, SS, a, tl.load(vec + _EXPM1 * C + t), N, eps, norm_eps, FAST_F64)
        if OVERRIDE:
            closes = written & (tl.load(bnd_ptr + base * C + t) != 0)
        else:
            closes = written & (score >= tau)
        nx = tl.minimum(nx, tl.min(tl.where(closes, t, C), 1)[:, None].to(tl.int32))
        low = tl.minimum(low, tl.min(tl.where(written & (t < nx), ratio, 1.0), 1)[:, None])
        tl.debug_barrier()  # the piece's sums are read before its scores replace them
        tl.store(pair_ptr + (base * C + p) * C + t, score, mask=after)
        j += 1
    tl.store(vec + _NEXT * C + p, nx.to(tl.float64))
    tl.store(vec + _LOW * C + p, low)


@triton.jit
def _pair_vectors(g_ptr, b_ptr, kk_ptr, v_ptr, vec_ptr, base, Dv, C: tl.constexpr):
    """The pair kernel's scratch rows before its scores: per token ``exp(g)``, ``expm1(2 g)`` and the squared norm
    of the slot it would open, ``b^2 |k|^2 |v|^2``; per start no boundary yet (C) and a ratio of 1."""
    t = tl.arange(0, C)
    vec = vec_ptr + base * _PAIR_VECTORS * C
    g = tl.load(g_ptr + base * C + t)
    b = tl.load(b_ptr + base * C + t)
    tl.store(vec + _DECAY * C + t, tl.exp(g))
    tl.store(vec + _EXPM1 * C + t, expm1_triton(2.0 * g))
    tl.store(vec + _FRESH * C + t,
             b * b * tl.load(kk_ptr + base * C + t) * _squared_value_norms(v_ptr, base, Dv, C, _PAIR_TILE // C))
    tl.store(vec + _NEXT * C + t, tl.full([C], C, tl.float64))
    tl.store(vec + _LOW * C + t, tl.full([C], 1.0, tl.float64))


@triton.jit
def _tokens_of_chunk(rlen_ptr, r, chunk, C: tl.constexpr):
    """Row r's tokens in its chunk ``chunk`` (0 to C)."""
    return tl.minimum(tl.maximum(tl.load(rlen_ptr + r) - chunk * C, 0), C)


# The pair stage in three launches (run 72): the sums, uniform work a (row, chunk); the scores, one program a group of
# starts, whose work varies with where the starts' boundaries fall (a group stops at its last one); the paths. One
# launch for all three held each (row, chunk) in one program: a block's launch is one wave (1,024 one-warp programs
# on 1,056 slots, 255 registers) and took as long as its slowest program, a chunk where some group of starts meets
# no boundary; by groups, four programs a chunk, the hardware's scheduler balances them (docs/performance.md "Run 72").
# H100, run 73: the forward within -1.3 to +0.3 % of the one launch, the same bits; the sums 1.22 ms of the stage's ~1.8
# at (2, 16384, 16, 64) moderate, the scores 0.55.
@triton.jit(do_not_specialize=["R", "c0", "Dv"])
def dla_delta_pair_sums_kernel(
    akapT_ptr, v_ptr, vT_ptr, g_ptr, b_ptr, kk_ptr, rlen_ptr, pair_ptr, y0T_ptr, vec_ptr, R, c0, Dv,
    C: tl.constexpr, BV: tl.constexpr, QW: tl.constexpr,
):
    """Program (row r, chunk j of the block that starts at chunk c0), one warp: the sums ``X``, ``SS`` of every
    (start, token) pair, ``QW`` tokens at a time (``_pair_sums``), held in the pair table's two triangles
    (``pair [C (p), C (t)]``), the run sums ``y0T [Dv, C]``, and the scores' scratch rows (``vec [5, C]``). One warp,
    so that each start's two sums over the features stay within the warp: the four-warp kernel before it (runs
    18-31) summed across warps through shared memory, six barriers a start, and took 4.6 ms at (2, 16384, 16, 64)
    against 2.9-3.3 (docs/performance.md, run 32)."""
    r = tl.program_id(0)
    base = tl.program_id(1) * R + r
    n_blocks = tl.cdiv(_tokens_of_chunk(rlen_ptr, r, c0 + tl.program_id(1), C), QW)
    for q in range(n_blocks):
        _pair_sums(akapT_ptr, v_ptr, vT_ptr, g_ptr, b_ptr, kk_ptr, pair_ptr, y0T_ptr, base, q, Dv, C, BV, QW)
    vd = tl.arange(0, BV)[:, None]
    for q in range(n_blocks, C // QW):  # past the row's end: no run sums (the chain reads them, masked)
        tq = q * QW + tl.arange(0, QW)[None, :]
        tl.store(y0T_ptr + (base * Dv + vd) * C + tq, tl.zeros([BV, QW], dtype=tl.float64), mask=vd < Dv)
    _pair_vectors(g_ptr, b_ptr, kk_ptr, v_ptr, vec_ptr, base, Dv, C)


@triton.jit(do_not_specialize=["R", "c0"])
def dla_delta_pair_scores_kernel(
    bnd_ptr, rlen_ptr, scalars_ptr, pair_ptr, vec_ptr, R, c0,
    C: tl.constexpr, G: tl.constexpr, PW: tl.constexpr, OVERRIDE: tl.constexpr, FAST_F64: tl.constexpr = False,
):
    """Program (row r, chunk j of the block, group i of ``G`` starts), one warp: from the sums, ``PW`` tokens at a time
    (``[G, PW]`` tiles: each (start, token)'s float64 score math in one lane), the norms, scores, next boundaries and
    cancellation ratios, the scores written over the sums up to the group's last boundary (``_group_boundaries``).
    Past it the upper triangle keeps ``X``, and the lower one ``SS`` (no reader looks there); the groups write
    disjoint entries."""
    r = tl.program_id(0)
    base = tl.program_id(1) * R + r
    i = tl.program_id(2)
    n_here = _tokens_of_chunk(rlen_ptr, r, c0 + tl.program_id(1), C)
    if i * G < n_here:
        tau = tl.load(scalars_ptr)
        eps = tl.load(scalars_ptr + 1)
        norm_eps = tl.load(scalars_ptr + 2)
        N = tl.load(scalars_ptr + 3)
        _group_boundaries(pair_ptr, vec_ptr, bnd_ptr, base, i, n_here, tau, N, eps, norm_eps, C, G, PW, OVERRIDE,
                          FAST_F64)


@triton.jit(do_not_specialize=["R"])
def dla_delta_pair_paths_kernel(vec_ptr, path_ptr, last_ptr, low_ptr, R, C: tl.constexpr):
    """Program (row r, chunk j of the block): per entry e, from each start's next boundary and ratio (``vec``),
    ``path`` (int64, bit s: s is a start on e's path), ``last`` (its last start) and ``low`` (the smallest norm ratio
    while e's slot is open)."""
    base = tl.program_id(1) * R + tl.program_id(0)
    t = tl.arange(0, C)
    vec = vec_ptr + base * _PAIR_VECTORS * C
    _paths(tl.load(vec + _NEXT * C + t).to(tl.int32), tl.load(vec + _LOW * C + t), path_ptr, last_ptr, low_ptr, base,
           C)


@triton.jit
def _entry_of_the_path(ptr, base, e, C: tl.constexpr, none):
    """Stage 1's per-entry value at entry e of the chunk (``none`` where no token opens a slot, e = C): one scalar
    load (a masked sum over the chunk's entries would be a reduction across the warps, two barriers)."""
    return tl.where(e < C, tl.load(ptr + base * C + tl.minimum(e, C - 1)), none)


@triton.jit
def _carried_reads(ktT_ptr, y0T_ptr, vT_ptr, p_row, a, base, Dk, Dv, v0,
                   C: tl.constexpr, BV: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr):
    """One Dv block (columns ``v0 ..``) of the carried slot's reads ``y = kt P + y0`` (feature-major
    ``[block, C]``; ``p_row``: the slot ``P [Dk, Dv]``): ``(sum_j y w, sum_j w w)`` over the block's features
    (``w = v - a y``)."""
    t = tl.arange(0, C)
    vd = v0 + tl.arange(0, BV)
    inside = vd[:, None] < Dv
    p_b = p_row + v0
    yT = tl.load(y0T_ptr + (base * Dv + vd[:, None]) * C + t[None, :], mask=inside, other=0.0)
    yT += dot_from_memory(p_b, 1, Dv, ktT_ptr + base * Dk * C, C, 1, p_b, Dv - v0, Dk, C, BV, C, BKD, False, STAGES)
    wT = tl.load(vT_ptr + (base * Dv + vd[:, None]) * C + t[None, :], mask=inside, other=0.0) - a[None, :] * yT
    return tl.sum(yT * wT, 0), tl.sum(wT * wT, 0)


@triton.jit
def _next_open_slot(phiT_ptr, khd_ptr, v_ptr, b_ptr, src_row, dst_row, base, first, carried, Dk, Dv,
                    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr):
    """The open slot at the next chunk start, written at ``dst_row`` (``[Dk, Dv]``; it may be ``src_row``, the slot
    at this chunk's start): the run of tokens ``first .. C - 1`` at the chunk end, ``khd^T (b v)``, plus ``Phi P``
    where the slot was carried through the chunk; ``BV`` columns at a time. Returns its ``|P|^2``."""
    kd = tl.arange(0, BK)
    run = base * C + first
    squares = tl.zeros([], dtype=tl.float64)
    for v0 in range(0, Dv, BV):
        vd = v0 + tl.arange(0, BV)
        acc = dot_from_memory(khd_ptr + run * Dk, 1, Dk, v_ptr + run * Dv + v0, Dv, 1, b_ptr + run, Dk, C - first,
                              Dv - v0, BK, BV, BKD, True, STAGES)
        if carried:
            acc += dot_from_memory(phiT_ptr + base * Dk * Dk, 1, Dk, src_row + v0, Dv, 1, src_row, Dk, Dk, Dv - v0,
                                   BK, BV, BKD, False, STAGES)
        tl.debug_barrier()  # every thread has read this block of the slot before any overwrites it
        tl.store(dst_row + kd[:, None] * Dv + vd[None, :], acc, mask=(kd[:, None] < Dk) & (vd[None, :] < Dv))
        squares += tl.sum(tl.sum(acc * acc, 1), 0)
    return squares


@triton.jit
def _chunk_decisions(ktT_ptr, y0T_ptr, vT_ptr, g_ptr, b_ptr, kk_ptr, bnd_ptr, pair_ptr, path_ptr, last_ptr, low_ptr,
                     scalars_ptr, score_ptr, start_ptr, mask_ptr, lows_ptr, p_row, base, r, c, n_tok, has, nP0,
                     T, NC, Dk, Dv, C: tl.constexpr, BV: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr,
                     OVERRIDE: tl.constexpr, FAST_F64: tl.constexpr):
    """Chunk c of row r decided from the open slot at its start (``p_row``, ``|P|^2 = nP0``; ``has``: the row has a
    slot): the carried slot's reads, scores and first boundary e, the chunk's starts from e's path, every token's
    score (stored with the starts and the chunk's boundary mask), and the chunk's smallest norm ratio (``lows``).
    Returns e (C: no token opens a slot)."""
    tau = tl.load(scalars_ptr)
    t = tl.arange(0, C)
    bit = tl.full([C], 1, tl.int64) << t.to(tl.int64)
    valid = t < n_tok - c * C
    g = tl.load(g_ptr + base * C + t)
    b = tl.load(b_ptr + base * C + t)
    kk = tl.load(kk_ptr + base * C + t)
    a = tl.exp(g)
    tl.debug_barrier()  # the slot at the chunk start is written
    x = tl.zeros([C], dtype=tl.float64)
    ww = tl.zeros([C], dtype=tl.float64)
    for v0 in range(0, Dv, BV):
        yw_b, ww_b = _carried_reads(ktT_ptr, y0T_ptr, vT_ptr, p_row, a, base, Dk, Dv, v0, C, BV, BKD, STAGES)
        x += yw_b
        ww += ww_b
    x = b * x
    ss = b * b * kk * ww
    nP = tl.reshape(_norms_through((a * a)[None, :], (2.0 * a * x + ss)[None, :], nP0, C)[0], [C])
    score, ratio = _scores(nP, x, ss, a, expm1_triton(2.0 * g), tl.load(scalars_ptr + 3), tl.load(scalars_ptr + 1),
                           tl.load(scalars_ptr + 2), FAST_F64)
    score = tl.where(has, score, 0.0)  # an empty cache's first token opens a slot, score 0
    if OVERRIDE:
        closes = tl.load(bnd_ptr + base * C + t) != 0
    else:
        closes = score >= tau
    opens = valid & (closes | ((t == 0) & (~has)))
    e = tl.min(tl.where(opens, t, C))
    # The chunk's starts: e's path; the norm ratios of the carried slot's tokens and of the path's slots.
    path = _entry_of_the_path(path_ptr, base, e, C, 0)
    low = tl.min(tl.where(valid & (t < e) & has, ratio, 1.0))
    tl.store(lows_ptr + r * NC + c, tl.minimum(low, _entry_of_the_path(low_ptr, base, e, C, 1.0)))
    # Each token's score: against the carried slot up to e, then against the start before it.
    owner = highest_bit_index(path & (bit - 1))  # the last start before t (-1: none), lane by lane
    paired = tl.load(pair_ptr + (base * C + owner) * C + t, mask=owner >= 0, other=0.0)
    tl.store(score_ptr + r * T + c * C + t, tl.where(owner >= 0, paired, score), mask=valid)
    tl.store(start_ptr + r * T + c * C + t, ((path & bit) != 0).to(tl.int8), mask=valid)
    tl.store(mask_ptr + r * NC + c, path)
    return e


@triton.jit
def _converged(last_ptr, base, e, C: tl.constexpr):
    """Whether the chunk's last start from entry e (a token opened a slot: e < C) is entry 0's: then the open slot
    at the next chunk start is the run from that start, whatever the slot carried in."""
    return (e < C) & (_entry_of_the_path(last_ptr, base, e, C, -1) == tl.load(last_ptr + base * C))


# Long: one chunk's decisions from a guessed slot, then the check that lets the chain skip it.
@triton.jit(do_not_specialize=["R", "c0", "T", "NC"])
def dla_delta_guess_kernel(
    ktT_ptr, y0T_ptr, phiT_ptr, khd_ptr, v_ptr, vT_ptr, g_ptr, b_ptr, kk_ptr, bnd_ptr, rlen_ptr, scalars_ptr,
    pair_ptr, path_ptr, last_ptr, low_ptr,
    guess_ptr, entry_ptr, right_ptr, score_ptr, start_ptr, mask_ptr, lows_ptr,
    R, c0, T, NC, Dk: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr,
    OVERRIDE: tl.constexpr, FAST_F64: tl.constexpr = False,
):
    """Program (row r, chunk j >= 1 of the block): chunk j decided from a guessed open slot at its start, every chunk
    at once. Wherever chunk j - 1's true first boundary e exists (e < C) and e's path ends at entry 0's last start
    L, the slot at chunk j's start is the run from L; the guess is that run (``guess [nb, R, Dk, Dv]``, float64,
    computed as the chain computes it: the same bits). Writes the chunk's decisions as the chain does, its first
    boundary (``entry [nb, R]``) and ``right [nb, R]``: whether the guess for chunk j + 1 holds given that this one
    does (the same test on chunk j). The chain takes a guessed chunk's decisions as they stand where the chunk
    before it was decided and converged, and decides the others again. ``Dk``, ``Dv`` are compile-time constants here
    and in the chain, so that both build the same arithmetic (run 69, H100: this kernel -16 %, the chain -9 %)."""
    r = tl.program_id(0)
    j = tl.program_id(1) + 1
    base = j * R + r
    before = base - R
    guess_row = guess_ptr + base * Dk * Dv
    nP0 = _next_open_slot(phiT_ptr, khd_ptr, v_ptr, b_ptr, guess_row, guess_row, before,
                          tl.load(last_ptr + before * C), False, Dk, Dv, C, BK, BV, BKD, STAGES)
    e = _chunk_decisions(ktT_ptr, y0T_ptr, vT_ptr, g_ptr, b_ptr, kk_ptr, bnd_ptr, pair_ptr, path_ptr, last_ptr,
                         low_ptr, scalars_ptr, score_ptr, start_ptr, mask_ptr, lows_ptr, guess_row, base, r, c0 + j,
                         tl.load(rlen_ptr + r), r >= 0, nP0, T, NC, Dk, Dv, C, BV, BKD, STAGES, OVERRIDE, FAST_F64)
    tl.store(entry_ptr + base, e)
    tl.store(right_ptr + base, _converged(last_ptr, base, e, C).to(tl.int32))


# Long: one row's sequential chain over the chunks of a block; splitting it would add a round trip per chunk.
@triton.jit(do_not_specialize=["R", "nb", "c0", "T", "NC"])
def dla_delta_chain_kernel(
    ktT_ptr, y0T_ptr, phiT_ptr, khd_ptr, v_ptr, vT_ptr, g_ptr, b_ptr, kk_ptr, bnd_ptr, rlen_ptr, scalars_ptr,
    pair_ptr, path_ptr, last_ptr, low_ptr,
    guess_ptr, entry_ptr, wrong_ptr,
    p_ptr, has_ptr, score_ptr, start_ptr, mask_ptr, lows_ptr,
    R, nb, c0, T, NC, Dk: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr,
    OVERRIDE: tl.constexpr, GUESSED: tl.constexpr, FAST_F64: tl.constexpr = False,
):
    """Program (row r): chunks c0 .. c0 + nb - 1 in order from the open slot ``P [R, Dk, Dv]`` (float64, in
    global memory, advanced in place) and ``has`` (the row has a slot). Reads the tables transposed where it
    takes their columns (``ktT [.., Dk, C]``, ``phiT``). Writes the tokens' scores ``[R, T]`` float64 and starts
    ``[R, T]`` int8, the chunks' boundary masks ``[R, NC]`` and smallest norm ratios ``lows [R, NC]``. ``BV``: the
    Dv block (the slot is read and advanced a block of columns at a time).

    ``GUESSED``: ``dla_delta_guess_kernel`` has decided chunks 1 .. nb - 1 from guessed slots. After a chunk
    decided here that converged (``_converged``), the guesses hold up to the first chunk f whose own guess for the
    next fails (``wrong [nb, R]``: the first such f from each chunk on, nb - 1 where none); those chunks' decisions
    stand and the slot after f follows from f's guessed slot and first boundary."""
    r = tl.program_id(0)
    has = tl.load(has_ptr + r) != 0
    n_tok = tl.load(rlen_ptr + r)
    p_row = p_ptr + r * Dk * Dv
    kd = tl.arange(0, BK)
    nP0 = tl.zeros([], dtype=tl.float64)  # |P|^2 of the open slot at the chunk start
    for v0 in range(0, Dv, BV):
        vd = v0 + tl.arange(0, BV)
        P = tl.load(p_row + kd[:, None] * Dv + vd[None, :], mask=(kd[:, None] < Dk) & (vd[None, :] < Dv), other=0.0)
        # Every thread decides (e) from this sum. Where a row's elements sit one a lane, sm_90 contracts P * P into
        # the row sums' first butterfly step, and the lanes' row sums may differ by an ulp; the sum over the rows then
        # crosses the warps (8 warps, tiles of at least 32 x 32) through shared memory: one value for every thread.
        nP0 += tl.sum(tl.sum(P * P, 1), 0)
    j = tl.zeros([], dtype=tl.int32)
    while j < nb:
        base = j * R + r
        e = _chunk_decisions(ktT_ptr, y0T_ptr, vT_ptr, g_ptr, b_ptr, kk_ptr, bnd_ptr, pair_ptr, path_ptr, last_ptr,
                             low_ptr, scalars_ptr, score_ptr, start_ptr, mask_ptr, lows_ptr, p_row, base, r, c0 + j,
                             n_tok, has, nP0, T, NC, Dk, Dv, C, BV, BKD, STAGES, OVERRIDE, FAST_F64)
        has = has | (e < C)
        f = j  # the chunk whose end slot comes next: this one, or the last of the guessed chunks that hold
        src = p_row
        if GUESSED:
            skip = (j + 1 < nb) & _converged(last_ptr, base, e, C)
            f = tl.where(skip, tl.load(wrong_ptr + (j + 1) * R + r, mask=skip, other=0), j)
            e = tl.where(skip, tl.load(entry_ptr + f * R + r, mask=skip, other=0), e)
            src = tl.where(skip, guess_ptr + (f * R + r) * Dk * Dv, p_row)
        base = f * R + r
        # The open slot at the next chunk start: the run since the last start (all tokens where none), plus the
        # carried slot through Phi where no token opened a slot.
        nP0 = _next_open_slot(phiT_ptr, khd_ptr, v_ptr, b_ptr, src, p_row, base,
                              _entry_of_the_path(last_ptr, base, e, C, 0), e == C, Dk, Dv, C, BK, BV, BKD, STAGES)
        j = f + 1
    tl.store(has_ptr + r, has.to(tl.int32))


def _chunked_scalars(g, beta, boundaries, row_tokens, nC):
    """Chunk-major float64 ``(g, beta)`` and int8 boundaries (None without), contiguous (a block's slices are too),
    with ``g`` and ``beta`` zero past each row's tokens: there the transitions are the identity and nothing is
    added."""
    live = (torch.arange(nC * CHUNK, device=g.device) < row_tokens.unsqueeze(-1)).view(-1, nC, CHUNK).transpose(0, 1)
    gc, bc = (chunk_major(x, CHUNK, nC, torch.float64).mul_(live) for x in (g, beta))
    bnd = None if boundaries is None else chunk_major(boundaries, CHUNK, nC, torch.int8)
    return gc, bc, bnd


@triton.jit
def dla_delta_block_rows_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, vT_ptr, kk_ptr, c0, T, H, Dk, Dv, C: tl.constexpr,
                                BK: tl.constexpr, BV: tl.constexpr):
    """Program (chunk c0 + i, row r): the chunk's keys and values, read in their dtypes, as float64 chunk-major
    rows ``kc [nb, R, C, Dk]``, ``vc [nb, R, C, Dv]`` and transposed ``vT [nb, R, Dv, C]``, and ``kk [nb, R, C] =
    |k_t|^2``; zero past T."""
    i = tl.program_id(0)
    r = tl.program_id(1)
    _, _, t, _, valid, row = chunk_tokens(r, c0 + i, T, H, C)
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BV)
    base = (i * tl.num_programs(1) + r).to(tl.int64)
    k = load_rows(k_ptr, row, valid, kd, Dk).to(tl.float64)
    tl.store(kc_ptr + (base * C + t[:, None]) * Dk + kd[None, :], k, mask=kd[None, :] < Dk)
    tl.store(kk_ptr + base * C + t, tl.sum(k * k, 1))
    v = load_rows(v_ptr, row, valid, vd, Dv).to(tl.float64)
    tl.store(vc_ptr + (base * C + t[:, None]) * Dv + vd[None, :], v, mask=vd[None, :] < Dv)
    tl.store(vT_ptr + (base * Dv + vd[None, :]) * C + t[:, None], v, mask=vd[None, :] < Dv)


def block_rows(k, v, c0: int, nb: int):
    """Chunks ``c0 .. c0 + nb - 1`` of the keys and values in float64, chunk-major ``(k [nb, R, C, Dk], v [nb, R, C,
    Dv], vT [nb, R, Dv, C], |k|^2 [nb, R, C])``, in one launch that reads the inputs once in their dtypes (float64:
    a 16-bit load feeding Triton 3.6's float64 dot fails to compile for sm_90). ``|k|^2`` sums its exact float64
    squares in another order than torch: within a few float64 ulps of :func:`torch_block_rows`' (equal where the
    squares span few enough binades to sum exactly, as 16-bit unit keys mostly do)."""
    B, T, H, Dk = k.shape
    Dv, R = v.shape[-1], B * H
    new = lambda *shape: torch.empty(nb, R, *shape, device=k.device, dtype=torch.float64)  # noqa: E731
    kc, vc, vT, kk = new(CHUNK, Dk), new(CHUNK, Dv), new(Dv, CHUNK), new(CHUNK)
    BK, BV = next_pow2(Dk), next_pow2(Dv)  # sm_90: 116 registers on 4 warps at 64 features; at 128 4 spill, 8 not
    dla_delta_block_rows_kernel[(nb, R)](k.contiguous(), v.contiguous(), kc, vc, vT, kk, c0, T, H, Dk, Dv, C=CHUNK,
                                         BK=BK, BV=BV, num_warps=4 if max(BK, BV) <= 64 else 8)
    return kc, vc, vT, kk


def torch_block_rows(k, v, nC: int):
    """:func:`block_rows` in torch, as a function of ``(c0, nb)``: the whole call's float64 chunk-major keys, values
    and ``|k|^2`` made up front (a copy per tensor, ``|k|^2`` as a product and a sum over a float64 temporary), a
    block's transposed values when it is asked for. ~0.8 ms of GPU time at (2, 16384, 16, 64) (H200, run 45, call
    10); :func:`block_rows`, whose copies are made a block at a time (never alive all at once), took the forward
    0.55 ms less (run 46)."""
    kc, vc = chunk_major(k, CHUNK, nC, torch.float64), chunk_major(v, CHUNK, nC, torch.float64)
    kk = (kc * kc).sum(-1)
    return lambda c0, nb: (kc[c0:c0 + nb], vc[c0:c0 + nb], vc[c0:c0 + nb].transpose(-1, -2).contiguous(),
                           kk[c0:c0 + nb])


def _first_wrong(right):
    """Per chunk j of a block and row, the first chunk f >= j whose guess for the next fails (``right`` 0; nb - 1
    where none does): ``[nb, R]`` int32."""
    nb = right.shape[0]
    at = torch.arange(nb, device=right.device, dtype=torch.int32).unsqueeze(-1)
    first = torch.where(right.bool(), nb - 1, at).flip(0)
    return first.cummin(0).values.flip(0).to(torch.int32).contiguous()


def _block_tables(k_b, v_b, vT, g_b, b_b, kk_b, bnd_b, row_tokens, scalars, c0, override, BV, table_warps,
                  pair_group, QW, PW, fast_f64):
    """A block of chunks' score tables and pair kernel: the chain's and guess kernel's first 16 arguments."""
    nb, R, C, _ = k_b.shape
    Dv, dev = v_b.shape[-1], k_b.device
    akapT, ktT, khd, phiT = score_tables_triton(k_b, g_b, b_b, num_warps=table_warps)
    pair = torch.empty(nb, R, C, C, device=dev, dtype=torch.float64)
    y0T = torch.empty(nb, R, Dv, C, device=dev, dtype=torch.float64)
    path = torch.empty(nb, R, C, device=dev, dtype=torch.int64)
    last = torch.empty(nb, R, C, device=dev, dtype=torch.int32)
    low = torch.empty(nb, R, C, device=dev, dtype=torch.float64)
    scratch = torch.empty(nb, R, PAIR_VECTORS, C, device=dev, dtype=torch.float64)
    dla_delta_pair_sums_kernel[(R, nb)](akapT, v_b, vT, g_b, b_b, kk_b, row_tokens, pair, y0T, scratch, R, c0, Dv, C=C,
                                        BV=BV, QW=QW, num_warps=1)
    dla_delta_pair_scores_kernel[(R, nb, C // pair_group)](bnd_b, row_tokens, scalars, pair, scratch, R, c0, C=C,
                                                           G=pair_group, PW=PW, OVERRIDE=override, FAST_F64=fast_f64,
                                                           num_warps=1)
    dla_delta_pair_paths_kernel[(R, nb)](scratch, path, last, low, R, C=C, num_warps=1)
    return ktT, y0T, phiT, khd, v_b, vT, g_b, b_b, kk_b, bnd_b, row_tokens, scalars, pair, path, last, low


def _guessed_chunks(tables, scores, starts, masks, lows, nb, c0, NC, Dk, Dv, maxnreg, settings):
    """``dla_delta_guess_kernel`` on chunks 1 .. nb - 1 of the block: ``(guessed slots, first boundaries, first
    wrong guesses)`` for the chain."""
    R, T = scores.shape
    dev = scores.device
    guesses = torch.empty(nb, R, Dk, Dv, device=dev, dtype=torch.float64)
    entry = torch.empty(nb, R, device=dev, dtype=torch.int32)
    right = torch.zeros(nb, R, device=dev, dtype=torch.int32)
    extra = {} if maxnreg is None or interpreting() else dict(maxnreg=maxnreg)
    dla_delta_guess_kernel[(R, nb - 1)](*tables, guesses, entry, right, scores, starts, masks, lows, R, c0, T, NC, Dk,
                                        Dv, **settings, **extra)
    return guesses, entry, _first_wrong(right)


def _block_rows_by(rows: str, k, v, nC: int):
    """The blocks' rows as a function of ``(c0, nb)``: ``rows`` ``"torch"`` (:func:`torch_block_rows`) or
    ``"kernel"`` (:func:`block_rows`)."""
    if rows == "torch":
        return torch_block_rows(k, v, nC)
    if rows == "kernel":
        return lambda c0, nb: block_rows(k, v, c0, nb)
    raise ValueError(f"decide_delta_rule_wy: rows must be 'torch' or 'kernel', got {rows!r}")


# Long: one loop over the blocks with the chain's stream bookkeeping; split, its state would pass as arguments.
def decide_delta_rule_wy(k, v, g, beta, *, open_states, size, tau, boundaries=None, row_lengths=None,
                         eps: float = 1e-6, norm_eps: float = 1e-6, table_elements: int = _TABLE_ELEMENTS,
                         table_warps: int = 4, chain_warps: int = 8, pair_group: int = PAIR_GROUP,
                         chain_block: int = CHAIN_BLOCK, chain_stages: int = CHAIN_STAGES,
                         concurrent: bool | None = None, pair_tokens: int | None = None, guess: bool = True,
                         guess_maxnreg: int | None = GUESS_MAXNREG, rows: str = "kernel", fast_f64: bool | None = None,
                         pair_piece: int = PAIR_PIECE):
    """:func:`chunk_fwd_decide.decide_delta_rule_triton`'s contract (same arguments and results; ``open_states``
    float64), a chunk at a time. Heads up to :data:`MAX_WIDTH` features. ``table_elements`` bounds a block of
    chunks' largest tables (the stage's memory); ``table_warps``, ``chain_warps``: the table and chain kernels' warps
    (the pair kernel runs on one); ``pair_group``: the starts the pair kernel scores at once (a power of two up to
    ``C``); ``pair_piece``: the tokens it scores at once (a power of two up to ``C``: a group of starts stops after
    the piece that holds its last boundary); ``pair_tokens``: the tokens of its sums' tiles (a power of two up to
    ``C``; default ``PAIR_TOKENS``, fewer for wide heads); ``chain_block``, ``chain_stages``: the chain's Dv block (a
    power of two) and its products' loads in flight.

    ``guess``: the chunks after each block's first decided first from guessed slots (``dla_delta_guess_kernel``,
    the same results bit for bit), the chain only after a failed guess; ``guess_maxnreg``: that kernel's registers
    a thread (None: uncapped). H200, run 33: forward (1, 65536, 16, 64) 49.6 -> 41.9 ms, (2, 16384) 23.9 -> 22.4.

    ``concurrent`` (default: on CUDA, not under the interpreter nor in a graph capture): the chain kernel, one
    program per row, on a stream of its own, so that the next block's tables and pairs (parallel over chunks,
    independent of the chain) fill the SMs it leaves idle; the results are the same either way (H200, run 30: the
    forward at (2, 16384, 16, 64) 28.6 -> 26.3 ms, at (1, 65536) 60.6 -> 50.1 ms).

    ``rows``: how each block's float64 keys, values and ``|k|^2`` are made (:func:`_block_rows_by`): ``"kernel"``
    (one launch a block) or ``"torch"`` (copies up front). H200, run 46 (``benchmarks/delta_block_rows_ab.py``, bf16,
    moderate): the forward at (2, 16384, 16, 64) 17.63 -> 17.09 ms, at (1, 65536) 35.78 -> 34.74, bitwise equal; its
    peak memory 0.99 -> 0.58 and 1.54 -> 0.58 GiB.

    ``fast_f64`` (default: ``score_fast_f64``, where the scores stay in its ranges on a GPU): the pair, guess and chain
    kernels' scores without the float64 divisions' and square roots' slow-path branches, the same values (issue #12,
    run 54)."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    R, nC, C, dev = B * H, triton.cdiv(T, CHUNK), CHUNK, k.device
    if max(Dk, Dv) > MAX_WIDTH:
        raise ValueError(f"decide_delta_rule_wy: heads of at most {MAX_WIDTH} features, got Dk={Dk}, Dv={Dv}")
    for name, n in (("pair_group", pair_group), ("pair_piece", pair_piece)):
        if n < 1 or n > C or n & (n - 1):
            raise ValueError(f"decide_delta_rule_wy: {name} must be a power of two up to {C}, got {n}")
    lengths = torch.full((B,), T, device=dev, dtype=torch.int64) if row_lengths is None else row_lengths
    row_tokens = lengths.to(dev, torch.int64).repeat_interleave(H).contiguous()
    gc, bc, bnd = _chunked_scalars(g, beta, boundaries, row_tokens, nC)
    rows_of = _block_rows_by(rows, k, v, nC)
    P = open_states.view(R, Dk, Dv)
    start_slot = P.clone()  # for the rows the token walk decides again
    has = (size.reshape(R) > 0).to(torch.int32)
    lows = torch.empty(R, nC, device=dev, dtype=torch.float64)
    scores = torch.zeros(R, T, device=dev, dtype=torch.float64)
    starts = torch.zeros(R, T, device=dev, dtype=torch.int8)
    masks = torch.zeros(R, nC, device=dev, dtype=torch.int64)
    scalars = float64_on(dev, [tau, eps, norm_eps, Dk * Dv])
    fast_f64 = score_fast_f64(eps, norm_eps, k, v, g, beta) if fast_f64 is None else fast_f64
    BK, BV = max(next_pow2(Dk), 16), max(next_pow2(Dv), 16)
    QW = pair_tokens or min(PAIR_TOKENS, PAIR_TILE // BV)
    override = bnd is not None
    block = max(1, table_elements // (R * C * C))
    # Not while a CUDA graph is captured: the blocks' tensors are kept for the chain's stream by record_stream.
    can = dev.type == "cuda" and not interpreting() and not torch.cuda.is_current_stream_capturing()
    concurrent = can if concurrent is None else concurrent and can
    if concurrent:
        main = torch.cuda.current_stream(dev)
        chain_stream = stream_besides_current(dev, priority=-1)  # the critical path
        chain_stream.wait_stream(main)  # the chain's inputs and outputs, allocated and filled above
    for c0 in range(0, nC, block):
        nb = min(nC, c0 + block) - c0
        k_b, v_b, vT, kk_b = rows_of(c0, nb)
        bnd_b = bnd[c0:c0 + nb] if override else starts
        tables = _block_tables(k_b, v_b, vT, gc[c0:c0 + nb], bc[c0:c0 + nb], kk_b, bnd_b, row_tokens, scalars, c0,
                               override, BV, table_warps, pair_group, QW, pair_piece, fast_f64)
        settings = dict(C=C, BK=BK, BV=min(BV, chain_block), BKD=FP64_DOT_K, STAGES=chain_stages, OVERRIDE=override,
                        FAST_F64=fast_f64, num_warps=chain_warps)
        guessed = guess and nb > 1
        guesses = entry = wrong = None
        if guessed:
            guesses, entry, wrong = _guessed_chunks(tables, scores, starts, masks, lows, nb, c0, nC, Dk, Dv,
                                                    guess_maxnreg, settings)
        if concurrent:  # the block's tensors, made on this stream, stay allocated until the chain has read them
            chain_stream.wait_stream(main)
            for x in tables + ((guesses, entry, wrong) if guessed else ()):
                x.record_stream(chain_stream)
        with torch.cuda.stream(chain_stream) if concurrent else nullcontext():
            dla_delta_chain_kernel[(R,)](*tables, guesses, entry, wrong, P, has, scores, starts, masks, lows, R, nb, c0,
                                         T, nC, Dk, Dv, GUESSED=guessed, **settings)
    if concurrent:
        main.wait_stream(chain_stream)
    flag = (lows < GUARD).any(-1).to(torch.int32)
    # The rows whose recursion cancelled: the token walk from the start slot (the other rows walk no token).
    walked = walk_rows(k, v, g, beta, start_slot, size.reshape(R), tau, boundaries, row_tokens * flag, eps,
                       norm_eps)
    redo = flag.bool()
    scores, starts, masks = (torch.where(redo.unsqueeze(-1), w, x) for w, x in zip(walked, (scores, starts, masks)))
    P.copy_(torch.where(redo.view(R, 1, 1), start_slot, P))
    to_bth = lambda x: x.view(B, H, T).transpose(1, 2)  # noqa: E731
    return to_bth(scores), to_bth(starts).to(torch.bool), masks
