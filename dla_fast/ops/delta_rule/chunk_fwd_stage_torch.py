"""Stage 3 of the delta rule's device forward (``chunk_fwd``) as it was before issue #12's fusion: the partition's
maps and the intra-chunk output in torch, the WY tables from float64 chunk-major copies of the inputs. Not on any
path: the oracle that ``tests/test_delta_stage3.py`` and ``benchmarks/delta_stage3_check.py`` hold the kernels of
``chunk_fwd_partition`` and ``wy_tables_triton.output_tables_rows`` to (same signature as
``chunk_fwd._states_and_outputs``; the slot-state kernel is the forward's own).
"""

from __future__ import annotations

import torch

from ..common.layout import chunks, rows
from ..common.triton_utils import INT32_MAX
from ..scalar_decay.chunk_fwd import DecidedStructure
from ..scalar_decay.chunk_fwd_states import CHUNK
from . import chunk_fwd
from .chunk_fwd_states import slot_states_and_reads
from .wy_tables_triton import output_tables_triton


class FixedPartition:
    """The decided structure, chunk-major, and per block of chunks the weights and maps the torch stage reads.

    A slot is the run of tokens from its start to the next live start, so everything follows from the live
    starts: at token t (after its update) the live starts are those ``p <= t`` not yet dead (``death > t``), and
    the slot holding token s has recency ``#{live p > s}``. ``live[c]`` lists the slots live at chunk c's start
    (the initial slots at -m0..-1); the next chunk's list (after the last chunk, the final one) says where each
    ends.
    """

    def __init__(self, s: DecidedStructure, size0, row_lengths, K: int):
        R, NC = s.livem.shape
        C, dev = CHUNK, s.masks.device
        self.K, self.R, self.size0, self.row_len = K, R, size0, row_lengths.long()
        self.slot = torch.arange(K, device=dev)
        self.live = s.live[:, :, :K].long().transpose(0, 1)  # [NC, R, K]
        self.livem = s.livem.long().transpose(0, 1)  # [NC, R]
        nxt = torch.cat([s.live[:, 1:, :K], s.fpos[:, None, :K]], 1).long().transpose(0, 1)
        nxtm = torch.cat([s.livem[:, 1:].long(), s.size[:, None]], 1).transpose(0, 1)
        self.next_pos = torch.where(self.slot < nxtm.unsqueeze(-1), nxt, INT32_MAX).contiguous()
        shifts = torch.arange(C, device=dev, dtype=torch.int64)
        self.starts = ((s.masks[:, :, None] >> shifts) & 1).bool().transpose(0, 1)  # [NC, R, C]
        self.death_flat = s.death.long()  # [R, NC * C]
        self.death = self.death_flat.view(R, NC, C).transpose(0, 1)
        self.death0 = s.death0.long()  # [R, K]
        self.causal = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
        # later[p, s] = [p > s]: the live starts after s counted by one product.
        self.later, self.later_slot = (torch.ones(n, n, device=dev).tril(-1) for n in (C, K))

    def _start_slots(self, b0: int, b1: int):
        """``(pos, valid, death)`` ``[nb, R, K]`` of the slots live at each chunk start (invalid: death -1)."""
        nb, R, K = b1 - b0, self.R, self.K
        pos = self.live[b0:b1]
        valid = self.slot < self.livem[b0:b1].unsqueeze(-1)
        d_init = self.death0.expand(nb, R, K).gather(-1, (pos + self.size0.view(1, R, 1)).clamp(0, K - 1))
        d_tok = self.death_flat.expand(nb, R, -1).gather(-1, pos.clamp(0, self.death_flat.shape[1] - 1))
        death = torch.where(valid, torch.where(pos < 0, d_init, d_tok), -1)
        return pos, valid, death

    def block(self, b0: int, b1: int, lam: torch.Tensor):
        """Chunks ``b0 .. b1 - 1`` (``lam [nb, R, C, K]``, the read weights): ``W [nb, R, C, C]`` (token t's weight
        of token s's slot, s <= t) and ``coef [nb, R, C, K]`` (its weight of the slot holding start slot i), in
        lam's dtype; the chunk-end slot of each start slot ``dest_f [nb, R, K]`` and of each token ``dest [nb, R,
        C]`` (int64, -1: none or padding)."""
        nb, R, K, C = b1 - b0, self.R, self.K, CHUNK
        t_glob = (torch.arange(b0, b1, device=lam.device).view(nb, 1, 1) * C + torch.arange(C, device=lam.device))
        pos, valid, death = self._start_slots(b0, b1)
        # In-chunk starts p live at token t: [nb, R, C (t), C (p)].
        alive = self.starts[b0:b1].unsqueeze(2) & self.causal & (self.death[b0:b1].unsqueeze(2) > t_glob.unsqueeze(-1))
        n_in = alive.sum(-1, keepdim=True)
        J = (alive.float() @ self.later).long()  # live starts after s: the recency of s's slot at t
        W = lam.gather(-1, J.clamp(max=K - 1)) * self.causal
        alive_f = valid.unsqueeze(2) & (death.unsqueeze(2) > t_glob.unsqueeze(-1))  # [nb, R, C, K]
        JF = n_in + (alive_f.float() @ self.later_slot).long()
        coef = lam.gather(-1, JF.clamp(max=K - 1)) * valid.unsqueeze(2)
        # The chunk-end slot holding a start slot's first token, and each token.
        nxt = self.next_pos[b0:b1]
        dest_f = torch.where(valid, torch.searchsorted(nxt, pos.contiguous(), right=True) - 1, -1)
        dest = torch.searchsorted(nxt, t_glob.expand(nb, R, C).contiguous(), right=True) - 1
        dest = torch.where(t_glob < self.row_len.view(1, R, 1), dest, -1)
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
