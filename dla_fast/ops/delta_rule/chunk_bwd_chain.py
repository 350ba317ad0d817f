"""Triton, gated delta rule: the backward's chain of slot-state adjoints over chunks, in reverse (kernel A of
docs/delta-rule-chunked.md section 6.1), the transpose of the forward's ``dla_delta_states_kernel``.

With the partition fixed, chunk c's slot states at its end are ``S_end[j] = Phi_c sum_{i -> j} F_i + (its tokens)``
and token t reads the start slots as ``sum_i coef[t, i] qt_t^T F_i``. So, from the adjoint ``dS`` of the slot
states at the chunk end, the adjoint at its start is

    dF_i = Phi^T dS[dest_f[i]] + sum_t coef[t, i] qt_t dO_t^T        (0 for a start slot i not listed)

(section 6's reverse pass without the score's carried term: this kernel serves the backward without ``dscores``).
One program per (row, Dv block) keeps the adjoints of all K slots of its Dv block in registers, ``dS [Dk, BV KP]``
(the forward's layout and ``state_block``, so its register budget), and walks the block's chunks last to first.
Per chunk it stores ``dS`` at the chunk end (kernel B reads it for the tables' cotangents), then three dots with
the slot axis inside:

- the merges' transpose, a gather, in the chunks that have any: ``G = dS [Dk BV, KP] @ Mf [KP, KP]``,
  ``G[:, e, i] = dS[:, e, dest_f[i]]``; elsewhere ``dS`` with the columns of the slots not listed zeroed (the
  forward's shortcut there, ``X = S``, relies on unused slots being zero; their adjoints are not, e.g. a slot that
  opens in the chunk, and would leak into ``dinit`` and the stored ``dS``);
- the transition's transpose and the reads' adjoint: ``Phi^T [Dk, Dk] @ G + qt^T [Dk, C] @ Z [C, BV KP]``,
  ``Z[t, e, i] = dO[t, e] coef[t, i]``.

Every product is float32-accurate (the forward's ``dot_f32``: split tf32 operands; the 0/1 gather map exact).
``dO`` is masked past T only, as the forward's values: the reads are not masked by a row's length in the forward
either (its read weights are zero there, the API padding them with zeros).

FLOPs per (chunk, row), all Dv blocks, in one pass: ``2 Dv KP (Dk^2 + C Dk + Dk KP)`` (42 MFLOP at C = Dk = Dv =
64, KP = 32; the gather's ``Dk KP`` only in chunks with merges), three passes for the two split products, two for
the gather. Bytes: each chunk's tables (``Phi``, ``qt``, ``coef``: ~40 KB at D = 64 in float32, and ``dO``'s
``[C, BV]`` slice) once per Dv block, from L2; the stored ``dS`` at each chunk end, ``K Dk Dv x 4`` (480 KB per row
at K = 30, D = 64): the kernel's largest traffic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import chunk_tokens
from .chunk_fwd_states import dot_f32, dot_f32_or_tf32, launch_shape, slot_tile


@triton.jit(do_not_specialize=["NB", "T", "H", "c0"])
def dla_delta_slot_adjoints_kernel(
    ds_ptr, ds_end_ptr, phi_ptr, qt_ptr, do_ptr, coef_ptr, dest_f_ptr,
    NB, R, T, H, c0, K: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, CS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, SPLIT: tl.constexpr,
):
    """Program (row r = b H + h, Dv block vb): for steps ``NB - 1`` down to 0 of ``C`` tokens each (``C / CS``
    chunks of ``CS``, the first step's first chunk ``c0``), the adjoint ``ds [R, K, Dk, Dv]`` (float32) of the slot
    states at the last step's end is carried to the first one's start, in place; the adjoint at each step's end goes
    to ``ds_end [NB, R, K, Dk, Dv]`` (float32). A step is a chunk (``C = CS``) or a pair of chunks composed
    (``chunk_bwd_pairs``); its reads' adjoint goes ``CS`` tokens at a time, so that a longer step holds no larger tile.

    Per step (block index ``cr = c * R + r``): ``phi [Dk, Dk]``, ``qt [C, Dk]``, ``coef [C, K]`` (float32);
    ``dest_f [K]`` int32, each start slot's end slot (-1: not listed); the step's output adjoints from
    ``do [B, T, H, Dv]`` in their dtype (0 past T). ``K``, ``Dk``, ``Dv`` compile-time constants, as in the forward's
    walk (sm_90 at D = 64, K = 30: 568 B of stack against 1,048 with them as arguments). ``SPLIT``: the reads' and
    the transition's products float32-accurate (``dot_f32``), else one tf32 pass each (16-bit inputs, opt-in); the
    merges' gather stays exact either way."""
    t = tl.arange(0, CS)
    # dS[d, e, j] = ds[r, j, d, vb * BV + e], held as [Dk, BV KP] (column e KP + j), as the forward holds S.
    r, dk, dv, j, kmask, vmask, state_at, s_mask = slot_tile(K, Dk, Dv, BK, BV, KP)
    dS = tl.reshape(tl.load(ds_ptr + r * K * Dk * Dv + state_at, mask=s_mask, other=0.0), [BK, BV * KP])
    # Each step's merge map is loaded one step ahead: the branch on it and the mask from it then wait on no load.
    next_dest_f = tl.load(dest_f_ptr + ((NB - 1) * R + r) * K + j, mask=j < K, other=-1)
    for back in range(NB):
        c = NB - 1 - back
        cr = c * R + r
        tl.store(ds_end_ptr + cr * K * Dk * Dv + state_at, tl.reshape(dS, [BK, BV, KP]), mask=s_mask)
        dest_f = next_dest_f
        next_dest_f = tl.load(dest_f_ptr + (tl.maximum(c - 1, 0) * R + r) * K + j, mask=j < K, other=-1)
        # The merges' transpose: G[:, e, i] = dS[:, e, dest_f[i]], 0 where start slot i is not listed.
        if tl.sum(((dest_f >= 0) & (dest_f != j)).to(tl.int32), 0) > 0:
            from_end = (j[:, None] == dest_f[None, :]).to(tl.float32)  # [KP (j), KP (i)]
            G = tl.reshape(dot_f32(tl.reshape(dS, [BK * BV, KP]), from_end, None, True), [BK, BV * KP])
        else:
            listed = tl.reshape(tl.broadcast_to((dest_f >= 0)[None, :], [BV, KP]), [BV * KP])  # column e KP + i
            G = tl.where(listed[None, :], dS, 0.0)
        # The reads' adjoint qt^T Z (Z: dO spread over the slots by coef), then the transition's transpose.
        for h in tl.static_range(C // CS):
            at = cr * C + h * CS + t  # the sub-chunk's rows of the step's tables
            _, _, _, _, valid, row = chunk_tokens(r, c0 + c * (C // CS) + h, T, H, CS)
            qt_t = tl.load(qt_ptr + at[None, :] * Dk + dk[:, None], mask=kmask[:, None], other=0.0)
            coef = tl.load(coef_ptr + at[:, None] * K + j[None, :], mask=(j < K)[None, :], other=0.0)
            dO = tl.load(do_ptr + row[:, None] * Dv + dv[None, :], mask=valid[:, None] & vmask[None, :],
                         other=0.0).to(tl.float32)
            Z = tl.reshape(dO[:, :, None] * coef[:, None, :], [CS, BV * KP])
            if h == 0:
                dS = dot_f32_or_tf32(qt_t, Z, None, False, SPLIT)
            else:
                dS = dot_f32_or_tf32(qt_t, Z, dS, False, SPLIT)
        phi_t = tl.load(phi_ptr + cr * Dk * Dk + dk[None, :] * Dk + dk[:, None],
                        mask=kmask[:, None] & kmask[None, :], other=0.0)
        dS = dot_f32_or_tf32(phi_t, G, dS, False, SPLIT)
    tl.store(ds_ptr + r * K * Dk * Dv + state_at, tl.reshape(dS, [BK, BV, KP]), mask=s_mask)


def slot_adjoints(dS, Phi, qt, dO, coef, dest_f, c0: int, dS_end=None,
                  launch: tuple[int, int, int] | None = None, chunk: int | None = None,
                  split: bool = True) -> torch.Tensor:
    """Carry the slot states' adjoint ``dS [R, K, Dk, Dv]`` (float32, in place) from the end of the block of ``nb``
    steps that starts at chunk ``c0`` to its start; returns the adjoint at each step's end, ``dS_end [nb, R, K, Dk,
    Dv]`` float32 (written into ``dS_end`` when given). Blocks chain last to first on the same ``dS``.

    ``Phi [nb, R, Dk, Dk]``, ``qt [nb, R, C, Dk]``, ``coef [nb, R, C, K]`` (float32) and ``dest_f [nb, R, K]`` (int32,
    -1: not listed) as the forward's ``slot_states_and_reads`` reads them; ``dO [B, T, H, Dv]`` the output's adjoint
    in its dtype. No score term: the backward with ``dscores`` keeps the torch pass. ``launch``: as
    ``slot_states_and_reads``'. ``chunk``: the tokens of one chunk where each of the ``nb`` steps spans several
    (pairs composed by ``chunk_bwd_pairs``; ``c0`` counts chunks); None: every step is one chunk. ``split``: the
    products float32-accurate (split tf32), else one tf32 pass (the 16-bit inputs' precision, opt-in)."""
    nb, R, C, Dk = qt.shape
    B, T, H, Dv = dO.shape
    K = dS.shape[1]
    if dS_end is None:
        dS_end = torch.empty(nb, R, K, Dk, Dv, dtype=torch.float32, device=dS.device)
    for name, x in (("dS", dS), ("dS_end", dS_end)):  # written in place by the kernel
        if x.dtype != torch.float32 or not x.is_contiguous():
            raise ValueError(f"slot_adjoints: {name} must be a contiguous float32 tensor, got {x.dtype}")
    BK, BV, KP, num_warps, num_stages = launch_shape(Dk, Dv, K, launch)
    dla_delta_slot_adjoints_kernel[(R * triton.cdiv(Dv, BV),)](
        dS, dS_end, Phi.contiguous(), qt.contiguous(), dO.contiguous(), coef.contiguous(),
        dest_f.to(torch.int32).contiguous(), nb, R, T, H, c0, K, Dk, Dv,
        C=C, CS=chunk or C, BK=BK, BV=BV, KP=KP, SPLIT=split, num_warps=num_warps, num_stages=num_stages,
    )
    return dS_end
