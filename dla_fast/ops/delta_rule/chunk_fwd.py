"""The gated delta rule's forward on CUDA (also under TRITON_INTERPRET=1): decisions first, then the fixed partition.

docs/delta-rule-chunked.md section 7 is the plan and the record:

1. ``dla_delta_decide_kernel`` (``chunk_fwd_decide``, one program per row): every token's score and decision
   against the explicit open slot (float64), each chunk's boundary mask, the open slot after the call; or (by
   default for few, narrow rows: section 8) the same a chunk at a time from the WY tables (``chunk_fwd_decide_wy``);
2. ``dla_merge_kernel`` (scalar decay's, on those masks and scores): counts, information sums, the merges, each
   start's death and the live starts at every chunk start (``DecidedStructure``);
3. the partition now fixed, per block of chunks, three kernels that read the inputs in place in their dtypes: the
   WY tables (``output_tables``), each token's read weights, each chunk's slot maps and the
   intra-chunk output (``chunk_fwd_partition``, from the structure), then ``dla_delta_states_kernel``
   (``chunk_fwd_states``): the slot states chunk by chunk in the cache's own tensor, all K slots of a row in each
   product, and the reads of the slots live at each chunk start, added to ``o [B, T, H, Dv]``.

No host synchronisation and no numba: the call stays on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.layout import unrows
from ..common.structure import SlotCheckpoints, checkpoint_interval
from ..common.triton_utils import bf16_exact_products
from ..scalar_decay.chunk_fwd import DecidedStructure, LaunchConfig, merge_simulation
from ..scalar_decay.chunk_fwd_states import CHUNK, start_bits
from .chunk_fwd_decide import decide_delta_rule_triton
from .chunk_fwd_decide_wy import MAX_WIDTH, decide_delta_rule_wy
from .chunk_fwd_partition import partition_and_intra
from .chunk_fwd_states import slot_states_and_reads
from .chunk_fwd_steps import pair_steps
from .wy_tables_f32_triton import output_tables_rows_f32
from .wy_tables_triton import output_tables_rows

# The widest heads whose output WY tables are computed in float32 (float64 decays) rather than in float64 and rounded,
# whatever the inputs' dtype. H200, run 45 (benchmarks/delta_table_kernel.py, all chunks in one launch): (2, 16384,
# 16, 64) 1.74 ms against 2.84, (8, 4096, 16, 128) 6.88 against 5.05 (the tf32x3 kernel spills 1.2 KB there, sm_90).
# Wider heads take them in float32 where bf16 keys and queries make their products exact (``bf16_exact_products``,
# run 55), on WIDE_FLOAT32_TABLE_WARPS: H100, run 56, (8, 4096, 16, 128) 2.56 ms on 8 warps, 3.62 on 4, against the
# float64 kernel's 5.23 (and at 64 features 0.97 on 4 warps, 2.05 on 8, tf32x3 2.40).
FLOAT32_TABLES_WIDTH = 64
WIDE_FLOAT32_TABLE_WARPS = 8

# Where "auto" decides a chunk at a time: every head the chunked kernels take (up to ``MAX_WIDTH`` = 128 features)
# but narrow ones (up to NARROW_HEAD_WIDTH) on more than CHUNKED_DECISIONS_ROWS rows (B * H). The chunked path's
# parallel stages grow with the rows, the token walk's time does not until its one program per row fills the GPU,
# and the walk's cost per token grows with the head. H200, run 18 (docs/benchmarks.md), 64 features: the forward
# 1.3-2.1x faster by chunks at 32 rows, slower at 128 (36 -> 40 ms); H100, run 72, by chunks against the walk: 64
# features, 128 rows 16.61 against 14.96 ms; 128 features 23.38 against 48.24 (32 rows), 47.21 against 50.62 (128),
# 50.50 against 54.19 (256).
NARROW_HEAD_WIDTH = 64
CHUNKED_DECISIONS_ROWS = 64

# Chunks per step of the forward's slot walk (``walk_steps``) by default: ``chunk_fwd_steps`` composes each pair of
# chunks' tables, so the walk's chain has half the steps. H200, run 51 (docs/performance.md "Run 51"), against one
# chunk a step with early loads: the forward 16.66 -> 15.86 ms at (2, 16384, 16, 64) moderate, 33.94 -> 32.37 at (1,
# 65536), 18.64 -> 17.97 at (8, 4096) dense (call 1), 76.07 -> 67.71 at (8, 4096, 16, 128) moderate (call 4, where
# (2, 16384) went 17.37 -> 18.39; run 52, that cell alone: 16.85 -> 16.06); four a step 16.60 / 33.72 / 18.63 (the
# second composition's kernel costs 2.2 ms).
WALK_STEPS = 2

# The walk's merge map and each chunk's outputs loaded before the reads' product (``EARLY_LOADS``): H200, run 51,
# the walk 7.62 -> 7.32 ms at (2, 16384, 16, 64) moderate, 15.07 -> 14.55 at (1, 65536), 8.23 -> 7.90 at (8, 4096)
# dense.
EARLY_LOADS = True

# The walk's state products in one tf32 pass for 16-bit inputs (the kernel's ``SPLIT=False``), where they are split
# tf32 (float32-accurate) for every dtype (run 77). sm_90, two chunks a step at 64 features, K = 30: 4,000 -> 3,120
# SASS lines, 104 -> 72 HGMMA, 208 -> 144 B of stack, 96 -> 68 KB of shared memory. H100, run 79, bf16, moderate: the
# walk 4.09 -> 3.57 ms at (2, 16384, 16, 64), 4.70 -> 4.14 at (8, 4096); the forward 12.30 -> 11.75 ms (-4.5 %) and
# 13.56 -> 12.98 (-4.3 %). The cost: the slot states (the final cache, the backward's checkpoints) tf32-accurate
# (run 17: single-pass states 4.6e-4 from float32 at 16K; interpreter: 3.9e-4 of the largest) instead of
# float32-accurate; the reads, already one pass for 16-bit inputs, and the decisions (made before the walk, in float64)
# do not change.
ONE_PASS_WALK_16BIT = True

# Elements of the largest tensors of a block of chunks ([block, R, C, C] in the tables' dtype): they bound the
# stage's memory (~0.5 GB).
_TABLE_ELEMENTS = 1 << 22


def auto_decisions(Dk: int, Dv: int, rows: int) -> str:
    """What ``decisions="auto"`` takes for heads of ``Dk x Dv`` features and ``rows = B * H``."""
    width = max(Dk, Dv)
    narrow_on_many_rows = width <= NARROW_HEAD_WIDTH and rows > CHUNKED_DECISIONS_ROWS
    return "tokens" if width > MAX_WIDTH or narrow_on_many_rows else "chunks"


def _decide(k, v, g, beta, boundaries, cache, size0, lengths, tau, eps, norm_eps, decisions, decide_warps):
    """Stages 1-2 from the initial ``cache`` (its sizes ``size0 [R]``): ``(scores [B, T, H] float64,
    DecidedStructure, the open slot after the call [R, Dk, Dv] float64, row lengths [R] int32)``.
    ``decisions``: ``"tokens"`` (the token walk, ``chunk_fwd_decide``), ``"chunks"`` (from the WY tables,
    ``chunk_fwd_decide_wy``; heads up to 128 features) or ``"auto"`` (:func:`auto_decisions`)."""
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


def output_tables(q, k, g, beta, b0: int, nb: int) -> dict:
    """The output stage's WY tables of chunks ``b0 .. b0 + nb - 1`` (``attn``, ``qt``, ``kb``, ``Phi``, float32),
    computed in float32 up to ``FLOAT32_TABLES_WIDTH`` features and, wider, with bf16 ``q`` and ``k`` on a GPU; else
    in float64. The float32 ones leave the slot states within ~7e-7 of their largest entry on the benchmark workloads
    (float64's: ~6e-8; the suite's bound 1e-5: benchmarks/delta_output_tables_f32_study.py, docs/performance.md
    "Run 44")."""
    if k.shape[-1] <= FLOAT32_TABLES_WIDTH:
        return output_tables_rows_f32(q, k, g, beta, b0, nb)
    if bf16_exact_products(None, q=q, k=k):
        return output_tables_rows_f32(q, k, g, beta, b0, nb, num_warps=WIDE_FLOAT32_TABLE_WARPS, split16=True)
    return output_tables_rows(q, k, g, beta, b0, nb, dtype=torch.float32)


def _walk(slots, tab, coef, dest_f, dest, v, o, i: int, j: int, c0: int, lowp: bool, steps: int,
          launch=None) -> None:
    """The slot walk over chunks ``i .. j - 1`` of the block's tables (chunk ``c0`` of the call first), ``steps``
    chunks a step (1, 2 or 4: the tables composed by ``chunk_fwd_steps.pair_steps``, once or twice); the chunks left
    over, one a step. ``launch``: the walk kernel's (``slot_states_and_reads``)."""
    whole = i + (j - i) // steps * steps
    for a, b, per in ((i, whole, steps), (whole, j, 1)):
        if a == b:
            continue
        t = (tab["Phi"][a:b], tab["kb"][a:b], tab["qt"][a:b], coef[a:b], dest_f[a:b], dest[a:b])
        while t[1].shape[2] < per * CHUNK:
            t = pair_steps(*t, v, o, c0 + a - i, chunk=CHUNK, v_exact=lowp)
        slot_states_and_reads(slots, t[0], t[1], t[2], v, *t[3:], o, c0 + a - i, read_f32=not lowp, v_exact=lowp,
                              chunk=CHUNK, early_loads=EARLY_LOADS, launch=launch,
                              split=not (lowp and ONE_PASS_WALK_16BIT))


def _states_and_outputs(q, k, v, g, beta, lam, s: DecidedStructure, size0, row_lengths, slots, kept=None,
                        walk_steps: int = 1, walk_launch=None):
    """Stage 3: ``o [B, T, H, Dv]`` float32; the slot states ``slots [R, K, Dk, Dv]`` (float32, from the initial
    cache's) advanced to the call's end in place.

    Per block of chunks (its ``[nb, R, C, C]`` tables bound the memory), three launches that read the inputs where
    they are, in their dtypes: the WY tables (``output_tables``), the partition's maps and the intra-chunk output
    (``chunk_fwd_partition``), then ``dla_delta_states_kernel`` for the slot states and the reads of the slots live
    at each chunk start. ``kept``: a ``SlotCheckpoints`` whose ``states [n, R, K, Dk, Dv]`` receive the slot states at
    every ``every``-th chunk start (the walk split there). ``walk_steps``, ``walk_launch``: see
    ``forward_delta_rule_triton``."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    R, C, nC = B * H, CHUNK, -(-T // CHUNK)
    lowp = q.dtype in (torch.bfloat16, torch.float16)
    q, k, v, g, beta, lam = (x.contiguous() for x in (q, k, v, g, beta, lam))  # (each launch's own: no-ops)
    o = torch.empty(B, T, H, Dv, dtype=torch.float32, device=q.device)
    block = max(1, _TABLE_ELEMENTS // (R * C * C))
    for b0 in range(0, nC, block):
        nb = min(nC, b0 + block) - b0
        tab = output_tables(q, k, g, beta, b0, nb)
        coef, dest_f, dest = partition_and_intra(s, size0, row_lengths, tab["attn"], v, beta, lam, b0, o)
        cuts = [b0, b0 + nb] if kept is None else sorted({b0, b0 + nb, *range(-(-b0 // kept.every) * kept.every,
                                                                                b0 + nb, kept.every)})
        for c0, c1 in zip(cuts, cuts[1:]):
            if kept is not None and c0 % kept.every == 0:
                kept.states[c0 // kept.every].copy_(slots)
            _walk(slots, tab, coef, dest_f, dest, v, o, c0 - b0, c1 - b0, c0, lowp, walk_steps, walk_launch)
    return o


def forward_delta_rule_triton(q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, *, tau,
                              eps: float = 1e-6, norm_eps: float = 1e-6, lengths=None, decisions: str = "auto",
                              decide_warps: int | None = None, keep_checkpoints: bool = False,
                              walk_steps: int = WALK_STEPS, walk_launch: tuple[int, ...] | None = None):
    """DLA with the gated delta-rule backbone on CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``): the
    contract of ``chunk_torch.forward_delta_rule_chunked`` (the cache tensors ``states [B, H, K, Dk, Dv]`` in the
    compute dtype, ``counts``, ``info`` float64, ``size`` updated in place; ``lengths [B]`` or None).

    ``decisions``: how stage 1 decides (``"auto"``, ``"tokens"`` or ``"chunks"``: see ``_decide``);
    ``decide_warps``: the token walk's warps (None: its default). The decisions' WY tables are float64, as the torch
    path's; the output stage's see ``output_tables``.

    ``walk_steps``: chunks per step of the slot walk, 1, 2 or 4 (2 and 4: each pair of steps' tables composed into
    one by ``chunk_fwd_steps``, so the walk's chain has half or a quarter as many steps; the outputs agree to float32
    rounding, not bit for bit). ``walk_launch``: the slot walk's ``(BV, num_warps, num_stages[, maxnreg])`` in place
    of ``chunk_fwd_states.state_block``'s (for sweeps).

    ``keep_checkpoints``: also return the slot states at the backward's checkpoints and the decided structure
    (``SlotCheckpoints``, states ``[n, R, K, Dk, Dv]`` float32), so that a backward need not walk the slots to them
    again nor rebuild its partition from the trace.

    Returns ``(o [B, T, H, Dv] cd, scores [B, T, H] float64, starts [B, T, H] bool, merged [B, T, H] int64)``,
    then the ``SlotCheckpoints`` (None when ``T == 0``) with ``keep_checkpoints``.
    """
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], slot_weights.shape[-1]
    R = B * H
    if T == 0:
        empty = torch.zeros(B, 0, H, device=q.device)
        return (torch.zeros(B, 0, H, v.shape[-1], device=q.device, dtype=states.dtype), empty.double(),
                empty.bool(), empty.long()) + ((None,) if keep_checkpoints else ())
    if walk_steps not in (1, 2, 4):
        raise ValueError(f"walk_steps: expected 1, 2 or 4 chunks per step of the slot walk, got {walk_steps!r}")
    size0 = size.reshape(R).clone()  # size itself receives the final sizes below
    scores, s, P, row_lengths = _decide(k, v, g, beta, boundaries, (states, counts, info, size), size0, lengths, tau,
                                        eps, norm_eps, decisions, decide_warps)
    # The slot states advance in the cache's own tensor where it is a float32 one (the compute dtype of the Triton
    # path's inputs), else in a float32 copy.
    in_place = states.dtype == torch.float32 and states.is_contiguous()
    slots = (states.view(R, K, Dk, Dv) if in_place
             else torch.empty(R, K, Dk, Dv, device=q.device).copy_(states.reshape(R, K, Dk, Dv)))
    kept = None
    if keep_checkpoints:  # filled by the walk (no copies stacked after it: 2 x 0.25 GB at (2, 16384, 16, 64))
        every = checkpoint_interval(-(-T // CHUNK))
        kept = SlotCheckpoints(CHUNK, every, slots.new_empty(-(-T // (CHUNK * every)), *slots.shape))
    o = _states_and_outputs(q, k, v, g, beta, slot_weights, s, size0, row_lengths, slots, kept, walk_steps,
                            walk_launch)
    # The open slot: the decision kernel's explicit one (float64 per token), as the torch path keeps its scan's.
    open_idx = (s.size - 1).clamp(min=0)
    rows_ = torch.arange(R, device=q.device)
    slots[rows_, open_idx] = torch.where((s.size > 0).view(R, 1, 1), P.to(slots.dtype), slots[rows_, open_idx])
    if not in_place:
        states.copy_(slots.view(states.shape))
    counts.copy_(s.counts.view(counts.shape))
    info.copy_(s.info.view(info.shape))
    size.copy_(s.size.view(size.shape))
    trace = (start_bits(s.masks)[:, :T], s.merged[:, :T])
    if keep_checkpoints:  # and the decided structure, from which the backward builds its partition
        kept.decided = (s, size0)
        return o, scores, *(unrows(x, B, H) for x in trace), kept
    return o, scores, *(unrows(x, B, H) for x in trace)
