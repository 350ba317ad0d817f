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
   FLOPs ``~4 K Dk Dv``. Bandwidth-bound at large batches; at B = 1 latency-bound (one program streams its
   K slots in order), hence loads two slots ahead of the stores and one reduction for the read.

On the host, a decode loop through ``dla_fast.step`` keeps a :class:`StepLaunch` in the cache's scratch: the
block sizes, the small buffers and the compiled kernels, launched directly after the first call
(``triton_utils.launch_jit``), so that a step costs two launches and one allocation of host time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.score import information_score_triton
from ..common.triton_utils import launch_compiled, launch_jit, load_state, next_pow2, store_state, stream_getter
from .chunk_fwd import check_dims

# The token's inputs may sit anywhere (slices of a prompt): no specialisation on their alignment, so that a
# decode loop launches one compiled kernel (fused_recurrent.StepLaunch) whatever their offsets.
DECIDE_TOKEN_POINTERS = ["k_ptr", "v_ptr", "g_ptr", "bnd_ptr"]
UPDATE_TOKEN_POINTERS = ["q_ptr", "k_ptr", "v_ptr", "g_ptr", "w_ptr"]


# Long: one program's decision for its row: score, merge choice, and the scalar cache updated in place.
@triton.jit(do_not_specialize_on_alignment=DECIDE_TOKEN_POINTERS)
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


# Long: the in-place slot stream; at small batches its loads run two slots ahead of its stores.
@triton.jit(do_not_specialize_on_alignment=UPDATE_TOKEN_POINTERS)
def dla_step_update_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, s_ptr, plan_ptr, o_ptr,
    K, Dk, Dv,
    BK: tl.constexpr, BV: tl.constexpr, PIPELINE: tl.constexpr,
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
    slots = s_ptr + bh * K * Dk * Dv
    # Slot jx is stored after every read of it: its sources are slots >= jx. PIPELINE (small batches, where one
    # program's chain of slot loads is the time): the sources of slots jx + 1 and jx + 2 are loaded before slot
    # jx is stored, three loads in flight instead of one, and the read o = q^T sum_j lambda_j S_j reduces over
    # Dk once after the loop rather than per slot (a cross-warp barrier each). Large batches are bandwidth-
    # bound: there the lean loop (half the registers: more programs per SM) is faster (run 13). Slots from
    # m_new on were unused before the step (a merge happens only when a slot is added) and stay zero.
    if PIPELINE:
        S0 = step_source(slots, 0, start, istar, m_new, full, kd, vd, Dk, Dv)
        S1 = step_source(slots, 1, start, istar, m_new, full, kd, vd, Dk, Dv)
        read = tl.zeros([BK, BV], dtype=tl.float32)
    o = tl.zeros([BV], dtype=tl.float32)
    for jx in range(m_new):
        if PIPELINE:
            S2 = step_source(slots, jx + 2, start, istar, m_new, full, kd, vd, Dk, Dv)
            S = S0
        else:
            S = step_source(slots, jx, start, istar, m_new, full, kd, vd, Dk, Dv)
        if full & (jx == istar):  # the merged pair: its right slot joins (once per step, not pipelined)
            S += load_state(slots + (jx + 1) * Dk * Dv, kd, vd, Dk, Dv)
        S = a * S
        if (start & (jx == m_new - 1)) | ((~start) & (jx == m - 1)):  # the token's slot
            S += kf[:, None] * vf[None, :]
        store_state(slots + jx * Dk * Dv, S, kd, vd, Dk, Dv)
        lam = tl.load(w_ptr + bh * K + m_new - 1 - jx).to(tl.float32)
        if PIPELINE:
            read += lam * S
            S0 = S1
            S1 = S2
        else:
            o += lam * tl.sum(qf[:, None] * S, 0)
    if PIPELINE:
        o = tl.sum(qf[:, None] * read, 0)
    tl.store(o_ptr + bh * Dv + vd, o.to(o_ptr.dtype.element_ty), mask=vd < Dv)


@triton.jit
def step_source(slots, jx, start, istar, m_new, full, kd, vd, Dk, Dv):
    """The block of the pre-step slot that new slot ``jx`` starts from (``src >= jx``; the slot after a
    merged pair's left one), zero for a fresh or unused slot (a masked load: no traffic)."""
    src = tl.where(full & (jx > istar), jx + 1, jx)
    live = (jx < m_new) & ~(start & (jx == m_new - 1))  # m_new <= K
    rows = tl.where(live, Dk, 0)  # the mask as a bound: a scalar condition the interpreter broadcasts
    mask = (kd[:, None] < rows) & (vd[None, :] < Dv)
    return tl.load(slots + src * Dk * Dv + kd[:, None] * Dv + vd[None, :], mask=mask, other=0.0)


def _update_blocks(BH: int, BK: int, BVF: int) -> tuple[int, bool, int]:
    """``(BV, PIPELINE, num_warps)`` of the update kernel. When B*H rows already fill the GPU: Dv blocks of 64,
    the lean loop, 4 warps (bandwidth-bound). Otherwise narrower blocks (more programs, each streaming fewer
    bytes), the pipelined loop and 16 tile elements per thread (its five live tiles take ~255 registers on
    sm_90 and spill nothing; measured on an H200, docs/benchmarks.md run 13)."""
    if BH * triton.cdiv(BVF, 64) >= 264:
        return min(BVF, 64), False, 4
    BV = min(BVF, 32 if BH >= 64 else 16, max(16, 4096 // BK))
    return BV, True, max(4, BK * BV // 512)


class StepLaunch:
    """The step's two launches for one signature (shapes, dtypes, devices; the same cache tensors): grids, block
    sizes, the plan and trace buffers and, after the first launch, the compiled kernels.

    Later launches pass the pointers as integers: the cache's and the buffers' once read, the token's read per
    call. Triton's launcher would call each tensor's ``data_ptr`` and ask the driver about it (~0.5 us per
    pointer on the H200's host). The cache's tensors are held, so that their addresses stay theirs.
    """

    def __init__(self, B: int, H: int, K: int, Dk: int, Dv: int, override: bool, device):
        check_dims(Dk, Dv)
        BH = B * H
        BK, BVF = max(next_pow2(Dk), 16), max(next_pow2(Dv), 16)
        BV, pipeline, self.update_warps = _update_blocks(BH, BK, BVF)
        BVD = min(BVF, 64)
        self.decide_grid, self.update_grid = (BH, 1, 1), (BH, triton.cdiv(BVF, BV), 1)
        self.decide_blocks = (BK, BVD, triton.cdiv(BVF, BVD), max(next_pow2(K), 4), override)
        self.update_blocks = (BK, BV, pipeline)
        self.dims = (K, Dk, Dv)
        self.plan = torch.empty(BH, 4, device=device, dtype=torch.int32)
        self.trace = new_trace(B, H, device)
        self.started = self.trace[1].view(torch.bool)
        self.device_index = self.plan.get_device()
        self.decide = self.update = None

    def __call__(self, tokens, bnd, cache, trace, o, scalars) -> None:
        """Launch both kernels: ``tokens`` ``(q, k, v, g, slot_weights)`` contiguous, ``bnd`` the boundary
        override (int8) or any tensor, ``cache`` ``(states, counts, info, size)``, ``trace`` the decide kernel's
        ``(score, started, merged)`` outputs, ``o`` the output, ``scalars`` ``(tau, eps, norm_eps)``."""
        if self.decide is None:
            self.cache, self.pointers = cache, tuple(t.data_ptr() for t in (*cache, self.plan, *self.trace))
            decide_args, update_args = self._arguments(*tokens, bnd, *cache, self.plan, trace, o, scalars)
            self.decide = launch_jit(dla_step_decide_kernel, self.decide_grid, *decide_args, num_warps=4)
            self.update = launch_jit(dla_step_update_kernel, self.update_grid, *update_args,
                                     num_warps=self.update_warps)
            if self.decide is not None:  # None under the interpreter: every launch through the JIT
                self.current_stream = stream_getter()
            return
        states, counts, info, size, plan, *own_trace = self.pointers
        trace = own_trace if trace is self.trace else [t.data_ptr() for t in trace]
        q, k, v, g, slot_weights = tokens
        decide_args, update_args = self._arguments(q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(),
                                                   slot_weights.data_ptr(), bnd.data_ptr(), states, counts, info,
                                                   size, plan, trace, o.data_ptr(), scalars)
        stream = self.current_stream(self.device_index)
        launch_compiled(self.decide, self.decide_grid, stream, *decide_args)
        launch_compiled(self.update, self.update_grid, stream, *update_args)

    def _arguments(self, q, k, v, g, slot_weights, bnd, states, counts, info, size, plan, trace, o, scalars):
        """Every parameter of the two kernels, in order (tensors or their addresses)."""
        return ((k, v, g, bnd, states, counts, info, size, plan, *trace, *self.dims, *scalars, *self.decide_blocks),
                (q, k, v, g, slot_weights, states, plan, o, *self.dims, *self.update_blocks))


def new_trace(B: int, H: int, device):
    """``(score float32, started int8, merged int64)`` ``[B, H]``: the decide kernel's trace outputs."""
    return (torch.empty(B, H, device=device, dtype=torch.float32),
            torch.empty(B, H, device=device, dtype=torch.int8),
            torch.empty(B, H, device=device, dtype=torch.int64))


def step_triton_(q, k, v, g, slot_weights, *, tau, boundary=None, states, counts, info, size, eps=1e-6,
                 norm_eps=1e-6, scratch=None, fresh_trace=True):
    """One DLA decode step (scalar decay) for every (batch, head), updating the cache **in place**, on CUDA
    tensors (or CPU tensors under TRITON_INTERPRET=1). No host synchronisation; capturable in a CUDA graph.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]`` (float32, bfloat16 or float16); g: ``[B, H]``;
        slot_weights: ``[B, H, K]``; boundary: bool ``[B, H]`` or None (override of the decision);
        states ``[B, H, K, Dk, Dv]`` float32, counts ``[B, H, K]`` int64, info ``[B, H, K]`` float32,
        size ``[B, H]`` int64: the cache, contiguous, advanced by one token in place (``dla_fast.step`` sends
        only such caches here: ``custom_ops.triton_step_applies``).
        scratch: a dict that lives as long as the call's signature (the inputs' shapes, dtypes and devices, and
            the same cache tensors: ``Cache.scratch``, which ``dla_fast.step`` resets when it changes), or None. It
            keeps the :class:`StepLaunch`, so that later calls launch the compiled kernels directly.
        fresh_trace: return new trace tensors; False returns the scratch's, which the next call overwrites.

    Returns:
        ``(o [B, H, Dv] in q's dtype, (score float32 [B, H], started bool [B, H], merged int64 [B, H]))``.
    """
    B, H, _ = q.shape
    launch = None if scratch is None else scratch.get("step_launch")
    if launch is None:
        launch = StepLaunch(B, H, slot_weights.shape[-1], q.shape[-1], v.shape[-1], boundary is not None, q.device)
        if scratch is not None:
            scratch["step_launch"] = launch
    q, k, v, g, slot_weights = q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), slot_weights.contiguous()
    o = torch.empty_like(v, dtype=q.dtype)
    trace = launch.trace if scratch is not None and not fresh_trace else new_trace(B, H, q.device)
    bnd = trace[1] if boundary is None else boundary.to(torch.int8).contiguous()
    launch((q, k, v, g, slot_weights), bnd, (states, counts, info, size), trace, o,
           (float(tau), float(eps), float(norm_eps)))
    started = launch.started if trace is launch.trace else trace[1].view(torch.bool)
    return o, (trace[0], started, trace[2])
