"""Triton, gated delta rule: the slot states chunk by chunk and the reads of the slots live at each chunk start
(stage 4 of the device forward ``chunk_fwd``, docs/delta-rule-chunked.md section 7).

With the partition fixed, chunk c's slot states at its end are

    S_end[j] = Phi_c sum_{i -> j} S[i] + sum_{s -> j} khd_s (b_s v_s)^T

(start slot i ends in slot j, token s lands in slot j) and token t reads the start slots as
``sum_i coef[t, i] qt_t^T S[i]``. One program per (row, Dv block) keeps all K slot states of its Dv block in
registers, ``S [Dk, BV, KP]``, and walks the chunks in order. The slot axis sits inside every product, so a
chunk is four dots and nothing waits on a slot at a time:

- the reads: ``qt [C, Dk] @ S [Dk, BV KP]``, then each token's ``coef`` weights summed over the slots;
- the merges, in chunks that have any: ``S [Dk BV, KP] @ Mf^T [KP, KP]`` (the 0/1 map of start to end slots);
- the transition and the tokens: ``Phi [Dk, Dk] @ X [Dk, BV KP] + (b khd)^T [Dk, C] @ (v one-hot) [C, BV KP]``.

The states stay float32-accurate: every product that writes them is a sum of single-pass tf32 products of split
operands (``dot_f32``); the reads are single-pass tf32 for 16-bit inputs and split for float32 ones. A step may span
several chunks (their tables composed by ``chunk_fwd_steps``).

FLOPs per (chunk, row), all Dv blocks, in one pass: ``2 Dv KP (2 C Dk + Dk^2 + Dk KP)`` (59 MFLOP at C = Dk = Dv =
64, KP = 32; the one-hot token product spends KP times the tokens' own ``2 C Dk Dv``, against a loop over end slots
that each wait on their loads: docs/delta-rule-chunked.md section 7); the split products take two or three passes.
Bytes: each chunk's tables (``qt``, ``b khd``, ``Phi``, ``coef``: ~50 KB at D = 64 in float32) once per Dv block,
from L2; the states only at the block's start and end. Measured: docs/performance.md, "Slot states of the delta
rule".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import chunk_tokens, next_pow2


@triton.jit
def _round_tf32(x):
    """x rounded to the nearest tf32 value (10 mantissa bits; ties away from zero), which a tf32 product takes
    exactly. Integer arithmetic on the bits rounds the magnitude (float32 is sign-magnitude), so both signs alike."""
    return ((x.to(tl.int32, bitcast=True) + 0x1000) & -0x2000).to(tl.float32, bitcast=True)


@triton.jit
def dot_f32(a, b, acc, B_EXACT: tl.constexpr):
    """``acc + a @ b`` to float32 accuracy (~2^-21 relative) from single-pass tf32 products: each operand split in
    a tf32 head and a tf32 remainder, the remainders' product dropped. This is what Triton's ``tf32x3`` does, but
    its split of both ``[Dk, BV KP]`` operands at once spills on sm_90 (45 ms against ~8 at 16K, run 17). A ``b``
    exact in tf32 (the 0/1 merge map; bfloat16 or float16 values) is not split: two products instead of three."""
    a_hi = _round_tf32(a)
    if B_EXACT:
        acc = tl.dot(_round_tf32(a - a_hi), b, acc, input_precision="tf32")
        return tl.dot(a_hi, b, acc, input_precision="tf32")
    b_hi = _round_tf32(b)
    acc = tl.dot(_round_tf32(a - a_hi), b_hi, acc, input_precision="tf32")
    acc = tl.dot(a_hi, _round_tf32(b - b_hi), acc, input_precision="tf32")
    return tl.dot(a_hi, b_hi, acc, input_precision="tf32")


@triton.jit
def dot_f32_or_tf32(a, b, acc, B_EXACT: tl.constexpr, SPLIT: tl.constexpr):
    """:func:`dot_f32` where ``SPLIT``, else one tf32 product of the operands rounded to nearest tf32 (``2^-11``
    relative each; the interpreter computes it exactly as the GPU does, the rounding being explicit)."""
    if SPLIT:
        return dot_f32(a, b, acc, B_EXACT)
    if B_EXACT:
        return tl.dot(_round_tf32(a), b, acc, input_precision="tf32")
    return tl.dot(_round_tf32(a), _round_tf32(b), acc, input_precision="tf32")


@triton.jit
def slot_tile(K, Dk, Dv, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr):
    """A program's row and tile of that row's slot states ``[K, Dk, Dv]``: every slot's ``[Dk, BV]`` block of one Dv
    block, held as ``[Dk, BV KP]`` (column ``e KP + j``). The program ids run over the Dv blocks first, so a row's
    programs run together: they share each chunk's tables in L2, and the 32-byte sectors of the states they store
    (``BV`` values each) fill while cached. Returns ``(r, dk, dv, j, kmask, vmask, offsets, mask)``, the offsets and
    mask ``[BK, BV, KP]`` within the row."""
    blocks = tl.cdiv(Dv, BV)
    r = tl.program_id(0) // blocks
    dk = tl.arange(0, BK)
    dv = (tl.program_id(0) % blocks) * BV + tl.arange(0, BV)
    j = tl.arange(0, KP)
    kmask = dk < Dk
    vmask = dv < Dv
    offsets = j[None, None, :] * (Dk * Dv) + dk[:, None, None] * Dv + dv[None, :, None]
    mask = kmask[:, None, None] & vmask[None, :, None] & (j < K)[None, None, :]
    return r, dk, dv, j, kmask, vmask, offsets, mask


@triton.jit
def add_step_reads(S, qt_ptr, coef_ptr, o_ptr, r, cr, chunk0, T, H, K, Dk, Dv, dk, dv, j, kmask, vmask,
                   C: tl.constexpr, CS: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr, READ_F32: tl.constexpr,
                   EARLY_LOADS: tl.constexpr):
    """``o +=`` the reads of a step's start slots ``S [Dk, BV KP]`` (the Dv block ``dv`` of row ``r``) by its ``C``
    tokens, ``CS`` at a time (chunk ``chunk0`` of the row first): ``Y[t, e, i] = qt_t . S_i[:, e]``, weighted by
    ``coef[t, i]`` and summed over the slots; ``qt [C, Dk]`` and ``coef [C, K]`` at block index ``cr``."""
    t = tl.arange(0, CS)
    for h in tl.static_range(C // CS):
        _, _, _, _, valid, row = chunk_tokens(r, chunk0 + h, T, H, CS)
        tok_v = valid[:, None] & vmask[None, :]
        at = cr * C + h * CS  # the sub-chunk's first token in the step's tables
        qt = tl.load(qt_ptr + at * Dk + t[:, None] * Dk + dk[None, :], mask=kmask[None, :], other=0.0)
        coef = tl.load(coef_ptr + at * K + t[:, None] * K + j[None, :], mask=(j < K)[None, :], other=0.0)
        o_at = o_ptr + row[:, None] * Dv + dv[None, :]
        if EARLY_LOADS:
            o_old = tl.load(o_at, mask=tok_v, other=0.0)
        if READ_F32:
            Y = dot_f32(qt, S, None, False)
        else:
            Y = tl.dot(qt, S, input_precision="tf32")
        read = tl.sum(tl.reshape(Y, [CS, BV, KP]) * coef[:, None, :], axis=2)
        if not EARLY_LOADS:
            o_old = tl.load(o_at, mask=tok_v, other=0.0)
        tl.store(o_at, o_old + read, mask=tok_v)


@triton.jit
def token_operands(v_ptr, dest_ptr, r, chunk, at, T, H, Dv, dv, vmask, CS: tl.constexpr, KP: tl.constexpr):
    """A sub-chunk's operands of the walk's token product, to load ahead of it: its values ``[CS, BV]`` (the Dv block
    ``dv``, in their dtype, 0 past T) and each token's end slot (``dest`` at block index ``at``) broadcast over the
    slots, ``[CS, KP]``, so that a thread keeps only its rows' slots (held ahead as a ``[CS]`` vector, presumably
    whole in every thread, the sm_90 build spilled more: 1,040 B of stack against 728)."""
    _, _, _, _, valid, row = chunk_tokens(r, chunk, T, H, CS)
    v = tl.load(v_ptr + row[:, None] * Dv + dv[None, :], mask=valid[:, None] & vmask[None, :], other=0.0)
    return v, tl.load(dest_ptr + at + tl.arange(0, CS)[:, None] + 0 * tl.arange(0, KP)[None, :])


# Long: the program walks a block of steps in order.
@triton.jit(do_not_specialize=["NB", "T", "H", "c0"])
def dla_delta_states_kernel(
    slots_ptr, phi_ptr, kb_ptr, qt_ptr, v_ptr, coef_ptr, dest_f_ptr, dest_ptr, o_ptr, starts_ptr,
    NB, R, T, H, c0, K: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, CS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, KP: tl.constexpr,
    READ_F32: tl.constexpr, V_EXACT: tl.constexpr, READS: tl.constexpr, STORE_STARTS: tl.constexpr,
    EARLY_LOADS: tl.constexpr, STORE_END: tl.constexpr, SPLIT: tl.constexpr = True,
):
    """Program (row r = b H + h, Dv block vb): for steps ``0 .. NB - 1`` of ``C`` tokens each (``C / CS`` chunks of
    ``CS`` tokens, the first at chunk ``c0``), ``o[b, t, h, vb] +=`` the reads of each step's start slots (``o [B, T,
    H, Dv]`` float32); the slot states ``slots [R, K, Dk, Dv]`` (float32, the cache's layout) advance from the first
    step's start to the last one's end in place, to float32 accuracy. A step is one chunk (``C = CS``) or several
    chunks' tables composed into one (``chunk_fwd_steps``): one transition and one merge map per step.

    Per step (block index ``cr = c * R + r``): ``phi [Dk, Dk]``, ``kb, qt [C, Dk]`` (``kb = b khd``), ``coef [C,
    K]`` (float32); ``dest_f [K]`` int32, each start slot's end slot (-1: no slot); ``dest [C]`` int32, each token's
    (-1: padding); the step's values from ``v [B, T, H, Dv]`` in their dtype (0 past T). The reads and the tokens'
    product go ``CS`` tokens at a time, so that a longer step holds no larger tile. ``READ_F32``: the reads to
    float32 accuracy (else single-pass tf32, for 16-bit inputs); ``V_EXACT``: the values are exact in tf32 (16-bit
    inputs). ``READS``: add the reads to ``o`` (the backward's recomputation takes none); ``STORE_STARTS``: store each
    step's start states to ``starts [NB, R, K, Dk, Dv]`` float32 (the backward's cotangents read them);
    ``STORE_END``: the end states stored back into ``slots`` (else ``slots`` is only read). ``SPLIT`` False: the
    transition's and the tokens' products in one tf32 pass (the backward's reruns for 16-bit inputs, opt-in).
    ``EARLY_LOADS``: the merge map loaded at the step's top and each chunk's ``o`` before its reads' product, so that
    their round trips overlap the query's and weights' (a few registers; the forward's, ``chunk_fwd.EARLY_LOADS``).
    Each sub-chunk's values and end slots are loaded a phase ahead (the first at the step's top, before the reads;
    the next while the current one's products run), so that the one-hot map does not wait on them (run 67's ``ncu``:
    18.5 % of the walk's stall samples on those compares; run 68: the forward's walk -12 %, the rerun even).

    ``K``, ``Dk``, ``Dv`` are compile-time constants (one build per head shape and slot count, as FLA's kernels take
    their head widths): with them as arguments every state element's address and mask was a register held across
    the loop, and spilled (sm_90, two chunks a step at D = 64, K = 30: 728 B of stack against 208)."""
    t = tl.arange(0, CS)
    # S[d, e, j] = slots[r, j, d, vb * BV + e], held as [Dk, BV KP] (column e KP + j) between steps.
    r, dk, dv, j, kmask, vmask, state_at, s_mask = slot_tile(K, Dk, Dv, BK, BV, KP)
    s_at = slots_ptr + r * K * Dk * Dv + state_at
    S = tl.reshape(tl.load(s_at, mask=s_mask, other=0.0), [BK, BV * KP])
    for c in range(NB):
        cr = c * R + r
        if STORE_STARTS:
            tl.store(starts_ptr + cr * K * Dk * Dv + state_at, tl.reshape(S, [BK, BV, KP]), mask=s_mask)
        if EARLY_LOADS:
            dest_f = tl.load(dest_f_ptr + cr * K + j, mask=j < K, other=-1)
        v_next, dest_next = token_operands(v_ptr, dest_ptr, r, c0 + c * (C // CS), cr * C, T, H, Dv, dv, vmask, CS,
                                           KP)
        if READS:
            add_step_reads(S, qt_ptr, coef_ptr, o_ptr, r, cr, c0 + c * (C // CS), T, H, K, Dk, Dv, dk, dv, j, kmask,
                           vmask, C, CS, BV, KP, READ_F32, EARLY_LOADS)
        # The merges, in the steps that have any: X[:, e, j] = sum over the start slots i ending in j of S[:, e, i].
        if not EARLY_LOADS:
            dest_f = tl.load(dest_f_ptr + cr * K + j, mask=j < K, other=-1)
        if tl.sum(((dest_f >= 0) & (dest_f != j)).to(tl.int32), 0) > 0:
            to_end = (dest_f[:, None] == j[None, :]).to(tl.float32)  # [KP (i), KP (j)]
            X = tl.reshape(dot_f32(tl.reshape(S, [BK * BV, KP]), to_end, None, True), [BK, BV * KP])
        else:
            X = S
        # The transition of every slot, and the step's tokens in their end slots (v spread over the slot axis).
        phi = tl.load(phi_ptr + cr * Dk * Dk + dk[:, None] * Dk + dk[None, :],
                      mask=kmask[:, None] & kmask[None, :], other=0.0)
        for h in tl.static_range(C // CS):
            at = cr * C + h * CS
            kb_t = tl.load(kb_ptr + at * Dk + t[None, :] * Dk + dk[:, None], mask=kmask[:, None], other=0.0)
            # (this sub-chunk's operands were loaded a phase ahead; the next one's now)
            v, one_hot = v_next.to(tl.float32), (dest_next == j[None, :]).to(tl.float32)
            if h + 1 < C // CS:
                v_next, dest_next = token_operands(v_ptr, dest_ptr, r, c0 + c * (C // CS) + h + 1, at + CS, T, H, Dv,
                                                   dv, vmask, CS, KP)
            writes = tl.reshape(v[:, :, None] * one_hot[:, None, :], [CS, BV * KP])
            if h == 0:  # (after the first sub-chunk's keys are loaded: the order every measured build had)
                S = dot_f32_or_tf32(phi, X, None, False, SPLIT)
            S = dot_f32_or_tf32(kb_t, writes, S, V_EXACT, SPLIT)
    if STORE_END:
        tl.store(s_at, tl.reshape(S, [BK, BV, KP]), mask=s_mask)


def state_block(Dk: int, Dv: int, K: int) -> tuple[int, int, int, int, int]:
    """``(BK, BV, KP, num_warps, num_stages)``: the padded key width, the Dv block, the padded slot count and the
    launch options. A program holds ``BK x BV x KP`` float32 states: 8K values on 4 warps up to ``Dk = 64`` (BV = 4
    at K = 30), 16K on 8 warps above (BV = 4: each chunk's tables, 136 KB at Dk = 128, read by half as many
    programs); one load stage, no software pipelining (two stages need more shared memory than an SM has at 128
    features). Measured on an H200 (run 28, (2, 16384, 16, 64) moderate, the three walks alone: forward, rerun
    storing the start states, kernel A): BV = 4 on 4 warps and one stage 8.0 / 9.0 / 11.6 ms against run 17's BV = 2
    on two stages 8.9 / 12.3 / 19.6 (more spills, sm_90: 912 B of stack in kernel A against 400, but each chunk's
    tables loaded by half as many programs); 8 warps or BV = 1 slower in every walk. At 128 features run 17's
    choice, not re-measured."""
    BK, KP = max(next_pow2(Dk), 16), max(next_pow2(K), 16)
    small = BK <= 64
    BV = max(1, min(next_pow2(Dv), (1 << (13 if small else 14)) // (BK * KP)))
    return BK, BV, KP, 4 if small else 8, 1


def launch_shape(Dk: int, Dv: int, K: int, launch: tuple[int, int, int] | None):
    """:func:`state_block`, its ``(BV, num_warps, num_stages)`` replaced by ``launch`` where given."""
    BK, BV, KP, num_warps, num_stages = state_block(Dk, Dv, K)
    return (BK, BV, KP, num_warps, num_stages) if launch is None else (BK, launch[0], KP, *launch[1:])


def slot_states_and_reads(slots, Phi, kb, qt, v, coef, dest_f, dest, o, c0: int, *, read_f32: bool,
                          v_exact: bool, starts=None, launch: tuple[int, ...] | None = None,
                          chunk: int | None = None, early_loads: bool = False, store_end: bool = True,
                          split: bool = True) -> None:
    """Advance the slot states ``slots [R, K, Dk, Dv]`` (float32, in place) over the ``nb`` steps (chunks, or
    composed runs of chunks: ``chunk``) that start at chunk ``c0`` and add the reads of each step's start slots to
    ``o [B, T, H, Dv]`` (float32, in place).

    Per step: ``Phi [nb, R, Dk, Dk]``, ``kb, qt [nb, R, C, Dk]`` (``kb = beta khd``), ``coef [nb, R, C, K]``
    (float32); ``dest_f [nb, R, K]`` (each start slot's end slot, -1: none) and ``dest [nb, R, C]`` (each token's, -1:
    padding), int32; ``v [B, T, H, Dv]`` the values in their dtype. ``read_f32``: the reads to float32 accuracy
    (float32 inputs) or in single-pass tf32 (16-bit inputs, whose rounding is 16x coarser); ``v_exact``: ``v`` holds
    16-bit values (exact in tf32: the token products split only the keys). The states are float32-accurate either
    way. ``o`` None: no reads (``qt``, ``coef`` unused); ``starts`` (``[nb, R, K, Dk, Dv]`` float32 or None) receives
    each step's start states. ``launch``: ``(BV, num_warps, num_stages)`` in place of :func:`state_block`'s, and
    optionally a register cap (for sweeps). ``chunk``: the tokens of one chunk where each of the ``nb`` steps spans
    several (``chunk_fwd_steps``' composed tables, ``C`` tokens a step; ``c0`` counts chunks); None: every step is one
    chunk. ``early_loads``: the kernel's ``EARLY_LOADS``. ``store_end`` False: ``slots`` only read (the backward's
    segments walk from the forward's checkpoints for their start states, and need no end states). ``split`` False:
    the states' products in one tf32 pass (the backward's reruns for 16-bit inputs, opt-in: not float32-accurate)."""
    nb, R, C, Dk = kb.shape
    B, T, H, Dv = v.shape
    K = slots.shape[1]
    BK, BV, KP, num_warps, num_stages = launch_shape(Dk, Dv, K, None if launch is None else launch[:3])
    capped = {"maxnreg": launch[3]} if launch is not None and len(launch) > 3 else {}
    reads = o is not None
    qt, coef = (qt.contiguous(), coef.contiguous()) if reads else (slots, slots)  # unread placeholders otherwise
    dla_delta_states_kernel[(R * triton.cdiv(Dv, BV),)](
        slots, Phi.contiguous(), kb.contiguous(), qt, v.contiguous(), coef, dest_f.to(torch.int32).contiguous(),
        dest.to(torch.int32).contiguous(), o if reads else slots, slots if starts is None else starts,
        nb, R, T, H, c0, K, Dk, Dv, C=C, CS=chunk or C, BK=BK, BV=BV, KP=KP, READ_F32=read_f32, V_EXACT=v_exact,
        READS=reads, STORE_STARTS=starts is not None, EARLY_LOADS=early_loads, STORE_END=store_end, SPLIT=split,
        num_warps=num_warps, num_stages=num_stages, **capped,
    )
