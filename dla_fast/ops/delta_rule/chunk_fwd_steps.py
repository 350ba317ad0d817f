"""Triton, gated delta rule: two consecutive steps' slot-walk tables composed into the tables of one step twice as
long, so that the slot walk (``chunk_fwd_states``) takes half as many steps (issue #12, run 50).

The walk is a chain: each step's states wait on the step before, and a step costs its tables' loads and six or
seven tensor-core products, each waited for, whatever its length (docs/performance.md, "Run 30": ~15 us a step
against ~2 us of products). Over two chunks ``a`` then ``b`` (the state ``S`` at ``a``'s start, ``Mf`` the merge
maps acting on the slot axis, ``Phi`` on the key axis, so they commute):

    S_end = Phi_b (Phi_a S Mf_a + kb_a^T W_a) Mf_b + kb_b^T W_b
          = (Phi_b Phi_a) S (Mf_a Mf_b) + (kb_a Phi_b^T)^T (W_a Mf_b) + kb_b^T W_b

(``W`` a chunk's values on their end slots' columns), and ``b``'s tokens read ``S_b = Phi_a S Mf_a + kb_a^T W_a``
as ``qt_b S_b``: through ``qt_b Phi_a`` applied to ``S`` with ``coef_b`` gathered back through ``a``'s merge map,
plus a part that does not depend on ``S`` at all, ``b``'s tokens reading ``a``'s through the slots they share:

    o_t += sum_{s in a} (qt_b,t . kb_a,s) coef_b[t, dest_a[s]] v_s        (t in b)

which this kernel adds to ``o`` itself. The composed step has one transition ``Phi_b Phi_a`` and one merge map:
per two chunks the walk does one transition product (three tf32 passes) instead of two, and one chain step.

FLOPs per (pair, row) at ``C = Dk = Dv = 64`` (each a three-pass product): ``Phi_b Phi_a``, ``qt_b Phi_a``, ``kb_a
Phi_b^T``, ``qt_b kb_a^T`` and the cross term's ``[C, C] @ [C, Dv]``, ~2.6 MFLOP a pass; bytes: the two chunks'
tables read (~100 KB) and the composed ones written (~100 KB).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import chunk_tokens, next_pow2
from .chunk_fwd_states import dot_f32

# Warps a program: up to 64 features 4 (sm_90: 255 registers, no stack, two programs an SM; H100, run 73: 104 -> 75 us
# a launch at (2, 16384, 16, 64) against 8 warps, one program an SM; the forward -2.4 %); wider 8 (4 not measured).
NARROW_WARPS, WIDE_WARPS = 4, 8


# K, Dk, Dv compile-time constants, as in the walk (``dla_delta_states_kernel``): sm_90 at D = 64, K = 30, 0 B of
# stack against 256 with them as arguments.
# Long: one program composes a pair's every table and adds its cross term.
@triton.jit(do_not_specialize=["R", "T", "H", "c0"])
def dla_delta_pair_steps_kernel(
    phi_ptr, kb_ptr, qt_ptr, coef_ptr, dest_f_ptr, dest_ptr, v_ptr, o_ptr,
    phi2_ptr, kb2_ptr, qt2_ptr, coef2_ptr, dest_f2_ptr, dest2_ptr,
    R, T, H, c0, K: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    CH: tl.constexpr, CS: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr,
    V_EXACT: tl.constexpr, CROSS: tl.constexpr,
):
    """Program (row r, pair p): steps ``a = 2p`` and ``b = 2p + 1`` of ``CH`` tokens each (``CH / CS`` chunks of
    ``CS``; step ``a``'s first chunk is chunk ``c0 + 2p CH / CS`` of the row) -> step ``p`` of ``2 CH`` tokens.

    In (``[n, R, ...]``, step-major, float32 unless said): ``phi [Dk, Dk]``, ``kb, qt [CH, Dk]``, ``coef [CH, K]``,
    ``dest_f [K]`` and ``dest [CH]`` int32 (-1: none); out (``[n / 2, R, ...]``): the same with ``2 CH`` tokens. ``v
    [B, T, H, Dv]`` in its dtype (``V_EXACT``: exact in tf32); ``o [B, T, H, Dv]`` float32 receives the cross term
    at ``b``'s tokens (``CROSS``; else ``v`` and ``o`` are not read)."""
    r = tl.program_id(0)
    a = 2 * tl.program_id(1) * R + r
    b = a + R
    out = tl.program_id(1) * R + r
    dk = tl.arange(0, BK)
    j = tl.arange(0, KP)
    t = tl.arange(0, CS)
    cols = dk[None, :] < Dk
    # The key-axis products a BN-wide block of output columns at a time (whole [Dk, Dk] operands, split in two,
    # would not fit an SM's shared memory at 128 features): Phi_b Phi_a by [BN, BN] blocks.
    for m0 in range(0, BK, BN):
        dm = m0 + tl.arange(0, BN)
        phi_b_rows = tl.load(phi_ptr + b * Dk * Dk + dm[:, None] * Dk + dk[None, :],
                             mask=(dm[:, None] < Dk) & cols, other=0.0)
        for n0 in range(0, BK, BN):
            dn = n0 + tl.arange(0, BN)
            phi_a_cols = tl.load(phi_ptr + a * Dk * Dk + dk[:, None] * Dk + dn[None, :],
                                 mask=(dk[:, None] < Dk) & (dn[None, :] < Dk), other=0.0)
            tl.store(phi2_ptr + out * Dk * Dk + dm[:, None] * Dk + dn[None, :],
                     dot_f32(phi_b_rows, phi_a_cols, None, False), mask=(dm[:, None] < Dk) & (dn[None, :] < Dk))
    # The merge maps compose: start slot i of a ends in dest_f_a[i] at a's end, then in dest_f_b[that] at b's.
    dest_f_a = tl.load(dest_f_ptr + a * K + j, mask=j < K, other=-1)
    tl.store(dest_f2_ptr + out * K + j, tl.load(dest_f_ptr + b * K + dest_f_a, mask=dest_f_a >= 0, other=-1),
             mask=j < K)
    first = c0 + 2 * tl.program_id(1) * (CH // CS)  # a's first chunk in the row
    for h in range(CH // CS):
        x = h * CS + t  # the tile's tokens within a half
        at_a, at_b, at_a2, at_b2 = a * CH + x, b * CH + x, out * 2 * CH + x, out * 2 * CH + CH + x
        # a's tokens: keys carried through b's transition, their slots through b's merges; b's tokens: queries
        # carried back through a's transition, weights read through a's merges.
        kb_a = tl.load(kb_ptr + at_a[:, None] * Dk + dk[None, :], mask=cols, other=0.0)
        qt_b = tl.load(qt_ptr + at_b[:, None] * Dk + dk[None, :], mask=cols, other=0.0)
        for n0 in range(0, BK, BN):
            dn = n0 + tl.arange(0, BN)
            inside = dn[None, :] < Dk
            phi_b_rows = tl.load(phi_ptr + b * Dk * Dk + dn[:, None] * Dk + dk[None, :],
                                 mask=(dn[:, None] < Dk) & cols, other=0.0)
            tl.store(kb2_ptr + at_a2[:, None] * Dk + dn[None, :], dot_f32(kb_a, tl.trans(phi_b_rows), None, False),
                     mask=inside)
            phi_a_cols = tl.load(phi_ptr + a * Dk * Dk + dk[:, None] * Dk + dn[None, :],
                                 mask=(dk[:, None] < Dk) & inside, other=0.0)
            tl.store(qt2_ptr + at_b2[:, None] * Dk + dn[None, :], dot_f32(qt_b, phi_a_cols, None, False), mask=inside)
        tl.store(qt2_ptr + at_a2[:, None] * Dk + dk[None, :],
                 tl.load(qt_ptr + at_a[:, None] * Dk + dk[None, :], mask=cols, other=0.0), mask=cols)
        tl.store(kb2_ptr + at_b2[:, None] * Dk + dk[None, :],
                 tl.load(kb_ptr + at_b[:, None] * Dk + dk[None, :], mask=cols, other=0.0), mask=cols)
        tl.store(coef2_ptr + at_a2[:, None] * K + j[None, :],
                 tl.load(coef_ptr + at_a[:, None] * K + j[None, :], mask=(j < K)[None, :]), mask=(j < K)[None, :])
        coef_b = tl.load(coef_ptr + at_b[:, None] * K + dest_f_a[None, :], mask=(dest_f_a >= 0)[None, :], other=0.0)
        tl.store(coef2_ptr + at_b2[:, None] * K + j[None, :], coef_b, mask=(j < K)[None, :])
        dest_a = tl.load(dest_ptr + at_a)
        tl.store(dest2_ptr + at_a2, tl.load(dest_f_ptr + b * K + dest_a, mask=dest_a >= 0, other=-1))
        tl.store(dest2_ptr + at_b2, tl.load(dest_ptr + at_b))
        # The cross term: tile h of b's tokens reads a's tokens (tile sa) through the slots those hold at a's end.
        _, _, _, _, valid_b, row_b = chunk_tokens(r, first + CH // CS + h, T, H, CS)
        for sa in range(CH // CS if CROSS else 0):
            at_s = a * CH + sa * CS + t
            kb_s = tl.load(kb_ptr + at_s[:, None] * Dk + dk[None, :], mask=cols, other=0.0)
            dest_s = tl.load(dest_ptr + at_s)
            weight = tl.load(coef_ptr + at_b[:, None] * K + dest_s[None, :], mask=(dest_s >= 0)[None, :], other=0.0)
            X = dot_f32(qt_b, tl.trans(kb_s), None, False) * weight  # [CS (t in b), CS (s in a)]
            _, _, _, _, valid_a, row_a = chunk_tokens(r, first + sa, T, H, CS)
            for v0 in range(0, Dv, BV):
                dv = v0 + tl.arange(0, BV)
                v_a = tl.load(v_ptr + row_a[:, None] * Dv + dv[None, :], mask=valid_a[:, None] & (dv < Dv)[None, :],
                              other=0.0).to(tl.float32)
                o_at = o_ptr + row_b[:, None] * Dv + dv[None, :]
                inside = valid_b[:, None] & (dv < Dv)[None, :]
                tl.store(o_at, dot_f32(X, v_a, tl.load(o_at, mask=inside, other=0.0), V_EXACT), mask=inside)


def pair_steps(Phi, kb, qt, coef, dest_f, dest, v, o, c0: int, *, chunk: int, v_exact: bool,
               num_warps: int | None = None, cross: bool = True):
    """Compose steps ``2p, 2p + 1`` of ``n`` (even) consecutive walk steps into step ``p`` of ``n / 2``, the first
    step starting at chunk ``c0`` of ``chunk`` tokens; adds the pairs' cross terms to ``o [B, T, H, Dv]`` (float32,
    in place). Takes and returns the tables as ``slot_states_and_reads`` reads them: ``(Phi [n, R, Dk, Dk], kb, qt
    [n, R, C, Dk], coef [n, R, C, K]`` float32, ``dest_f [n, R, K], dest [n, R, C]`` int32), ``C`` tokens a step.
    ``v [B, T, H, Dv]``: the values in their dtype (``v_exact``: exact in tf32). ``num_warps``: None for
    ``NARROW_WARPS`` up to 64 features, ``WIDE_WARPS`` wider. ``cross`` False: the tables alone (``v`` and ``o``
    unread; the backward's pairs, ``chunk_bwd_pairs``, take the cross term's adjoint apart)."""
    n, R, C, Dk = kb.shape
    K, Dv = coef.shape[-1], v.shape[-1]
    if n % 2:
        raise ValueError(f"pair_steps: expected an even number of steps, got {n}")
    m = n // 2
    new = lambda *shape, dtype=torch.float32: torch.empty(m, R, *shape, device=kb.device, dtype=dtype)  # noqa: E731
    out = (new(Dk, Dk), new(2 * C, Dk), new(2 * C, Dk), new(2 * C, K), new(K, dtype=torch.int32),
           new(2 * C, dtype=torch.int32))
    ins = (x.contiguous() for x in (Phi, kb, qt, coef, dest_f, dest, v))
    dla_delta_pair_steps_kernel[(R, m)](
        *ins, o if cross else out[0], *out, R, v.shape[1], v.shape[2], c0, K, Dk, Dv,
        CH=C, CS=chunk, BK=max(16, next_pow2(Dk)), BN=min(max(16, next_pow2(Dk)), 64), KP=max(16, next_pow2(K)),
        BV=min(max(16, next_pow2(Dv)), 64), V_EXACT=v_exact, CROSS=cross,
        num_warps=num_warps or (NARROW_WARPS if max(Dk, Dv) <= 64 else WIDE_WARPS),
        num_stages=1)  # (the loops gain nothing from more; at 128 features Triton's default 3 needs 320 KB, run 51)
    return out
