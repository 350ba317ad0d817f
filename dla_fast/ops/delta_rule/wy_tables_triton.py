"""Triton, gated delta rule: the per-chunk WY tables of ``wy_tables.wy_tables`` in float64, one program per
(row, chunk): the decisions' (``akap``, ``kt``, ``khd``, ``Phi``, in the layouts the decision kernels take) or the
output stage's (``attn``, ``qt``, ``khd``, ``Phi``).

Per chunk (docs/delta-rule-chunked.md section 1) ``T = (I + diag(b) Gs)^-1`` with ``Gs = strict(K K^T)``. The
kernel solves for ``A = Gs T`` instead, since ``T = I - diag(b) A``; then every table is ``A`` and two products::

    A = Gs - Gs diag(b) A                       (forward substitution, one row at a time)
    M = A (b K)     N = A^T (b K)
    akap = Dp o A   kt = e^Gp (K - M)   khd = e^(GL - Gc) (K - N)   Phi = e^GL (I - K^T Z),  Z = b (K - M)
    attn = D o (Mq - Mq diag(b) A)   qt = e^Gc (Q - Mq Z),   Mq = causal(Q K^T)

The products are float64 ``tl.dot`` (the FP64 tensor cores) with operands loaded ``FP64_DOT_K`` columns at a time
from memory (``A``, ``Mq`` and ``Z`` go through a scratch buffer): a float64 operand held whole in registers takes 128
registers a warp and spills.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import FP64_DOT_K, dot_from_memory

KEY_BLOCK = 64  # key features a block of outputs: the widest float64 tiles are [C, KB] and [KB, KB]


@triton.jit(do_not_specialize=["R", "Dk", "phi_si", "phi_sj"])
def dla_delta_wy_tables_kernel(
    q_ptr, k_ptr, g_ptr, b_ptr, a_ptr, z_ptr, mq_ptr, akapT_ptr, ktT_ptr, khd_ptr, phi_ptr, attn_ptr, qt_ptr,
    R, Dk, phi_si, phi_sj,
    C: tl.constexpr, KB: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr,
    SCORES: tl.constexpr, OUTPUTS: tl.constexpr,
):
    """Program (row r, chunk j): chunk-major float64 ``q, k [nb, R, C, Dk]``, ``g``, ``b [nb, R, C]`` -> always
    ``khd [nb, R, C, Dk]`` and ``Phi`` (element ``(i, j)`` at ``i phi_si + j phi_sj`` in a chunk's ``[Dk, Dk]``);
    with ``SCORES`` the decisions' ``akapT [nb, R, C (s), C (t)]`` and ``ktT [nb, R, Dk, C]``; with ``OUTPUTS`` the
    output stage's ``attn [nb, R, C, C]`` and ``qt [nb, R, C, Dk]`` (``q`` is read only then). Stored in the
    outputs' dtypes. ``a``, ``mq [.., C, C]`` and ``z [.., C, Dk]`` are scratch."""
    base = tl.program_id(1) * R + tl.program_id(0)
    t = tl.arange(0, C)
    rows, cols = t[:, None], t[None, :]
    g = tl.load(g_ptr + base * C + t)
    b = tl.load(b_ptr + base * C + t)
    Gc = tl.cumsum(g, 0)
    Gp = tl.where(t == 0, 0.0, tl.gather(Gc, tl.maximum(t - 1, 0), 0))  # Gc[t - 1]
    GL = tl.sum(tl.where(t == C - 1, Gc, 0.0), 0)
    k_chunk = k_ptr + base * C * Dk
    q_chunk = q_ptr + base * C * Dk
    a_chunk = a_ptr + base * C * C
    mq_chunk = mq_ptr + base * C * C
    z_chunk = z_ptr + base * C * Dk
    bk = b_ptr + base * C
    KK = dot_from_memory(k_chunk, Dk, 1, k_chunk, 1, Dk, bk, C, Dk, C, C, C, BKD, False, STAGES)
    # A[i] = Gs[i] - sum_{j < i} Gs[i, j] b_j A[j]. LT[j, i] = Gs[i, j] b_j (K K^T is symmetric) gives the
    # coefficients of row i as a vector over j without a layout change.
    LT = tl.where(rows < cols, KK * b[:, None], 0.0)
    A = tl.where(cols < rows, KK, 0.0)
    for i in range(2, C):  # rows 0 and 1 need no update
        l_i = tl.sum(tl.where(cols == i, LT, 0.0), 1)
        A = tl.where(rows == i, A - tl.sum(l_i[:, None] * A, 0)[None, :], A)
    tl.store(a_chunk + rows * C + cols, A)
    if SCORES:
        akap = tl.where(cols < rows, tl.exp(Gp[:, None] - Gc[None, :]), 0.0) * A
        tl.store(akapT_ptr + (base * C + cols) * C + rows, akap)
    if OUTPUTS:  # Mq = causal(Q K^T)
        Mq = dot_from_memory(q_chunk, Dk, 1, k_chunk, 1, Dk, bk, C, Dk, C, C, C, BKD, False, STAGES)
        tl.store(mq_chunk + rows * C + cols, tl.where(cols <= rows, Mq, 0.0))
    tl.debug_barrier()  # A and Mq are in the scratch for every thread
    if OUTPUTS:  # attn = D o (Mq T) = D o (Mq - Mq diag(b) A)
        MqbA = dot_from_memory(mq_chunk, C, 1, a_chunk, C, 1, bk, C, C, C, C, C, BKD, True, STAGES)
        attn = tl.where(cols <= rows, tl.exp(Gc[:, None] - Gc[None, :]), 0.0) * (
            tl.load(mq_chunk + rows * C + cols) - MqbA)
        tl.store(attn_ptr + (base * C + rows) * C + cols, attn)
    for kb in range(0, Dk, KB):
        kd = kb + tl.arange(0, KB)
        inside = kd[None, :] < Dk
        K = tl.load(k_chunk + rows * Dk + kd[None, :], mask=inside, other=0.0)
        KM = K - dot_from_memory(a_chunk, C, 1, k_chunk + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, True, STAGES)
        if SCORES:
            tl.store(ktT_ptr + (base * Dk + kd[None, :]) * C + rows, tl.exp(Gp)[:, None] * KM, mask=inside)
        tl.store(z_chunk + rows * Dk + kd[None, :], b[:, None] * KM, mask=inside)
        KN = K - dot_from_memory(a_chunk, 1, C, k_chunk + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, True, STAGES)
        tl.store(khd_ptr + (base * C + rows) * Dk + kd[None, :], tl.exp(GL - Gc)[:, None] * KN, mask=inside)
    tl.debug_barrier()  # Z is in the scratch for every thread
    eGL = tl.exp(GL)
    for ib in range(0, Dk, KB):  # Phi[j, i] = e^GL (delta_ij - (Z^T K)[i, j])
        di = ib + tl.arange(0, KB)
        for jb in range(0, Dk, KB):
            dj = jb + tl.arange(0, KB)
            ZK = dot_from_memory(z_chunk + ib, 1, Dk, k_chunk + jb, Dk, 1, bk, Dk - ib, C, Dk - jb, KB, KB, BKD, False,
                                 STAGES)
            phi_ji = eGL * (tl.where(di[:, None] == dj[None, :], 1.0, 0.0) - ZK)
            tl.store(phi_ptr + base * Dk * Dk + dj[None, :] * phi_si + di[:, None] * phi_sj, phi_ji,
                     mask=(di[:, None] < Dk) & (dj[None, :] < Dk))
    if OUTPUTS:  # qt = e^Gc (Q - Mq Z)
        for kb in range(0, Dk, KB):
            kd = kb + tl.arange(0, KB)
            inside = kd[None, :] < Dk
            MqZ = dot_from_memory(mq_chunk, C, 1, z_chunk + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, False, STAGES)
            Q = tl.load(q_chunk + rows * Dk + kd[None, :], mask=inside, other=0.0)
            tl.store(qt_ptr + (base * C + rows) * Dk + kd[None, :], tl.exp(Gc)[:, None] * (Q - MqZ), mask=inside)


def _launch(q, k, g, b, out, scores: bool, num_warps: int, stages: int):
    """One launch over a block of chunks; ``out`` holds the tables it writes (absent ones: any tensor)."""
    nb, R, C, Dk = k.shape
    given = [x.dtype for x in (q, k, g, b) if x is not None]
    if any(d != torch.float64 for d in given):
        raise ValueError(f"wy_tables_triton: q, k, g and b must be float64 (the tables' precision), got {given}")
    f64 = lambda *shape: torch.empty(nb, R, *shape, device=k.device, dtype=torch.float64)  # noqa: E731
    scratch_a, scratch_mq, scratch_z = f64(C, C), f64(C, C) if q is not None else k, f64(C, Dk)
    phi = out["Phi"] if "Phi" in out else out["phiT"]
    phi_si, phi_sj = (Dk, 1) if "Phi" in out else (1, Dk)
    KB = max(16, min(KEY_BLOCK, triton.next_power_of_2(Dk)))
    dla_delta_wy_tables_kernel[(R, nb)](
        k if q is None else q, k, g, b, scratch_a, scratch_z, scratch_mq, out.get("akapT", k), out.get("ktT", k),
        out["khd"], phi, out.get("attn", k), out.get("qt", k), R, Dk, phi_si, phi_sj,
        C=C, KB=KB, BKD=FP64_DOT_K, STAGES=stages, SCORES=scores, OUTPUTS=q is not None, num_warps=num_warps)


def score_tables_triton(k: torch.Tensor, g: torch.Tensor, b: torch.Tensor, *, num_warps: int = 4,
                        stages: int = 1):
    """The decisions' tables of a block of chunks: chunk-major float64 ``k [nb, R, C, Dk]``, ``g, b [nb, R, C]``.
    Returns ``(akapT, ktT, khd, phiT)``: ``wy_tables(None, k, g, b)``'s ``akap``, ``kt`` and ``Phi`` transposed
    in their last two dims, and ``khd``, float64. ``stages``: the products' loads in flight."""
    nb, R, C, Dk = k.shape
    k, g, b = (x.contiguous() for x in (k, g, b))
    new = lambda *shape: torch.empty(nb, R, *shape, device=k.device, dtype=torch.float64)  # noqa: E731
    out = dict(akapT=new(C, C), ktT=new(Dk, C), khd=new(C, Dk), phiT=new(Dk, Dk))
    _launch(None, k, g, b, out, True, num_warps, stages)
    return out["akapT"], out["ktT"], out["khd"], out["phiT"]


def output_tables_triton(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, b: torch.Tensor, *, dtype: torch.dtype,
                         num_warps: int = 4, stages: int = 1):
    """The output stage's tables of a block of chunks (chunk-major float64 ``q, k [nb, R, C, Dk]``, ``g, b``):
    ``wy_tables(q, k, g, b)``'s ``attn``, ``qt``, ``khd`` and ``Phi``, computed in float64 and stored in
    ``dtype``."""
    nb, R, C, Dk = k.shape
    q, k, g, b = (x.contiguous() for x in (q, k, g, b))
    new = lambda *shape: torch.empty(nb, R, *shape, device=k.device, dtype=dtype)  # noqa: E731
    out = dict(attn=new(C, C), qt=new(C, Dk), khd=new(C, Dk), Phi=new(Dk, Dk))
    _launch(q, k, g, b, out, False, num_warps, stages)
    return out
