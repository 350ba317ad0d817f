"""Triton, gated delta rule: the decided partition as the slot-state kernel reads it, and the intra-chunk output
(stage 3 of the device forward ``chunk_fwd``, docs/delta-rule-chunked.md section 7), one program per (row, chunk).

A slot is the run of tokens from its start to the next live start, so everything follows from the merge kernel's
live starts (``DecidedStructure``): at token t (after its update) the live starts are those ``p <= t`` not yet dead
(``death > t``), and the slot holding token s has recency ``#{live p > s}``. Per chunk c:

- ``W[t, s] = lam_t[J(t, s)]`` (s <= t), ``J`` the chunk's live starts in ``(s, t]`` (the scalar-decay output
  kernel's ``live_in_chunk``), and the intra-chunk output ``o_t = sum_s attn[t, s] W[t, s] b_s v_s``;
- ``coef[t, i] = lam_t[n_in(t) + #{slots live at t that start after slot i}]`` for the slots live at the chunk start
  (``live[c]``; the initial slots at ``-m0 .. -1``): token t's weight of the slot that holds start slot i;
- the chunk-end slot of each start slot (``dest_f``) and of each token (``dest``): how many of the next chunk's
  live starts (after the last chunk, the final ones) lie at or before its start, minus one; -1 for a slot not
  listed and for tokens past the row's length.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import interpreting
from ..common.triton_utils import bf16_exact_products, chunk_tokens, dot_split_parts_t, next_pow2, split3
from ..scalar_decay.chunk_fwd_output import live_in_chunk
from ..scalar_decay.chunk_fwd_states import CHUNK


@triton.jit
def _start_slots(live_ptr, livem_ptr, death_ptr, death0_ptr, size0_ptr, r, c, NC, K,
                 C: tl.constexpr, KP: tl.constexpr):
    """The slots live at chunk c's start: ``(pos, listed, death)`` ``[KP]``, their start positions (the initial
    slots' negative), which entries are slots, and their death times (-1 where none)."""
    i = tl.arange(0, KP)
    listed = (i < K) & (i < tl.load(livem_ptr + r * NC + c))
    pos = tl.load(live_ptr + (r * NC + c) * KP + i, mask=listed, other=0)
    d_tok = tl.load(death_ptr + r * NC * C + pos, mask=listed & (pos >= 0), other=-1)
    d_init = tl.load(death0_ptr + r * K + pos + tl.load(size0_ptr + r), mask=listed & (pos < 0), other=-1)
    return pos, listed, tl.where(pos >= 0, d_tok, d_init)


@triton.jit
def _end_slot_lists(live_ptr, livem_ptr, fpos_ptr, size_ptr, r, c, NC, K, KP: tl.constexpr):
    """``(nxt, listed)`` ``[KP]``: the start positions of the slots live at the next chunk's start (after the last
    chunk, the final slots), ascending, and which entries are slots."""
    i = tl.arange(0, KP)
    last = c == NC - 1
    nxt = r * NC + tl.minimum(c + 1, NC - 1)  # (the last chunk's own where there is no next one)
    listed = (i < K) & (i < tl.where(last, tl.load(size_ptr + r), tl.load(livem_ptr + nxt)))
    from_final = tl.load(fpos_ptr + r * KP + i, mask=listed, other=0)
    from_next = tl.load(live_ptr + nxt * KP + i, mask=listed, other=0)
    return tl.where(last, from_final, from_next), listed


@triton.jit
def _slot_maps(live_ptr, livem_ptr, death_ptr, death0_ptr, fpos_ptr, size_ptr, size0_ptr, r, c, NC, K, n_in,
               C: tl.constexpr, KP: tl.constexpr):
    """Chunk c's maps of the slots live at its start and of its tokens: ``(JF [C, KP], listed [KP], dest_f [KP],
    dest [C])``, the recency at token t of the slot holding start slot i (``n_in [C]``: the chunk's own starts live
    at t), which entries are slots, the chunk-end slot of each start slot (-1: not listed) and of each token (not
    masked by any length)."""
    now = c * C + tl.arange(0, C)
    pos, listed, death = _start_slots(live_ptr, livem_ptr, death_ptr, death0_ptr, size0_ptr, r, c, NC, K, C, KP)
    alive = ((death[None, :] > now[:, None]) & listed[None, :]).to(tl.int32)  # [C, KP]
    JF = n_in[:, None] + tl.sum(alive, 1)[:, None] - tl.cumsum(alive, 1)
    nxt, nxt_listed = _end_slot_lists(live_ptr, livem_ptr, fpos_ptr, size_ptr, r, c, NC, K, KP)
    ends_f = ((nxt[None, :] <= pos[:, None]) & nxt_listed[None, :]).to(tl.int32)  # [KP (i), KP (j)]
    ends = ((nxt[None, :] <= now[:, None]) & nxt_listed[None, :]).to(tl.int32)  # [C, KP]
    return JF, listed, tl.where(listed, tl.sum(ends_f, 1) - 1, -1), tl.sum(ends, 1) - 1


@triton.jit(do_not_specialize=["R", "T", "H", "c0", "NC"])
def dla_delta_partition_kernel(
    attn_ptr, v_ptr, b_ptr, lam_ptr, mask_ptr, death_ptr, death0_ptr, live_ptr, livem_ptr, fpos_ptr, size_ptr,
    size0_ptr, rlen_ptr, o_ptr, coef_ptr, dest_f_ptr, dest_ptr,
    R, T, H, c0, NC, K: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, SPLIT16: tl.constexpr = False,
):
    """Program (row r = b H + h, chunk c = c0 + j; chunk-major index ``j R + r`` of the block's tensors): from the
    structure (``masks [R, NC]``, ``death [R, NC C]``, ``death0 [R, K]``, ``live [R, NC, KP]``, ``livem [R, NC]``,
    ``fpos [R, KP]``, ``size``, ``size0``, ``rlen [R]``), the table ``attn [nb, R, C, C]`` float32 and the inputs
    ``v [B, T, H, Dv]``, ``b [B, T, H]``, ``lam [B, T, H, K]`` in their dtypes (0 past T): writes ``o [B, T, H, Dv]``
    float32 (the intra-chunk part, for T's tokens), ``coef [nb, R, C, K]`` float32, ``dest_f [nb, R, K]`` and
    ``dest [nb, R, C]`` int32.

    FLOPs: ``2 C^2 Dv`` (one float32 product at ``PREC``; SPLIT16, bf16 ``v``: ``(attn o W) diag(b)`` split in three
    bf16 parts, ``split3``, times ``v`` as it is, three bf16 products) and ``O(C^2 + C KP + KP^2)`` integer work.
    Bytes: ``attn`` (16 KB at C = 64), ``v``, the weights the chunk's tokens read (``C^2 + C K`` gathers from
    ``lam``), and the outputs (``o``, ``coef``: 16 + 8 KB at Dv = 64, K = 32)."""
    r = tl.program_id(0)
    base = tl.program_id(1) * R + r
    c = c0 + tl.program_id(1)
    _, _, t, tok, valid, row = chunk_tokens(r, c, T, H, C)
    lam_row = lam_ptr + row * K
    # The chunk's own tokens: W, then o = (attn o W) (b v).
    n_in, J = live_in_chunk(mask_ptr, death_ptr, r, c, NC, C, tl.int32)
    causal = (t[None, :] <= t[:, None]) & valid[:, None]
    W = tl.load(lam_row[:, None] + tl.minimum(J, K - 1), mask=causal, other=0.0).to(tl.float32)
    AW = tl.load(attn_ptr + (base * C + t[:, None]) * C + t[None, :]) * W
    b = tl.load(b_ptr + row, mask=valid, other=0.0).to(tl.float32)
    if SPLIT16:  # the values stay exact: b goes to the other side, split once for every value block
        hi, mid, lo = split3(tl.trans(AW * b[None, :]))
    for v0 in range(0, Dv, BV):
        dv = v0 + tl.arange(0, BV)
        inside = valid[:, None] & (dv[None, :] < Dv)
        vc = tl.load(v_ptr + row[:, None] * Dv + dv[None, :], mask=inside, other=0.0)
        if SPLIT16:
            ov = dot_split_parts_t(hi, mid, lo, vc)
        else:
            ov = tl.dot(AW, b[:, None] * vc.to(tl.float32), input_precision=PREC)
        tl.store(o_ptr + row[:, None] * Dv + dv[None, :], ov, mask=inside)
    # The slots live at the chunk start: token t's weight of the slot holding slot i, and where slot i ends.
    i = tl.arange(0, KP)
    JF, listed, dest_f, dest = _slot_maps(live_ptr, livem_ptr, death_ptr, death0_ptr, fpos_ptr, size_ptr, size0_ptr,
                                          r, c, NC, K, n_in, C, KP)
    coef = tl.load(lam_row[:, None] + tl.minimum(JF, K - 1), mask=valid[:, None] & listed[None, :], other=0.0)
    tl.store(coef_ptr + (base * C + t[:, None]) * K + i[None, :], coef.to(tl.float32), mask=(i < K)[None, :])
    tl.store(dest_f_ptr + base * K + i, dest_f, mask=i < K)
    tl.store(dest_ptr + base * C + t, tl.where(c * C + t < tl.load(rlen_ptr + r), dest, -1))


@triton.jit(do_not_specialize=["R", "T", "c0", "NC", "K"])
def dla_delta_partition_maps_kernel(
    mask_ptr, death_ptr, death0_ptr, live_ptr, livem_ptr, fpos_ptr, size_ptr, size0_ptr, jf_ptr, dest_f_ptr,
    dest_ptr, j_ptr, lam_ptr, coef_ptr, R, T, c0, NC, K, lam_sr, lam_st,
    C: tl.constexpr, KP: tl.constexpr, START_MAPS: tl.constexpr, RECENCY: tl.constexpr, COEF: tl.constexpr,
):
    """Program (row r, chunk c = c0 + j): the integer maps the backward's partition reads (``live_starts.
    DevicePartition``'s, equal bit for bit; every row ``T`` long), from the same structure as
    ``dla_delta_partition_kernel``. With ``START_MAPS``: ``jf [nb, R, C, K]``, the recency at token t of the slot
    holding start slot i (-1: slot i not listed, or t past T), ``dest_f [nb, R, K]`` and ``dest [nb, R, C]`` as that
    kernel writes them; with ``RECENCY``: ``j [nb, R, C, C]``, the recency at token t of the slot holding token s (-1
    unless ``s <= t < T``). All int32. With ``COEF`` (and ``START_MAPS``) also ``coef [nb, R, C, K]`` float32, token
    t's read weight of start slot i, ``lam[r, t, jf[t, i]]`` (0 where ``jf`` is -1), from the read weights' rows
    ``lam [R, >= NC C, K]`` (row and token strides ``lam_sr``, ``lam_st``), as ``dla_delta_partition_kernel`` writes
    it."""
    r = tl.program_id(0)
    base = tl.program_id(1) * R + r
    c = c0 + tl.program_id(1)
    t = tl.arange(0, C)
    valid = c * C + t < T
    n_in, J = live_in_chunk(mask_ptr, death_ptr, r, c, NC, C, tl.int32)
    if RECENCY:
        causal = (t[None, :] <= t[:, None]) & valid[:, None]
        tl.store(j_ptr + (base * C + t[:, None]) * C + t[None, :], tl.where(causal, J, -1))
    if START_MAPS:
        i = tl.arange(0, KP)
        JF, listed, dest_f, dest = _slot_maps(live_ptr, livem_ptr, death_ptr, death0_ptr, fpos_ptr, size_ptr,
                                              size0_ptr, r, c, NC, K, n_in, C, KP)
        tl.store(jf_ptr + (base * C + t[:, None]) * K + i[None, :],
                 tl.where(valid[:, None] & listed[None, :], JF, -1), mask=(i < K)[None, :])
        if COEF:
            lam_row = lam_ptr + r * lam_sr + (c * C + t) * lam_st
            coef = tl.load(lam_row[:, None] + tl.minimum(JF, K - 1), mask=valid[:, None] & listed[None, :], other=0.0)
            tl.store(coef_ptr + (base * C + t[:, None]) * K + i[None, :], coef.to(tl.float32), mask=(i < K)[None, :])
        tl.store(dest_f_ptr + base * K + i, dest_f, mask=i < K)
        tl.store(dest_ptr + base * C + t, tl.where(valid, dest, -1))


def partition_maps(s, size0, T: int, K: int, c0: int, nb: int, *, start_maps: bool, recency: bool,
                   lam: torch.Tensor | None = None):
    """The backward's partition maps of chunks ``c0 .. c0 + nb - 1`` from the forward's ``DecidedStructure`` ``s``
    and initial sizes ``size0 [R]`` (every row ``T`` long): ``(JF [nb, R, C, K], dest_f [nb, R, K], dest [nb, R,
    C])`` with ``start_maps``, ``J [nb, R, C, C]`` with ``recency`` and, given the read weights' rows ``lam [R, >=
    (c0 + nb) C, K]`` (float32, unit stride over K), ``coef [nb, R, C, K]`` float32 (token t's read weight of start
    slot i, 0 where not listed); None where not asked. The integer maps int32 (the kernels read them), as
    ``live_starts.DevicePartition`` builds them (-1 where not listed or past T)."""
    R, NC = s.masks.shape
    C, KP, dev = CHUNK, s.live.shape[-1], s.masks.device
    new = lambda *shape: torch.empty(nb, R, *shape, device=dev, dtype=torch.int32)  # noqa: E731
    jf, dest_f, dest = (new(C, K), new(K), new(C)) if start_maps else (s.size,) * 3
    j = new(C, C) if recency else s.size
    with_coef = start_maps and lam is not None
    if with_coef and (lam.dtype != torch.float32 or lam.stride(-1) != 1):
        raise ValueError(f"partition_maps: lam must be float32 with unit stride over K, got {lam.dtype} {lam.stride()}")
    coef = torch.empty(nb, R, C, K, device=dev, dtype=torch.float32) if with_coef else None
    dla_delta_partition_maps_kernel[(R, nb)](
        s.masks, s.death, s.death0, s.live, s.livem, s.fpos, s.size, size0, jf, dest_f, dest, j,
        lam if with_coef else s.size, coef if with_coef else s.size, R, T, c0, NC, K,
        *(lam.stride()[:2] if with_coef else (0, 0)), C=C, KP=KP, START_MAPS=start_maps, RECENCY=recency,
        COEF=with_coef, num_warps=4)
    return ((jf, dest_f, dest) if start_maps else (None,) * 3) + (j if recency else None, coef)


def partition_and_intra(s, size0, row_lengths, attn, v, beta, lam, c0: int, o, *, prec: str | None = None,
                        num_warps: int = 4, split16: bool | None = None):
    """Chunks ``c0 .. c0 + nb - 1`` (``attn [nb, R, C, C]`` float32, the output tables'): writes their intra-chunk
    output into ``o [B, T, H, Dv]`` float32 and returns the slot-state kernel's maps ``(coef [nb, R, C, K]`` float32,
    ``dest_f [nb, R, K]``, ``dest [nb, R, C]`` int32). ``s``: the ``DecidedStructure``; ``size0 [R]`` the initial
    sizes; ``row_lengths [R]`` int32; ``v``, ``beta``, ``lam (slot weights)`` the API's inputs in their dtypes.
    ``prec``: the intra product's precision (None: ``"tf32x3"`` on a GPU, float32-accurate on the tensor cores,
    where ``"ieee"`` spills at 4 warps for sm_90; ``"ieee"`` under the interpreter). ``split16``: bf16 ``v`` exact
    in three bf16 products instead (the kernel's SPLIT16; None: for bf16 ``v`` on a GPU,
    ``triton_utils.bf16_exact_products``)."""
    nb, R, C = attn.shape[:3]
    B, T, H, Dv = v.shape
    K, KP = lam.shape[-1], s.live.shape[-1]
    dev = attn.device
    coef = torch.empty(nb, R, C, K, device=dev, dtype=torch.float32)
    dest_f = torch.empty(nb, R, K, device=dev, dtype=torch.int32)
    dest = torch.empty(nb, R, C, device=dev, dtype=torch.int32)
    v, beta, lam = (x.contiguous() for x in (v, beta, lam))
    prec = prec or ("ieee" if interpreting() else "tf32x3")
    split16 = bf16_exact_products(split16, v=v)
    dla_delta_partition_kernel[(R, nb)](
        attn, v, beta, lam, s.masks, s.death, s.death0, s.live, s.livem, s.fpos, s.size, size0, row_lengths,
        o, coef, dest_f, dest, R, T, H, c0, s.masks.shape[1], K, Dv,
        C=C, KP=KP, BV=min(max(next_pow2(Dv), 16), 64), PREC=prec, SPLIT16=split16, num_warps=num_warps)
    return coef, dest_f, dest
