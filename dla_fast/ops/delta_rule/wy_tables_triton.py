"""Triton, gated delta rule: the per-chunk WY tables of ``wy_tables.wy_tables`` in float64, one program per
(row, chunk): the decisions' (``akap``, ``kt``, ``khd``, ``Phi``, in the layouts the decision kernels take) or the
output stage's (``attn``, ``qt``, ``khd`` or ``b khd``, ``Phi``).

Per chunk (docs/delta-rule-chunked.md section 1) ``T = (I + diag(b) Gs)^-1`` with ``Gs = strict(K K^T)``. The
kernel solves for ``A = Gs T`` instead, since ``T = I - diag(b) A``; then every table is ``A`` and two products::

    A = Gs - Gs diag(b) A                       (a block of 16 rows at a time: gs_times_inverse)
    M = A (b K)     N = A^T (b K)
    akap = Dp o A   kt = e^Gp (K - M)   khd = e^(GL - Gc) (K - N)   Phi = e^GL (I - K^T Z),  Z = b (K - M)
    attn = D o (Mq - Mq diag(b) A)   qt = e^Gc (Q - Mq Z),   Mq = causal(Q K^T)

The inputs are the API's ``[B, T, H, D]`` and ``[B, T, H]`` tensors in their own dtypes: each program first copies
its chunk's keys (and queries) to a float64 scratch, zero past T (the tokens of a ragged last chunk behave as the
zero padding of a chunk-major copy would), since a 16-bit load feeding a float64 ``tl.dot`` does not compile for
sm_90 (Triton 3.6: "fp64 don't support largeK MMA") and a float32 one would multiply in tf32 (float64 chunk-major
copies, as the decisions pass them, are read in place). The products are
float64 ``tl.dot`` (the FP64 tensor cores) with operands loaded ``FP64_DOT_K`` columns at a time from that scratch
(``A``, ``Mq`` and ``Z`` go through it too): a float64 operand held whole in registers takes 128 registers a warp
and spills.

Bytes per (row, chunk) besides the tables: the chunk's inputs once (``2 C Dk`` elements in their dtype), the
float64 scratch (``2 C Dk + 2 C^2 + C Dk`` values, 160 KB at C = Dk = 64) written once and read back from L2 by
the products.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import FP64_DOT_K, chunk_tokens, dot_from_memory

KEY_BLOCK = 64  # key features a block of outputs: the widest float64 tiles are [C, KB] and [KB, KB]
# Rows of A = Gs T solved together (gs_times_inverse): the substitution runs over the diagonal blocks only, all at
# once, and the blocks below them are products.
INVERSE_BLOCK = 16
# Warps of the output stage's tables. H200, run 26, all 256 chunks of (2, 16384, 16, 64) in one launch: 2.83 ms at 8
# warps, 3.33 at 4 (the decisions' tables: 1.87 ms at 4, 2.53 at 8, so they keep 4).
OUTPUT_TABLE_WARPS = 8


@triton.jit
def _diagonal_blocks_gs_times_inverse(kk_ptr, b_ptr, C: tl.constexpr, BS: tl.constexpr):
    """``A_II = Gs_II T_II`` for every diagonal ``BS x BS`` block of ``K K^T [C, C]`` (row-major at ``kk_ptr``), all
    blocks at once as ``[C // BS, BS, BS]``, by forward substitution: ``A[i] = Gs[i] - sum_{j < i} Gs[i, j] b_j
    A[j]`` within each block (``b`` at ``b_ptr``); ``T_II = I - diag(b_I) A_II``."""
    blk = tl.arange(0, C // BS)[:, None, None]
    rows = tl.arange(0, BS)[None, :, None]
    cols = tl.arange(0, BS)[None, None, :]
    KK = tl.load(kk_ptr + (blk * BS + rows) * C + blk * BS + cols)
    # LT[., j, i] = Gs[i, j] b_j (KK is symmetric): row i's coefficients as a vector over j without a layout change.
    LT = tl.where(rows < cols, KK * tl.load(b_ptr + blk * BS + rows), 0.0)
    A = tl.where(cols < rows, KK, 0.0)
    for i in range(2, BS):  # rows 0 and 1 need no update
        l_i = tl.sum(tl.where(cols == i, LT, 0.0), 2)
        A = tl.where(rows == i, A - tl.sum(l_i[:, :, None] * A, 1)[:, None, :], A)
    return A


@triton.jit
def gs_times_inverse(a_ptr, b_ptr, C: tl.constexpr, BS: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr,
                     F32: tl.constexpr):
    """``A = Gs T`` with ``Gs = strict(K K^T)`` and ``T = (I + diag(b) Gs)^-1``, in place: ``a_ptr`` holds ``K K^T
    [C, C]`` (row-major, float64; float32 with ``F32``) and is overwritten by ``A`` a block of ``BS`` rows at a time
    (``b`` at ``b_ptr``).

    Row block I of ``A = Gs - Gs diag(b) A`` splits into the blocks before it and its own diagonal block ``N``:
    ``(I + N diag(b_I)) A_I = R_I`` with ``R_I = strict(Gs)_I - Gs_{I,<I} diag(b) A_{<I}``, and ``(I + N diag(b_I))^-1
    = I - A_II diag(b_I)`` (Woodbury, ``A_II = N T_II``), so ``A_I = R_I - A_II (b_I R_I)``. The substitution runs
    on the ``BS x BS`` diagonal blocks only (all at once); the rest are products. A block's rows of ``K K^T`` are
    last read by that block, so ``A_I`` takes their place.

    Float64 (the FP64 tensor cores) takes the products from memory, ``BKD`` columns at a time (``dot_from_memory``);
    ``F32`` takes them as tf32x3 products of whole ``[C, C]`` tiles with the rows and columns at and after block I
    masked to zero (``wy_tables_f32_triton``; ``BKD`` and ``STAGES`` unused)."""
    t = tl.arange(0, C)
    A_diag = _diagonal_blocks_gs_times_inverse(a_ptr, b_ptr, C, BS)
    blk = tl.arange(0, C // BS)[:, None, None]
    for I in tl.static_range(C // BS):
        r = I * BS + tl.arange(0, BS)
        R_I = tl.where(t[None, :] < r[:, None], tl.load(a_ptr + r[:, None] * C + t[None, :]), 0.0)
        if I > 0:
            if F32:
                above = t < I * BS
                Gs_b = tl.where(above[None, :], tl.load(a_ptr + r[:, None] * C + t[None, :]), 0.0) * tl.load(
                    b_ptr + t)[None, :]
                A_above = tl.where(above[:, None], tl.load(a_ptr + t[:, None] * C + t[None, :]), 0.0)
                R_I -= tl.dot(Gs_b, A_above, input_precision="tf32x3")
            else:
                R_I -= dot_from_memory(a_ptr + I * BS * C, C, 1, a_ptr, C, 1, b_ptr, BS, I * BS, C, BS, C, BKD, True,
                                       STAGES)
        A_II = tl.sum(tl.where(blk == I, A_diag, 0.0), 0)
        bR_I = tl.load(b_ptr + r)[:, None] * R_I
        if F32:
            A_I = R_I - tl.dot(A_II, bR_I, input_precision="tf32x3")
        else:
            A_I = R_I - tl.dot(A_II, bR_I)
        tl.debug_barrier()  # every thread has read block I's rows of K K^T
        tl.store(a_ptr + r[:, None] * C + t[None, :], A_I)
        tl.debug_barrier()  # A_I is in place for the next blocks


@triton.jit
def _stage_rows(src_ptr, row, valid, dst_ptr, Dk, C: tl.constexpr, KB: tl.constexpr):
    """Copy a chunk's rows ``src[row, :Dk]`` (any float dtype, 0 where not ``valid``) to ``dst [C, Dk]`` float64."""
    t = tl.arange(0, C)
    for kb in range(0, Dk, KB):
        kd = kb + tl.arange(0, KB)
        x = tl.load(src_ptr + row[:, None] * Dk + kd[None, :], mask=valid[:, None] & (kd[None, :] < Dk),
                    other=0.0).to(tl.float64)
        tl.store(dst_ptr + t[:, None] * Dk + kd[None, :], x, mask=kd[None, :] < Dk)


@triton.jit
def _chunk_operands(q_ptr, k_ptr, x64_ptr, row, valid, base, r, c, T, Dk, C: tl.constexpr, KB: tl.constexpr,
                    OUTPUTS: tl.constexpr, STAGED: tl.constexpr):
    """``(k_chunk, q_chunk)``: where the products read the chunk's float64 ``[C, Dk]`` keys and queries (rows of
    ``Dk``): the program's scratch, filled here (``STAGED``), or the float64 chunk-major inputs themselves."""
    if STAGED:
        k_chunk = x64_ptr + base * (1 + OUTPUTS) * C * Dk
        q_chunk = k_chunk + C * Dk
        _stage_rows(k_ptr, row, valid, k_chunk, Dk, C, KB)
        if OUTPUTS:
            _stage_rows(q_ptr, row, valid, q_chunk, Dk, C, KB)
    else:  # one head, whole chunks (H = 1, T a multiple of C): each chunk is a [C, Dk] block already
        k_chunk = k_ptr + (r * T + c * C) * Dk
        q_chunk = q_ptr + (r * T + c * C) * Dk
    return k_chunk, q_chunk


@triton.jit
def _store_phi(phi_ptr, z_chunk, k_chunk, bk, eGL, Dk, phi_si, phi_sj, C: tl.constexpr, KB: tl.constexpr,
               BKD: tl.constexpr, STAGES: tl.constexpr):
    """``Phi[j, i] = e^GL (delta_ij - (Z^T K)[i, j])`` at ``phi_ptr`` (element ``(i, j)`` at ``i phi_si + j
    phi_sj``), ``KB x KB`` blocks at a time."""
    for ib in range(0, Dk, KB):
        di = ib + tl.arange(0, KB)
        for jb in range(0, Dk, KB):
            dj = jb + tl.arange(0, KB)
            ZK = dot_from_memory(z_chunk + ib, 1, Dk, k_chunk + jb, Dk, 1, bk, Dk - ib, C, Dk - jb, KB, KB, BKD, False,
                                 STAGES)
            phi_ji = eGL * (tl.where(di[:, None] == dj[None, :], 1.0, 0.0) - ZK)
            tl.store(phi_ptr + dj[None, :] * phi_si + di[:, None] * phi_sj, phi_ji,
                     mask=(di[:, None] < Dk) & (dj[None, :] < Dk))


@triton.jit(do_not_specialize=["R", "T", "H", "c0", "phi_si", "phi_sj"])
def dla_delta_wy_tables_kernel(
    q_ptr, k_ptr, g_ptr, b_ptr, x64_ptr, b64_ptr, a_ptr, z_ptr, mq_ptr,
    akapT_ptr, ktT_ptr, khd_ptr, phi_ptr, attn_ptr, qt_ptr,
    R, T, H, c0, Dk: tl.constexpr, phi_si, phi_sj,
    C: tl.constexpr, KB: tl.constexpr, IB: tl.constexpr, BKD: tl.constexpr, STAGES: tl.constexpr,
    SCORES: tl.constexpr, OUTPUTS: tl.constexpr, BETA_KHD: tl.constexpr, STAGED: tl.constexpr,
):
    """Program (row r = b H + h, chunk c = c0 + j of the inputs ``q, k [B, T, H, Dk]``, ``g, b [B, T, H]``, any
    float dtypes, all 0 past T) -> at chunk-major index ``j R + r``: always ``khd [nb, R, C, Dk]`` (``b khd`` with
    ``BETA_KHD``) and ``Phi`` (element ``(i, j)`` at ``i phi_si + j phi_sj`` in a chunk's ``[Dk, Dk]``); with
    ``SCORES`` the decisions' ``akapT [nb, R, C (s), C (t)]`` and ``ktT [nb, R, Dk, C]``; with ``OUTPUTS`` the
    output stage's ``attn [nb, R, C, C]`` and ``qt [nb, R, C, Dk]`` (``q`` is read only then). Stored in the
    outputs' dtypes. ``x64 [.., 1 + OUTPUTS, C, Dk]`` (the keys, then the queries, with ``STAGED``; else the
    inputs must be float64 with ``H = 1`` and ``T`` a multiple of C, read in place), ``b64 [.., C]`` (b: the
    products' scale), ``a`` (``K K^T``, then ``A``), ``mq [.., C, C]`` and ``z [.., C, Dk]`` are float64 scratch.
    FLOPs: ~6 float64 ``C^2 Dk`` products, ``~C^3 / 3`` of block products for ``A`` and the substitution on its
    ``16 x 16`` diagonal blocks. ``Dk`` is a compile-time constant (one build per head width): sm_90 at Dk = 64
    builds with 224 B of stack against 576 with it an argument (run 69, H100: the decisions' tables -17 %)."""
    r = tl.program_id(0)
    base = tl.program_id(1) * R + r
    c = c0 + tl.program_id(1)
    _, _, t, tok, valid, row = chunk_tokens(r, c, T, H, C)
    rows, cols = t[:, None], t[None, :]
    g = tl.load(g_ptr + row, mask=valid, other=0.0).to(tl.float64)
    b = tl.load(b_ptr + row, mask=valid, other=0.0).to(tl.float64)
    Gc = tl.cumsum(g, 0)
    Gp = tl.where(t == 0, 0.0, tl.gather(Gc, tl.maximum(t - 1, 0), 0))  # Gc[t - 1]
    GL = tl.sum(tl.where(t == C - 1, Gc, 0.0), 0)
    k_chunk, q_chunk = _chunk_operands(q_ptr, k_ptr, x64_ptr, row, valid, base, r, c, T, Dk, C, KB, OUTPUTS, STAGED)
    a_chunk = a_ptr + base * C * C
    mq_chunk = mq_ptr + base * C * C
    z_chunk = z_ptr + base * C * Dk
    bk = b64_ptr + base * C
    tl.store(bk + t, b)
    tl.debug_barrier()  # the chunk's keys, queries and b are in the scratch for every thread
    KK = dot_from_memory(k_chunk, Dk, 1, k_chunk, 1, Dk, bk, C, Dk, C, C, C, BKD, False, STAGES)
    tl.store(a_chunk + rows * C + cols, KK)
    tl.debug_barrier()  # K K^T is in the scratch for every thread
    gs_times_inverse(a_chunk, bk, C, IB, BKD, STAGES, False)
    if SCORES:
        akap = tl.where(cols < rows, tl.exp(Gp[:, None] - Gc[None, :]), 0.0) * tl.load(a_chunk + rows * C + cols)
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
    khd_scale = tl.exp(GL - Gc)
    if BETA_KHD:
        khd_scale = khd_scale * b
    for kb in range(0, Dk, KB):
        kd = kb + tl.arange(0, KB)
        inside = kd[None, :] < Dk
        K = tl.load(k_chunk + rows * Dk + kd[None, :], mask=inside, other=0.0)
        KM = K - dot_from_memory(a_chunk, C, 1, k_chunk + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, True, STAGES)
        if SCORES:
            tl.store(ktT_ptr + (base * Dk + kd[None, :]) * C + rows, tl.exp(Gp)[:, None] * KM, mask=inside)
        tl.store(z_chunk + rows * Dk + kd[None, :], b[:, None] * KM, mask=inside)
        KN = K - dot_from_memory(a_chunk, 1, C, k_chunk + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, True, STAGES)
        tl.store(khd_ptr + (base * C + rows) * Dk + kd[None, :], khd_scale[:, None] * KN, mask=inside)
    tl.debug_barrier()  # Z is in the scratch for every thread
    _store_phi(phi_ptr + base * Dk * Dk, z_chunk, k_chunk, bk, tl.exp(GL), Dk, phi_si, phi_sj, C, KB, BKD, STAGES)
    if OUTPUTS:  # qt = e^Gc (Q - Mq Z)
        for kb in range(0, Dk, KB):
            kd = kb + tl.arange(0, KB)
            inside = kd[None, :] < Dk
            MqZ = dot_from_memory(mq_chunk, C, 1, z_chunk + kb, Dk, 1, bk, C, C, Dk - kb, C, KB, BKD, False, STAGES)
            Q = tl.load(q_chunk + rows * Dk + kd[None, :], mask=inside, other=0.0)
            tl.store(qt_ptr + (base * C + rows) * Dk + kd[None, :], tl.exp(Gc)[:, None] * (Q - MqZ), mask=inside)


def _launch(q, k, g, b, c0: int, nb: int, C: int, out, scores: bool, beta_khd: bool, num_warps: int, stages: int,
            staged: bool = False, key_block: int = KEY_BLOCK, maxnreg: int | None = None):
    """One launch over chunks ``c0 .. c0 + nb - 1`` of ``k [B, T, H, Dk]`` (chunks of C tokens); ``out`` holds the
    tables it writes (absent ones: any tensor; the keys at the chunk end as ``kb`` with ``beta_khd``). Returns the
    float64 scratch ``(x, b, A, Z, Mq)`` (``x``: the keys and queries, with ``staged`` always copied there).
    ``key_block``: the widest key block of the outputs' tiles (``KEY_BLOCK``); ``maxnreg``: a register cap (None:
    none)."""
    B, T, H, Dk = k.shape
    R = B * H
    f64 = lambda *shape: torch.empty(nb, R, *shape, device=k.device, dtype=torch.float64)  # noqa: E731
    outputs = q is not None
    # Float64 chunks of one head, contiguous (the chunk-major copies of the older entry points): read in place.
    staged = staged or T % C != 0 or H != 1 or any(x.dtype != torch.float64 for x in (q, k) if x is not None)
    scratch_x, scratch_b = f64(1 + outputs, C, Dk) if staged else k, f64(C)
    scratch_a, scratch_mq, scratch_z = f64(C, C), f64(C, C) if outputs else k, f64(C, Dk)
    phi = out["Phi"] if "Phi" in out else out["phiT"]
    phi_si, phi_sj = (Dk, 1) if "Phi" in out else (1, Dk)
    KB = max(16, min(key_block, triton.next_power_of_2(Dk)))
    keys = out["kb" if beta_khd else "khd"]
    dla_delta_wy_tables_kernel[(R, nb)](
        q if outputs else k, k, g, b, scratch_x, scratch_b, scratch_a, scratch_z, scratch_mq, out.get("akapT", k),
        out.get("ktT", k), keys, phi, out.get("attn", k), out.get("qt", k), R, T, H, c0, Dk, phi_si, phi_sj,
        C=C, KB=KB, IB=min(INVERSE_BLOCK, C), BKD=FP64_DOT_K, STAGES=stages, SCORES=scores, OUTPUTS=outputs,
        BETA_KHD=beta_khd, STAGED=staged, num_warps=num_warps,
        **({} if maxnreg is None else dict(maxnreg=maxnreg)))
    return scratch_x, scratch_b, scratch_a, scratch_z, scratch_mq


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """Chunk-major ``[nb, R, C, *F]`` as the kernel's ``[B, T, H, *F]`` with ``B = nb R``, ``T = C``, ``H = 1`` (a
    view: one chunk per row)."""
    nb, R, C = x.shape[:3]
    return x.contiguous().view(nb * R, C, 1, *x.shape[3:])


def score_tables_triton(k: torch.Tensor, g: torch.Tensor, b: torch.Tensor, *, num_warps: int = 4,
                        stages: int = 1, key_block: int = KEY_BLOCK, maxnreg: int | None = None):
    """The decisions' tables of a block of chunks: chunk-major ``k [nb, R, C, Dk]``, ``g, b [nb, R, C]`` (any
    float dtypes). Returns ``(akapT, ktT, khd, phiT)``: ``wy_tables(None, k, g, b)``'s ``akap``, ``kt`` and ``Phi``
    transposed in their last two dims, and ``khd``, float64. ``stages``: the products' loads in flight;
    ``key_block``, ``maxnreg``: ``_launch``'s (for ``delta_table_kernel.py``'s sweeps)."""
    nb, R, C, Dk = k.shape
    new = lambda *shape: torch.empty(nb, R, *shape, device=k.device, dtype=torch.float64)  # noqa: E731
    out = dict(akapT=new(C, C), ktT=new(Dk, C), khd=new(C, Dk), phiT=new(Dk, Dk))
    _launch(None, *(_as_rows(x) for x in (k, g, b)), 0, 1, C, out, True, False, num_warps, stages,
            key_block=key_block, maxnreg=maxnreg)
    return out["akapT"], out["ktT"], out["khd"], out["phiT"]


def output_tables_triton(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, b: torch.Tensor, *, dtype: torch.dtype,
                         num_warps: int = OUTPUT_TABLE_WARPS, stages: int = 1):
    """The output stage's tables of a block of chunks (chunk-major ``q, k [nb, R, C, Dk]``, ``g, b``, any float
    dtypes): ``wy_tables(q, k, g, b)``'s ``attn``, ``qt``, ``khd`` and ``Phi``, computed in float64 and stored in
    ``dtype``."""
    nb, R, C, Dk = k.shape
    out = empty_output_tables(nb, R, C, Dk, k.device, dtype, "khd")
    _launch(*(_as_rows(x) for x in (q, k, g, b)), 0, 1, C, out, False, False, num_warps, stages)
    return out


def output_tables_saved(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, b: torch.Tensor, *,
                        dtype: torch.dtype = torch.float64, num_warps: int = OUTPUT_TABLE_WARPS, stages: int = 1):
    """:func:`output_tables_triton` (computed in float64, stored in ``dtype``) with what ``wy_tables_adjoint_triton``
    reads besides: ``(tables, saved)``, ``saved`` the kernel's float64 scratch (the chunk's keys then queries ``x [nb,
    R, 2, C, Dk]``, ``b``, ``A = Gs T``, ``Z``, ``Mq = causal(Q K^T)``), as ``wy_tables`` returns its
    intermediates."""
    nb, R, C = k.shape[:3]
    as_blocks = lambda d: {n: t.view(nb, R, *t.shape[2:]) for n, t in d.items()}  # noqa: E731 ([1, nb R] -> [nb, R])
    out, saved = output_tables_saved_rows(*(_as_rows(t) for t in (q, k, g, b)), 0, 1, dtype=dtype, chunk=C,
                                          num_warps=num_warps, stages=stages)
    return as_blocks(out), as_blocks(saved)


def output_tables_saved_rows(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, b: torch.Tensor, c0: int, nb: int, *,
                             dtype: torch.dtype, chunk: int = 64, num_warps: int = OUTPUT_TABLE_WARPS,
                             stages: int = 1):
    """:func:`output_tables_saved` of chunks ``c0 .. c0 + nb - 1`` of ``q, k [B, T, H, Dk]``, ``g, b [B, T, H]``
    (contiguous, any float dtypes, read in place: the backward's units take them from its rows without chunk-major
    copies), chunk-major ``[nb, B H, ...]``."""
    B, T, H, Dk = k.shape
    out = empty_output_tables(nb, B * H, chunk, Dk, k.device, dtype, "khd")
    x, b64, A, Z, Mq = _launch(q, k, g, b, c0, nb, chunk, out, False, False, num_warps, stages, staged=True)
    return out, dict(x=x, b=b64, A=A, Z=Z, Mq=Mq)


def output_tables_rows(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, c0: int, nb: int, *,
                       dtype: torch.dtype, chunk: int = 64, num_warps: int = OUTPUT_TABLE_WARPS, stages: int = 1):
    """The output stage's tables of chunks ``c0 .. c0 + nb - 1`` of the API's inputs ``q, k [B, T, H, Dk]``,
    ``g, beta [B, T, H]`` (any float dtypes, read in place; zero past T): ``attn``, ``qt``, ``kb`` (``beta khd``, the
    tokens' keys at the chunk end times beta) and ``Phi``, chunk-major ``[nb, B H, ...]``, computed in float64 and
    stored in ``dtype``."""
    B, T, H, Dk = k.shape
    out = empty_output_tables(nb, B * H, chunk, Dk, k.device, dtype, "kb")
    _launch(*(x.contiguous() for x in (q, k, g, beta)), c0, nb, chunk, out, False, True, num_warps, stages)
    return out


def empty_output_tables(nb, R, C, Dk, device, dtype, keys: str) -> dict:
    """Empty output tables ``[nb, R, ...]`` in ``dtype``, the keys at the chunk end named ``keys``."""
    new = lambda *shape: torch.empty(nb, R, *shape, device=device, dtype=dtype)  # noqa: E731
    return {"attn": new(C, C), "qt": new(C, Dk), keys: new(C, Dk), "Phi": new(Dk, Dk)}
