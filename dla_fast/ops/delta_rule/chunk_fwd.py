"""The gated delta rule's forward on CUDA (also under TRITON_INTERPRET=1): decisions first, then the fixed partition.

docs/delta-rule-chunked.md section 7 is the plan and the record:

1. ``dla_delta_decide_kernel`` (``chunk_fwd_decide``, one program per row): every token's score and decision
   against the explicit open slot (float64), each chunk's boundary mask, the open slot after the call; or (by
   default for few, narrow rows: section 8) the same a chunk at a time from the WY tables (``chunk_fwd_decide_wy``);
2. ``dla_merge_kernel`` (scalar decay's, on those masks and scores): counts, information sums, the merges, each
   start's death and the live starts at every chunk start (``DecidedStructure``);
3. the partition now fixed, per block of chunks: the WY tables (``wy_tables_triton``), each token's read weights and
   each chunk's slot map (torch, vectorised from the structure), the intra-chunk part (torch), then
   ``dla_delta_states_kernel`` (``chunk_fwd_states``): the slot states chunk by chunk, all K slots of a row in
   each product, and the reads of the slots live at each chunk start.

No host synchronisation and no numba: the call stays on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.layout import chunks, rows, unchunk, unrows
from ..common.triton_utils import INT32_MAX
from ..scalar_decay.chunk_fwd import DecidedStructure, LaunchConfig, merge_simulation
from ..scalar_decay.chunk_fwd_states import CHUNK, start_bits
from .chunk_fwd_decide import decide_delta_rule_triton
from .chunk_fwd_decide_wy import decide_delta_rule_wy
from .chunk_fwd_states import slot_states_and_reads
from .wy_tables_triton import output_tables_triton

# Where "auto" decides a chunk at a time: heads up to this wide, at most this many rows (B * H). The chunked
# path's parallel stages grow with the rows, the token walk's time does not until its one program per row fills
# the GPU. H200, 2026-12-01 (docs/benchmarks.md run 18), 64 features: 2.0-2.3x faster than the walk at 32 rows,
# the forward 1.3-2.1x faster at (2, 16384) and (1, 65536); at 128 rows (8, 4096) the forward 36 -> 40 ms, slower;
# 128 features, 128 rows: 19.3 against 16.6 ms for the decisions.
CHUNKED_DECISIONS_WIDTH = 64
CHUNKED_DECISIONS_ROWS = 64

# Elements of the largest tensors of a block of chunks ([block, R, C, C] in the tables' dtype): they bound the
# stage's memory (~0.5 GB).
_TABLE_ELEMENTS = 1 << 22


def auto_decisions(Dk: int, Dv: int, rows: int) -> str:
    """What ``decisions="auto"`` takes for heads of ``Dk x Dv`` features and ``rows = B * H``."""
    narrow_and_few = max(Dk, Dv) <= CHUNKED_DECISIONS_WIDTH and rows <= CHUNKED_DECISIONS_ROWS
    return "chunks" if narrow_and_few else "tokens"


def _decide(k, v, g, beta, boundaries, cache, size0, lengths, tau, eps, norm_eps, decisions, decide_warps):
    """Stages 1-2 from the initial ``cache`` (its sizes ``size0 [R]``): ``(scores [B, T, H] float64,
    DecidedStructure, the open slot after the call [R, Dk, Dv] float64, row lengths [R] int32)``.
    ``decisions``: ``"tokens"`` (the token walk, ``chunk_fwd_decide``), ``"chunks"`` (from the WY tables,
    ``chunk_fwd_decide_wy``; heads up to 128 features) or ``"auto"`` (chunks for heads up to
    :data:`CHUNKED_DECISIONS_WIDTH` features and up to :data:`CHUNKED_DECISIONS_ROWS` rows, else tokens)."""
    states, counts, info, _ = cache
    B, T, H, Dk = k.shape
    Dv, K = v.shape[-1], states.shape[2]
    R = B * H
    dev = k.device
    decisions = auto_decisions(Dk, Dv, R) if decisions == "auto" else decisions
    open_slot = states.reshape(R, K, Dk, Dv)[torch.arange(R, device=dev), (size0 - 1).clamp(min=0)]
    P = (open_slot.to(torch.float64) * (size0 > 0).view(R, 1, 1)).contiguous()  # advanced in place
    args = dict(open_states=P.view(B, H, Dk, Dv), size=size0.view(B, H), tau=tau, boundaries=boundaries,
                row_lengths=lengths, eps=eps, norm_eps=norm_eps)
    if decisions == "chunks":
        scores, _, masks = decide_delta_rule_wy(k, v, g, beta, **args)
    elif decisions == "tokens":
        scores, _, masks = decide_delta_rule_triton(k, v, g, beta, num_warps=decide_warps, **args)
    else:
        raise ValueError(f"decisions must be 'auto', 'tokens' or 'chunks', got {decisions!r}")
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
        # later[p, s] = [p > s]: the live starts after s counted by one product (torch's cumsum over a short last
        # dimension took a third of this stage's GPU time: docs/benchmarks.md run 17); small integers, exact.
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


def _states_and_outputs(q, k, v, g, beta, lam, part: _FixedPartition, states):
    """Stage 3: ``(o [nC, R, C, Dv], the slot states after the call [R, K, Dk, Dv])`` in float32.

    Per block of chunks (its ``[nb, R, C, C]`` tables bound the memory): the WY tables, the read weights and slot
    maps, the intra-chunk part in torch, then one launch of ``dla_delta_states_kernel`` for the slot states
    (feature-major, ``[R, Dk, K, Dv]``) and the reads of the slots live at each chunk start."""
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], lam.shape[-1]
    R, C, nC = B * H, CHUNK, -(-T // CHUNK)
    cd = torch.float32
    lowp = q.dtype in (torch.bfloat16, torch.float16)
    qc, kc, gc, bc = (chunks(rows(x), C, nC) for x in (q, k, g, beta))  # in the tables' dtype block by block
    vc, lamc = (chunks(rows(x, cd), C, nC) for x in (v, lam))
    bv = bc.to(cd).unsqueeze(-1) * vc
    slots = states.reshape(R, K, Dk, Dv).transpose(1, 2).contiguous()
    o = torch.empty(nC, R, C, Dv, dtype=cd, device=q.device)
    block = max(1, _TABLE_ELEMENTS // (R * C * C))
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        q_blk, k_blk, g_blk, beta_blk = (x[b0:b1].to(torch.float64) for x in (qc, kc, gc, bc))
        tab = output_tables_triton(q_blk, k_blk, g_blk, beta_blk, dtype=cd)
        attn, qt, Phi = tab["attn"], tab["qt"], tab["Phi"]
        W, coef, dest_f, dest = part.block(b0, b1, lamc[b0:b1])
        o[b0:b1] = (attn * W) @ bv[b0:b1]
        kb = beta_blk.to(cd).unsqueeze(-1) * tab["khd"]  # the tokens' keys at the chunk end, times beta
        slot_states_and_reads(slots, Phi, kb, qt, vc[b0:b1], coef, dest_f, dest, o[b0:b1], read_f32=not lowp,
                              v_exact=lowp)
    return o, slots.transpose(1, 2)


def forward_delta_rule_triton(q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, *, tau,
                              eps: float = 1e-6, norm_eps: float = 1e-6, lengths=None, decisions: str = "auto",
                              decide_warps: int | None = None):
    """DLA with the gated delta-rule backbone on CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``): the
    contract of ``chunk_torch.forward_delta_rule_chunked`` (the cache tensors ``states [B, H, K, Dk, Dv]`` in the
    compute dtype, ``counts``, ``info`` float64, ``size`` updated in place; ``lengths [B]`` or None).

    ``decisions``: how stage 1 decides (``"auto"``, ``"tokens"`` or ``"chunks"``: see ``_decide``);
    ``decide_warps``: the token walk's warps (None: its default). The WY tables are float64, as the torch path's.

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
                                        eps, norm_eps, decisions, decide_warps)
    part = _FixedPartition(s, size0, row_lengths, K)
    o, final = _states_and_outputs(q, k, v, g, beta, slot_weights, part, states)
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
