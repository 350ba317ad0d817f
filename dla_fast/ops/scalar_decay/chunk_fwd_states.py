"""Triton forward, scalar decay, the states: prefix states, surviving starts' states, the final cache.

Stages 4-5 of ``chunk_fwd`` (docs/triton.md), shared with the backward (``chunk_bwd`` recomputes them).
The output is *telescoped* on the single-state backbone's prefix state ``H(t)`` (every slot decays alike,
so a closed slot is a difference of two prefix states): ``hs`` holds ``H`` before every chunk, ``bst`` the
prefix state before every slot start that outlives its chunk, and the final cache is assembled from them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ...settings import DEFAULT_SETTINGS, TritonSettings
from ..common.triton_utils import (
    bit_index,
    block_sizes,
    cached,
    chunk_tokens,
    decay_to_end,
    dot_state_update,
    load_rows,
    load_scalars,
    load_state,
    mask_bits,
    store_state,
    values_on_host_later,
)

CHUNK = 64  # tokens per chunk of the Triton paths (the boundary bitmasks are one int64 per chunk)


@triton.jit(do_not_specialize=["T"])
def dla_chunkstate_kernel(
    k_ptr, v_ptr, g_ptr, hs_ptr, gsum_ptr,
    T, H, Dk, Dv,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
):
    """Program (chunk c, bh, Dv block): u_c = sum_{s in c} exp(Gc[last] - Gc[s]) k_s v_s^T, written to
    hs[c + 1] (the scan kernel turns it into H at the chunk end), and (Dv block 0) the chunk's sum of g in
    float64 to ``gsum[bh, c]``. 2 C Dk BV FLOPs (x3 split)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    vb = tl.program_id(2)
    NC = tl.cdiv(T, C)
    b, h, t_idx, tok, valid, trow = chunk_tokens(bh, c, T, H, C)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    kc = load_rows(k_ptr, trow, valid, kd, Dk)
    vc = load_rows(v_ptr, trow, valid, vd, Dv)
    g = load_scalars(g_ptr, trow, valid)
    wd, _ = decay_to_end(g)
    w = tl.where(valid, wd, 0.0)
    kw = kc.to(tl.float32) * w[:, None]
    u = dot_state_update(kw, vc, SPLIT, PREC)
    store_state(hs_ptr + (bh * (NC + 1) + c + 1) * Dk * Dv, u, kd, vd, Dk, Dv)
    if vb == 0:
        tl.store(gsum_ptr + bh * NC + c, tl.sum(g.to(tl.float64), 0))


@triton.jit(do_not_specialize=["T"])
def dla_hscan_kernel(
    h0_ptr, hs_ptr, gsum_ptr, gs_ptr, T, DD,
    C: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (bh, block of BLOCK state entries): H(c0 - 1) for every chunk, in place:
    hs[0] = h0, hs[c + 1] = exp(sum of g over chunk c) hs[c] + u_c. Bandwidth-bound (8 bytes per entry
    per chunk); every entry of the state is its own independent recurrence. Block 0 also writes ``gs``, the
    float64 sums of g before every chunk (the running sum of the chunk sums ``gsum``)."""
    bh = tl.program_id(0)
    blk = tl.program_id(1)
    NC = tl.cdiv(T, C)
    e = blk * BLOCK + tl.arange(0, BLOCK)
    em = e < DD
    S = tl.load(h0_ptr + bh * DD + e, mask=em, other=0.0)
    tl.store(hs_ptr + bh * (NC + 1) * DD + e, S, mask=em)
    g0 = tl.zeros([], dtype=tl.float64)
    if blk == 0:
        tl.store(gs_ptr + bh * (NC + 1), g0)
    for c in range(NC):
        g1 = g0 + tl.load(gsum_ptr + bh * NC + c)
        if blk == 0:
            tl.store(gs_ptr + bh * (NC + 1) + c + 1, g1)
        u = tl.load(hs_ptr + (bh * (NC + 1) + c + 1) * DD + e, mask=em, other=0.0)
        S = tl.exp(g1 - g0).to(tl.float32) * S + u
        tl.store(hs_ptr + (bh * (NC + 1) + c + 1) * DD + e, S, mask=em)
        g0 = g1


@triton.jit
def surviving_in_chunk(mask_ptr, death_ptr, bh, c, NC, T, C: tl.constexpr):
    """``[C]`` bool: the chunk's slot starts still live at its end (later chunks read their prefix states)."""
    t_idx = tl.arange(0, C)
    tok = c * C + t_idx
    bvec = mask_bits(tl.load(mask_ptr + bh * NC + c), t_idx)
    dth = tl.load(death_ptr + bh * NC * C + tok)
    return bvec & (dth >= (c + 1) * C) & (tok < T)


@triton.jit(do_not_specialize=["T"])
def dla_survivor_counts_kernel(mask_ptr, death_ptr, off_ptr, per_chunk_ptr, T, C: tl.constexpr):
    """Program (chunk c, bh): the chunk's number of surviving starts, at
    ``off[1 + bh * NC + c]`` (a cumulative sum then makes ``off`` the chunks' offsets in the compact order) and added
    to ``per_chunk[c]`` (zeroed: the count over all rows); the program of chunk 0 and row 0 also writes ``off[0] =
    0``."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    NC = tl.cdiv(T, C)
    n = tl.sum(surviving_in_chunk(mask_ptr, death_ptr, bh, c, NC, T, C).to(tl.int64), 0)
    tl.store(off_ptr + 1 + bh * NC + c, n)
    if n > 0:
        tl.atomic_add(per_chunk_ptr + c, n)
    if (c == 0) & (bh == 0):
        tl.store(off_ptr, tl.zeros([], dtype=tl.int64))


@triton.jit(do_not_specialize=["T"])
def dla_bstate_kernel(
    k_ptr, v_ptr, g_ptr, hs_ptr, mask_ptr, death_ptr, off_ptr, bidx_ptr, bst_ptr,
    T, H, Dk, Dv,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    STATES: tl.constexpr = True,
):
    """Program (chunk c, bh, Dv block): for every slot start a of this chunk still live at
    the chunk end (so that later chunks may read it), the prefix state before a decayed to the chunk end,
    B_a = e^{Gc[last]} H(c0-1) + sum_{s < a} e^{Gc[last] - Gc[s]} k_s v_s^T, at bst[bidx[a]] (compact: the
    chunk's offset ``off[bh * NC + c]`` plus a's rank among the chunk's survivors; the Dv block 0 writes the
    chunk's ``bidx``, -1 where no start survives). Later chunks read it with one q^T B product. 2 C Dk BV FLOPs
    and Dk BV elements written per start; 16-bit storage and dots for 16-bit inputs (B only feeds the output).
    ``STATES`` false: ``bidx`` only (the grouped reads need no state)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    vb = tl.program_id(2)
    NC = tl.cdiv(T, C)
    b, h, t_idx, tok, valid, trow = chunk_tokens(bh, c, T, H, C)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    surv = surviving_in_chunk(mask_ptr, death_ptr, bh, c, NC, T, C)
    base = tl.load(off_ptr + bh * NC + c)
    if vb == 0:
        rank = tl.cumsum(surv.to(tl.int32), 0) - 1
        tl.store(bidx_ptr + bh * NC * C + tok, tl.where(surv, base + rank, -1).to(tl.int32))
    if STATES:
        nsurv = tl.sum(surv.to(tl.int32), 0)
        if nsurv > 0:
            kc = load_rows(k_ptr, trow, valid, kd, Dk)
            vc = load_rows(v_ptr, trow, valid, vd, Dv)
            g = load_scalars(g_ptr, trow, valid)
            Gc = tl.cumsum(g, 0)
            Glast = tl.sum(g, 0)
            w = tl.where(valid, tl.exp(tl.minimum(Glast - Gc, 0.0)), 0.0)
            Hc = tl.exp(Glast) * load_state(hs_ptr + (bh * (NC + 1) + c) * Dk * Dv, kd, vd, Dk, Dv)
            kf = kc.to(tl.float32)
            rem = tl.sum(tl.where(surv, tl.full([C], 1, tl.int64) << t_idx.to(tl.int64), 0), 0)
            for i in range(nsurv):  # lowest position first: the compact order
                low = rem & (-rem)
                rem = rem ^ low
                a = bit_index(low)
                kw = kf * tl.where(t_idx < a, w, 0.0)[:, None]
                if LOWP:
                    Bm = Hc + tl.dot(tl.trans(kw.to(vc.dtype)), vc)
                else:
                    Bm = Hc + tl.dot(tl.trans(kw), vc.to(tl.float32), input_precision=PREC)
                store_state(bst_ptr + (base + i) * Dk * Dv, Bm, kd, vd, Dk, Dv)


@triton.jit
def prefix_before(k_ptr, v_ptr, g_ptr, hs_ptr, gs_ptr, hinit_ptr, bh, b, h, a, m0, gtot, T, H, Dk, Dv, K, NC,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
                   HAS_INIT: tl.constexpr, vb):
    """H(a - 1) decayed to T-1 (a pseudo start a < 0 indexes the initial slots), [BK, BV] fp32."""
    t_idx = tl.arange(0, C)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    out = tl.zeros([BK, BV], dtype=tl.float32)
    if a < 0:
        if HAS_INIT:
            out = tl.exp(gtot).to(tl.float32) * load_state(hinit_ptr + (bh * K + a + m0) * Dk * Dv, kd, vd, Dk, Dv)
    else:
        cp = a // C
        aloc = a - cp * C
        tok = cp * C + t_idx
        trow = (b * T + tok) * H + h
        pm = t_idx < aloc
        kc = load_rows(k_ptr, trow, pm, kd, Dk)
        vc = load_rows(v_ptr, trow, pm, vd, Dv)
        g = load_scalars(g_ptr, trow, tok < T)
        wd, eGl = decay_to_end(g)
        w = tl.where(pm, wd, 0.0)
        kw = kc.to(tl.float32) * w[:, None]
        Hc = eGl * load_state(hs_ptr + (bh * (NC + 1) + cp) * Dk * Dv, kd, vd, Dk, Dv)
        X = Hc + dot_state_update(kw, vc, SPLIT, PREC)
        out = tl.exp(gtot - tl.load(gs_ptr + bh * (NC + 1) + cp + 1)).to(tl.float32) * X
    return out


@triton.jit(do_not_specialize=["T"])
def dla_final_kernel(
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
    m = tl.load(size_ptr + bh)
    m0 = tl.load(m0_ptr + bh)
    gtot = tl.load(gs_ptr + bh * (NC + 1) + NC)
    out = tl.zeros([BK, BV], dtype=tl.float32)
    if i == m - 1:
        out = load_state(p_ptr + bh * Dk * Dv, kd, vd, Dk, Dv)
    elif i < m - 1:
        a1 = tl.load(fpos_ptr + bh * KP + i + 1)
        out = prefix_before(k_ptr, v_ptr, g_ptr, hs_ptr, gs_ptr, hinit_ptr, bh, b, h, a1, m0, gtot, T, H, Dk, Dv, K, NC,
                             C, BK, BV, SPLIT, PREC, HAS_INIT, vb)
        if i > 0:
            a0 = tl.load(fpos_ptr + bh * KP + i)
            out -= prefix_before(k_ptr, v_ptr, g_ptr, hs_ptr, gs_ptr, hinit_ptr, bh, b, h, a0, m0, gtot, T, H, Dk, Dv,
                                 K,
                                  NC, C, BK, BV, SPLIT, PREC, HAS_INIT, vb)
    store_state(out_ptr + (bh * K + i) * Dk * Dv, out, kd, vd, Dk, Dv)



# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


def initial_prefixes(states0, BH: int, Dk: int, Dv: int, dev, zeros=()):
    """``(h0, hinit)``: the sum of the initial slots (the prefix state before the call) and, per initial
    slot i, the sum of the slots before it (its pseudo start's prefix state); without a cache zeros: ``zeros[0]``
    (a caller's zeroed ``[BH, Dk, Dv]`` float32) or made here."""
    if states0 is None:
        h0 = zeros[0] if zeros else torch.zeros(BH, Dk, Dv, device=dev, dtype=torch.float32)
        return h0, h0  # hinit is never read: no pseudo starts without an initial cache
    return states0.sum(1).contiguous(), (torch.cumsum(states0, 1) - states0).contiguous()


def prefix_states(k, v, g, h0, *, split: bool, prec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hs, gs)`` on the current stream: ``hs [BH, NC + 1, Dk, Dv]`` float32, the single-state prefix state
    H(c0 - 1) before every chunk (and after the last); ``gs [BH, NC + 1]`` float64, the sum of ``g`` before
    each chunk (and over the whole call, last)."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    NC = triton.cdiv(T, CHUNK)
    BK, BVF, BV = block_sizes(Dk, Dv)
    hs = torch.empty(B * H, NC + 1, Dk, Dv, device=k.device, dtype=torch.float32)
    gs = torch.empty(B * H, NC + 1, device=k.device, dtype=torch.float64)
    gsum = torch.empty(B * H, NC, device=k.device, dtype=torch.float64)
    HBLK = 1024
    cached(dla_chunkstate_kernel)[(NC, B * H, triton.cdiv(BVF, BV))](
        k, v, g, hs, gsum, T, H, Dk, Dv, C=CHUNK, BK=BK, BV=BV, SPLIT=split, PREC=prec, num_warps=4)
    cached(dla_hscan_kernel)[(B * H, triton.cdiv(Dk * Dv, HBLK))](
        h0, hs, gsum, gs, T, Dk * Dv, C=CHUNK, BLOCK=HBLK, num_warps=4)
    return hs, gs


def start_bits(masks: torch.Tensor) -> torch.Tensor:
    """``[BH, NC * C]`` bool: the per-chunk boundary bitmasks ``masks [BH, NC]`` unpacked per token."""
    BH, NC = masks.shape
    shifts = torch.arange(CHUNK, device=masks.device, dtype=torch.int64)
    return ((masks[:, :, None] >> shifts) & 1).bool().reshape(BH, NC * CHUNK)


class Survivors(NamedTuple):
    """The slot starts that outlive their chunk (later chunks read their prefix states): ``off [BH * NC + 1]``
    int64, each (row, chunk)'s offset in their compact (row-major) order; ``count`` their number; ``per_chunk`` (host
    ints, ``[NC]``) how many each chunk has over all rows (the backward's ranges of chunks are sized from it)."""

    off: torch.Tensor
    count: int
    per_chunk: list


def surviving_starts(masks, death, T: int, readback=None, meanwhile=None):
    """``(Survivors, the rest of readback's values)``. The per-chunk counts (their sum sizes the start states: the
    forward's host synchronisation, with one more where the carry scan takes deeper guesses) are added into
    ``readback[:NC]`` (zeroed int64 ``[NC + n]``, or None: ``[NC]`` made here), which is read back whole in one copy:
    its last ``n`` entries hold the caller's deferred values (the forward's value checks), returned as a list.
    ``meanwhile`` (a callable, or None) launches work that the read-back need not wait for: on CUDA it is queued
    after the copy, so the GPU runs it while the host waits and then prepares the next launches."""
    BH, NC = masks.shape
    values = torch.zeros(NC, device=masks.device, dtype=torch.int64) if readback is None else readback
    off = torch.empty(BH * NC + 1, device=masks.device, dtype=torch.int64)
    cached(dla_survivor_counts_kernel)[(NC, BH)](masks, death, off, values, T, C=CHUNK, num_warps=1)
    off.cumsum_(0)
    copied = values_on_host_later(values)  # the copy queued before meanwhile's work, waited for alone
    if meanwhile is not None:
        meanwhile()
    values = copied().tolist()
    return Survivors(off, sum(values[:NC]), values[:NC]), values[NC:]


def start_states(k, v, g, hs, masks, death, off, nsurv: int, hinit, K: int, *, lowp: bool, prec: str,
                 settings: TritonSettings = DEFAULT_SETTINGS, states: bool = True):
    """``(bst, bidx)``: the compact prefix states ``bst [nsurv (+ BH K), Dk, Dv]`` of the surviving starts
    (``surviving_starts``), each decayed to its chunk end, then the initial slots' pseudo starts (``hinit``,
    reference: the call's start); ``bidx [BH, NC * C]`` int32 each surviving start's index in ``bst``, -1
    elsewhere. ``settings``: its launch overrides. ``states`` false (grouped reads): ``bst`` holds only the pseudo
    starts' states (a placeholder without ``hinit``)."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    BH, NC = masks.shape
    BK, BVF, BV = block_sizes(Dk, Dv)
    ninit = BH * K if hinit is not None else 0
    nbst = nsurv if states else 0
    bst = torch.empty(max(nbst + ninit, 1), Dk, Dv, device=k.device, dtype=k.dtype if lowp else torch.float32)
    bidx = torch.empty(BH, NC * CHUNK, device=k.device, dtype=torch.int32)
    if ninit:
        bst[nbst:] = hinit.reshape(BH * K, Dk, Dv).to(bst.dtype)
    # 16-bit inputs: 4 warps. Dk = 128: two programs per SM (sm_90: 255 registers x 128 threads; 8 warps took 147 x
    # 256, one program), 5-6 % off the whole forward at (8, 4096, 16, 128) (docs/benchmarks.md run 15, call 6);
    # Dk = 64: 2-5 % off the forward at every 64-feature cell (run 29, call 1). float32 keeps 8 (4 spill 600 B).
    warps = 4 if lowp else 8
    grid = (NC, BH, triton.cdiv(BVF, BV) if states else 1)
    cached(dla_bstate_kernel)[grid](k, v, g, hs, masks, death, off, bidx, bst, T, H, Dk, Dv, C=CHUNK, BK=BK, BV=BV,
                                    LOWP=lowp, PREC=prec, STATES=states,
                                    **settings.launch(dla_bstate_kernel, num_warps=warps))
    return bst, bidx


def final_states(k, v, g, hs, gs, fpos, size, hinit, size0, P, K: int, *, has_init: bool, split: bool, prec: str):
    """The final cache's states ``[BH, K, Dk, Dv]`` float32: the open slot from the carry scan (``P``), closed
    slots as differences of prefix states, unused slots 0."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    BH = B * H
    BK, BVF, BV = block_sizes(Dk, Dv)
    out = torch.empty(BH, K, Dk, Dv, device=k.device, dtype=torch.float32)
    cached(dla_final_kernel)[(BH, K, triton.cdiv(BVF, BV))](
        k, v, g, hs, gs, fpos, size, hinit, size0, P, out, T, H, Dk, Dv, K,
        C=CHUNK, BK=BK, BV=BV, KP=fpos.shape[1], SPLIT=split, PREC=prec, HAS_INIT=has_init, num_warps=4,
    )
    return out
