"""Triton, gated delta rule: the slot walk of ``chunk_fwd_states`` with each program's slot states held as two
halves of the slot axis, ``S_lo`` (slots ``0 .. KP/2 - 1``) and ``S_hi`` (the rest), so that a sub-chunk's tokens
enter ``S_lo`` only where one of them lands there (issue #12, run 70; opt-in, ``chunk_fwd_states.HALVES``).

Why. The walk puts a sub-chunk's tokens into their end slots by one product over every slot,
``kb^T [Dk, CS] @ (v one-hot) [CS, BV KP]``: ``KP`` times the tokens' own work, about half the walk's FLOPs at ``C =
Dk = Dv = 64``, ``KP = 32`` (two passes, ``V_EXACT``), and its one-hot operand is the largest tile the kernel builds
and stores to shared memory. A slot's tokens are the newest ones, so they land in the newest slots: in a full cache a
step with at most ``K - 1 - KP/2`` new slots (13 at K = 30) puts all its tokens in ``S_hi``, and the product is half
as wide. The product into ``S_hi`` always runs (a branch around it too spilled more: sm_90, 496 B of stack against
344); the one into ``S_lo`` where a token of the sub-chunk lands there (a filling cache, a dense step). The reads,
merges and transition take the same FLOPs on two tiles of half the width; a merge never moves a slot up (end slot
``<=`` start slot), so the merge map has no ``lo -> hi`` block.

FLOPs per (chunk, row), all Dv blocks, at ``C = Dk = Dv = 64``, ``KP = 32``, two chunks a step, with each product's
passes (reads one, transition three, tokens two, merges two): 71 MFLOP, 34 of them the token product; 55 where the
tokens reach ``S_hi`` only. Needs ``KP >= 32`` (a product's operands are at least 16 wide).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.triton_utils import chunk_tokens
from .chunk_fwd_states import dot_f32, slot_tile, token_operands


@triton.jit
def _half_at(K, Dk, Dv, BK: tl.constexpr, BV: tl.constexpr, HP: tl.constexpr, J0: tl.constexpr):
    """The program's ``[BK, BV, HP]`` offsets and mask of slots ``J0 ..`` in a row's ``[K, Dk, Dv]`` states."""
    _, _, _, jh, kmask, vmask, at, mask = slot_tile(K, Dk, Dv, BK, BV, HP)
    return at + J0 * Dk * Dv, mask & (J0 + jh < K)[None, None, :]


@triton.jit
def _halves_of(row_ptr, K, Dk, Dv, BK: tl.constexpr, BV: tl.constexpr, HP: tl.constexpr):
    """A row's slot states (at ``row_ptr``) as the program's two halves, ``[BK, BV HP]`` each."""
    at_lo, m_lo = _half_at(K, Dk, Dv, BK, BV, HP, 0)
    at_hi, m_hi = _half_at(K, Dk, Dv, BK, BV, HP, HP)
    return (tl.reshape(tl.load(row_ptr + at_lo, mask=m_lo, other=0.0), [BK, BV * HP]),
            tl.reshape(tl.load(row_ptr + at_hi, mask=m_hi, other=0.0), [BK, BV * HP]))


@triton.jit
def _store_halves(row_ptr, S_lo, S_hi, K, Dk, Dv, BK: tl.constexpr, BV: tl.constexpr, HP: tl.constexpr):
    """The program's two halves stored as a row's slot states (at ``row_ptr``)."""
    at_lo, m_lo = _half_at(K, Dk, Dv, BK, BV, HP, 0)
    tl.store(row_ptr + at_lo, tl.reshape(S_lo, [BK, BV, HP]), mask=m_lo)
    at_hi, m_hi = _half_at(K, Dk, Dv, BK, BV, HP, HP)
    tl.store(row_ptr + at_hi, tl.reshape(S_hi, [BK, BV, HP]), mask=m_hi)


@triton.jit
def _half_reads(S, qt, coef_ptr, at, K, jh, J0: tl.constexpr, CS: tl.constexpr, BV: tl.constexpr,
                HP: tl.constexpr, READ_F32: tl.constexpr):
    """The reads of one half (slots ``J0 ..``) by ``CS`` tokens: ``sum_j coef[t, J0 + j] qt_t . S[:, e, j]``, ``[CS,
    BV]``."""
    t = tl.arange(0, CS)
    coef = tl.load(coef_ptr + at * K + t[:, None] * K + J0 + jh[None, :], mask=(J0 + jh < K)[None, :], other=0.0)
    if READ_F32:
        Y = dot_f32(qt, S, None, False)
    else:
        Y = tl.dot(qt, S, input_precision="tf32")
    return tl.sum(tl.reshape(Y, [CS, BV, HP]) * coef[:, None, :], axis=2)


@triton.jit
def _step_reads(S_lo, S_hi, qt_ptr, coef_ptr, o_ptr, r, cr, chunk0, T, H, K, Dk, Dv, dk, dv, jh, kmask, vmask,
                C: tl.constexpr, CS: tl.constexpr, BV: tl.constexpr, HP: tl.constexpr, READ_F32: tl.constexpr):
    """``o +=`` the reads of a step's start slots, both halves (``chunk_fwd_states.add_step_reads``)."""
    t = tl.arange(0, CS)
    for h in tl.static_range(C // CS):
        _, _, _, _, valid, row = chunk_tokens(r, chunk0 + h, T, H, CS)
        tok_v = valid[:, None] & vmask[None, :]
        at = cr * C + h * CS
        qt = tl.load(qt_ptr + at * Dk + t[:, None] * Dk + dk[None, :], mask=kmask[None, :], other=0.0)
        o_at = o_ptr + row[:, None] * Dv + dv[None, :]
        o_old = tl.load(o_at, mask=tok_v, other=0.0)
        read = _half_reads(S_lo, qt, coef_ptr, at, K, jh, 0, CS, BV, HP, READ_F32)
        read += _half_reads(S_hi, qt, coef_ptr, at, K, jh, HP, CS, BV, HP, READ_F32)
        tl.store(o_at, o_old + read, mask=tok_v)


@triton.jit
def _merged(S_lo, S_hi, dest_lo, dest_hi, jh, BK: tl.constexpr, BV: tl.constexpr, HP: tl.constexpr):
    """The start slots summed into their end slots (``dest_lo``, ``dest_hi``: each half's end slots, -1: none):
    ``(X_lo, X_hi)``. Slots only move down, so ``X_hi`` takes ``S_hi`` alone."""
    lo = tl.reshape(S_lo, [BK * BV, HP])
    hi = tl.reshape(S_hi, [BK * BV, HP])
    lo_to_lo = (dest_lo[:, None] == jh[None, :]).to(tl.float32)
    hi_to_lo = (dest_hi[:, None] == jh[None, :]).to(tl.float32)
    hi_to_hi = (dest_hi[:, None] == (HP + jh)[None, :]).to(tl.float32)
    X_lo = dot_f32(hi, hi_to_lo, dot_f32(lo, lo_to_lo, None, True), True)
    X_hi = dot_f32(hi, hi_to_hi, None, True)
    return tl.reshape(X_lo, [BK, BV * HP]), tl.reshape(X_hi, [BK, BV * HP])


@triton.jit
def _tokens_into(S, kb_t, v, dest, jh, J0: tl.constexpr, V_EXACT: tl.constexpr, CS: tl.constexpr, BV: tl.constexpr,
                 HP: tl.constexpr):
    """``S += kb_t @ (v one-hot)``: a sub-chunk's tokens into their end slots (``dest``, ``[CS, HP]`` broadcast over
    the slots) of the half of slots ``J0 ..``."""
    one_hot = (dest == (J0 + jh)[None, :]).to(tl.float32)
    writes = tl.reshape(v.to(tl.float32)[:, :, None] * one_hot[:, None, :], [CS, BV * HP])
    return dot_f32(kb_t, writes, S, V_EXACT)


# Long: the program walks a block of steps in order (as ``dla_delta_states_kernel``).
@triton.jit(do_not_specialize=["NB", "T", "H", "c0"])
def dla_delta_states_halves_kernel(
    slots_ptr, phi_ptr, kb_ptr, qt_ptr, v_ptr, coef_ptr, dest_f_ptr, dest_ptr, o_ptr, starts_ptr,
    NB, R, T, H, c0, K: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    C: tl.constexpr, CS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HP: tl.constexpr,
    READ_F32: tl.constexpr, V_EXACT: tl.constexpr, READS: tl.constexpr, STORE_STARTS: tl.constexpr,
):
    """``dla_delta_states_kernel``'s contract (its arguments, ``KP = 2 HP``; its merge map and outputs loaded early)
    with the slot states in two halves of ``HP`` slots (module docstring): a sub-chunk's tokens go into a half only
    if one of them lands there."""
    t = tl.arange(0, CS)
    r, dk, dv, jh, kmask, vmask, _, _ = slot_tile(K, Dk, Dv, BK, BV, HP)
    S_lo, S_hi = _halves_of(slots_ptr + r * K * Dk * Dv, K, Dk, Dv, BK, BV, HP)
    for c in range(NB):
        cr = c * R + r
        if STORE_STARTS:
            _store_halves(starts_ptr + cr * K * Dk * Dv, S_lo, S_hi, K, Dk, Dv, BK, BV, HP)
        dest_lo = tl.load(dest_f_ptr + cr * K + jh, mask=jh < K, other=-1)
        dest_hi = tl.load(dest_f_ptr + cr * K + HP + jh, mask=HP + jh < K, other=-1)
        v_next, dest_next = token_operands(v_ptr, dest_ptr, r, c0 + c * (C // CS), cr * C, T, H, Dv, dv, vmask, CS,
                                           HP)
        if READS:
            _step_reads(S_lo, S_hi, qt_ptr, coef_ptr, o_ptr, r, cr, c0 + c * (C // CS), T, H, K, Dk, Dv, dk, dv, jh,
                        kmask, vmask, C, CS, BV, HP, READ_F32)
        moved = ((dest_lo >= 0) & (dest_lo != jh)).to(tl.int32) + ((dest_hi >= 0) & (dest_hi != HP + jh)).to(tl.int32)
        if tl.sum(moved, 0) > 0:
            X_lo, X_hi = _merged(S_lo, S_hi, dest_lo, dest_hi, jh, BK, BV, HP)
        else:
            X_lo, X_hi = S_lo, S_hi
        phi = tl.load(phi_ptr + cr * Dk * Dk + dk[:, None] * Dk + dk[None, :],
                      mask=kmask[:, None] & kmask[None, :], other=0.0)
        for h in tl.static_range(C // CS):
            at = cr * C + h * CS
            kb_t = tl.load(kb_ptr + at * Dk + t[None, :] * Dk + dk[:, None], mask=kmask[:, None], other=0.0)
            v, dest_t = v_next, dest_next
            if h + 1 < C // CS:
                v_next, dest_next = token_operands(v_ptr, dest_ptr, r, c0 + c * (C // CS) + h + 1, at + CS, T, H, Dv,
                                                   dv, vmask, CS, HP)
            if h == 0:
                S_lo = dot_f32(phi, X_lo, None, False)
                S_hi = dot_f32(phi, X_hi, None, False)
            S_hi = _tokens_into(S_hi, kb_t, v, dest_t, jh, HP, V_EXACT, CS, BV, HP)
            if tl.min(tl.min(tl.where(dest_t >= 0, dest_t, HP), 1), 0) < HP:
                S_lo = _tokens_into(S_lo, kb_t, v, dest_t, jh, 0, V_EXACT, CS, BV, HP)
    _store_halves(slots_ptr + r * K * Dk * Dv, S_lo, S_hi, K, Dk, Dv, BK, BV, HP)
