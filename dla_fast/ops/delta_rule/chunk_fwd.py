"""The gated delta rule's forward on CUDA (also under TRITON_INTERPRET=1): decisions first, then the fixed partition.

docs/delta-rule-chunked.md section 7 is the plan; this is its first build, with stage 4 in torch:

1. ``dla_delta_decide_kernel`` (``chunk_fwd_decide``, one program per row): every token's score and decision
   against the explicit open slot (float64), each chunk's boundary mask, the open slot after the call;
2. ``dla_merge_kernel`` (scalar decay's, on those masks and scores): counts, information sums, the merges, each
   start's death and the live starts at every chunk start (``DecidedStructure``);
3. torch, the partition now fixed: the WY tables of every chunk (``wy_tables``), each token's read weights and
   each chunk's slot map (vectorised from the structure), one sequential pass over the chunks for the slot
   states at every chunk start (two batched products per chunk), the reads batched per block of chunks.

The slot states live at chunk starts, feature-major (``[R, Dk, K, Dv]``): the chunk operator ``Phi`` then acts on
every slot of a row as one product. No host synchronisation and no numba: the call stays on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.layout import chunks, rows, unchunk, unrows
from ..common.triton_utils import INT32_MAX
from ..scalar_decay.chunk_fwd import DecidedStructure, LaunchConfig, merge_simulation
from ..scalar_decay.chunk_fwd_states import CHUNK, start_bits
from .chunk_fwd_decide import decide_delta_rule_triton
from .wy_tables import wy_tables

# Elements of the largest tensors of a block of chunks ([block, R, C, C] in the tables' dtype) and of a sub-block
# ([sub, R, Dk, K, Dv] slot states): they bound the stage's memory (~0.5 GB each way).
_TABLE_ELEMENTS = 1 << 22
_STATE_ELEMENTS = 1 << 25


def _decide(k, v, g, beta, boundaries, cache, size0, lengths, tau, eps, norm_eps, decide_warps):
    """Stages 1-2 from the initial ``cache`` (its sizes ``size0 [R]``): ``(scores [B, T, H] float64,
    DecidedStructure, the open slot after the call [R, Dk, Dv] float64, row lengths [R] int32)``."""
    states, counts, info, _ = cache
    B, T, H, Dk = k.shape
    Dv, K = v.shape[-1], states.shape[2]
    R = B * H
    dev = k.device
    open_slot = states.reshape(R, K, Dk, Dv)[torch.arange(R, device=dev), (size0 - 1).clamp(min=0)]
    P = (open_slot.to(torch.float64) * (size0 > 0).view(R, 1, 1)).contiguous()  # advanced in place
    scores, _, masks = decide_delta_rule_triton(
        k, v, g, beta, open_states=P.view(B, H, Dk, Dv), size=size0.view(B, H), tau=tau, boundaries=boundaries,
        row_lengths=lengths, eps=eps, norm_eps=norm_eps, num_warps=decide_warps,
    )
    cfg = LaunchConfig(B, T, H, Dk, Dv, K, lowp=False, split=False, prec="ieee")
    full = torch.full((B,), T, device=dev, dtype=torch.int32)
    row_lengths = (full if lengths is None else lengths.to(dev, torch.int32)).repeat_interleave(H).contiguous()
    row_scores = F.pad(scores.transpose(1, 2).reshape(R, T), (0, cfg.NC * CHUNK - T))  # the merge kernel's layout
    unused = torch.zeros(1, device=dev)
    flag = torch.zeros(R, device=dev, dtype=torch.int32)
    s = merge_simulation(cfg, masks, row_scores, row_lengths, unused, unused, counts, info, size0, flag,
                         pipeline=False)
    return scores, s, P, row_lengths


class _FixedPartition:
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
        self.start_rows = start_bits(s.masks)  # [R, NC * C]: the trace's starts too
        self.starts = self.start_rows.view(R, NC, C).transpose(0, 1)  # [NC, R, C]
        self.death_flat = s.death.long()  # [R, NC * C]
        self.death = self.death_flat.view(R, NC, C).transpose(0, 1)
        self.death0 = s.death0.long()  # [R, K]
        self.causal = torch.ones(C, C, dtype=torch.bool, device=dev).tril()

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
        of token s's slot, s <= t), ``coef [nb, R, C, K]`` (its weight of the slot holding start slot i), and the
        maps to the chunk-end slots ``Mf [nb, R, K, K]`` (start slot i -> j) and ``Md [nb, R, K, C]`` (token s ->
        j), in lam's dtype."""
        nb, R, K, C = b1 - b0, self.R, self.K, CHUNK
        t_glob = (torch.arange(b0, b1, device=lam.device).view(nb, 1, 1) * C + torch.arange(C, device=lam.device))
        pos, valid, death = self._start_slots(b0, b1)
        # In-chunk starts p live at token t: [nb, R, C (t), C (p)].
        alive = self.starts[b0:b1].unsqueeze(2) & self.causal & (self.death[b0:b1].unsqueeze(2) > t_glob.unsqueeze(-1))
        n_in = alive.sum(-1, keepdim=True)
        J = n_in - alive.cumsum(-1)  # live starts after s: the recency of s's slot at t
        W = lam.gather(-1, J.clamp(max=K - 1)) * self.causal
        alive_f = valid.unsqueeze(2) & (death.unsqueeze(2) > t_glob.unsqueeze(-1))  # [nb, R, C, K]
        JF = n_in + alive_f.sum(-1, keepdim=True) - alive_f.cumsum(-1)
        coef = lam.gather(-1, JF.clamp(max=K - 1)) * valid.unsqueeze(2)
        # The chunk-end slot holding a start slot's first token, and each token.
        nxt = self.next_pos[b0:b1]
        dest_f = torch.searchsorted(nxt, pos.contiguous(), right=True) - 1
        Mf = (dest_f.unsqueeze(2) == self.slot.view(K, 1)) & valid.unsqueeze(2)
        dest = torch.searchsorted(nxt, t_glob.expand(nb, R, C).contiguous(), right=True) - 1
        in_row = t_glob < self.row_len.view(1, R, 1)
        Md = (dest.unsqueeze(2) == self.slot.view(K, 1)) & in_row.unsqueeze(2)
        return W, coef, Mf.to(lam.dtype), Md.to(lam.dtype)


def _slot_states(start, Mf, Md, khd, bv, Phi):
    """The slot states ``[nb + 1, R, Dk, K, Dv]`` at each chunk start of a block and at its end:
    ``S_end[j] = Phi sum_{i -> j} S_start[i] + sum_{s -> j} khd_s (b_s v_s)^T`` (docs/delta-rule-chunked.md §2).

    Feature-major (``[R, Dk, K, Dv]``): ``Phi`` acts on every slot of a row as one ``[Dk, Dk] @ [Dk, K Dv]``
    product, and the slot map as one ``[K, K]`` product per (row, feature). ``start``: the states at the block
    start."""
    nb, R, K, C = Md.shape
    Dk, Dv = start.shape[1], start.shape[3]
    # The chunk's tokens in their end slots: U[d, j, v] = sum_s khd[s, d] Md[j, s] b_s v[s, v].
    Y = (khd.transpose(-1, -2).unsqueeze(3) * Md.unsqueeze(2)).reshape(nb * R, Dk * K, C)
    U = torch.bmm(Y, bv.reshape(nb * R, C, Dv)).view(nb, R, Dk, K * Dv)
    Mf_rows = Mf.unsqueeze(2).expand(nb, R, Dk, K, K).reshape(nb, R * Dk, K, K)
    Fs = start.new_empty(nb + 1, R, Dk, K, Dv)
    Fs[0] = start
    for c in range(nb):  # the one sequential dependency: each chunk's slots from the previous chunk's
        X = torch.bmm(Mf_rows[c], Fs[c].view(R * Dk, K, Dv)).view(R, Dk, K * Dv)
        torch.baddbmm(U[c], Phi[c], X, out=Fs[c + 1].view(R, Dk, K * Dv))
    return Fs


def _read_start_slots(Fs, qt, coef):
    """``sum_i coef[t, i] qt_t^T S_i`` for the slots live at each chunk start (``Fs [nb, R, Dk, K, Dv]``): one
    ``[C, Dk K] @ [Dk K, Dv]`` product per (chunk, row). Returns ``[nb, R, C, Dv]``."""
    nb, R, Dk, K, Dv = Fs.shape
    C = qt.shape[2]
    Xq = (qt.unsqueeze(-1) * coef.unsqueeze(3)).reshape(nb * R, C, Dk * K)
    return torch.bmm(Xq, Fs.reshape(nb * R, Dk * K, Dv)).view(nb, R, C, Dv)


def _states_and_outputs(q, k, v, g, beta, lam, part: _FixedPartition, states, table_dtype):
    """Stage 3: ``(o [nC, R, C, Dv], the slot states after the call [R, K, Dk, Dv])`` in the states' dtype.

    Blocks of chunks for the tables and the read weights (``[nb, R, C, C]`` tensors), sub-blocks for the slot
    states (``[nb, R, Dk, K, Dv]``): both bound the memory, and larger blocks mean fewer launches."""
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], lam.shape[-1]
    R, C, nC = B * H, CHUNK, -(-T // CHUNK)
    cd = states.dtype
    qc, kc, gc, bc = (chunks(rows(x), C, nC) for x in (q, k, g, beta))  # in the tables' dtype block by block
    vc, lamc = (chunks(rows(x, cd), C, nC) for x in (v, lam))
    bv = bc.to(cd).unsqueeze(-1) * vc
    slots = states.reshape(R, K, Dk, Dv).transpose(1, 2).contiguous()
    o = torch.empty(nC, R, C, Dv, dtype=cd, device=q.device)
    block = max(1, _TABLE_ELEMENTS // (R * C * C))
    sub = max(1, _STATE_ELEMENTS // (R * K * Dk * Dv))
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        tab, _ = wy_tables(*(x[b0:b1].to(table_dtype) for x in (qc, kc, gc, bc)))
        attn, qt, khd, Phi = (tab[n].to(cd) for n in ("attn", "qt", "khd", "Phi"))
        W, coef, Mf, Md = part.block(b0, b1, lamc[b0:b1])
        o[b0:b1] = (attn * W) @ bv[b0:b1]
        for s0 in range(0, b1 - b0, sub):
            s1 = min(b1 - b0, s0 + sub)
            Fs = _slot_states(slots, Mf[s0:s1], Md[s0:s1], khd[s0:s1], bv[b0 + s0:b0 + s1], Phi[s0:s1])
            o[b0 + s0:b0 + s1] += _read_start_slots(Fs[:-1], qt[s0:s1], coef[s0:s1])
            slots = Fs[-1]
    return o, slots.transpose(1, 2)


def forward_delta_rule_triton(q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, *, tau,
                              eps: float = 1e-6, norm_eps: float = 1e-6, lengths=None, table_dtype=torch.float64,
                              decide_warps: int | None = None):
    """DLA with the gated delta-rule backbone on CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``): the
    contract of ``chunk_torch.forward_delta_rule_chunked`` (the cache tensors ``states [B, H, K, Dk, Dv]`` in the
    compute dtype, ``counts``, ``info`` float64, ``size`` updated in place; ``lengths [B]`` or None).

    ``table_dtype``: the WY tables' dtype (float64 as the torch path's ``T``); ``decide_warps``: the decision
    kernel's warps (None: its default).

    Returns ``(o [B, T, H, Dv] cd, scores [B, T, H] float64, starts [B, T, H] bool, merged [B, T, H] int64)``.
    """
    B, T, H, _ = q.shape
    K = slot_weights.shape[-1]
    R = B * H
    if T == 0:
        empty = torch.zeros(B, 0, H, device=q.device)
        return (torch.zeros(B, 0, H, v.shape[-1], device=q.device, dtype=states.dtype), empty.double(),
                empty.bool(), empty.long())
    size0 = size.reshape(R).clone()  # size itself receives the final sizes below
    scores, s, P, row_lengths = _decide(k, v, g, beta, boundaries, (states, counts, info, size), size0, lengths, tau,
                                        eps, norm_eps, decide_warps)
    part = _FixedPartition(s, size0, row_lengths, K)
    o, final = _states_and_outputs(q, k, v, g, beta, slot_weights, part, states, table_dtype)
    # The open slot: the decision kernel's explicit one (float64 per token), as the torch path keeps its scan's.
    open_idx = (s.size - 1).clamp(min=0)
    rows_ = torch.arange(R, device=q.device)
    final[rows_, open_idx] = torch.where((s.size > 0).view(R, 1, 1), P.to(final.dtype), final[rows_, open_idx])
    states.copy_(final.reshape(states.shape))
    counts.copy_(s.counts.view(counts.shape))
    info.copy_(s.info.view(info.shape))
    size.copy_(s.size.view(size.shape))
    trace = (part.start_rows[:, :T], s.merged[:, :T])
    return unrows(unchunk(o, T), B, H), scores, *(unrows(x, B, H) for x in trace)
