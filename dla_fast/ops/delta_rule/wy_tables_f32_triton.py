"""Triton, gated delta rule: the output stage's WY tables in float32 (issue #12, run 44; the forward's up to 64
features since run 45: ``chunk_fwd.output_tables``).

The same tables as ``wy_tables_triton.output_tables_rows`` (``attn``, ``qt``, ``kb = b khd``, ``Phi``, stored in
float32), by the same formulas (that module's docstring), with the products in three-pass tf32 (``tf32x3``: float32
accuracy on the tensor cores) and the substitution for ``A = Gs T`` in float32, where the float64 kernel multiplies on
the FP64 tensor cores from a float64 scratch (2.83 ms at (2, 16384, 16, 64) on an H200, ~6x that work's floor). The
chunk's cumulative log decays and their differences stay float64 and are rounded before ``exp``: in float32 ``Gc``
(down to ~-44 in a chunk at a decay of 0.5) carries ~4e-6 of absolute rounding, which a CPU study found to be most of
the float32 tables' extra error (``benchmarks/delta_output_tables_f32_study.py``: with float64 decays the slot states'
error equals the float64 tables'; docs/performance.md "Run 44"). H200, run 45 (``benchmarks/delta_table_kernel.py
--f32 4,8``, all chunks in one launch): 1.74 ms on 4 warps against the float64 kernel's 2.84 at (2, 16384, 16, 64);
at 128 features slower (6.88 against 5.05: 1.2 KB of stack on sm_90), so the forward keeps the float64 kernel there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import interpreting
from ..common.triton_utils import bf16_exact_products, chunk_tokens, dot_split, dot_split_t, load_rows, next_pow2
from .wy_tables_triton import INVERSE_BLOCK, empty_output_tables, gs_times_inverse

OUTPUT_TABLE_F32_WARPS = 4  # H200, run 45, (2, 16384, 16, 64): 1.74 ms on 4 warps, 2.33 on 8 (float64 kernel: 2.84)


@triton.jit
def _dot(a, b):
    """``a @ b`` to float32 accuracy on the tensor cores."""
    return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def _dot_keys(a16, b16, SPLIT16: tl.constexpr):
    """``a16 @ b16`` of two key or query tiles (in the inputs' dtype): one bf16 product with SPLIT16 (exact products,
    float32 sums), else tf32x3 of their float32 values."""
    if SPLIT16:
        return tl.dot(a16, b16)
    return _dot(a16.to(tl.float32), b16.to(tl.float32))


@triton.jit(do_not_specialize=["R", "T", "H", "c0"])
def dla_delta_output_tables_f32_kernel(
    q_ptr, k_ptr, g_ptr, b_ptr, a_ptr, bs_ptr, attn_ptr, qt_ptr, kb_ptr, phi_ptr, x_ptr, z_ptr, mq_ptr,
    R, T, H, c0, Dk: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, IB: tl.constexpr, SPLIT16: tl.constexpr = False, SAVE: tl.constexpr = False,
):
    """Program (row r = b H + h, chunk c = c0 + j of ``q, k [B, T, H, Dk]``, ``g, b [B, T, H]``, any float dtypes,
    0 past T) -> at chunk-major index ``j R + r``, float32: ``attn [C, C]``, ``qt [C, Dk]``, ``kb [C, Dk]`` (``b
    khd``), ``Phi [Dk, Dk]``. ``a [.., C, C]`` (``K K^T``, then ``A``) and ``bs [.., C]`` are float32 scratch.
    FLOPs: six ``2 C^2 Dk``-sized products and ``~C^3 / 3`` for ``A``, each three tf32 passes. SPLIT16 (bf16 ``q``
    and ``k``): the products with a key or query operand take it as it is, exact, in bf16 products (``K K^T`` and
    ``Q K^T`` one pass; the float32 operand of the other three split in three bf16 parts, ``split3``) instead of
    tf32x3, which splits both operands; the products of two float32 operands stay tf32x3. SAVE (the backward's
    tables, which its adjoint reads with what the float64 kernel saves): ``khd`` into ``kb`` (without ``b``), the
    keys and queries into ``x [.., 2, C, Dk]``, ``Z`` into ``z [.., C, Dk]`` and ``causal(Q K^T)`` into ``mq [.., C,
    C]``, float32 (``a`` keeps ``A``, ``bs`` keeps ``b``)."""
    r = tl.program_id(0)
    base = tl.program_id(1) * R + r
    _, _, t, _, valid, row = chunk_tokens(r, c0 + tl.program_id(1), T, H, C)
    rows, cols = t[:, None], t[None, :]
    kd = tl.arange(0, BK)
    K16 = load_rows(k_ptr, row, valid, kd, Dk)
    Q16 = load_rows(q_ptr, row, valid, kd, Dk)
    if SPLIT16:  # (exact: bf16 inputs, or float32 copies of bf16 numbers, as the backward's rows of bf16 inputs are)
        K16 = K16.to(tl.bfloat16)
        Q16 = Q16.to(tl.bfloat16)
    K = K16.to(tl.float32)
    Q = Q16.to(tl.float32)
    b = tl.load(b_ptr + row, mask=valid, other=0.0).to(tl.float32)
    Gc = tl.cumsum(tl.load(g_ptr + row, mask=valid, other=0.0).to(tl.float64), 0)
    GL = tl.sum(tl.where(t == C - 1, Gc, 0.0), 0)
    a_chunk = a_ptr + base * C * C
    bk = bs_ptr + base * C
    tl.store(a_chunk + rows * C + cols, _dot_keys(K16, tl.trans(K16), SPLIT16))
    tl.store(bk + t, b)
    tl.debug_barrier()  # K K^T and b are in the scratch for every thread
    gs_times_inverse(a_chunk, bk, C, IB, 16, 1, True)  # A = Gs T in float32
    # Each table as soon as its operands are formed, so that fewer [C, C] and [C, Dk] tiles are live at once.
    A = tl.load(a_chunk + rows * C + cols)
    inside = kd[None, :] < Dk
    # M = A (b K) and N = A^T (b K); SPLIT16: as (A diag(b)) K and (diag(b) A)^T K, the keys exact in bf16
    bK = b[:, None] * K
    M = dot_split_t(tl.trans(A * b[None, :]), K16) if SPLIT16 else _dot(A, bK)
    Z = b[:, None] * (K - M)
    N = dot_split_t(b[:, None] * A, K16) if SPLIT16 else _dot(tl.trans(A), bK)
    khd = tl.exp((GL - Gc).to(tl.float32))[:, None] * (K - N)  # e^(GL - Gc) (K - N)
    tl.store(kb_ptr + (base * C + rows) * Dk + kd[None, :], khd if SAVE else b[:, None] * khd, mask=inside)
    if SAVE:
        keys_at = x_ptr + (base * 2 * C + rows) * Dk + kd[None, :]
        tl.store(keys_at, K, mask=inside)
        tl.store(keys_at + C * Dk, Q, mask=inside)
        tl.store(z_ptr + (base * C + rows) * Dk + kd[None, :], Z, mask=inside)
    causal = cols <= rows
    Mq = tl.where(causal, _dot_keys(Q16, tl.trans(K16), SPLIT16), 0.0)
    if SAVE:
        tl.store(mq_ptr + (base * C + rows) * C + cols, Mq)
    decay = tl.where(causal, tl.exp(tl.where(causal, Gc[:, None] - Gc[None, :], 0.0).to(tl.float32)), 0.0)
    attn = decay * (Mq - _dot(Mq, b[:, None] * A))  # D o (Mq T), T = I - diag(b) A
    tl.store(attn_ptr + (base * C + rows) * C + cols, attn)
    qt = tl.exp(Gc.to(tl.float32))[:, None] * (Q - _dot(Mq, Z))
    tl.store(qt_ptr + (base * C + rows) * Dk + kd[None, :], qt, mask=inside)
    eye = tl.where(kd[:, None] == kd[None, :], 1.0, 0.0)
    KZ = dot_split(tl.trans(K16), Z) if SPLIT16 else _dot(tl.trans(K), Z)
    phi = tl.exp(GL).to(tl.float32) * (eye - KZ)  # e^GL (I - K^T Z)
    tl.store(phi_ptr + base * Dk * Dk + kd[:, None] * Dk + kd[None, :], phi,
             mask=(kd[:, None] < Dk) & (kd[None, :] < Dk))


def output_tables_rows_f32(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, c0: int, nb: int,
                           *, chunk: int = 64, num_warps: int = OUTPUT_TABLE_F32_WARPS, split16: bool | None = None,
                           save: bool = False, bf16_numbers: bool = False):
    """``wy_tables_triton.output_tables_rows``'s tables of chunks ``c0 .. c0 + nb - 1`` (``attn``, ``qt``, ``kb``,
    ``Phi``, chunk-major ``[nb, B H, ...]``, float32) from the API's ``q, k [B, T, H, Dk]``, ``g, beta [B, T, H]``,
    computed in float32 (the decays in float64). ``split16``: the key and query operands in exact bf16 products
    (the kernel's SPLIT16); None: where ``q`` and ``k`` are bf16, on a GPU (Triton's interpreter multiplies bf16
    operands wrongly: ``triton_utils.bf16_exact_products``). ``save``: returns ``(tables, saved)`` as
    ``wy_tables_triton.output_tables_saved_rows`` does (``khd`` for ``kb``; ``saved`` float32), for the backward's
    tables' adjoint in float32 (``wy_tables_adjoint_triton(operands=)`` other than float64). ``bf16_numbers``: ``q`` and
    ``k`` are float32 copies of bf16 numbers (the backward's rows of bf16 inputs), which ``split16`` then takes as
    bf16, exactly (None: on a GPU)."""
    if bf16_numbers:
        split16 = not interpreting() if split16 is None else split16
    else:
        split16 = bf16_exact_products(split16, q=q, k=k)
    B, T, H, Dk = k.shape
    R = B * H
    out = empty_output_tables(nb, R, chunk, Dk, k.device, torch.float32, "khd" if save else "kb")
    f32 = lambda *shape: torch.empty(nb, R, *shape, device=k.device, dtype=torch.float32)  # noqa: E731
    saved = dict(b=f32(chunk), A=f32(chunk, chunk))
    if save:
        saved.update(x=f32(2, chunk, Dk), Z=f32(chunk, Dk), Mq=f32(chunk, chunk))
    dla_delta_output_tables_f32_kernel[(R, nb)](
        *(x.contiguous() for x in (q, k, g, beta)), saved["A"], saved["b"], out["attn"], out["qt"],
        out["khd" if save else "kb"], out["Phi"], *(saved.get(n, k) for n in ("x", "Z", "Mq")), R, T, H, c0, Dk,
        C=chunk, BK=max(16, next_pow2(Dk)), IB=min(INVERSE_BLOCK, chunk), SPLIT16=split16, SAVE=save,
        num_warps=num_warps)
    return (out, saved) if save else out
