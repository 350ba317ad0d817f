"""Triton decode step of DLA, scalar-decay backbone: one token per (batch, head) against a K-slot cache, in place.

Two kernels, so that the cache is updated in place (a CUDA graph can capture and replay the step) and the
slot stream is spread over more programs than there are (batch, head) rows:

1. ``dla_step_decide_kernel`` (grid B*H): reads the open slot (all of Dv: the score needs ``||P||^2`` and
   ``k^T P v``), decides (score, boundary, the lowest-density merge of a full cache, tie: the oldest pair),
   updates the counts, information sums and size in place and writes a four-integer plan per row
   ``(m, start, merged index, m_new)``. Bytes: ``4 Dk Dv`` per row.
2. ``dla_step_update_kernel`` (grid B*H x Dv blocks): streams its Dv block of every slot once, in place and
   in ascending slot order: the new slot j is ``a (S[src] (+ S[src + 1] for the merged pair)) (+ k v^T)``
   with ``src >= j``, so every slot is read before any later slot's write could touch it; then the read
   ``o = sum_j lambda[j] q^T S_{m-1-j}`` from the registers. Bytes per row: ``4 K Dk Dv`` read and written;
   FLOPs ``~4 K Dk Dv``. Bandwidth-bound by design.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.score import information_score_triton
from ..common.triton_utils import load_state, next_pow2, store_state
from .chunk_fwd import check_dims


# Long: one program's decision for its row: score, merge choice, and the scalar cache updated in place.
@triton.jit
def dla_step_decide_kernel(
    k_ptr, v_ptr, g_ptr, bnd_ptr, s_ptr, cnt_ptr, info_ptr, size_ptr,
    plan_ptr, score_ptr, start_ptr, merged_ptr,
    K, Dk, Dv, tau, eps, norm_eps,
    BK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr, KP: tl.constexpr, OVERRIDE: tl.constexpr,
):
    bh = tl.program_id(0)
    kd = tl.arange(0, BK)
    j = tl.arange(0, KP)
    kf = tl.load(k_ptr + bh * Dk + kd, mask=kd < Dk, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + bh).to(tl.float32)
    m = tl.load(size_ptr + bh).to(tl.int32)
    n = tl.load(cnt_ptr + bh * K + j, mask=j < K, other=0).to(tl.int64)
    inf = tl.load(info_ptr + bh * K + j, mask=j < K, other=0.0).to(tl.float64)
    # 1. The open slot's three scalars, a Dv block at a time (an empty cache reads slot 0, all zero).
    open_slot = s_ptr + (bh * K + tl.maximum(m - 1, 0)) * Dk * Dv
    nP = 0.0
    x = 0.0
    vv = 0.0
    for vb in tl.static_range(NVB):
        vd = vb * BV + tl.arange(0, BV)
        vf = tl.load(v_ptr + bh * Dv + vd, mask=vd < Dv, other=0.0).to(tl.float32)
        P = load_state(open_slot, kd, vd, Dk, Dv)
        nP += tl.sum(tl.sum(P * P, 1), 0)
        x += tl.sum(tl.sum(P * kf[:, None] * vf[None, :], 1), 0)
        vv += tl.sum(vf * vf, 0)
    ss = tl.sum(kf * kf, 0) * vv
    N = (Dk * Dv).to(tl.float32)
    score = tl.where(m > 0, information_score_triton(nP, x, ss, g, N, eps, norm_eps), 0.0)
    if OVERRIDE:
        start = (tl.load(bnd_ptr + bh) != 0) | (m == 0)
    else:
        start = (score >= tau) | (m == 0)
    full = start & (m == K)
    # 2. The merge decision (float64 densities, tie: the oldest pair).
    shift_idx = tl.minimum(j + 1, KP - 1)
    n1 = tl.gather(n, shift_idx, 0)
    i1 = tl.gather(inf, shift_idx, 0)
    dens = tl.where(j < K - 1, (inf + i1) / tl.maximum(n + n1, 1).to(tl.float64), float("inf"))
    dmin = tl.min(dens, 0)
    istar = tl.where(full, tl.min(tl.where(dens == dmin, j, KP), 0), -1)
    m_new = tl.where(start, tl.minimum(m + 1, K), m)
    # 3. Counts and information sums after the step (scalars broadcast explicitly: the interpreter wants it).
    fullv = (j * 0 + full.to(tl.int32)) != 0
    startv = (j * 0 + start.to(tl.int32)) != 0
    n_new = tl.where(fullv & (j > istar), n1, n)
    i_new = tl.where(fullv & (j > istar), i1, inf)
    n_new = tl.where(fullv & (j == istar), n + n1, n_new)
    i_new = tl.where(fullv & (j == istar), inf + i1, i_new)
    opened = startv & (j == m_new - 1)
    n_new = tl.where(opened, 1, n_new)
    i_new = tl.where(opened, score.to(tl.float64), i_new)
    grown = (~startv) & (j == m - 1)
    n_new = tl.where(grown, n_new + 1, n_new)
    i_new = tl.where(grown, i_new + score.to(tl.float64), i_new)
    tl.store(cnt_ptr + bh * K + j, tl.where(j < m_new, n_new, 0), mask=j < K)
    tl.store(info_ptr + bh * K + j, tl.where(j < m_new, i_new, 0.0).to(tl.float32), mask=j < K)
    tl.store(size_ptr + bh, m_new.to(tl.int64))
    plan = tl.where(j == 0, m, tl.where(j == 1, start.to(tl.int32), tl.where(j == 2, istar, m_new)))
    tl.store(plan_ptr + bh * 4 + j, plan, mask=j < 4)
    tl.store(score_ptr + bh, score)
    tl.store(start_ptr + bh, start.to(tl.int8))
    tl.store(merged_ptr + bh, istar.to(tl.int64))


@triton.jit
def dla_step_update_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, s_ptr, plan_ptr, o_ptr,
    K, Dk, Dv,
    BK: tl.constexpr, BV: tl.constexpr,
):
    bh = tl.program_id(0)
    vb = tl.program_id(1)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    m = tl.load(plan_ptr + bh * 4)
    start = tl.load(plan_ptr + bh * 4 + 1) != 0
    istar = tl.load(plan_ptr + bh * 4 + 2)
    m_new = tl.load(plan_ptr + bh * 4 + 3)
    full = start & (m == K)
    kf = tl.load(k_ptr + bh * Dk + kd, mask=kd < Dk, other=0.0).to(tl.float32)
    qf = tl.load(q_ptr + bh * Dk + kd, mask=kd < Dk, other=0.0).to(tl.float32)
    vf = tl.load(v_ptr + bh * Dv + vd, mask=vd < Dv, other=0.0).to(tl.float32)
    a = tl.exp(tl.load(g_ptr + bh).to(tl.float32))
    kv = kf[:, None] * vf[None, :]
    slots = s_ptr + bh * K * Dk * Dv
    o = tl.zeros([BV], dtype=tl.float32)
    for jx in range(K):  # ascending: slot jx is written only after every read of it
        src = tl.where(full & (jx > istar), jx + 1, jx)
        live = jx < m_new
        is_new = start & (jx == m_new - 1)
        S = tl.zeros([BK, BV], dtype=tl.float32)
        if live & (~is_new):
            S = load_state(slots + src * Dk * Dv, kd, vd, Dk, Dv)
        if full & (jx == istar):  # the merged pair: its right slot joins
            S += load_state(slots + (src + 1) * Dk * Dv, kd, vd, Dk, Dv)
        add = is_new | ((~start) & (jx == m - 1))
        S = a * S + tl.where(add, kv, 0.0)
        store_state(slots + jx * Dk * Dv, S, kd, vd, Dk, Dv)
        lam = tl.load(w_ptr + bh * K + tl.maximum(m_new - 1 - jx, 0)).to(tl.float32)
        o += tl.where(live, lam, 0.0) * tl.sum(qf[:, None] * S, 0)
    tl.store(o_ptr + bh * Dv + vd, o.to(o_ptr.dtype.element_ty), mask=vd < Dv)


def _value_block(BH: int, BVF: int) -> int:
    """The Dv block of the update kernel: 64 wide when B*H rows already fill the GPU, narrower (more programs,
    each streaming fewer bytes) when they do not, so that small batches are not latency-bound."""
    if BH * triton.cdiv(BVF, 64) >= 264:
        return min(BVF, 64)
    return min(BVF, 32 if BH >= 64 else 16)


def step_triton_(q, k, v, g, slot_weights, *, tau, boundary=None, states, counts, info, size, eps=1e-6,
                 norm_eps=1e-6):
    """One DLA decode step (scalar decay) for every (batch, head), updating the cache **in place**, on CUDA
    tensors (or CPU tensors under TRITON_INTERPRET=1). No host synchronisation; capturable in a CUDA graph.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]`` (float32, bfloat16 or float16); g: ``[B, H]``;
        slot_weights: ``[B, H, K]``; boundary: bool ``[B, H]`` or None (override of the decision);
        states ``[B, H, K, Dk, Dv]`` float32, counts ``[B, H, K]`` int64, info ``[B, H, K]`` float32,
        size ``[B, H]`` int64: the cache, contiguous, advanced by one token in place (``dla_fast.step`` sends
        only such caches here: ``custom_ops.triton_step_applies``).

    Returns:
        ``(o [B, H, Dv] in q's dtype, (score float32 [B, H], started bool [B, H], merged int64 [B, H]))``.
    """
    B, H, Dk = q.shape
    Dv = v.shape[-1]
    K = slot_weights.shape[-1]
    check_dims(Dk, Dv)
    BH = B * H
    dev = q.device
    BK, BVF = max(next_pow2(Dk), 16), max(next_pow2(Dv), 16)
    BV = _value_block(BH, BVF)
    q, k, v, g, slot_weights = (x.contiguous() for x in (q, k, v, g, slot_weights))
    o = torch.empty(B, H, Dv, device=dev, dtype=q.dtype)
    score = torch.empty(B, H, device=dev, dtype=torch.float32)
    started = torch.empty(B, H, device=dev, dtype=torch.int8)
    merged = torch.empty(B, H, device=dev, dtype=torch.int64)
    plan = torch.empty(BH, 4, device=dev, dtype=torch.int32)
    bnd = started if boundary is None else boundary.to(torch.int8).contiguous()
    BVD = min(BVF, 64)
    dla_step_decide_kernel[(BH,)](
        k, v, g, bnd, states, counts, info, size, plan, score, started, merged,
        K, Dk, Dv, float(tau), float(eps), float(norm_eps),
        BK=BK, BV=BVD, NVB=triton.cdiv(BVF, BVD), KP=max(next_pow2(K), 4), OVERRIDE=boundary is not None,
        num_warps=4,
    )
    dla_step_update_kernel[(BH, triton.cdiv(BVF, BV))](
        q, k, v, g, slot_weights, states, plan, o, K, Dk, Dv, BK=BK, BV=BV, num_warps=4,
    )
    return o, (score, started.view(torch.bool), merged)
