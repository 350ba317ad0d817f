"""The merge simulation as it was before issue #11 (one reduction-heavy event per boundary), kept ONLY as the
baseline that ``benchmarks/merge_bench.py`` checks the current ``dla_merge_kernel`` against, bit for bit, and
times. Not used by the library. Same arguments as ``dla_fast.ops.scalar_decay.chunk_fwd_decide.dla_merge_kernel``
without ``KW``."""

from __future__ import annotations

import triton
import triton.language as tl

from dla_fast.ops.common.triton_utils import bit_index, mask_bits
from dla_fast.ops.scalar_decay.chunk_fwd_decide import itab_index


# Long: the merge simulation keeps the K slots in registers across all events of the call.
@triton.jit(do_not_specialize=["T"])
def dla_merge_kernel_baseline(
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
            it = tl.load(itab_ptr + itab_index(bh * NC + c, t_idx, pt, C), mask=pt >= 0, other=0.0)
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
        # the chunk's sum as the kernel forms it (since run 49): its last prefix sum where it has a boundary
        tot = tl.where(nb > 0, tl.sum(tl.where(t_idx == C - 1, cs, 0.0), 0), tl.sum(sc64, 0))
        info = tl.where(is_open, info + (tot - cprev), info)
        mask = mask_n
        sc = sc_n
    tl.store(cnt_ptr + bh * K + j, tl.where(j < m, n, 0), mask=j < K)
    tl.store(info_ptr + bh * K + j, tl.where(j < m, info, 0.0), mask=j < K)
    tl.store(size_ptr + bh, m.to(tl.int64))
    tl.store(fpos_ptr + bh * KP + j, pos)


