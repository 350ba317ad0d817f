"""Triton, gated delta rule: the adjoint of the output stage's per-chunk WY tables (kernel C of
docs/delta-rule-chunked.md section 6.1): what ``wy_tables.wy_tables_adjoint`` computes for the tables the backward
without a score reads (``attn``, ``qt``, ``khd``, ``Phi``; the score's ``kt`` and ``akap`` take no cotangent there).

One program per (chunk, row) recomputes the chunk's tables from ``q, k, g, b`` in float32 and applies the reverse of
each formula, all ``[C, C]`` and ``[C, Dk]`` tiles in registers:

    Gs = strict(K K^T)    A = Gs - Gs diag(b) A (forward substitution)    T = I - diag(b) A = (I + diag(b) Gs)^-1
    Z = T (b K)    M = causal(Q K^T)    attn = D o (M T)    qt = e^Gc (Q - M Z)
    khd = e^(GL - Gc) (T^T K)    Phi = e^GL (I - K^T Z)

and, with ``dL = -strict(T^T dT T^T)`` for the inverse, the gradients into ``q``, ``k``, ``g`` (through the
cumulative decays) and ``b``. Every product is float32-accurate (``dot_f32``: split tf32 operands).

FLOPs per (chunk, row) at C = Dk = 64: ~6 products to recompute and 16 for the adjoint, ~11.5 MFLOP (three passes
each on the tensor cores); bytes: the inputs and the four cotangents once (~66 KB in float32), the gradients once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import next_pow2
from .chunk_fwd_states import dot_f32
from .wy_tables_triton import gs_times_inverse

# Key features up to which the kernel builds for sm_90 (Triton 3.6, 8 warps): 160 KB of shared memory at 64, 352 KB
# at 128, above the 227 KB an SM offers.
MAX_KEY_FEATURES = 64


@triton.jit
def _mm(a, b):
    """``a @ b`` to float32 accuracy."""
    return dot_f32(a, b, None, False)


# Long: one program recomputes a chunk's tables and takes each formula's reverse in turn.
@triton.jit
def dla_delta_tables_adjoint_kernel(
    q_ptr, k_ptr, g_ptr, b_ptr, cattn_ptr, cqt_ptr, ckhd_ptr, cphi_ptr, dq_ptr, dk_ptr, dg_ptr, db_ptr,
    Dk, C: tl.constexpr, BK: tl.constexpr,
):
    """Program ``cr`` (chunk-major index c R + r): ``q, k [.., C, Dk]``, ``g, b [.., C]`` (the chunk's log decays
    and betas, 0 past a row's tokens), the cotangents ``cattn [.., C, C]``, ``cqt``, ``ckhd [.., C, Dk]``, ``cphi
    [.., Dk, Dk]``, all float32 -> ``dq, dk [.., C, Dk]``, ``dg, db [.., C]`` float32."""
    cr = tl.program_id(0)
    t = tl.arange(0, C)
    d = tl.arange(0, BK)
    rows, cols = t[:, None], t[None, :]
    kmask = d[None, :] < Dk
    at_cd = cr * C * Dk + rows * Dk + d[None, :]
    Q = tl.load(q_ptr + at_cd, mask=kmask, other=0.0)
    K = tl.load(k_ptr + at_cd, mask=kmask, other=0.0)
    g = tl.load(g_ptr + cr * C + t)
    b = tl.load(b_ptr + cr * C + t)
    causal, strict = cols <= rows, cols < rows
    # The tables.
    Gc = tl.cumsum(g, 0)
    GL = tl.sum(tl.where(t == C - 1, Gc, 0.0), 0)
    KK = _mm(K, tl.trans(K))
    Gs = tl.where(strict, KK, 0.0)
    T = tl.where(rows == cols, 1.0, 0.0) - b[:, None] * gs_times_inverse(KK, b, C)
    bK = b[:, None] * K
    Z = _mm(T, bK)
    M = tl.where(causal, _mm(Q, tl.trans(K)), 0.0)
    D = tl.where(causal, tl.exp(Gc[:, None] - Gc[None, :]), 0.0)
    attn = D * _mm(M, T)
    eGc = tl.exp(Gc)
    qt = eGc[:, None] * (Q - _mm(M, Z))
    dec = tl.exp(GL - Gc)
    khd = dec[:, None] * _mm(tl.trans(T), K)
    dd_rows, dd_cols = d[:, None], d[None, :]
    eye_k = tl.where(dd_rows == dd_cols, 1.0, 0.0)
    Phi = tl.exp(GL) * (eye_k - _mm(tl.trans(K), Z))
    # Their cotangents.
    c_attn = tl.load(cattn_ptr + cr * C * C + rows * C + cols)
    c_qt = tl.load(cqt_ptr + at_cd, mask=kmask, other=0.0)
    c_khd = tl.load(ckhd_ptr + at_cd, mask=kmask, other=0.0)
    c_phi = tl.load(cphi_ptr + cr * Dk * Dk + dd_rows * Dk + dd_cols, mask=(dd_rows < Dk) & (dd_cols < Dk), other=0.0)
    # attn = D o (M T)
    dX = c_attn * D
    E = c_attn * attn
    dGc = tl.sum(E, 1) - tl.sum(E, 0)
    dM = _mm(dX, tl.trans(T))
    dT = _mm(tl.trans(M), dX)
    # qt = e^Gc (Q - M Z)
    dGc += tl.sum(c_qt * qt, 1)
    dq = eGc[:, None] * c_qt
    dM -= _mm(dq, tl.trans(Z))
    dZ = -_mm(tl.trans(M), dq)
    # khd = e^(GL - Gc) (T^T K)
    E_khd = tl.sum(c_khd * khd, 1)
    dGL = tl.sum(E_khd, 0)
    dGc -= E_khd
    dkh = dec[:, None] * c_khd
    dT += _mm(K, tl.trans(dkh))
    dk = _mm(T, dkh)
    # Phi = e^GL (I - K^T Z)
    dGL += tl.sum(tl.sum(c_phi * Phi, 1), 0)
    dP = tl.exp(GL) * c_phi
    dk -= _mm(Z, tl.trans(dP))
    dZ -= _mm(K, dP)
    # Z = T (b K)
    dT += _mm(dZ, tl.trans(bK))
    dbk = _mm(tl.trans(T), dZ)
    dk += b[:, None] * dbk
    db = tl.sum(K * dbk, 1)
    # T = L^-1, L = I + diag(b) Gs: dL = -T^T dT T^T (its strictly lower part is L's only free part)
    dL = -tl.where(strict, _mm(_mm(tl.trans(T), dT), tl.trans(T)), 0.0)
    dGs = b[:, None] * dL
    db += tl.sum(dL * Gs, 1)
    # Gs = strict(K K^T), M = causal(Q K^T)
    dk += _mm(dGs + tl.trans(dGs), K)
    dM = tl.where(causal, dM, 0.0)
    dq += _mm(dM, K)
    dk += _mm(tl.trans(dM), Q)
    # Gc[t] = g[c0] + ... + g[t], GL = Gc[C - 1]: dg[t] = sum_{s >= t} dGc[s]
    dGc += tl.where(t == C - 1, dGL, 0.0)
    dg = tl.sum(dGc, 0) - tl.cumsum(dGc, 0) + dGc
    tl.store(dq_ptr + at_cd, dq, mask=kmask)
    tl.store(dk_ptr + at_cd, dk, mask=kmask)
    tl.store(dg_ptr + cr * C + t, dg)
    tl.store(db_ptr + cr * C + t, db)


def tables_adjoint(q, k, g, b, cot) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dg, db)`` (float32) of ``sum_name <cot[name], tables[name]>`` over ``attn``, ``qt``, ``khd`` and
    ``Phi`` for chunk-major ``q, k [n, R, C, Dk]``, ``g, b [n, R, C]`` (any float dtypes; cast to float32) and
    ``cot`` holding those four cotangents shaped like the tables."""
    n, R, C, Dk = k.shape
    if Dk > MAX_KEY_FEATURES:
        raise ValueError(f"tables_adjoint: at most {MAX_KEY_FEATURES} key features, got {Dk}")
    f32 = lambda x: x.to(torch.float32).contiguous()  # noqa: E731
    dq, dk = (torch.empty(n, R, C, Dk, device=k.device, dtype=torch.float32) for _ in range(2))
    dg, db = (torch.empty(n, R, C, device=k.device, dtype=torch.float32) for _ in range(2))
    dla_delta_tables_adjoint_kernel[(n * R,)](
        f32(q), f32(k), f32(g), f32(b), f32(cot["attn"]), f32(cot["qt"]), f32(cot["khd"]), f32(cot["Phi"]),
        dq, dk, dg, db, Dk, C=C, BK=max(16, next_pow2(Dk)), num_warps=8,
    )
    return dq, dk, dg, db
