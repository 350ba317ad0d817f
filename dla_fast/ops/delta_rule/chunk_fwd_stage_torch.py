"""Stage 3 of the delta rule's device forward (``chunk_fwd``) as it was before issue #12's fusion: the partition's
maps and the intra-chunk output in torch, the WY tables from float64 chunk-major copies of the inputs. Not on any
path: the oracle that ``tests/test_delta_stage3.py`` and ``benchmarks/delta_stage3_check.py`` hold the kernels of
``chunk_fwd_partition`` and ``wy_tables_triton.output_tables_rows`` to (same signature as
``chunk_fwd._states_and_outputs``; the slot-state kernel is the forward's own).
"""

from __future__ import annotations

import torch

from ..common.layout import chunks, rows
from ..common.live_starts import live_starts_from_lists
from ..scalar_decay.chunk_fwd import DecidedStructure
from ..scalar_decay.chunk_fwd_states import CHUNK
from . import chunk_fwd
from .chunk_fwd_states import slot_states_and_reads
from .wy_tables_triton import output_tables_triton


class FixedPartition:
    """The decided structure, chunk-major, and per block of chunks the weights and maps the torch stage reads: the
    merge kernel's ``DecidedStructure`` (its live start lists at every chunk start, the final one after the last
    chunk, each start's death) as :class:`~dla_fast.ops.common.live_starts.LiveStarts`, whose maps the torch
    backward's ``DevicePartition`` reads too."""

    def __init__(self, s: DecidedStructure, size0, row_lengths, K: int):
        self.K = K
        self.maps = live_starts_from_lists(s.masks, s.death, s.death0, s.live, s.livem, s.fpos, s.size, size0,
                                           row_lengths, K, CHUNK)

    def block(self, b0: int, b1: int, lam: torch.Tensor):
        """Chunks ``b0 .. b1 - 1`` (``lam [nb, R, C, K]``, the read weights): ``W [nb, R, C, C]`` (token t's weight
        of token s's slot, s <= t) and ``coef [nb, R, C, K]`` (its weight of the slot holding start slot i), in
        lam's dtype; the chunk-end slot of each start slot ``dest_f [nb, R, K]`` and of each token ``dest [nb, R,
        C]`` (int64, -1: none or padding)."""
        K, maps = self.K, self.maps
        t_glob, alive = maps.alive(b0, b1)
        W = lam.gather(-1, maps.recency(alive).clamp(max=K - 1)) * maps.causal
        valid, JF, dest_f, dest = maps.start_maps(b0, b1, t_glob, alive)
        coef = lam.gather(-1, JF.clamp(max=K - 1)) * valid.unsqueeze(2)
        return W, coef, dest_f, dest


def states_and_outputs_torch(q, k, v, g, beta, lam, s: DecidedStructure, size0, row_lengths, slots):
    """``chunk_fwd._states_and_outputs`` the pre-fusion way (same arguments and results): per block of chunks the
    tables from float64 chunk-major copies, :class:`FixedPartition`'s maps, the intra-chunk output ``(attn o W) @
    (b v)`` in torch, then the slot-state kernel."""
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], lam.shape[-1]
    R, C, nC = B * H, CHUNK, -(-T // CHUNK)
    cd = torch.float32
    lowp = q.dtype in (torch.bfloat16, torch.float16)
    part = FixedPartition(s, size0, row_lengths, K)
    qc, kc, gc, bc = (chunks(rows(x), C, nC) for x in (q, k, g, beta))
    vc, lamc = (chunks(rows(x, cd), C, nC) for x in (v, lam))
    bv = bc.to(cd).unsqueeze(-1) * vc
    o = torch.empty(B, T, H, Dv, dtype=cd, device=q.device)
    block = max(1, chunk_fwd._TABLE_ELEMENTS // (R * C * C))  # the same blocks
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        q_blk, k_blk, g_blk, beta_blk = (x[b0:b1].to(torch.float64) for x in (qc, kc, gc, bc))
        tab = output_tables_triton(q_blk, k_blk, g_blk, beta_blk, dtype=cd)
        W, coef, dest_f, dest = part.block(b0, b1, lamc[b0:b1])
        intra = ((tab["attn"] * W) @ bv[b0:b1]).view(b1 - b0, B, H, C, Dv).permute(1, 0, 3, 2, 4)
        n = min(T, b1 * C) - b0 * C
        o[:, b0 * C:b0 * C + n] = intra.reshape(B, (b1 - b0) * C, H, Dv)[:, :n]
        kb = beta_blk.to(cd).unsqueeze(-1) * tab["khd"]  # the tokens' keys at the chunk end, times beta
        slot_states_and_reads(slots, tab["Phi"], kb, tab["qt"], v, coef, dest_f.int(), dest.int(), o, b0,
                              read_f32=not lowp, v_exact=lowp)
    return o
