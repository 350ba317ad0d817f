#!/usr/bin/env python
"""A prototype of the merge simulation's event loop on sorted pairs (docs/performance.md, run 48; not used by the
forward): the full-cache events of one row with the pair densities also kept sorted by (density, position), so that
each event's merged pair is the first sorted lane instead of an argmin over all lanes, run beside today's argmin loop
on the same events. Both loops merge the slots by the forward's ``merge_event`` (given the merged pair); the check is
that they pick the same pair at every event. Per event the sorted pairs lose the old
pairs at istar - 1, istar and istar + 1, the pairs after istar + 1 move down one position, and the new ones (istar - 1:
d_l, istar: d_r, K - 2: the closing slot with the next) go in at their ranks; each lane pulls its entry from the lane
that holds it (the k-th kept lane) or takes a new one.

The update takes each new pair's rank by a ballot and a bit count, each lane's source as the k-th kept lane (k plus
the removed lanes up to it, three bit counts), and one pull per payload. FAST (a GPU build; False under the
interpreter): the ballots and bit counts in inline PTX, as the forward's merge kernel takes them. sm_90 (Triton 3.6,
one warp, FAST): the event loop 266 instructions against 156 for the argmin loop in the same kernel (run 48).

    TRITON_INTERPRET=1 python benchmarks/merge_sorted_pairs.py [SEEDS]
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
import triton
import triton.language as tl

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from dla_fast.ops.scalar_decay.chunk_fwd_decide import merge_event, pair_densities  # noqa: E402


@triton.jit
def less(da, pa, db, pb):
    """(da, pa) before (db, pb): density, then position."""
    return (da < db) | ((da == db) & (pa < pb))


@triton.jit
def at(x, i, j):
    """x[i] as a scalar (i a scalar lane index)."""
    return tl.sum(tl.where(j == i, x, 0), 0)


@triton.jit
def ballot(flag, j, FAST: tl.constexpr):
    """The lanes where ``flag`` is set, as an int32 word in every lane (one lane per element, KW = 32)."""
    if FAST:
        return tl.inline_asm_elementwise(
            """{
            .reg .pred p;
            setp.ne.s32 p, $1, 0;
            vote.sync.ballot.b32 $0, p, 0xffffffff;
            }""", "=r,r", [flag.to(tl.int32)], dtype=tl.int32, is_pure=True, pack=1)
    return tl.zeros_like(j) + tl.sum(tl.where(flag, tl.full(j.shape, 1, tl.int32) << j, 0), 0)


@triton.jit
def popc(x, FAST: tl.constexpr):
    """Set bits of an int32 word."""
    if FAST:
        return tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True, pack=1)
    c = x - ((x >> 1) & 0x55555555)
    c = (c & 0x33333333) + ((c >> 2) & 0x33333333)
    c = (c + (c >> 4)) & 0x0F0F0F0F
    return ((c * 0x01010101) >> 24) & 0xFF


@triton.jit
def sorted_update(sd, sp, d, istar, j, K, KW: tl.constexpr, FAST: tl.constexpr = False):
    """The sorted pairs after the merge at istar (``d``: the new pair densities by position), by ballots and bit
    counts: each new pair's rank, each lane's source (the k-th kept lane), one pull per payload."""
    valid = sp < K - 1
    removed = valid & (sp >= istar - 1) & (sp <= istar + 1)
    kept = valid & ~removed
    sp2 = tl.where(valid & (sp > istar + 1), sp - 1, sp)
    has1 = istar >= 1
    has3 = istar < K - 2
    d1 = tl.gather(d, tl.maximum(istar - 1, 0) + 0 * j, 0)
    d2 = tl.gather(d, istar + 0 * j, 0)
    d3 = tl.gather(d, (K - 2) + 0 * j, 0)
    p1 = istar - 1
    p2 = istar
    p3 = K - 2
    # the new pairs' order among themselves: their positions differ, so one of each two comes first
    l12 = less(d1, p1, d2, p2)
    l13 = less(d1, p1, d3, p3)
    l23 = less(d2, p2, d3, p3)
    r1 = popc(ballot(kept & less(sd, sp2, d1, p1), j, FAST), FAST) + (has3 & ~l13).to(tl.int32) + (~l12).to(tl.int32)
    r2 = popc(ballot(kept & less(sd, sp2, d2, p2), j, FAST), FAST) + (has1 & l12).to(tl.int32) \
        + (has3 & ~l23).to(tl.int32)
    r3 = popc(ballot(kept & less(sd, sp2, d3, p3), j, FAST), FAST) + (has1 & l13).to(tl.int32) + l23.to(tl.int32)
    r1 = tl.where(has1, r1, -1)
    r3 = tl.where(has3, r3, -1)
    k = j - ((r1 >= 0) & (r1 < j)).to(tl.int32) - (r2 < j).to(tl.int32) - ((r3 >= 0) & (r3 < j)).to(tl.int32)
    R = ballot(removed, j, FAST)  # the removed lanes: the k-th kept lane is k plus the removed ones up to it
    s = k
    for _ in tl.static_range(3):
        upto = tl.where(s >= 31, -1, (tl.full(j.shape, 2, tl.int32) << s) - 1)
        s = k + popc(R & upto, FAST)
    s = tl.minimum(s, KW - 1)
    nd = tl.gather(sd, s, 0)
    np_ = tl.gather(sp2, s, 0)
    nd = tl.where(j == r1, d1, tl.where(j == r2, d2, tl.where(j == r3, d3, nd)))
    np_ = tl.where(j == r1, p1, tl.where(j == r2, p2, tl.where(j == r3, p3, np_)))
    sentinel = j >= K - 1
    return tl.where(sentinel, sd, nd), tl.where(sentinel, sp, np_)


@triton.jit
def events_kernel(n_ptr, info_ptr, nn_ptr, in_ptr, out_ptr, fn_ptr, fi_ptr, K, E, KW: tl.constexpr,
                  SORTED: tl.constexpr, FAST: tl.constexpr = False):
    j = tl.arange(0, KW)
    n = tl.load(n_ptr + j, mask=j < K, other=1)
    info = tl.load(info_ptr + j, mask=j < K, other=0.0)
    pos = j
    d = pair_densities(n, info, j, K, KW, False)
    if SORTED:  # the initial sort: each pair's rank by comparisons with all
        jj = tl.arange(0, KW)[:, None]
        rank = tl.sum(less(tl.reshape(d, (1, KW)), tl.reshape(j, (1, KW)), d[:, None], jj).to(tl.int32), 1)
        # inverse: lane r takes the pair whose rank is r
        src = tl.sum(tl.where(rank[None, :] == jj, tl.reshape(j, (1, KW)), 0), 1)
        sd = tl.gather(d, src, 0)
        sp = tl.where(j < K - 1, tl.gather(j, src, 0), KW + j)
    for e in range(E):
        n_next = tl.load(nn_ptr + e)
        i_next = tl.load(in_ptr + e)
        last = tl.sum(tl.where(j == K - 1, info, 0.0), 0)
        nl = tl.sum(tl.where(j == K - 1, n, 0), 0)
        d_next = (last + i_next) / (nl + n_next).to(tl.float64)
        if SORTED:  # the first sorted pair
            istar = tl.gather(sp, 0 * j, 0)
            n, info, pos, d, _, _ = merge_event(n, info, pos, d, n_next, i_next, d_next, e, j, K, KW, FAST, istar)
            sd, sp = sorted_update(sd, sp, d, istar, j, K, KW, FAST)
        else:  # the forward's loop: the argmin
            n, info, pos, d, merged, _ = merge_event(n, info, pos, d, n_next, i_next, d_next, e, j, K, KW, FAST)
            istar = merged
        tl.store(out_ptr + e + 0 * j, istar, mask=j == 0)
    tl.store(fn_ptr + j, n, mask=j < K)
    tl.store(fi_ptr + j, info, mask=j < K)


def run(seed, K=30, E=300, grid=True):
    """Both loops on one drawn row (K slots, E events; ``grid``: scores on a grid of eighths, so that densities tie):
    ``(same, {sorted?: (merged pairs, final counts, final sums)})``."""
    rng = np.random.default_rng(seed)
    n0 = rng.integers(1, 6, K).astype(np.int64)
    sc = (rng.integers(0, 8, K) / 8.0) if grid else rng.random(K)
    info0 = n0 * sc
    nn = rng.integers(1, 4, E).astype(np.int64)
    inn = nn * ((rng.integers(0, 8, E) / 8.0) if grid else rng.random(E))
    outs = {}
    for mode in (False, True):
        out = torch.zeros(E, dtype=torch.int32)
        fn = torch.zeros(K, dtype=torch.int64)
        fi = torch.zeros(K, dtype=torch.float64)
        events_kernel[(1,)](torch.tensor(n0), torch.tensor(info0), torch.tensor(nn), torch.tensor(inn), out, fn, fi,
                            K, E, KW=32, SORTED=mode)
        outs[mode] = (out.numpy(), fn.numpy(), fi.numpy())
    same = all(np.array_equal(a, b) for a, b in zip(outs[False], outs[True]))
    return same, outs


if __name__ == "__main__":
    seeds = range(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
    for s in seeds:
        for grid in (True, False):
            same, outs = run(s, grid=grid)
            first = None if same else int(np.argmax(outs[False][0] != outs[True][0]))
            print(f"seed {s} grid {grid}: {'same' if same else 'DIFFERENT at event ' + str(first)}; "
                  f"istar histogram {np.bincount(outs[False][0], minlength=30)[:30].tolist()}")
