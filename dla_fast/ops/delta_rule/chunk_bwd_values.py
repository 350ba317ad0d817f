"""Triton, gated delta rule backward: the values' and the betas' gradients from ``d(b v)`` in one pass.

The values enter as ``b v``. Where ``b`` and ``d(b v)`` are float32 numbers (the kernels' path), ``dv = b d(b v)`` is
their product rounded once, and ``db`` gains ``sum_d v d(b v)`` summed in float64 (float32 products are exact there).
In torch the sum is four passes over float64 copies of ``[nC, R, C, Dv]`` (~1.9 GB of traffic at (2, 16384, 16,
64)); here one read of ``v`` and ``d(b v)`` and one write of ``dv``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.layout import chunks
from ..common.triton_utils import next_pow2


@triton.jit
def dla_delta_value_grads_kernel(
    v_ptr, dbv_ptr, b_ptr, db_ptr, dv_ptr, R, v_sc, v_sr, v_st, b_sc, b_sr, b_st, db_sc, db_sr, db_st,
    dv_sc, dv_sr, dv_st, Dv: tl.constexpr, C: tl.constexpr, BV: tl.constexpr,
):
    """Program (row r, chunk c): ``v, dv [nC, R, C, Dv]`` float32 and ``b, db [nC, R, C]`` float64 by their
    strides (chunk, row, token; unit stride over Dv); ``dbv [nC, R, C, Dv]`` float32 contiguous."""
    r = tl.program_id(0)
    c = tl.program_id(1)
    t = tl.arange(0, C)
    b = tl.load(b_ptr + c * b_sc + r * b_sr + t * b_st).to(tl.float32)  # a float32 number held in float64
    v_row = v_ptr + c * v_sc + r * v_sr + t[:, None] * v_st
    dv_row = dv_ptr + c * dv_sc + r * dv_sr + t[:, None] * dv_st
    row = ((c * R + r) * C + t[:, None]) * Dv
    acc = tl.zeros([C], dtype=tl.float64)
    for v0 in range(0, Dv, BV):
        vd = v0 + tl.arange(0, BV)
        inside = vd[None, :] < Dv
        g = tl.load(dbv_ptr + row + vd[None, :], mask=inside, other=0.0)
        tl.store(dv_row + vd[None, :], b[:, None] * g, mask=inside)
        v = tl.load(v_row + vd[None, :], mask=inside, other=0.0)
        acc += tl.sum(v.to(tl.float64) * g.to(tl.float64), 1)
    db_at = db_ptr + c * db_sc + r * db_sr + t * db_st
    tl.store(db_at, tl.load(db_at) + acc)


def value_grads(v: torch.Tensor, dbv: torch.Tensor, b: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """``dv = b d(b v)`` (returned, float32 ``[nC, R, C, Dv]``: the chunk view of new rows ``[R, nC C, Dv]``, which
    ``layout.unchunk`` views without a copy) and ``db += sum_d v d(b v)`` (in place) from ``v`` float32 and ``dbv``
    (contiguous) float32 ``[nC, R, C, Dv]``, ``b`` (float32 numbers) and ``db`` float64 ``[nC, R, C]``; ``v`` may be
    a chunk view of rows (unit stride over Dv)."""
    nC, R, C, Dv = dbv.shape
    if v.dtype != torch.float32 or dbv.dtype != torch.float32 or not dbv.is_contiguous() or v.stride(-1) != 1:
        raise ValueError("value_grads: v (unit stride over Dv) and dbv (contiguous) must be float32")
    if b.dtype != torch.float64 or db.dtype != torch.float64:
        raise ValueError(f"value_grads: b and db must be float64, got {b.dtype} and {db.dtype}")
    dv = chunks(torch.empty(R, nC * C, Dv, device=dbv.device, dtype=torch.float32), C, nC)
    dla_delta_value_grads_kernel[(R, nC)](
        v, dbv, b, db, dv, R, *v.stride()[:3], *b.stride(), *db.stride(), *dv.stride()[:3], Dv, C=C,
        BV=min(64, next_pow2(Dv)), num_warps=4)
    return dv
