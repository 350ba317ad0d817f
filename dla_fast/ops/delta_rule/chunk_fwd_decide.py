"""Triton, gated delta rule: the decisions (stage 1 of the device forward ``chunk_fwd``, docs/delta-rule-chunked.md §7).

Which tokens open a slot depends only on the open slot, and the delta rule's scores need that slot explicitly
(sections 2 and 5 there: tables and norm recursions cancel where the rule erases the state). So one program per
(batch, head) row walks its tokens in order with the open slot ``P`` in float64 registers, exactly as the torch
path's scan (``chunk_torch_scan.scan_chunk_delta``) advances it::

    y = P^T k,  w = v - a y,  x = b y.w,  ss = b^2 |k|^2 |w|^2,  score(|P|^2, x, ss, g)
    P <- b k v^T (a new slot)  or  a (P - b k y^T) + b k v^T

FLOPs per token ``~8 Dk Dv`` (float64); bytes per token ``(Dk + Dv)`` input elements, prefetched one token
ahead, so that the chain per token is the two reductions (``y`` over Dk, the three sums over Dv) and the
score. Merges do not enter (a merge never touches the open slot), so the masks this stage writes feed the
scalar-decay merge simulation unchanged (``chunk_fwd``: the merges, then the states and outputs with the
partition fixed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.score import delta_rule_increment, expm1_triton, information_score_from_decay_triton
from ..common.triton_utils import float64_on, next_pow2, score_fast_f64

CHUNK = 64  # tokens per boundary mask (one int64), as the scalar-decay forward's chunks

# The decay's two float64 terms of every token, ``a = exp(g)`` and ``expm1(2 g)``, made before the walk by a parallel
# kernel (:func:`decay_terms`) and read a token ahead with the token's other inputs, instead of computed in its chain
# (the scalar-decay carry scan reads them from its table likewise). ``benchmarks/sass_loop_model.py`` on the sm_90
# builds (Triton 3.6, FAST_F64), cycles a token: 64 x 64 heads 2,798 -> 2,271 (836 -> 631 instructions; run 79
# measured ~2,950: 6.1 ms for 4,096 tokens at 1.98 GHz), 32 x 32 2,503 -> 1,777, 128 x 128 (8 warps) 8,942 -> 5,866,
# 64 x 64 without FAST_F64 3,330 -> 2,744. The same values bit for bit (the same functions in both kernels). Its
# cost: one more launch writing 16 B a token, also where the chunked decisions launch the walk for no row (the host
# does not know which rows walk). Run 80 (2026-12-08, no GPU lent): opt-in until measured.
DECAY_TABLE = False

# The walk's warps where its caller gives none (None: 4 up to 64 x 64 heads, else 8, as ``decide_delta_rule_triton``'s
# ``num_warps`` says): a module setting, so that the A/B tools can sweep it through the API (run 80: with the table,
# 8 warps model at 2,120 cycles a warp alone at 64 x 64, two warps a scheduler).
WALK_WARPS = None


@triton.jit
def dla_delta_decay_terms_kernel(g_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """``out [n, 2]`` float64: each token's ``exp(g)`` and ``expm1(2 g)``, by the functions the walk's chain uses."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    g = tl.load(g_ptr + i, mask=m, other=0.0).to(tl.float64)
    tl.store(out_ptr + 2 * i, tl.exp(g), mask=m)
    tl.store(out_ptr + 2 * i + 1, expm1_triton(2.0 * g), mask=m)


def decay_terms(g: torch.Tensor) -> torch.Tensor:
    """``[*g.shape, 2]`` float64: :func:`dla_delta_decay_terms_kernel` over every token of ``g``."""
    out = torch.empty(*g.shape, 2, device=g.device, dtype=torch.float64)
    n, block = g.numel(), 1024
    dla_delta_decay_terms_kernel[(triton.cdiv(n, block),)](g.contiguous(), out, n, BLOCK=block)
    return out


@triton.jit
def token_inputs(k_ptr, v_ptr, g_ptr, b_ptr, bnd_ptr, row, kd, vd, Dk, Dv, OVERRIDE: tl.constexpr,
                 DECAY_TABLE: tl.constexpr):
    """One token's ``(k, v, g, em1, b, boundary)`` in float64 (the boundary override as int8, 0 without one).
    ``DECAY_TABLE``: ``g_ptr`` is :func:`decay_terms`' table, and ``g`` the token's ``exp(g)``, ``em1`` its
    ``expm1(2 g)``; else ``em1`` is 0 (the chain computes both)."""
    k = tl.load(k_ptr + row * Dk + kd, mask=kd < Dk, other=0.0).to(tl.float64)
    v = tl.load(v_ptr + row * Dv + vd, mask=vd < Dv, other=0.0).to(tl.float64)
    if DECAY_TABLE:
        g = tl.load(g_ptr + 2 * row)
        em1 = tl.load(g_ptr + 2 * row + 1)
    else:
        g = tl.load(g_ptr + row).to(tl.float64)
        em1 = g * 0.0
    b = tl.load(b_ptr + row).to(tl.float64)
    bnd = tl.load(bnd_ptr + row) if OVERRIDE else 0
    return k, v, g, em1, b, bnd


# Long: one row's sequential chain over its tokens; splitting it would add a round trip per token.
@triton.jit(do_not_specialize=["T"])
def dla_delta_decide_kernel(
    k_ptr, v_ptr, g_ptr, b_ptr, bnd_ptr, rlen_ptr, p_ptr, size_ptr,
    score_ptr, start_ptr, mask_ptr, scalars_ptr,
    T, H, Dk, Dv,
    BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, OVERRIDE: tl.constexpr, FAST_F64: tl.constexpr = False,
    DECAY_TABLE: tl.constexpr = False,
):
    """Program (row bh = b * H + h): scores [BH, T] float64, starts [BH, T] int8, the boundary mask of every chunk
    of C tokens [BH, NC] int64, and the open slot after the row's last token back into ``p_ptr``. ``scalars_ptr``:
    ``(tau, eps, norm_eps)`` in float64 (a Python float argument would reach the GPU as float32). FAST_F64: the
    score's float64 divisions and square roots without slow-path branches (``score_fast_f64``). DECAY_TABLE:
    ``g_ptr`` is :func:`decay_terms`' table (``DECAY_TABLE`` above)."""
    tau = tl.load(scalars_ptr)
    eps = tl.load(scalars_ptr + 1)
    norm_eps = tl.load(scalars_ptr + 2)
    bh = tl.program_id(0)
    b_idx = bh // H
    h = bh % H
    kd = tl.arange(0, BK)
    vd = tl.arange(0, BV)
    NC = tl.cdiv(T, C)
    n_tok = tl.load(rlen_ptr + bh)
    pmask = (kd[:, None] < Dk) & (vd[None, :] < Dv)
    P = tl.load(p_ptr + bh * Dk * Dv + kd[:, None] * Dv + vd[None, :], mask=pmask, other=0.0).to(tl.float64)
    nP = tl.sum(tl.sum(P * P, 0), 0)
    has_slot = tl.load(size_ptr + bh) > 0
    N = tl.cast(Dk * Dv, tl.float64)  # a plain int when Triton specialises Dk = Dv = 1
    mask = (bh * 0).to(tl.int64)
    row = b_idx * T * H + h
    k, v, g, em1, b, bnd = token_inputs(k_ptr, v_ptr, g_ptr, b_ptr, bnd_ptr, row, kd, vd, Dk, Dv, OVERRIDE,
                                        DECAY_TABLE)
    for t in range(n_tok):
        # The next token's inputs, loaded before this token's chain (its last iteration reads token 0 again).
        row_next = (b_idx * T + tl.where(t + 1 < n_tok, t + 1, 0)) * H + h
        kn, vn, gn, em1n, bn, bndn = token_inputs(k_ptr, v_ptr, g_ptr, b_ptr, bnd_ptr, row_next, kd, vd, Dk, Dv,
                                                  OVERRIDE, DECAY_TABLE)
        a = g if DECAY_TABLE else tl.exp(g)
        y, yw, ww = delta_rule_increment(P, k, v, a)
        x = b * yw
        # Every thread decides from its own copy of these sums (as the step kernel, fused_recurrent.py). At Dk = 32
        # (one key element a lane) sm_90 contracts k * k into |k|^2's first butterfly step, fma(k_L, k_L, shfl): the
        # lanes still agree, as k (a 16- or 32-bit input; float64 runs no Triton) squares exactly in float64.
        ss = b * b * tl.sum(k * k, 0) * ww
        if not DECAY_TABLE:  # (computed here, as before the table: earlier in the loop, ptxas schedules it worse)
            em1 = expm1_triton(2.0 * g)
        score = information_score_from_decay_triton(nP, x, ss, a, em1, N, eps, norm_eps, FAST_F64=FAST_F64)
        score = tl.where(has_slot, score, 0.0)  # an empty cache's first token opens a slot, score 0
        if OVERRIDE:
            start = (bnd != 0) | (~has_slot)
        else:
            start = (score >= tau) | (~has_slot)
        keep = tl.where(start, 0.0, a)  # a new slot starts from b k v^T alone
        P = keep * (P - b * k[:, None] * y[None, :]) + b * k[:, None] * v[None, :]
        nP = tl.sum(tl.sum(P * P, 0), 0)
        has_slot = t >= 0
        tl.store(score_ptr + bh * T + t, score)
        tl.store(start_ptr + bh * T + t, start.to(tl.int8))
        mask |= start.to(tl.int64) << (mask * 0 + t % C)  # (an int64 shift in the interpreter too)
        if (t % C == C - 1) | (t == n_tok - 1):
            tl.store(mask_ptr + bh * NC + t // C, mask)
            mask = mask * 0
        k, v, g, em1, b, bnd = kn, vn, gn, em1n, bn, bndn
    tl.store(p_ptr + bh * Dk * Dv + kd[:, None] * Dv + vd[None, :], P.to(p_ptr.dtype.element_ty), mask=pmask)


def decide_delta_rule_triton(k, v, g, beta, *, open_states, size, tau, boundaries=None, row_lengths=None,
                             eps: float = 1e-6, norm_eps: float = 1e-6, num_warps: int | None = None):
    """The delta rule's decisions for every (batch, head) row, on CUDA tensors (or CPU tensors under
    ``TRITON_INTERPRET=1``).

    Args:
        k: ``[B, T, H, Dk]``; v: ``[B, T, H, Dv]``; g, beta: ``[B, T, H]``; boundaries: bool ``[B, T, H]`` or None.
        open_states: ``[B, H, Dk, Dv]`` float32 (or float64), contiguous: the open slot of the initial cache (zero
            for an empty one); advanced in place to the open slot after each row's last token.
        size: ``[B, H]`` int64, the initial cache's slot counts (0: the first token opens a slot, score 0).
        row_lengths: ``[B]`` int64 tokens per row (the rest is padding, not decided), or None (all T).
        num_warps: the program's warps (None: ``WALK_WARPS``, whose None is 4 up to 64 x 64 heads, else 8). On an
            H200 (docs/benchmarks.md, run 16) 4 warps took 35 ms where 8 took 52 ms at (2, 16384, 16, 64); at (8,
            4096, 16, 128) 8 warps took 17 ms, 4 took 25 and 16 took 30; the decisions were the same, the scores
            within 2e-15.

    Returns:
        ``(scores [B, T, H] float64, starts [B, T, H] bool, masks [B * H, ceil(T / 64)] int64)``: the chunks'
        boundary masks (bit t of chunk c: token 64 c + t opens a slot), in the scalar-decay merge kernel's form.
        Padding past a row's length is 0.
    """
    B, T, H, _ = k.shape
    # On the device: a host tensor would be copied in on every call.
    lengths = torch.full((B,), T, device=k.device, dtype=torch.int64) if row_lengths is None else row_lengths
    scores, starts, masks = walk_rows(k, v, g, beta, open_states, size, tau, boundaries,
                                      lengths.to(k.device).repeat_interleave(H), eps, norm_eps, num_warps)
    to_bth = lambda x: x.view(B, H, T).transpose(1, 2)  # noqa: E731
    return to_bth(scores), to_bth(starts).to(torch.bool), masks


def walk_rows(k, v, g, beta, open_states, size, tau, boundaries, row_tokens, eps, norm_eps, num_warps=None):
    """:func:`decide_delta_rule_triton` on rows: ``row_tokens [B * H]`` int64 (a row of 0 tokens decides nothing
    and leaves its open slot). Returns ``(scores [B * H, T] float64, starts [B * H, T] int8, masks)``."""
    B, T, H, Dk = k.shape
    Dv = v.shape[-1]
    dev = k.device
    BH, NC = B * H, triton.cdiv(T, CHUNK)
    scores = torch.zeros(BH, T, device=dev, dtype=torch.float64)
    starts = torch.zeros(BH, T, device=dev, dtype=torch.int8)
    masks = torch.zeros(BH, NC, device=dev, dtype=torch.int64)
    override = boundaries is not None
    bnd = boundaries.to(torch.int8).contiguous() if override else starts
    BK, BV = max(next_pow2(Dk), 16), max(next_pow2(Dv), 16)
    dla_delta_decide_kernel[(BH,)](
        k.contiguous(), v.contiguous(), decay_terms(g) if DECAY_TABLE else g.contiguous(), beta.contiguous(), bnd,
        row_tokens.contiguous(),
        open_states, size.contiguous(), scores, starts, masks,
        float64_on(dev, [tau, eps, norm_eps]), T, H, Dk, Dv,
        BK=BK, BV=BV, C=CHUNK, OVERRIDE=override, FAST_F64=score_fast_f64(eps, norm_eps, k, v, g, beta),
        DECAY_TABLE=DECAY_TABLE, num_warps=num_warps or WALK_WARPS or (4 if BK * BV <= 64 * 64 else 8),
    )
    return scores, starts, masks
