"""Triton, gated delta rule: the backward's cotangents of the per-chunk tables from the slot states at each chunk
start ``F`` and their adjoints at its end ``E`` (kernel B of docs/delta-rule-chunked.md section 6.1; what
``chunk_bwd._segment_cotangents`` computes in torch). One program per (chunk, row), all of Dv in the program (a loop
over Dv blocks), so no sum crosses programs:

- ``dla_delta_start_cotangents_kernel``, over the start slots i: ``dPhi = sum_i G_i F_i^T`` (``G_i = E[destF[i]]``),
  the reads' ``Zr_i = dO F_i^T`` (``[C, Dk]``), ``dqt = sum_i coef[:, i] Zr_i`` and ``dcoef[:, i] = rowsum(qt Zr_i)``;
- ``dla_delta_token_cotangents_kernel``, over the end slots j that receive a token of the chunk (few: the slots open
  in it): ``dkhd_s = E_j (b v)_s`` and ``d(b v)_s = E_j^T khd_s`` for the tokens s with ``dest[s] = j``.

Every product is float32-accurate (the slot-state kernel's ``dot_f32``), or one tf32 pass (``split=False``, opt-in for
16-bit inputs). FLOPs per (chunk, row) at C = Dk = Dv = 64, K = 30: the start slots' two ``64^3`` products per slot, 31
MFLOP, three passes each; the tokens' two per receiving slot. Bytes: ``F`` and ``E`` once (``2 K Dk Dv x 4``, 960 KB),
the tables' rows, the cotangents once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import next_pow2
from .chunk_fwd_states import dot_f32_or_tf32


# Long: one program's loop over the start slots, each through every Dv block.
@triton.jit
def dla_delta_start_cotangents_kernel(
    f_ptr, e_ptr, dest_f_ptr, coef_ptr, qt_ptr, do_ptr, dphi_ptr, dqt_ptr, dcoef_ptr, jf_ptr, dlam_ptr,
    R, dlam_sc, dlam_sr, dlam_st, K: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, CS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr,
    SCATTER: tl.constexpr, SPLIT: tl.constexpr,
):
    """Program (step c of the batch, row r, the step's chunk h of ``CS`` of its ``C`` tokens), ``cr = c R + r``:
    ``F, E [n, R, K, Dk, Dv]`` float32; ``dest_f [n, R, K]`` int32 (-1: not listed); ``coef [n, R, C, K]``, ``qt [n,
    R, C, Dk]`` float32 (step-major); ``do [n C / CS, R, CS, Dv]`` float32 (chunk-major). Writes ``dphi [n, R, Dk,
    Dk]`` (the first chunk's program), ``dqt [n, R, C, Dk]``, and ``dcoef [n, R, C, K]``, or with ``SCATTER`` adds it
    by recency into the read weights' gradient: ``dlam[t, jf[t, i]] += dcoef[t, i]`` (``jf [n, R, C, K]`` integer,
    -1: not listed; ``dlam [n C / CS, R, CS, K]`` float32 by its strides: the program owns its rows)."""
    cr = tl.program_id(0) * R + tl.program_id(1)
    chunk = tl.program_id(0) * (C // CS) + tl.program_id(2)
    first = tl.program_id(2) == 0  # the program that sums dPhi
    dk = tl.arange(0, BK)
    t = tl.program_id(2) * CS + tl.arange(0, CS)  # the step's tokens (its tables' rows)
    own = (chunk * R + tl.program_id(1)) * CS + tl.arange(0, CS)  # their rows of the chunk-major dO
    kmask = dk < Dk
    qt = tl.load(qt_ptr + cr * C * Dk + t[:, None] * Dk + dk[None, :], mask=kmask[None, :], other=0.0)
    dphi = tl.zeros([BK, BK], dtype=tl.float32)
    dqt = tl.zeros([CS, BK], dtype=tl.float32)
    slot = tl.arange(0, KP)
    dlam = tl.zeros([CS, KP], dtype=tl.float32)
    for i in range(K):
        end = tl.load(dest_f_ptr + cr * K + i)
        listed = (end >= 0).to(tl.float32)
        f_at = f_ptr + (cr * K + i) * Dk * Dv
        e_at = e_ptr + (cr * K + tl.maximum(end, 0)) * Dk * Dv
        zr = tl.zeros([CS, BK], dtype=tl.float32)  # dO F_i^T, summed over the Dv blocks
        for v0 in range(0, Dv, BV):
            dv = v0 + tl.arange(0, BV)
            vmask = dv < Dv
            f_t = tl.load(f_at + dv[:, None] + dk[None, :] * Dv, mask=vmask[:, None] & kmask[None, :], other=0.0)
            g = tl.load(e_at + dk[:, None] * Dv + dv[None, :], mask=kmask[:, None] & vmask[None, :], other=0.0)
            g = g * listed  # G_i = E[destF[i]], 0 where start slot i is not listed
            dO = tl.load(do_ptr + own[:, None] * Dv + dv[None, :], mask=vmask[None, :], other=0.0)
            # Summed in registers, not through the products' accumulator: on sm_90 a tensor-core accumulator carried
            # over the K slots and Dv blocks (3 x 8 steps each) took dPhi 9x further from float64 than torch's
            # float32 product (2.2e-6 against 2.5e-7 of its terms' magnitudes at K = 30, D = 64; H200, run 25).
            # A chunk a step: no branch in the loop (a compile-time test, kept apart from the program's).
            if C == CS:  # noqa: SIM114
                dphi += dot_f32_or_tf32(g, f_t, None, False, SPLIT)
            elif first:
                dphi += dot_f32_or_tf32(g, f_t, None, False, SPLIT)
            zr += dot_f32_or_tf32(dO, f_t, None, False, SPLIT)
        ci = tl.load(coef_ptr + cr * C * K + t * K + i)
        dqt += ci[:, None] * zr
        dcoef = tl.sum(qt * zr, 1)
        if SCATTER:
            recency = tl.load(jf_ptr + cr * C * K + t * K + i).to(tl.int32)
            dlam += tl.where(slot[None, :] == recency[:, None], dcoef[:, None], 0.0)
        else:
            tl.store(dcoef_ptr + cr * C * K + t * K + i, dcoef)
    if SCATTER:
        dlam_at = dlam_ptr + chunk * dlam_sc + tl.program_id(1) * dlam_sr + tl.arange(0, CS)[:, None] * dlam_st
        inside = slot[None, :] < K
        tl.store(dlam_at + slot[None, :], tl.load(dlam_at + slot[None, :], mask=inside, other=0.0) + dlam,
                 mask=inside)
    if first:
        tl.store(dphi_ptr + cr * Dk * Dk + dk[:, None] * Dk + dk[None, :], dphi, mask=kmask[:, None] & kmask[None, :])
    tl.store(dqt_ptr + cr * C * Dk + t[:, None] * Dk + dk[None, :], dqt, mask=kmask[None, :])


# K, Dk, Dv compile-time constants in both kernels, as in the walk: sm_90 at D = 64, K = 30, this one 0 B of stack
# against 144 with them as arguments.
# Long: one program's loop over the Dv blocks, each through the receiving end slots.
@triton.jit
def dla_delta_token_cotangents_kernel(
    e_ptr, dest_ptr, khd_ptr, bv_ptr, dkhd_ptr, dbv_ptr,
    R, K: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, CS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr,
    ADD_DBV: tl.constexpr, SPLIT: tl.constexpr,
):
    """Program (step c of the batch, row r, the step's chunk h of ``CS`` of its ``C`` tokens), ``cr = c R + r``:
    ``E [n, R, K, Dk, Dv]`` float32; ``dest [n, R, C]`` int32 (each token's end slot, -1: padding), ``khd [n, R, C,
    Dk]`` float32 (step-major); ``bv [n C / CS, R, CS, Dv]`` float32 (chunk-major). Writes ``dkhd [n, R, C, Dk]`` and
    ``dbv`` (as ``bv``; ``ADD_DBV``: adds to it)."""
    cr = tl.program_id(0) * R + tl.program_id(1)
    dk = tl.arange(0, BK)
    t = tl.program_id(2) * CS + tl.arange(0, CS)  # the step's tokens (its tables' rows)
    own = ((tl.program_id(0) * (C // CS) + tl.program_id(2)) * R + tl.program_id(1)) * CS + tl.arange(0, CS)
    kmask = dk < Dk
    dest = tl.load(dest_ptr + cr * C + t)
    receives = tl.max(tl.where(dest[:, None] == tl.arange(0, KP)[None, :], 1, 0), 0)  # [KP]: slot j takes a token
    khd = tl.load(khd_ptr + cr * C * Dk + t[:, None] * Dk + dk[None, :], mask=kmask[None, :], other=0.0)
    dkhd = tl.zeros([CS, BK], dtype=tl.float32)
    for v0 in range(0, Dv, BV):
        dv = v0 + tl.arange(0, BV)
        vmask = dv < Dv
        bv = tl.load(bv_ptr + own[:, None] * Dv + dv[None, :], mask=vmask[None, :], other=0.0)
        dbv = tl.zeros([CS, BV], dtype=tl.float32)
        for j in range(K):
            if tl.sum(tl.where(tl.arange(0, KP) == j, receives, 0), 0) > 0:
                e_at = e_ptr + (cr * K + j) * Dk * Dv
                e = tl.load(e_at + dk[:, None] * Dv + dv[None, :], mask=kmask[:, None] & vmask[None, :], other=0.0)
                e_t = tl.load(e_at + dv[:, None] + dk[None, :] * Dv, mask=vmask[:, None] & kmask[None, :], other=0.0)
                mine = (dest == j)[:, None]
                dkhd += tl.where(mine, dot_f32_or_tf32(bv, e_t, None, False, SPLIT), 0.0)
                dbv += tl.where(mine, dot_f32_or_tf32(khd, e, None, False, SPLIT), 0.0)
        dbv_at = dbv_ptr + own[:, None] * Dv + dv[None, :]
        if ADD_DBV:
            dbv += tl.load(dbv_at, mask=vmask[None, :], other=0.0)
        tl.store(dbv_at, dbv, mask=vmask[None, :])
    tl.store(dkhd_ptr + cr * C * Dk + t[:, None] * Dk + dk[None, :], dkhd, mask=kmask[None, :])


def table_cotangents(F, E, dest_f, dest, coef, qt, dO, khd, bv, *, start_block: int | None = None,
                     start_warps: int | None = None, start_stages: int | None = None, out: dict | None = None,
                     read_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                     dbv_into: torch.Tensor | None = None, chunk: int | None = None, split: bool = True):
    """The cotangents of a batch of ``n`` steps: ``(dPhi [n, R, Dk, Dk], dkhd [n, R, C, Dk], d(b v) [nc, R, CS,
    Dv], dqt [n, R, C, Dk], dcoef [n, R, C, K])`` float32, from ``F, E [n, R, K, Dk, Dv]`` (float32, contiguous),
    ``dest_f [n, R, K]`` and ``dest [n, R, C]`` (integers, -1: none), ``coef [n, R, C, K]``, ``qt``, ``khd [n, R, C,
    Dk]`` (step-major) and ``dO``, ``bv [nc, R, CS, Dv]`` (float32, chunk-major: ``nc = n C / CS`` chunks of ``CS``
    tokens, ``CS = chunk or C``; a step is a chunk unless ``chunk`` is given). ``start_block``, ``start_warps``,
    ``start_stages``: the start slots' kernel's Dv block (a power of two from 16) and launch options; None: the
    defaults below. ``out``: a dict whose contiguous float32 ``Phi``, ``khd`` and ``qt`` receive ``dPhi``, ``dkhd``
    and ``dqt`` (returned too).
    ``read_weights``: ``(JF, dlam)``, each token's recency of each start slot ``[n, R, C, K]`` (integer, -1: not
    listed) and the read weights' gradient ``[nc, R, CS, K]`` float32 (unit stride over K): ``dcoef`` is added into
    it by recency in the kernel (``dlam[t, JF[t, i]] += dcoef[t, i]``, a scatter without atomics) and None returned.
    ``dbv_into``: ``d(b v)`` added into this contiguous float32 ``[nc, R, CS, Dv]`` tensor (returned) instead of a
    new one. ``chunk``: where each of the ``n`` steps spans several chunks of this many tokens (pairs composed by
    ``chunk_bwd_pairs``), the programs take a chunk's tokens each and address the chunk-major tensors by chunk.
    ``split``: the products float32-accurate (split tf32), else one tf32 pass (the 16-bit inputs' precision, opt-in)."""
    n, R, K, Dk, Dv = F.shape
    C = qt.shape[2]
    CS = chunk or C
    BK, KP = max(16, next_pow2(Dk)), max(16, next_pow2(K))
    # The token kernel's Dv block (and the start slots' above 64 key features): 64 up to 64 key features, 32 above
    # (sm_90, Triton 3.6: 136 / 144 B of stack at 64 features, 192 / 560 B at 128; a block of 64 there needs 98-115 KB
    # of shared memory and spills 568-1,144 B).
    BV = max(16, min(64 if BK <= 64 else 32, next_pow2(Dv)))
    # The start slots' kernel up to 64 key features: a Dv block of 32 on 4 warps, one stage (H200, run 28, one segment
    # of 16 chunks at R = 32, K = 30, 64 features: 0.43 ms against 0.79 at 64 on 8 warps and two stages; 16 warps or
    # 8 slower at every block), of 64 with one-pass products (H100, run 79, (8, 4096, 16, 64) moderate training step:
    # the kernel 3.48 -> 2.88 ms, the step -1.6 %; split products at 64 spill: not measured); above, 8 warps and two
    # stages (not re-measured).
    small = BK <= 64
    start_bv = max(16, min(start_block or (32 if small and split else BV), next_pow2(Dv)))
    start_warps = start_warps or (4 if small else 8)
    start_stages = start_stages or (1 if small else 2)
    nc = n * (C // CS)
    new = lambda *s: torch.empty(n, R, *s, device=F.device, dtype=torch.float32)  # noqa: E731
    if dbv_into is not None and (dbv_into.dtype != torch.float32 or not dbv_into.is_contiguous()
                                 or tuple(dbv_into.shape) != (nc, R, CS, Dv)):
        raise ValueError(f"table_cotangents: dbv_into must be a contiguous float32 tensor of shape {(nc, R, CS, Dv)}")
    dbv = torch.empty(nc, R, CS, Dv, device=F.device, dtype=torch.float32) if dbv_into is None else dbv_into
    if read_weights is None:
        dcoef, (jf, dlam) = new(C, K), (F, F)  # (unread)
    else:
        (jf, dlam), dcoef = read_weights, F
        if dlam.dtype != torch.float32 or dlam.stride(-1) != 1 or tuple(dlam.shape) != (nc, R, CS, K):
            raise ValueError(f"table_cotangents: read_weights' dlam must be float32 [{nc}, {R}, {CS}, {K}] with unit "
                             f"stride over K, got {dlam.dtype} {tuple(dlam.shape)} strides {dlam.stride()}")
        jf = jf.contiguous()
    if out is None:
        dphi, dkhd, dqt = new(Dk, Dk), new(C, Dk), new(C, Dk)
    else:
        shapes = {"Phi": (n, R, Dk, Dk), "khd": (n, R, C, Dk), "qt": (n, R, C, Dk)}
        for name, x in out.items():
            if x.dtype != torch.float32 or not x.is_contiguous() or tuple(x.shape) != shapes[name]:
                raise ValueError(f"table_cotangents: out[{name!r}] must be a contiguous float32 tensor of shape "
                                 f"{shapes[name]}, got {x.dtype} {tuple(x.shape)}"
                                 f"{'' if x.is_contiguous() else ', not contiguous'}")
        dphi, dkhd, dqt = out["Phi"], out["khd"], out["qt"]
    f32 = lambda x: x.to(torch.float32).contiguous()  # noqa: E731
    dla_delta_start_cotangents_kernel[(n, R, C // CS)](
        F, E, dest_f.to(torch.int32).contiguous(), f32(coef), f32(qt), f32(dO), dphi, dqt, dcoef, jf, dlam, R,
        *(dlam.stride()[:3] if read_weights is not None else (0, 0, 0)), K, Dk, Dv,
        C=C, CS=CS, BK=BK, BV=start_bv, KP=KP, SCATTER=read_weights is not None, SPLIT=split, num_warps=start_warps,
        num_stages=start_stages,
    )
    # 4 warps below 32 key features: at 8 warps and BK = 16, Triton 3.6's sm_90 build of the token kernel's products
    # reads shared memory out of bounds (BV = 64; compute-sanitizer, H200, run 25) or returns a wrong d(b v) (BV = 32).
    dla_delta_token_cotangents_kernel[(n, R, C // CS)](
        E, dest.to(torch.int32).contiguous(), f32(khd), f32(bv), dkhd, dbv, R, K, Dk, Dv,
        C=C, CS=CS, BK=BK, BV=BV, KP=KP, ADD_DBV=dbv_into is not None, SPLIT=split, num_warps=8 if BK >= 32 else 4,
        num_stages=2,
    )
    return dphi, dkhd, dbv, dqt, None if read_weights is not None else dcoef
