"""Triton decode step of DLA, scalar-decay backbone: one token per (batch, head) against a K-slot cache.

One kernel, grid (B*H, Dv blocks). Each program reads the open slot (all of Dv: the score needs
``||P||^2`` and ``k^T P v``), decides, and then streams its Dv block of every slot once: transition
(``a * S``), the merge of the lowest-density pair when a new slot meets a full cache, the append or the
update of the open slot, the write of the new cache, and the read ``o = sum_j lambda[j] q^T S_{m-1-j}``
from the registers. Bytes per (b, h): ``4 K Dk Dv`` read + ``4 K Dk Dv`` written (+ the open slot once
more per Dv block); FLOPs: ``~4 K Dk Dv``. Bandwidth-bound by design.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.score import information_score_triton
from ..common.triton_utils import next_pow2
from .chunk_fwd import check_dims


# Long: one program streams every slot of its Dv block once (read, merge, update, write, read out).
@triton.jit
def dla_step_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, bnd_ptr,
    s_ptr, cnt_ptr, info_ptr, size_ptr,
    so_ptr, cnto_ptr, infoo_ptr, sizeo_ptr, o_ptr, score_ptr, start_ptr, merged_ptr,
    K, Dk, Dv, tau, eps, norm_eps,
    BK: tl.constexpr, BV: tl.constexpr, BVF: tl.constexpr, KP: tl.constexpr, OVERRIDE: tl.constexpr,
):
    bh = tl.program_id(0)
    vb = tl.program_id(1)
    kd = tl.arange(0, BK)
    vdf = tl.arange(0, BVF)
    vd = vb * BV + tl.arange(0, BV)
    j = tl.arange(0, KP)
    kmask = kd < Dk
    kf = tl.load(k_ptr + bh * Dk + kd, mask=kmask, other=0.0).to(tl.float32)
    qf = tl.load(q_ptr + bh * Dk + kd, mask=kmask, other=0.0).to(tl.float32)
    vfull = tl.load(v_ptr + bh * Dv + vdf, mask=vdf < Dv, other=0.0).to(tl.float32)
    vblk = tl.load(v_ptr + bh * Dv + vd, mask=vd < Dv, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + bh).to(tl.float32)
    a = tl.exp(g)
    m = tl.load(size_ptr + bh).to(tl.int32)
    n = tl.load(cnt_ptr + bh * K + j, mask=j < K, other=0).to(tl.int64)
    inf = tl.load(info_ptr + bh * K + j, mask=j < K, other=0.0).to(tl.float64)
    sbase = s_ptr + bh * K * Dk * Dv
    # 1. Score against the open slot (all of Dv).
    openm = (kd[:, None] < Dk) & (vdf[None, :] < Dv) & ((kd[:, None] * 0 + m) > 0)
    P = tl.load(sbase + (m - 1) * Dk * Dv + kd[:, None] * Dv + vdf[None, :], mask=openm, other=0.0)
    nP = tl.sum(tl.sum(P * P, 1), 0)
    x = tl.sum(tl.sum(P * kf[:, None] * vfull[None, :], 1), 0)
    ss = tl.sum(kf * kf, 0) * tl.sum(vfull * vfull, 0)
    N = (Dk * Dv).to(tl.float32)
    score = tl.where(m > 0, information_score_triton(nP, x, ss, g, N, eps, norm_eps), 0.0)
    if OVERRIDE:
        start = (tl.load(bnd_ptr + bh) != 0) | (m == 0)
    else:
        start = (score >= tau) | (m == 0)
    full = start & (m == K)
    # 2. The merge decision (float64 densities, tie: oldest pair).
    shift_idx = tl.minimum(j + 1, KP - 1)
    n1 = tl.gather(n, shift_idx, 0)
    i1 = tl.gather(inf, shift_idx, 0)
    dens = tl.where(j < K - 1, (inf + i1) / tl.maximum(n + n1, 1).to(tl.float64), float("inf"))
    dmin = tl.min(dens, 0)
    istar = tl.where(full, tl.min(tl.where(dens == dmin, j, KP), 0), -1)
    m_new = tl.where(start, tl.minimum(m + 1, K), m)
    # 3. Stream the slots: new slot j's sources.
    o = tl.zeros([BV], dtype=tl.float32)
    smask = (kd[:, None] < Dk) & (vd[None, :] < Dv)
    kv = kf[:, None] * vblk[None, :]
    for jx in range(K):
        src = tl.where(full & (jx > istar), jx + 1, jx)
        live_new = jx < m_new
        is_new = start & (jx == m_new - 1)
        use_old = live_new & (~is_new)
        two = full & (jx == istar)
        tile = kd[:, None] * Dv + vd[None, :]
        S = tl.load(sbase + src * Dk * Dv + tile, mask=smask & ((kd[:, None] * 0 + use_old.to(tl.int32)) != 0),
                    other=0.0)
        S2 = tl.load(sbase + (src + 1) * Dk * Dv + tile, mask=smask & ((kd[:, None] * 0 + two.to(tl.int32)) != 0),
                     other=0.0)
        add = is_new | ((~start) & (jx == m - 1))
        S = a * (S + S2) + tl.where(add, kv, 0.0)
        tl.store(so_ptr + (bh * K + jx) * Dk * Dv + kd[:, None] * Dv + vd[None, :], S, mask=smask)
        lam = tl.load(w_ptr + bh * K + tl.maximum(m_new - 1 - jx, 0)).to(tl.float32)
        lam = tl.where(live_new, lam, 0.0)
        o += lam * tl.sum(qf[:, None] * S, 0)
    tl.store(o_ptr + bh * Dv + vd, o.to(o_ptr.dtype.element_ty), mask=vd < Dv)
    if vb == 0:
        # counts / info after the update (scalars broadcast explicitly: the interpreter wants it)
        fullv = (j * 0 + full.to(tl.int32)) != 0
        startv = (j * 0 + start.to(tl.int32)) != 0
        n_sh = tl.where(fullv & (j > istar), n1, n)
        i_sh = tl.where(fullv & (j > istar), i1, inf)
        n_sh = tl.where(fullv & (j == istar), n + n1, n_sh)
        i_sh = tl.where(fullv & (j == istar), inf + i1, i_sh)
        newslot = startv & (j == m_new - 1)
        n_sh = tl.where(newslot, 1, n_sh)
        i_sh = tl.where(newslot, score.to(tl.float64), i_sh)
        grow = (~startv) & (j == m - 1)
        n_sh = tl.where(grow, n_sh + 1, n_sh)
        i_sh = tl.where(grow, i_sh + score.to(tl.float64), i_sh)
        n_sh = tl.where(j < m_new, n_sh, 0)
        i_sh = tl.where(j < m_new, i_sh, 0.0)
        tl.store(cnto_ptr + bh * K + j, n_sh, mask=j < K)
        tl.store(infoo_ptr + bh * K + j, i_sh.to(tl.float32), mask=j < K)
        tl.store(sizeo_ptr + bh, m_new.to(tl.int64))
        tl.store(score_ptr + bh, score)
        tl.store(start_ptr + bh, start.to(tl.int8))
        tl.store(merged_ptr + bh, istar.to(tl.int64))


def step_triton(q, k, v, g, slot_weights, *, tau, boundary=None, states, counts, info, size, eps=1e-6, norm_eps=1e-6):
    """One DLA decode step (scalar decay) for every (batch, head), on CUDA tensors (or CPU tensors under
    TRITON_INTERPRET=1). The cache is not modified; a new one is returned.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]`` (float32, bfloat16 or float16); g: ``[B, H]``;
        slot_weights: ``[B, H, K]``; boundary: bool ``[B, H]`` or None (override of the decision);
        states ``[B, H, K, Dk, Dv]`` float32, counts ``[B, H, K]`` int64, info ``[B, H, K]`` float32,
        size ``[B, H]`` int64: the cache before the step.

    Returns:
        ``(o [B, H, Dv] in q's dtype, (states, counts, info, size), (score float32 [B, H], started bool
        [B, H], merged int64 [B, H]))``.
    """
    B, H, Dk = q.shape
    Dv = v.shape[-1]
    K = slot_weights.shape[-1]
    check_dims(Dk, Dv)
    BH = B * H
    dev = q.device
    BK = max(next_pow2(Dk), 16)
    BVF = max(next_pow2(Dv), 16)
    BV = min(BVF, 64 if BH * triton.cdiv(BVF, 64) >= 264 else 32)
    NVB = triton.cdiv(BVF, BV)
    KP = max(next_pow2(K), 2)
    states = states.float().contiguous()
    so = torch.empty_like(states)
    cnto = torch.empty(B, H, K, device=dev, dtype=torch.int64)
    infoo = torch.empty(B, H, K, device=dev, dtype=torch.float32)
    sizeo = torch.empty(B, H, device=dev, dtype=torch.int64)
    o = torch.empty(B, H, Dv, device=dev, dtype=q.dtype)
    score = torch.empty(B, H, device=dev, dtype=torch.float32)
    started = torch.empty(B, H, device=dev, dtype=torch.int8)
    merged = torch.empty(B, H, device=dev, dtype=torch.int64)
    override = boundary is not None
    bnd = boundary.to(torch.int8).contiguous() if override else started
    dla_step_kernel[(BH, NVB)](
        q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), slot_weights.contiguous(), bnd,
        states, counts.long().contiguous(), info.float().contiguous(), size.long().contiguous(),
        so, cnto, infoo, sizeo, o, score, started, merged,
        K, Dk, Dv, float(tau), float(eps), float(norm_eps),
        BK=BK, BV=BV, BVF=BVF, KP=KP, OVERRIDE=override, num_warps=4,
    )
    return o, (so, cnto, infoo, sizeo), (score, started.bool(), merged)
