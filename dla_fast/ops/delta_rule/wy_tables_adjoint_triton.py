"""Triton, gated delta rule: the adjoint of the output stage's WY tables, ``wy_tables.wy_tables_adjoint`` without the
score's tables, in float64 (tf32 for 16-bit inputs), one program per (row, chunk).

It reads what the table kernel leaves in its scratch (``wy_tables_triton.output_tables_saved``: the chunk's keys and
queries, ``b``, ``A = Gs T``, ``Z = T (b K)``, ``Mq = causal(Q K^T)``) and the tables themselves, so nothing is
inverted again: ``T = I - diag(b) A`` enters every product as ``X T^T = X - (X A^T) diag(b)`` or ``T^T X = X -
A^T diag(b) X``. The reverse of ``wy_tables``, term by term (``dGc``: the cumulative decays' gradient)::

    attn = D o (Mq T):       dX = c_attn o D,  dMq = dX T^T,  dT = Mq^T dX
    qt = e^Gc (Q - Mq Z):    dQ = e^Gc c_qt,   dMq -= dQ Z^T, dZ = -Mq^T dQ
    khd = e^(GL-Gc) T^T K:   dkh = e^(GL-Gc) c_khd,  dT += K dkh^T,  dK = T dkh
    Phi = e^GL (I - K^T Z):  dK -= e^GL Z c_Phi^T,  dZ -= e^GL K c_Phi
    Z = T (b K):             dT += dZ (b K)^T,  dbk = T^T dZ,  dK += b dbk,  db = rowsum(K o dbk)
    T = (I + b Gs)^-1:       dL = -strict(T^T dT T^T),  dGs = b dL,  db += rowsum(dL o Gs)
    Gs, Mq:                  dK += (dGs + dGs^T) K + causal(dMq)^T Q,  dQ += causal(dMq) K

For 16-bit inputs the same steps run in float32 with tf32 products (``operands``, ``OPD``: the scratch float32, the
gradients within the bf16 outputs' own rounding of the float64 kernel's; run 76: 7.2 -> 3.9 ms a training step at (2,
16384, 16, 64)). In float64 (float32 inputs) products are float64 ``tl.dot`` with both operands read from memory
(``dot_from_memory``, the FP64 tensor cores); the intermediates that later products read (``dX``, ``dQ``, ``dkh``,
``dZ``, ``dT``, ``dT T^T``, ``dGs + dGs^T``, ``causal(dMq)``) go through a float64 scratch of the program's own (``3 C^2
+ 3 C Dk`` values, 192 KB at C = Dk = 64), where ``dT`` and ``dMq`` also accumulate: held in registers, the two ``[C,
C]`` float64 tiles spilled (sm_90, 8 warps: 504 B of stack, against 320 B this way). Sixteen ``C^2 Dk``-sized products a
program: ~8.4 MFLOP at C = Dk = 64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import interpreting
from ..common.triton_utils import dot_from_memory_as as _dot
from .wy_tables_triton import KEY_BLOCK

# Warps of the adjoint kernel and its products' reduction step. H200, run 27, the backward's 8 blocks at (2, 16384,
# 16, 64), tables (3.2 ms) included: 10.64 ms at 8 warps and steps of 16 (sm_90: 255 registers, 320 B of stack),
# 10.25 at 8 and 32, 9.98 at 16 and 32 (128 registers, 408 B), 10.31 at 16 and 16, 11.68 at 4 and 16 (1.6 KB of
# stack); two or three load stages within 5 % of one. Torch's float32 blocks: 13.8-21.9 ms (two processes). One
# program per SM at every setting: a float64 product from memory takes ~100 registers a thread at 8 warps.
ADJOINT_WARPS = 16
ADJOINT_DOT_K = 32
# Warps with 16-bit or tf32 operands (float32 sums and scratch), the only launch these operands take. H100, run 76, the
# training step at (2, 16384, 16, 64) moderate: bf16 operands 3.69 ms at 8 warps (sm_90: 252 registers, no stack),
# 4.79 at 4 (255, 496 B), 4.19 at 16 (128, 40 B); tf32 3.92 at 8 (3.89 in another call); float64 at 16 warps: 7.2 ms.
# Run 77 (H100, Triton 3.6): at 16 warps the tf32 kernel's gradients were wrong (4.6e-1 of the largest entry against
# torch's float64 adjoint, the same in two calls); at 8 warps and key blocks of 64 they hold (Dk = 48, 64: float16,
# bf16, tf32 within 4 unit roundoffs), and a 32-feature backward whose keys' gradient came out wrong ran key blocks of
# 32 (with the float32 tables; with the float64 ones it passed). Both wrong launches, and no other, build wgmma
# instructions 16 columns wide (sm_90 TTGIR: instrShape [16, 16, 8]; the held launch has only [16, 32, 8]). So 16-bit
# operands run the launch the tests hold: 8 warps, key blocks of 64 (``Dk`` is a run-time argument: narrower heads run
# the kernel checked at 48 and 64, their keys masked).
ADJOINT_16BIT_WARPS = 8
# The products' operands (``operands``) -> (the kernel's ``OPD``, the scratch's dtype, the default warps).
_OPERANDS = {torch.float64: ("float64", torch.float64, ADJOINT_WARPS),
             torch.bfloat16: ("bfloat16", torch.float32, ADJOINT_16BIT_WARPS),
             torch.float16: ("float16", torch.float32, ADJOINT_16BIT_WARPS),
             torch.float32: ("tf32", torch.float32, ADJOINT_16BIT_WARPS)}  # float32 operands, tf32 products on a GPU


@triton.jit
def _square_product_sum(x_ptr, y_ptr, Dk, KB: tl.constexpr):
    """``sum(x o y)`` of two row-major ``[Dk, Dk]`` matrices, ``KB x KB`` blocks at a time."""
    i = tl.arange(0, KB)
    acc = tl.zeros([KB, KB], dtype=tl.float64)
    for ib in range(0, Dk, KB):
        for jb in range(0, Dk, KB):
            off = (ib + i)[:, None] * Dk + (jb + i)[None, :]
            inside = ((ib + i)[:, None] < Dk) & ((jb + i)[None, :] < Dk)
            acc += (tl.load(x_ptr + off, mask=inside, other=0.0).to(tl.float64)
                    * tl.load(y_ptr + off, mask=inside, other=0.0).to(tl.float64))
    return tl.sum(tl.sum(acc, 1), 0)


# Long: the adjoint's seven steps share the program's scratch and the barriers between them (helpers: ~12 pointers).
@triton.jit(do_not_specialize=["Dk"])
def dla_delta_wy_adjoint_kernel(
    x_ptr, b_ptr, a_ptr, z_ptr, mq_ptr, g_ptr,
    attn_ptr, qt_ptr, khd_ptr, phi_ptr,
    cattn_ptr, cqt_ptr, ckhd_ptr, cphi_ptr,
    dx_ptr, dt_ptr, dm_ptr, sq_ptr, skh_ptr, sz_ptr, sdk_ptr,
    dq_ptr, dk_ptr, dg_ptr, db_ptr, R, qk_sc, qk_sr, qk_st, gb_sc, gb_sr, gb_st,
    Dk, C: tl.constexpr, KB: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr, OPD: tl.constexpr,
):
    """Program p = c R + r (chunk c, row r of a block, chunk-major) -> ``dq, dk [nb, R, C, Dk]`` (any float dtype, the
    results, float64 or with 16-bit ``OPD`` float32, rounded once as stored), ``dg, db [nb, R, C]`` (float64), by their
    strides (chunk, row, token; unit stride over Dk), of ``<c_attn, attn> + <c_qt, qt> + <c_khd, khd> + <c_Phi, Phi>``.
    Reads the table kernel's scratch ``x [P, 2, C, Dk]`` (keys, queries), ``b [P, C]``, ``A``, ``Mq [P, C, C]``, ``Z [P,
    C, Dk]``, the log decays ``g [P, C]``, the tables and the cotangents (any float dtypes; ``Phi``'s row-major ``[Dk,
    Dk]``). ``dx, dt, dm [P, C, C]`` and ``sq, skh, sz, sdk [P, C, Dk]`` are scratch (float64; float32 where ``OPD``,
    the products' operands as ``dot_from_memory_as`` takes them, is not ``"float64"``)."""
    ACC: tl.constexpr = tl.float64 if OPD == "float64" else tl.float32
    p = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, C)
    rows, cols = t[:, None], t[None, :]
    cc, ck = p * C * C + rows * C + cols, p * C * Dk  # a [C, C] tile's offsets; a [C, Dk] matrix's start
    K, A, Z, Mq, bk = x_ptr + 2 * ck, a_ptr + p * C * C, z_ptr + ck, mq_ptr + p * C * C, b_ptr + p * C
    Q = K + C * Dk
    cphi = cphi_ptr + p * Dk * Dk
    dX, sT, sM = dx_ptr + p * C * C, dt_ptr + p * C * C, dm_ptr + p * C * C
    sQ, sKh, sZ = sq_ptr + ck, skh_ptr + ck, sz_ptr + ck
    b = tl.load(bk + t).to(ACC)
    Gc = tl.cumsum(tl.load(g_ptr + p * C + t).to(tl.float64), 0)
    GL = tl.sum(tl.where(t == C - 1, Gc, 0.0), 0)
    eGL = tl.exp(GL).to(ACC)
    eGc, eGLc = tl.exp(Gc).to(ACC), tl.exp(GL - Gc).to(ACC)
    # attn = D o (Mq T): dX = c_attn o D, dMq = dX T^T, dT = Mq^T dX.
    c_attn = tl.load(cattn_ptr + cc).to(ACC)
    E = c_attn * tl.load(attn_ptr + cc).to(ACC)
    dGc = tl.sum(E, 1) - tl.sum(E, 0)
    tl.store(dX + rows * C + cols, c_attn * tl.where(cols <= rows, tl.exp(Gc[:, None] - Gc[None, :]).to(ACC), 0.0))
    tl.debug_barrier()  # dX is in the scratch for every thread
    tl.store(sT + rows * C + cols, _dot(Mq, 1, C, dX, C, 1, bk, C, C, C, C, C, BKD, False, STAGES, OPD))
    dM = tl.load(dX + rows * C + cols) - b[None, :] * _dot(dX, C, 1, A, 1, C, bk, C, C, C, C, C, BKD, False, STAGES,
                                                          OPD)
    tl.store(sM + rows * C + cols, dM)
    # qt = e^Gc (Q - Mq Z) and khd = e^(GL - Gc) (T^T K): their scaled cotangents dQ and dkh to the scratch.
    E_khd = tl.zeros([C], dtype=ACC)
    for kb in range(0, Dk, KB):
        kd = kb + tl.arange(0, KB)
        off, inside = rows * Dk + kd[None, :], kd[None, :] < Dk
        c_qt = tl.load(cqt_ptr + ck + off, mask=inside, other=0.0).to(ACC)
        dGc += tl.sum(c_qt * tl.load(qt_ptr + ck + off, mask=inside, other=0.0).to(ACC), 1)
        tl.store(sQ + off, eGc[:, None] * c_qt, mask=inside)
        c_khd = tl.load(ckhd_ptr + ck + off, mask=inside, other=0.0).to(ACC)
        E_khd += tl.sum(c_khd * tl.load(khd_ptr + ck + off, mask=inside, other=0.0).to(ACC), 1)
        tl.store(sKh + off, eGLc[:, None] * c_khd, mask=inside)
    dGc -= E_khd
    dGL = tl.sum(E_khd, 0) + _square_product_sum(cphi, phi_ptr + p * Dk * Dk, Dk, KB)
    tl.debug_barrier()  # dQ, dkh and the first terms of dT and dMq are in the scratch for every thread
    # Each update of a scratch tile waits for every thread's read of it: a thread may store elements that another
    # has yet to load (the sum's layout is not the load's), and the compiler may place a load after the product.
    dM = tl.load(sM + rows * C + cols) - _dot(sQ, Dk, 1, Z, 1, Dk, bk, C, Dk, C, C, C, BKD, False, STAGES, OPD)
    tl.debug_barrier()
    tl.store(sM + rows * C + cols, tl.where(cols <= rows, dM, 0.0))  # dMq is complete: causal(dMq)
    dT = tl.load(sT + rows * C + cols) + _dot(K, Dk, 1, sKh, 1, Dk, bk, C, Dk, C, C, C, BKD, False, STAGES, OPD)
    tl.debug_barrier()
    tl.store(sT + rows * C + cols, dT)
    # dZ = -Mq^T dQ - e^GL K c_Phi (the queries' and Phi's terms).
    for kb in range(0, Dk, KB):
        kd = kb + tl.arange(0, KB)
        dZ = -_dot(Mq, 1, C, sQ + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, False, STAGES, OPD)
        dZ -= eGL * _dot(K, Dk, 1, cphi + kb, Dk, 1, bk, C, Dk, Dk - kb, C, KB, BKD, False, STAGES, OPD)
        tl.store(sZ + rows * Dk + kd[None, :], dZ, mask=kd[None, :] < Dk)
    tl.debug_barrier()  # dZ and dT so far are in the scratch for every thread
    # Z = T (b K): dT += dZ (b K)^T; the keys' first terms dK = T dkh - e^GL Z c_Phi^T + b T^T dZ, to dk.
    dT = tl.load(sT + rows * C + cols) + _dot(sZ, Dk, 1, K, 1, Dk, bk, C, Dk, C, C, C, BKD, False, STAGES,
                                              OPD) * b[None, :]
    db = tl.zeros([C], dtype=ACC)
    for kb in range(0, Dk, KB):
        kd = kb + tl.arange(0, KB)
        off, inside = rows * Dk + kd[None, :], kd[None, :] < Dk
        dK = tl.load(sKh + off, mask=inside, other=0.0) - b[:, None] * _dot(
            A, C, 1, sKh + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, False, STAGES, OPD)
        dK -= eGL * _dot(Z, Dk, 1, cphi + kb * Dk, 1, Dk, bk, C, Dk, Dk - kb, C, KB, BKD, False, STAGES, OPD)
        dbk = tl.load(sZ + off, mask=inside, other=0.0) - _dot(A, 1, C, sZ + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD,
                                                               True, STAGES, OPD)
        dK += b[:, None] * dbk
        db += tl.sum(tl.load(K + off, mask=inside, other=0.0).to(ACC) * dbk, 1)
        tl.store(sdk_ptr + ck + off, dK, mask=inside)
    # T = (I + diag(b) Gs)^-1: dL = -strict(T^T (dT T^T)), dGs = diag(b) dL.
    tl.debug_barrier()  # every thread has read dT so far
    tl.store(sT + rows * C + cols, dT)
    tl.debug_barrier()  # dT is in the scratch for every thread (dX's last reader has passed)
    W = dT - b[None, :] * _dot(sT, C, 1, A, 1, C, bk, C, C, C, C, C, BKD, False, STAGES, OPD)
    tl.store(dX + rows * C + cols, W)
    tl.debug_barrier()  # dT T^T is in the scratch for every thread
    TW = W - _dot(A, 1, C, dX, C, 1, bk, C, C, C, C, C, BKD, True, STAGES, OPD)
    dL = -tl.where(cols < rows, TW, 0.0)
    Gs = _dot(K, Dk, 1, K, 1, Dk, bk, C, Dk, C, C, C, BKD, False, STAGES, OPD)
    db += tl.sum(dL * Gs, 1)
    dGs = b[:, None] * dL
    tl.debug_barrier()  # every thread has read dT T^T
    tl.store(dX + rows * C + cols, dGs + tl.trans(dGs))
    tl.debug_barrier()  # dGs + dGs^T is in the scratch for every thread
    # Gs = strict(K K^T), Mq = causal(Q K^T).
    qk_at = (p // R) * qk_sc + (p % R) * qk_sr + rows * qk_st
    for kb in range(0, Dk, KB):
        kd = kb + tl.arange(0, KB)
        off, inside = rows * Dk + kd[None, :], kd[None, :] < Dk
        dQ = tl.load(sQ + off, mask=inside, other=0.0) + _dot(sM, C, 1, K + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD,
                                                              False, STAGES, OPD)
        dK = tl.load(sdk_ptr + ck + off, mask=inside, other=0.0)
        dK += _dot(dX, C, 1, K + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, False, STAGES, OPD)
        dK += _dot(sM, 1, C, Q + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, False, STAGES, OPD)
        tl.store(dq_ptr + qk_at + kd[None, :], dQ.to(dq_ptr.dtype.element_ty), mask=inside)
        tl.store(dk_ptr + qk_at + kd[None, :], dK.to(dk_ptr.dtype.element_ty), mask=inside)
    # Gc[t] = g[0] + ... + g[t] and GL = Gc[C - 1]: dg is the suffix sum of dGc.
    dGc = dGc.to(tl.float64)
    dGc = tl.where(t == C - 1, dGc + dGL, dGc)
    gb_at = (p // R) * gb_sc + (p % R) * gb_sr + t * gb_st
    tl.store(dg_ptr + gb_at, tl.sum(dGc, 0) - tl.cumsum(dGc, 0) + dGc)
    tl.store(db_ptr + gb_at, db)


def wy_tables_adjoint_triton(g: torch.Tensor, tables: dict, saved: dict, cot: dict, *, out: dict | None = None,
                             operands: torch.dtype = torch.float64, num_warps: int | None = None, stages: int = 1,
                             dot_k: int = ADJOINT_DOT_K, maxnreg: int | None = None):
    """``wy_tables_adjoint``'s ``(dq, dk, dg, db)`` (chunk-major ``[nb, R, C, ...]``) for the cotangents ``cot`` of
    ``attn``, ``qt``, ``khd`` and ``Phi`` (any float dtypes), from the log decays ``g [nb, R, C]`` and what
    ``wy_tables_triton.output_tables_saved`` returned for the same block (the score's tables take no part).
    ``out``: ``q, k, g, b`` to write them into (any strides with unit stride over Dk; ``q, k`` in any float dtype,
    each float64 result rounded once; ``g, b`` float64), returned; None: new float64 tensors. ``stages`` and
    ``dot_k``: the products' loads in flight and their reduction step. ``operands``: float64 (every product and sum
    in float64), or, for 16-bit inputs, a 16-bit dtype or float32 (tf32 on a GPU): each product's operands rounded to
    it, sums and scratch in float32 (docs/precision.md section 8), at ``ADJOINT_16BIT_WARPS`` and key blocks of 64
    only; ``num_warps`` None: that precision's default.
    ``maxnreg``: a register cap (for sweeps; None: none)."""
    if operands not in _OPERANDS:
        raise ValueError(f"wy_tables_adjoint_triton: operands must be one of {list(_OPERANDS)}, got {operands}")
    nb, R, C, Dk = tables["qt"].shape
    P, dev = nb * R, g.device
    new = lambda *shape: torch.empty(nb, R, *shape, device=dev, dtype=torch.float64)  # noqa: E731
    if out is None:
        out = dict(q=new(C, Dk), k=new(C, Dk), g=new(C), b=new(C))
    d = [out[n] for n in ("q", "k", "g", "b")]
    if [tuple(x.shape) for x in d] != [(nb, R, C, Dk)] * 2 + [(nb, R, C)] * 2:
        raise ValueError(f"wy_tables_adjoint_triton: out's q, k, g, b must be [{nb}, {R}, {C}(, {Dk})], got "
                         f"{[tuple(x.shape) for x in d]}")
    if d[0].stride() != d[1].stride() or d[2].stride() != d[3].stride() or d[0].stride(-1) != 1:
        raise ValueError("wy_tables_adjoint_triton: out's q and k (unit stride over Dk), and g and b, must share "
                         f"their strides, got {[x.stride() for x in d]}")
    if d[2].dtype != torch.float64 or d[3].dtype != torch.float64:
        raise ValueError(f"wy_tables_adjoint_triton: out's g and b must be float64, got {d[2].dtype}, {d[3].dtype}")
    opd, scratch, warps = _OPERANDS[operands]
    if opd != "float64" and num_warps not in (None, warps):
        raise ValueError(f"wy_tables_adjoint_triton: num_warps with {operands} operands must be {warps} (others gave "
                         f"wrong products on an H100: ADJOINT_16BIT_WARPS), got {num_warps}")
    key_block = KEY_BLOCK if opd != "float64" else max(16, min(KEY_BLOCK, triton.next_power_of_2(Dk)))
    cot = {n: cot[n].contiguous() for n in ("attn", "qt", "khd", "Phi")}
    dla_delta_wy_adjoint_kernel[(P,)](
        saved["x"], saved["b"], saved["A"], saved["Z"], saved["Mq"], g.contiguous(),
        tables["attn"], tables["qt"], tables["khd"], tables["Phi"],
        cot["attn"], cot["qt"], cot["khd"], cot["Phi"],
        *(torch.empty(nb, R, C, n, device=dev, dtype=scratch) for n in (C, C, C, Dk, Dk, Dk, Dk)),
        *d, R, *d[0].stride()[:3], *d[2].stride(), Dk,
        C=C, KB=key_block, BKD=dot_k, STAGES=stages, OPD=opd,
        num_warps=num_warps or warps, **({} if maxnreg is None or interpreting() else dict(maxnreg=maxnreg)))
    return tuple(d)
