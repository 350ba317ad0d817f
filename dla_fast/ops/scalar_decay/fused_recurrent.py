"""Triton decode step of DLA, both backbones: one token per (batch, head) against a K-slot cache, in place.

One kernel, grid B*H x Dv blocks, so that a decode loop costs one launch per token and the slot stream is
spread over more programs than there are (batch, head) rows. Every program of a row:

1. decides (``step_decision``): reads the open slot (all of Dv: the score needs ``||P||^2`` and ``k^T P v``)
   and the row's counts and information sums, and computes the score, the boundary and the lowest-density
   merge of a full cache (tie: the oldest pair). All programs of a row compute the same decision from the same
   bytes (the same arithmetic in the same order), so no program waits for another. Bytes: ``4 Dk Dv`` per program.
2. streams its Dv block of every slot once, in place and in ascending slot order: the new slot j is
   ``a (S[src] (+ S[src + 1] for the merged pair)) (+ k v^T)`` with ``src >= j``, so every slot is read before
   any later slot's write could touch it; then the read ``o = sum_j lambda[j] q^T S_{m-1-j}``. Bytes per row:
   ``4 K Dk Dv`` read and written; FLOPs ``~4 K Dk Dv``.
3. The decision's inputs must not change while a sibling may still read them: the new value of the slot the
   decision reads (``d = max(m - 1, 0)``) goes to a side buffer instead of the cache, and the last program of the
   row to finish (an atomic counter per row) copies the side buffer into slot d and stores the counts,
   information sums and size. The wait-free "last block" pattern: no program ever waits, so any number of
   programs per row is safe, under the interpreter too (which runs programs one after another).

The gated delta rule (``BETA``, ``beta`` given) changes two things. The decision forms the score's scalars
``nP = ||P||^2``, ``x = b y.w``, ``ss = ||b k||^2 ||w||^2`` (``y = P^T k``, ``w = v - a y``) and the score itself in
float64 from the float32 open slot (``w`` cancels: docs/precision.md section 9); ``y`` reduces over Dk, so the
pass over the Dv blocks stays one. The stream applies ``A(S) = a (S - b k (k^T S))`` to ``S[src] (+ S[src + 1])``
and adds ``b k v^T`` to the token's slot: ``k^T S`` is a reduction over Dk of the program's own block (one more
per slot than scalar decay). Everything else (the side buffer, the publication) is the same code.

At large batches the kernel is bandwidth-bound; at B = 1 latency-bound (one program streams its K slots in
order), hence its loads run two slots ahead of the stores and the read reduces once after the loop.

On the host, a decode loop through ``dla_fast.step`` keeps a :class:`StepLaunch` in the cache's scratch: the
block sizes, the small buffers and the compiled kernel, launched directly after the first call
(``triton_utils.launch_jit``), so that a step costs one launch and one allocation of host time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import interpreting
from ..common.score import (
    delta_rule_increment,
    expm1_triton,
    information_score_from_decay_triton,
    information_score_triton,
)
from ..common.triton_utils import (
    check_int32_offsets,
    launch_compiled,
    launch_jit,
    load_state,
    next_pow2,
    store_state,
    stream_getter,
)
from .chunk_fwd import check_dims

# The step kernel compiles without floating-point contraction (every launch of it takes these options). Its decision
# (score, boundary, merge) is a chain of scalars that every thread computes from reductions, and every thread must
# decide alike: each streams its own elements of the slots. A reduction's butterfly (shfl.bfly) leaves the same sum in
# every lane only while its combine is commutative; contracted with the product before it (``tl.sum(v * v)`` at one
# element a lane: ``fma(v_L, v_L, shfl(v * v))``), lanes L and L ^ 16 round differently. On the H200 (run 36, Triton
# 3.6) ||v||^2 so differed by 2 ulp between lanes 0-15 and 16-31 of each warp, a near-zero score fell to 0 in lanes
# 16-31, and their rows of the slots took "no start" while the other rows took "start, merge 0".
STEP_COMPILE_OPTIONS = dict(enable_fp_fusion=False)

# The token's inputs may sit anywhere (slices of a prompt): no specialisation on their alignment, so that a
# decode loop launches one compiled kernel (fused_recurrent.StepLaunch) whatever their offsets.
STEP_TOKEN_POINTERS = ["q_ptr", "k_ptr", "v_ptr", "g_ptr", "w_ptr", "bnd_ptr", "beta_ptr"]


# Long: the decision is one chain (score, boundary, merge choice, the scalar cache after the step).
@triton.jit
def step_decision(
    k_ptr, v_ptr, g_ptr, bnd_ptr, s_ptr, cnt_ptr, info_ptr, size_ptr, bh, K, Dk, Dv, tau, eps, norm_eps, beta_ptr,
    BK: tl.constexpr, BVD: tl.constexpr, NVD: tl.constexpr, KP: tl.constexpr, OVERRIDE: tl.constexpr,
    BETA: tl.constexpr,
):
    """Row ``bh``'s decision: ``(m, start, istar, m_new, score, n_new, i_new)``: the slots before and after
    the step, whether the token opens a slot, the merged pair (-1: none), the score, and the counts and
    information sums after the step (``[KP]``, float64 sums). The delta rule's score is float64 (its scalars
    cancel: ``delta_rule_score``), scalar decay's float32."""
    kd = tl.arange(0, BK)
    j = tl.arange(0, KP)
    kf = tl.load(k_ptr + bh * Dk + kd, mask=kd < Dk, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + bh).to(tl.float32)
    m = tl.load(size_ptr + bh).to(tl.int32)
    n = tl.load(cnt_ptr + bh * K + j, mask=j < K, other=0).to(tl.int64)
    inf = tl.load(info_ptr + bh * K + j, mask=j < K, other=0.0).to(tl.float64)
    # 1. The open slot's three scalars, a Dv block at a time (an empty cache reads slot 0: its score is unused).
    open_slot = s_ptr + (bh * K + tl.maximum(m - 1, 0)) * Dk * Dv
    if BETA:
        score = delta_rule_score(kf, v_ptr, g_ptr, beta_ptr, open_slot, bh, Dk, Dv, eps, norm_eps, BK, BVD, NVD)
    else:
        nP = 0.0
        x = 0.0
        vv = 0.0
        for vb in tl.static_range(NVD):
            vd = vb * BVD + tl.arange(0, BVD)
            vf = tl.load(v_ptr + bh * Dv + vd, mask=vd < Dv, other=0.0).to(tl.float32)
            P = load_state(open_slot, kd, vd, Dk, Dv)
            nP += tl.sum(tl.sum(P * P, 1), 0)
            x += tl.sum(tl.sum(P * kf[:, None] * vf[None, :], 1), 0)
            vv += tl.sum(vf * vf, 0)
        ss = tl.sum(kf * kf, 0) * vv
        N = tl.cast(Dk * Dv, tl.float32)  # a plain int when Triton specialises Dk = Dv = 1
        score = information_score_triton(nP, x, ss, g, N, eps, norm_eps)
    score = tl.where(m > 0, score, 0.0)
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
    return m, start, istar, m_new, score, n_new, i_new


@triton.jit
def delta_rule_score(kf, v_ptr, g_ptr, beta_ptr, open_slot, bh, Dk, Dv, eps, norm_eps,
                     BK: tl.constexpr, BVD: tl.constexpr, NVD: tl.constexpr):
    """The delta rule's score (float64) of the token against the open slot ``P``, as
    ``recurrent._open_slot_score`` forms it: the increment is ``u = b k w^T`` with ``w = v - a y``, ``y = P^T k``,
    and ``nP = ||P||^2``, ``x = <P, u> = b y.w``, ``ss = ||b k||^2 ||w||^2``. ``w`` cancels where the slot
    already holds ``v`` along ``k``, so everything is float64 from the float32 state (``a = exp(g)`` in
    float64 too: docs/precision.md section 9). ``y`` reduces over Dk only, so one pass over the Dv blocks."""
    kd = tl.arange(0, BK)
    g = tl.load(g_ptr + bh).to(tl.float64)
    a = tl.exp(g)
    b = tl.load(beta_ptr + bh).to(tl.float32).to(tl.float64)  # beta in the states' dtype, as the torch step
    k64 = kf.to(tl.float64)
    nP = 0.0
    yw = 0.0
    ww = 0.0
    for vb in tl.static_range(NVD):
        vd = vb * BVD + tl.arange(0, BVD)
        v64 = tl.load(v_ptr + bh * Dv + vd, mask=vd < Dv, other=0.0).to(tl.float32).to(tl.float64)
        P = load_state(open_slot, kd, vd, Dk, Dv).to(tl.float64)
        nP += tl.sum(tl.sum(P * P, 1), 0)
        _, yw_block, ww_block = delta_rule_increment(P, k64, v64, a)
        yw += yw_block
        ww += ww_block
    bk = b * k64
    N = tl.cast(Dk * Dv, tl.float64)  # a plain int when Triton specialises Dk = Dv = 1
    return information_score_from_decay_triton(nP, b * yw, tl.sum(bk * bk, 0) * ww, a, expm1_triton(2.0 * g), N,
                                               eps, norm_eps)


@triton.jit
def fence_gpu(dep, FENCE: tl.constexpr):
    """``fence.acq_rel.gpu`` in every thread (CUDA's ``__threadfence``): this thread's earlier loads and
    stores are ordered before its later ones for every program on the GPU. ``dep`` is any scalar (inline PTX
    needs an operand). No-op where FENCE is off (the interpreter runs programs one after another)."""
    if FENCE:
        tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.u32 $0, $1;", "=r,r", [dep.to(tl.int32)],
                                  dtype=tl.int32, is_pure=False, pack=1)


# Long: the decision, the stream and the publication share the row's registers; each part is a function.
@triton.jit(do_not_specialize_on_alignment=STEP_TOKEN_POINTERS)
def dla_step_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, bnd_ptr, s_ptr, cnt_ptr, info_ptr, size_ptr,
    side_ptr, arrive_ptr, o_ptr, score_ptr, start_ptr, merged_ptr,
    K, Dk, Dv, tau, eps, norm_eps,
    beta_ptr,  # last: the scalar-decay kernel's parameters keep their places (BETA off compiles to the same code)
    BK: tl.constexpr, BV: tl.constexpr, BVD: tl.constexpr, NVD: tl.constexpr, KP: tl.constexpr,
    OVERRIDE: tl.constexpr, PIPELINE: tl.constexpr, FENCE: tl.constexpr, BETA: tl.constexpr,
):
    bh = tl.program_id(0)
    vb = tl.program_id(1)
    m, start, istar, m_new, score, n_new, i_new = step_decision(
        k_ptr, v_ptr, g_ptr, bnd_ptr, s_ptr, cnt_ptr, info_ptr, size_ptr, bh, K, Dk, Dv, tau, eps, norm_eps,
        beta_ptr, BK, BVD, NVD, KP, OVERRIDE, BETA)
    if vb == 0:
        tl.store(score_ptr + bh, score.to(tl.float32))
        tl.store(start_ptr + bh, start.to(tl.int8))
        tl.store(merged_ptr + bh, istar.to(tl.int64))
    decided = tl.maximum(m - 1, 0)  # the slot every decision reads: its new block goes to the side buffer
    side = side_ptr + bh * Dk * Dv
    stream_slots(q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, beta_ptr, s_ptr, side, o_ptr, bh, vb, m, start, istar, m_new,
                 decided, K, Dk, Dv, BK, BV, PIPELINE, BETA)
    # 3. Publication: the last program of the row to get here (every sibling's decision reads are done and
    # its side block is written) copies the side buffer into slot `decided` and stores the scalar cache.
    fence_gpu(bh, FENCE)
    tl.debug_barrier()
    prior = tl.atomic_add(arrive_ptr + bh, 1, sem="acq_rel")
    if prior == tl.num_programs(1) - 1:
        fence_gpu(prior, FENCE)
        kd = tl.arange(0, BK)
        for vc in tl.static_range(NVD):
            vd = vc * BVD + tl.arange(0, BVD)
            block = tl.load(side + kd[:, None] * Dv + vd[None, :], mask=(kd[:, None] < Dk) & (vd[None, :] < Dv),
                            other=0.0, cache_modifier=".cg")  # written by other SMs: not from this SM's L1
            store_state(s_ptr + (bh * K + decided) * Dk * Dv, block, kd, vd, Dk, Dv)
        j = tl.arange(0, KP)
        tl.store(cnt_ptr + bh * K + j, tl.where(j < m_new, n_new, 0), mask=j < K)
        tl.store(info_ptr + bh * K + j, tl.where(j < m_new, i_new, 0.0).to(tl.float32), mask=j < K)
        tl.store(size_ptr + bh, m_new.to(tl.int64))
        tl.store(arrive_ptr + bh, 0)  # ready for the next step (a later launch, ordered on the stream)


@triton.jit
def stream_slots(q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, beta_ptr, s_ptr, side, o_ptr, bh, vb, m, start, istar, m_new,
                 decided, K, Dk, Dv, BK: tl.constexpr, BV: tl.constexpr, PIPELINE: tl.constexpr, BETA: tl.constexpr):
    """The program's Dv block of every slot, advanced in place (slot ``decided`` into ``side``), and its block
    of the output. BETA: the delta rule's transition ``A(S) = a (S - b k (k^T S))`` and increment ``b k v^T``;
    ``k^T S`` reduces over Dk, which the program holds whole, so each Dv block advances on its own."""
    full = start & (m == K)
    kd = tl.arange(0, BK)
    vd = vb * BV + tl.arange(0, BV)
    kf = tl.load(k_ptr + bh * Dk + kd, mask=kd < Dk, other=0.0).to(tl.float32)
    qf = tl.load(q_ptr + bh * Dk + kd, mask=kd < Dk, other=0.0).to(tl.float32)
    vf = tl.load(v_ptr + bh * Dv + vd, mask=vd < Dv, other=0.0).to(tl.float32)
    a = tl.exp(tl.load(g_ptr + bh).to(tl.float32))
    bk = kf  # the key of the token's increment b k v^T (scalar decay: k)
    if BETA:
        bk = tl.load(beta_ptr + bh).to(tl.float32) * kf  # rounded to float32, as the torch step's
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
        # The delta rule's transition, once for a merged pair's sum (A is linear; the reference transitions both
        # slots, then adds: the same up to float32 rounding). k^T S reduces over Dk: all of it is this program's.
        if BETA:
            S -= bk[:, None] * tl.sum(kf[:, None] * S, 0)[None, :]
        S = a * S
        if (start & (jx == m_new - 1)) | ((~start) & (jx == m - 1)):  # the token's slot
            S += bk[:, None] * vf[None, :]
        store_state(tl.where(jx == decided, side, slots + jx * Dk * Dv), S, kd, vd, Dk, Dv)
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


def _stream_blocks(BH: int, BK: int, BVF: int, delta_rule: bool = False) -> tuple[int, bool, int]:
    """``(BV, PIPELINE, num_warps)`` of the step kernel's stream. When B*H rows already fill the GPU: Dv blocks
    of 64, the lean loop, 4 warps (bandwidth-bound). Otherwise narrower blocks (more programs, each streaming
    fewer bytes), the pipelined loop and 8 warps from Dk = 64 on, whose tiles then fit in registers beside the
    decision's (A/B on an H200 at B = 1, H = 16: D = 128 took 26.2 us with (16, 4 warps), 24.4 with (16, 8)
    and 22.1 with (32, 8); D = 64 15.7 us with (16, 4), 14.1 with (16, 8); docs/benchmarks.md run 14).
    The delta rule's lean loop at Dk = 128 takes 8 warps: with 4 it spills (its float64 decision and the
    per-slot ``k^T S``; 255 registers and 240 bytes of stack for sm_90, none with 8; the same warps per SM)."""
    if BH * triton.cdiv(BVF, 64) >= 264:
        return min(BVF, 64), False, 8 if delta_rule and BK >= 128 else 4
    BV = min(BVF, 32 if BH >= 64 or BK >= 128 else 16)
    return BV, True, 8 if BK >= 64 else 4


class StepLaunch:
    """The step's launch for one signature (shapes, dtypes, devices; the same cache tensors): grid, block sizes,
    the side buffer, the per-row counters, the trace buffers and, after the first launch, the compiled kernel.

    Later launches pass the pointers as integers: the cache's and the buffers' once read, the token's read per
    call. Triton's launcher would call each tensor's ``data_ptr`` and ask the driver about it (~0.5 us per
    pointer on the H200's host). The cache's tensors are held, so that their addresses stay theirs.
    """

    def __init__(self, B: int, H: int, K: int, Dk: int, Dv: int, override: bool, delta_rule: bool, device):
        check_dims(Dk, Dv)
        check_int32_offsets(**{"the cache's states (B H K Dk Dv)": B * H * K * Dk * Dv})
        BH = B * H
        BK, BVF = max(next_pow2(Dk), 16), max(next_pow2(Dv), 16)
        BV, pipeline, self.num_warps = _stream_blocks(BH, BK, BVF, delta_rule)
        BVD = min(BVF, 64)  # the decision's and the publication's Dv block
        self.grid = (BH, triton.cdiv(BVF, BV), 1)
        self.blocks = (BK, BV, BVD, triton.cdiv(BVF, BVD), max(next_pow2(K), 4), override, pipeline,
                       not interpreting(), delta_rule)
        self.dims = (K, Dk, Dv)
        self.side = torch.empty(BH, Dk, Dv, device=device, dtype=torch.float32)
        self.arrive = torch.zeros(BH, device=device, dtype=torch.int32)  # each kernel leaves them at zero
        self.trace = new_trace(B, H, device)
        self.started = self.trace[1].view(torch.bool)
        self.device_index = self.side.get_device()
        self.kernel = None

    def step(self, q, k, v, g, slot_weights, beta, boundary, cache, scalars, fresh_trace):
        """One decode step on inputs of this launch's signature (``step_triton_``'s arguments, ``cache`` the tuple
        ``(states, counts, info, size)``, ``scalars`` ``(tau, eps, norm_eps)`` as floats): ``(o, trace)``.
        ``dla_fast.step`` calls it directly for a decode loop's later tokens: it is the whole per-token host path."""
        q, k, v, g = q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous()
        slot_weights = slot_weights.contiguous()
        beta = g if beta is None else beta.contiguous()  # scalar decay: a placeholder the kernel never reads
        o = torch.empty_like(v)  # q's dtype, as q, k and v share one (a dtype argument doubles its host time)
        trace = new_trace(*self.trace[0].shape, q.device) if fresh_trace else self.trace  # [B, H] each
        bnd = trace[1] if boundary is None else boundary.to(torch.int8).contiguous()
        self((q, k, v, g, slot_weights, beta), bnd, cache, trace, o, scalars)
        return o, (trace[0], self.started if trace is self.trace else trace[1].view(torch.bool), trace[2])

    def __call__(self, tokens, bnd, cache, trace, o, scalars) -> None:
        """Launch the kernel: ``tokens`` ``(q, k, v, g, slot_weights, beta)`` contiguous (``beta`` any tensor
        for scalar decay: unread), ``bnd`` the boundary
        override (int8) or any tensor, ``cache`` ``(states, counts, info, size)``, ``trace`` the
        ``(score, started, merged)`` outputs, ``o`` the output, ``scalars`` ``(tau, eps, norm_eps)``."""
        if self.kernel is None:
            self.cache, self.pointers = cache, tuple(t.data_ptr() for t in (*cache, self.side, self.arrive,
                                                                             *self.trace))
            args = self._arguments(*tokens, bnd, *cache, self.side, self.arrive, o, trace, scalars)
            self.kernel = launch_jit(dla_step_kernel, self.grid, *args, num_warps=self.num_warps,
                                     **STEP_COMPILE_OPTIONS)
            if self.kernel is not None:  # None under the interpreter: every launch through the JIT
                self.current_stream = stream_getter()
            return
        states, counts, info, size, side, arrive, *own_trace = self.pointers
        trace = own_trace if trace is self.trace else [t.data_ptr() for t in trace]
        q, k, v, g, slot_weights, beta = tokens
        args = self._arguments(q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), slot_weights.data_ptr(),
                               beta.data_ptr(), bnd.data_ptr(), states, counts, info, size, side, arrive,
                               o.data_ptr(), trace, scalars)
        launch_compiled(self.kernel, self.grid, self.current_stream(self.device_index), *args)

    def _arguments(self, q, k, v, g, slot_weights, beta, bnd, states, counts, info, size, side, arrive, o, trace,
                   scalars):
        """Every parameter of the kernel, in order (tensors or their addresses)."""
        return (q, k, v, g, slot_weights, bnd, states, counts, info, size, side, arrive, o, *trace, *self.dims,
                *scalars, beta, *self.blocks)


def new_trace(B: int, H: int, device):
    """``(score float32, started int8, merged int64)`` ``[B, H]``: the kernel's trace outputs."""
    return (torch.empty(B, H, device=device, dtype=torch.float32),
            torch.empty(B, H, device=device, dtype=torch.int8),
            torch.empty(B, H, device=device, dtype=torch.int64))


def step_triton_(q, k, v, g, slot_weights, *, tau, beta=None, boundary=None, states, counts, info, size, eps=1e-6,
                 norm_eps=1e-6, scratch=None, fresh_trace=True):
    """One DLA decode step (scalar decay, or the gated delta rule with ``beta``) for every (batch, head), updating
    the cache **in place**, on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1). No host synchronisation;
    capturable in a CUDA graph.

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]`` (float32, bfloat16 or float16, one dtype); g: ``[B, H]``;
        slot_weights: ``[B, H, K]``; beta: ``[B, H]`` (the delta rule) or None (scalar decay);
        boundary: bool ``[B, H]`` or None (override of the decision);
        states ``[B, H, K, Dk, Dv]`` float32, counts ``[B, H, K]`` int64, info ``[B, H, K]`` float32,
        size ``[B, H]`` int64: the cache, contiguous, advanced by one token in place (``dla_fast.step`` sends
        only such caches here: ``custom_ops.triton_step_applies``).
        scratch: a dict that lives as long as the call's signature (the inputs' shapes, dtypes and devices, the
            backbone, and the same cache tensors: ``Cache.scratch``, which ``dla_fast.step`` resets when it
            changes), or None. It keeps the :class:`StepLaunch`, so that later calls launch the compiled kernels
            directly.
        fresh_trace: return new trace tensors; False returns the launch's own, which its next call overwrites.

    Returns:
        ``(o [B, H, Dv] in q's dtype, (score float32 [B, H], started bool [B, H], merged int64 [B, H]))``.
    """
    B, H, _ = q.shape
    launch = None if scratch is None else scratch.get("step_launch")
    if launch is None:
        launch = StepLaunch(B, H, slot_weights.shape[-1], q.shape[-1], v.shape[-1], boundary is not None,
                            beta is not None, q.device)
        if scratch is not None:
            scratch["step_launch"] = launch
    return launch.step(q, k, v, g, slot_weights, beta, boundary, (states, counts, info, size),
                       (float(tau), float(eps), float(norm_eps)), fresh_trace)
