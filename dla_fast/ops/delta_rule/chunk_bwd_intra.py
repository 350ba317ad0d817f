"""Triton, gated delta rule backward: the intra-chunk attention's adjoint of a block of chunks in one launch.

What ``chunk_torch_bwd._block_adjoint`` does in torch (ten launches over ``[n, R, C, C]`` tensors and a scatter of
float atomics, docs/performance.md "Run 73"). Per (chunk, row), with ``J[t, s]`` the recency of token s seen from
token t (-1 unless ``s <= t < T``), ``Wl[t, s] = lam_t[J[t, s]]`` and ``dP = dO bv^T``:

    d(b v)[s] += sum_t attn[t, s] Wl[t, s] dO_t          d lam_t[j] += sum_{s: J[t, s] = j} dP[t, s] attn[t, s]

and returns the attention table's cotangent ``dP * Wl``. A program owns its chunk's rows of both gradients: no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import interpreting
from ..common.triton_utils import next_pow2


# Long: one chunk's three products and the read weights' sums by slot in one program.
@triton.jit
def dla_delta_intra_adjoint_kernel(
    j_ptr, lam_ptr, attn_ptr, bv_ptr, do_ptr, dbv_ptr, dlam_ptr, cattn_ptr,
    R, lam_sc, lam_sr, lam_st, dlam_sc, dlam_sr, dlam_st, K: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, PREC: tl.constexpr,
):
    """Program (row r, chunk c of the block): ``j, attn, cattn [n, R, C, C]``, ``bv, do, dbv [n, R, C, Dv]``
    contiguous; ``lam, dlam [n, R, C, K]`` by their strides (chunk, row, token). ``K`` and ``Dv`` compile-time
    constants, as in the other delta kernels (run 69)."""
    r = tl.program_id(0)
    c = tl.program_id(1)
    base = c * R + r
    t = tl.arange(0, C)
    tile = (base * C + t[:, None]) * C + t[None, :]
    recency = tl.load(j_ptr + tile).to(tl.int32)
    valid = recency >= 0
    lam_row = lam_ptr + c * lam_sc + r * lam_sr + t[:, None] * lam_st
    Wl = tl.load(lam_row + tl.maximum(recency, 0), mask=valid, other=0.0).to(tl.float32)
    attn = tl.load(attn_ptr + tile).to(tl.float32)
    dP = tl.zeros([C, C], dtype=tl.float32)
    for v0 in range(0, Dv, BV):
        vd = v0 + tl.arange(0, BV)
        rows = (base * C + t[:, None]) * Dv + vd[None, :]
        inside = vd[None, :] < Dv
        dO = tl.load(do_ptr + rows, mask=inside, other=0.0).to(tl.float32)
        bv = tl.load(bv_ptr + rows, mask=inside, other=0.0).to(tl.float32)
        dP += tl.dot(dO, tl.trans(bv), input_precision=PREC)
    tl.store(cattn_ptr + tile, dP * Wl)
    weighted = tl.trans(attn * Wl)  # [s, t]
    for v0 in range(0, Dv, BV):
        vd = v0 + tl.arange(0, BV)
        rows = (base * C + t[:, None]) * Dv + vd[None, :]
        inside = vd[None, :] < Dv
        dO = tl.load(do_ptr + rows, mask=inside, other=0.0).to(tl.float32)
        acc = tl.load(dbv_ptr + rows, mask=inside, other=0.0)
        tl.store(dbv_ptr + rows, tl.dot(weighted, dO, acc, input_precision=PREC), mask=inside)
    val = tl.where(valid, dP * attn, 0.0)
    slot = tl.arange(0, KP)
    sums = tl.zeros([C, KP], dtype=tl.float32)
    # The read weights' gradient: token t's entries summed by their recency. Within one chunk the recency stays below
    # the chunk's boundaries + 1 (a few at sparse and moderate workloads): slots past the tile's largest are skipped.
    last = tl.max(tl.max(recency, 1), 0)
    for j in range(K):
        if j <= last:
            sums += tl.where(slot[None, :] == j, tl.sum(tl.where(recency == j, val, 0.0), 1)[:, None], 0.0)
    dlam_at = dlam_ptr + c * dlam_sc + r * dlam_sr + t[:, None] * dlam_st + slot[None, :]
    inside = slot[None, :] < K
    tl.store(dlam_at, tl.load(dlam_at, mask=inside, other=0.0) + sums, mask=inside)


def intra_adjoint(J, lam, attn, bv, dO, dbv, dlam):
    """The block's intra-chunk adjoint (module docstring): ``J [n, R, C, C]`` (integer, -1 outside), ``lam [n, R, C,
    K]`` (any strides with unit stride over K), ``attn [n, R, C, C]``, ``bv, dO [n, R, C, Dv]``; adds into ``dbv``
    (contiguous, like ``bv``) and ``dlam`` (like ``lam``), both float32, and returns ``dP * Wl [n, R, C, C]``
    float32."""
    n, R, C, Dv = bv.shape
    K = lam.shape[-1]
    for name, x in (("lam", lam), ("dlam", dlam)):
        if x.stride(-1) != 1:
            raise ValueError(f"intra_adjoint: {name} must have unit stride over its last axis, got {x.stride()}")
    if not dbv.is_contiguous() or dbv.dtype != torch.float32 or dlam.dtype != torch.float32:
        raise ValueError("intra_adjoint: dbv (contiguous) and dlam must be float32")
    cattn = torch.empty(n, R, C, C, device=bv.device, dtype=torch.float32)
    dla_delta_intra_adjoint_kernel[(R, n)](
        J.contiguous(), lam, attn.contiguous(), bv.contiguous(), dO.contiguous(), dbv, dlam, cattn,
        R, *lam.stride()[:3], *dlam.stride()[:3], K, Dv,
        C=C, BV=min(64, max(16, next_pow2(Dv))), KP=max(16, next_pow2(K)),
        PREC="ieee" if interpreting() else "tf32x3", num_warps=8)  # sm_90: 136 B of stack (4 warps: 552)
    return cattn
