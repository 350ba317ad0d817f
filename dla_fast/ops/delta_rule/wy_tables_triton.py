"""Triton, gated delta rule: the WY tables the decisions read (``wy_tables.wy_tables(None, ...)``'s ``akap``, ``kt``,
``khd`` and ``Phi``), one program per (row, chunk), in float64, in the layouts the decision kernels take.

Per chunk (docs/delta-rule-chunked.md section 1) ``T = (I + diag(b) Gs)^-1`` with ``Gs = strict(K K^T)``. The
kernel solves for ``A = Gs T`` instead, since ``T = I - diag(b) A``; then every table is ``A`` and two products::

    A = Gs - Gs diag(b) A                       (forward substitution, one row at a time)
    M = A (b K)     N = A^T (b K)
    akap = Dp o A   kt = e^Gp (K - M)   khd = e^(GL - Gc) (K - N)   Phi = e^GL (I - K^T Z),  Z = b (K - M)

The products are float64 ``tl.dot`` (the FP64 tensor cores) with operands loaded ``DOT_K`` columns at a time
from memory (``A`` and ``Z`` go through a scratch buffer): a float64 operand held whole in registers takes 128
registers a warp and spills.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import dot_from_memory

KEY_BLOCK = 64  # key features a block of outputs: the widest float64 tiles are [C, KB] and [KB, KB]
DOT_K = 16  # the products' reduction step


@triton.jit(do_not_specialize=["R", "Dk"])
def dla_delta_score_tables_kernel(
    k_ptr, g_ptr, b_ptr, a_ptr, z_ptr, akapT_ptr, ktT_ptr, khd_ptr, phiT_ptr,
    R, Dk,
    C: tl.constexpr, KB: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr,
):
    """Program (row r, chunk j): chunk-major float64 ``k [nb, R, C, Dk]``, ``g``, ``b [nb, R, C]`` ->
    ``akapT [nb, R, C (s), C (t)]``, ``ktT [nb, R, Dk, C]``, ``khd [nb, R, C, Dk]``, ``phiT [nb, R, Dk, Dk]``;
    ``a [.., C, C]`` and ``z [.., C, Dk]`` are scratch."""
    base = tl.program_id(1) * R + tl.program_id(0)
    t = tl.arange(0, C)
    rows, cols = t[:, None], t[None, :]
    g = tl.load(g_ptr + base * C + t)
    b = tl.load(b_ptr + base * C + t)
    Gc = tl.cumsum(g, 0)
    Gp = tl.where(t == 0, 0.0, tl.gather(Gc, tl.maximum(t - 1, 0), 0))  # Gc[t - 1]
    GL = tl.sum(tl.where(t == C - 1, Gc, 0.0), 0)
    k_chunk = k_ptr + base * C * Dk
    KK = dot_from_memory(k_chunk, Dk, 1, k_chunk, 1, Dk, b_ptr, C, Dk, C, C, C, BKD, False, STAGES)
    # A[i] = Gs[i] - sum_{j < i} Gs[i, j] b_j A[j]. LT[j, i] = Gs[i, j] b_j (K K^T is symmetric) gives the
    # coefficients of row i as a vector over j without a layout change.
    LT = tl.where(rows < cols, KK * b[:, None], 0.0)
    A = tl.where(cols < rows, KK, 0.0)
    for i in range(2, C):  # rows 0 and 1 need no update
        l_i = tl.sum(tl.where(cols == i, LT, 0.0), 1)
        A = tl.where(rows == i, A - tl.sum(l_i[:, None] * A, 0)[None, :], A)
    a_chunk = a_ptr + base * C * C
    tl.store(a_chunk + rows * C + cols, A)
    akap = tl.where(cols < rows, tl.exp(Gp[:, None] - Gc[None, :]), 0.0) * A
    tl.store(akapT_ptr + (base * C + cols) * C + rows, akap)
    tl.debug_barrier()  # A is in the scratch for every thread
    bk = b_ptr + base * C
    z_chunk = z_ptr + base * C * Dk
    for kb in range(0, Dk, KB):
        kd = kb + tl.arange(0, KB)
        inside = kd[None, :] < Dk
        K = tl.load(k_chunk + rows * Dk + kd[None, :], mask=inside, other=0.0)
        KM = K - dot_from_memory(a_chunk, C, 1, k_chunk + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, True, STAGES)
        tl.store(ktT_ptr + (base * Dk + kd[None, :]) * C + rows, tl.exp(Gp)[:, None] * KM, mask=inside)
        tl.store(z_chunk + rows * Dk + kd[None, :], b[:, None] * KM, mask=inside)
        KN = K - dot_from_memory(a_chunk, 1, C, k_chunk + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, True, STAGES)
        tl.store(khd_ptr + (base * C + rows) * Dk + kd[None, :], tl.exp(GL - Gc)[:, None] * KN, mask=inside)
    tl.debug_barrier()  # Z is in the scratch for every thread
    eGL = tl.exp(GL)
    for ib in range(0, Dk, KB):  # phiT[i, j] = Phi[j, i] = e^GL (delta_ij - (Z^T K)[i, j])
        di = ib + tl.arange(0, KB)
        for jb in range(0, Dk, KB):
            dj = jb + tl.arange(0, KB)
            ZK = dot_from_memory(z_chunk + ib, 1, Dk, k_chunk + jb, Dk, 1, bk, Dk - ib, C, Dk - jb, KB, KB, BKD, False,
                                 STAGES)
            phiT = eGL * (tl.where(di[:, None] == dj[None, :], 1.0, 0.0) - ZK)
            tl.store(phiT_ptr + (base * Dk + di[:, None]) * Dk + dj[None, :], phiT,
                     mask=(di[:, None] < Dk) & (dj[None, :] < Dk))


def score_tables_triton(k: torch.Tensor, g: torch.Tensor, b: torch.Tensor, *, num_warps: int = 4,
                        stages: int = 1):
    """The decisions' tables of a block of chunks: chunk-major float64 ``k [nb, R, C, Dk]``, ``g, b [nb, R, C]``.
    Returns ``(akapT, ktT, khd, phiT)``: ``wy_tables(None, k, g, b)``'s ``akap``, ``kt`` and ``Phi`` transposed
    in their last two dims, and ``khd``. ``stages``: the products' loads in flight."""
    nb, R, C, Dk = k.shape
    k, g, b = (x.contiguous() for x in (k, g, b))
    new = lambda *shape: torch.empty(nb, R, *shape, device=k.device, dtype=torch.float64)  # noqa: E731
    akapT, ktT, khd, phiT, scratch_a, scratch_z = new(C, C), new(Dk, C), new(C, Dk), new(Dk, Dk), new(C, C), new(C, Dk)
    KB = max(16, min(KEY_BLOCK, triton.next_power_of_2(Dk)))
    dla_delta_score_tables_kernel[(R, nb)](k, g, b, scratch_a, scratch_z, akapT, ktT, khd, phiT, R, Dk, C=C, KB=KB,
                                           BKD=DOT_K, STAGES=stages, num_warps=num_warps)
    return akapT, ktT, khd, phiT
