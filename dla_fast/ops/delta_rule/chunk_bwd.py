"""The delta rule's reverse pass over chunks on kernels (docs/delta-rule-chunked.md section 6.1): what
``chunk_torch_bwd._reverse_pass`` computes, for the backward without the score's part.

Per unit of whole segments (the square-root checkpoints' segments), last first, its tables (``unit_tables``), then per
segment, last first:

1. the slot states at each chunk start, ``F [n, R, K, Dk, Dv]``: the forward's slot-state kernel rerun from the
   segment's checkpoint, without its reads (``chunk_fwd_states``; the checkpoints are the ones the kernel forward
   kept when gradients were asked for, ``Structure.slot_checkpoints``, else walked here once by the same kernel);
2. the chain of slot-state adjoints, ``dS`` carried to the segment's start and stored at each chunk end,
   ``E [n, R, K, Dk, Dv]`` (kernel A, ``chunk_bwd_chain``);
3. the tables' cotangents from ``F`` and ``E`` by kernel B of the plan (``chunk_bwd_cotangents``), or every chunk of
   the segment in one batch of torch products (``_segment_cotangents``, ``_COTANGENTS = "torch"``);

(where a segment starts at an even chunk and spans an even number, ``paired_segment``, the three go two chunks a step
on the pairs composed, ``F`` at each pair's start and ``E`` at its end, and the composition's adjoint hands the
chunks their cotangents: ``chunk_bwd_pairs``, docs/delta-rule-chunked.md section 6.2)

then the unit's cotangents are handed on (``unit_done``: the tables' adjoint, which reads what the unit's table kernel
left in its scratch, so the backward computes each chunk's tables once). The kernels read the torch backward's own
tables and maps (``Phi``, ``khd`` (times beta for the walks), ``qt``, the values and ``b v`` in the compute dtype; the
partition's ``destF``, ``dest``, ``JF``), so the two passes differ by float32 rounding only.
"""

from __future__ import annotations

from functools import partial

import torch

from ..common.layout import unchunk
from .chunk_bwd_chain import slot_adjoints
from .chunk_bwd_cotangents import table_cotangents
from .chunk_bwd_pairs import pair_segment
from .chunk_fwd_partition import partition_maps
from .chunk_fwd_states import slot_states_and_reads

# Bytes of one temporary of the cotangents (``[n, R, K, Dk, C]`` and alike, float32): chunks are batched up to it.
_BATCH_BYTES = 1 << 28
# The cotangents by the kernels of ``chunk_bwd_cotangents`` ("triton") or by batched torch products ("torch"). H200,
# run 25, fwd+bwd at (2, 16384, 16, 64) moderate 139 against 175 ms, at (8, 4096, 16, 64) 122 against 174 ms.
_COTANGENTS = "triton"
# Segments two chunks a step (``chunk_bwd_pairs``: the rerun, kernel A and kernel B on pairs of chunks composed) where
# a segment starts at an even chunk and spans an even number of them; else a chunk a step. H100, run 75, training step
# at (2, 16384, 16, 64) moderate 52.74 -> 48.29 ms, (8, 4096) moderate 53.88 -> 48.67, (2, 16384) dense 55.73 ->
# 50.84; gradients within 2.3e-7 of the largest entry of a chunk a step's (float32 inputs).
_PAIRS = True
# Launch settings of the reverse pass's kernels in place of their defaults (None): the rerun's and kernel A's ``(BV,
# num_warps, num_stages)`` (``chunk_fwd_states.state_block``'s), the start slots' kernel's Dv block
# (``table_cotangents``' ``start_block``). Module settings, so that a sweep reaches them through the API
# (``delta_revision_ab.py --switch ops.delta_rule.chunk_bwd.CHAIN_LAUNCH=(8,8,1)``): the defaults were swept in run 28,
# before the products went one tf32 pass for 16-bit inputs (sm_90 builds since: docs/performance.md "Run 78").
RERUN_LAUNCH = None
CHAIN_LAUNCH = None
START_BLOCK = None


def paired_segment(a: int, b: int) -> bool:
    """Whether segment ``a .. b - 1`` goes two chunks a step (``_PAIRS``, an even start and length)."""
    return _PAIRS and a % 2 == 0 and (b - a) % 2 == 0


def _segment_cotangents(a: int, F, E, x, part, coef, tables, cot, grads) -> None:
    """Chunks ``a .. a + n - 1``: with ``F`` the slot states at each chunk start and ``E`` their adjoints at its
    end, the cotangents of ``Phi`` (``sum_i G_i F_i^T``, ``G_i = E[destF[i]]``), ``khd`` and ``b v`` (token s
    writes ``khd_s (b_s v_s)^T`` into end slot ``dest[s]``), ``qt`` and the read weights (token t reads ``sum_i
    coef[t, i] qt_t^T F_i``), as ``_chunk_adjoint`` does one chunk at a time: the tables' written to ``cot``, those
    of ``b v`` and the read weights added to ``grads``. ``tables`` and ``cot`` hold these n chunks; ``coef`` too."""
    n, R, K, Dk, Dv = F.shape
    C = x.C
    b = a + n
    destF, dest = part.destF[a:b].long(), part.dest[a:b].long()  # (the kernels' partition holds them as int32)
    listed = (destF >= 0).view(n, R, K, 1, 1)
    G = E.gather(2, destF.clamp(min=0).view(n, R, K, 1, 1).expand_as(E)) * listed
    cot["Phi"].copy_(torch.einsum("nridv,nriev->nrde", G, F))
    del G
    tok = dest.clamp(min=0)
    wrote = (dest >= 0).unsqueeze(-1)
    Y = torch.matmul(E, x.bv[a:b].transpose(-1, -2).unsqueeze(2))  # E_j (b_s v_s): [n, R, K, Dk, C]
    dkhd = Y.gather(2, tok.view(n, R, 1, 1, C).expand(n, R, 1, Dk, C)).squeeze(2).transpose(-1, -2)
    torch.mul(dkhd, wrote, out=cot["khd"])
    del Y
    U = torch.matmul(tables["khd"].unsqueeze(2), E)  # khd_s^T E_j: [n, R, K, C, Dv]
    grads["bv"][a:b] += U.gather(2, tok.view(n, R, 1, C, 1).expand(n, R, 1, C, Dv)).squeeze(2) * wrote
    del U
    Zr = torch.matmul(F, x.dOc[a:b].transpose(-1, -2).unsqueeze(2))  # F_i dO_t: [n, R, K, Dk, C]
    cot["qt"].copy_(torch.einsum("nrti,nridt->nrtd", coef, Zr))
    _add_read_weights(grads, part, a, torch.einsum("nrtd,nridt->nrti", tables["qt"], Zr))


def _add_read_weights(grads, part, a: int, dcoef) -> None:
    """The read weights' gradient from ``dcoef [n, R, C, K]`` of the chunks from ``a`` (token t's weight of start
    slot i is ``lam_t[JF[t, i]]``)."""
    JF = part.JF[a:a + dcoef.shape[0]].long()
    grads["lam"][a:a + dcoef.shape[0]].scatter_add_(-1, JF.clamp(min=0), dcoef * (JF >= 0))


def _segment_cotangents_triton(a: int, F, E, x, part, coef, tables, cot, grads, *, start_block=None) -> None:
    """:func:`_segment_cotangents` by the kernels of ``chunk_bwd_cotangents`` (no ``[n, R, K, Dk, C]`` temporaries),
    which write ``cot`` in place (their products as ``x.split_chains`` says; the start slots' Dv block
    ``start_block``)."""
    b = a + F.shape[0]
    # The read weights' and the values' gradients added by the kernels (a torch scatter of float atomics and an add
    # before).
    table_cotangents(F, E, part.destF[a:b], part.dest[a:b], coef, tables["qt"], x.dOc[a:b], tables["khd"],
                     x.bv[a:b], out=cot, read_weights=(part.JF[a:b], grads["lam"][a:b]), dbv_into=grads["bv"][a:b],
                     split=x.split_chains, start_block=start_block)


class KernelPartition:
    """The partition maps the kernels' reverse pass and the blocks' adjoint read (``JF``, ``destF``, ``dest`` for every
    chunk, the recency per block), by ``chunk_fwd_partition.partition_maps`` from the kernel forward's decided
    structure: ``live_starts.DevicePartition``'s maps, equal bit for bit but int32 (the kernels' type), without its
    torch passes over the trace. Given the read weights ``lamc [nC, R, C, K]`` (float32, the chunk view of rows),
    also ``coef``, each token's weight of each start slot, in the same launch."""

    def __init__(self, decided, T: int, K: int, lamc: torch.Tensor | None = None):
        self.s, self.size0 = decided
        self.T, self.K = T, K
        nC = self.s.masks.shape[1]
        lam = None if lamc is None else unchunk(lamc, lamc.shape[0] * lamc.shape[2])  # the rows (a view)
        self.JF, self.destF, self.dest, _, self.coef = partition_maps(self.s, self.size0, T, K, 0, nC, start_maps=True,
                                                                      recency=False, lam=lam)

    def recency(self, b0: int, b1: int) -> torch.Tensor:
        """``J [b1 - b0, R, C, C]`` int32 of chunks ``b0 .. b1 - 1`` (-1 unless ``s <= t < T``), for the intra-chunk
        adjoint kernel (``chunk_bwd_intra``; a quarter of the bytes of ``DevicePartition``'s int64)."""
        return partition_maps(self.s, self.size0, self.T, self.K, b0, b1 - b0, start_maps=False, recency=True)[3]


def exact_in_tf32(x: torch.Tensor) -> bool:
    """Whether every value of the float32 ``x`` is a tf32 number (its 13 low mantissa bits zero), as bfloat16 and
    float16 inputs are: the slot-state kernel then multiplies them in one tf32 pass."""
    return not bool((x.view(torch.int32) & 0x1FFF).any())


def segment_units(nC: int, every: int, block: int) -> list[tuple[int, int]]:
    """The chunks ``0 .. nC - 1`` in units of whole segments of ``every`` chunks: ``block`` chunks a unit, rounded
    down to whole segments (one segment at least)."""
    size = max(1, block // every) * every
    return [(u0, min(nC, u0 + size)) for u0 in range(0, nC, size)]


class _Walks:
    """What the reverse pass's kernels read besides a unit's tables: the values and ``dO`` as the kernels' rows, each
    token's weight of each start slot, whether the values are exact in tf32."""

    def __init__(self, part, x, dO):
        R, T, Dv = dO.shape
        self.part, self.x = part, x
        # The kernels address tokens as [B, T, H, D]: rows as B = R with H = 1.
        self.v_rows = unchunk(x.vc, T).reshape(R, T, 1, Dv)
        self.v_exact = x.v_exact if x.v_exact is not None else exact_in_tf32(x.vc)  # (the scan synchronises)
        self.split = x.split_chains  # the reruns', kernel A's, kernel B's products float32-accurate, or one tf32 pass
        self.dO_rows = dO.reshape(R, T, 1, Dv)
        self.rerun_launch, self.chain_launch, self.start_block = RERUN_LAUNCH, CHAIN_LAUNCH, START_BLOCK
        # Token t's weight of start slot i (the kernels' partition reads them as it writes JF).
        given = part.coef if isinstance(part, KernelPartition) else None
        self.coef = given if given is not None else torch.gather(x.lamc, -1, part.JF.clamp(min=0)) * (part.JF >= 0)

    def walk(self, S, tables, u0: int, a: int, b: int, starts=None) -> None:
        """The slot states ``S`` from chunk a's start to chunk b's (``tables`` indexed from chunk ``u0``), as the
        forward walks them: beta on the keys and the values as given (exact in tf32 when they came as 16-bit numbers:
        two products for the writes, not three; H200, run 26: see docs/benchmarks.md). With ``starts``, each chunk's
        start states go there and ``S`` is only read (no end states: what a segment needs)."""
        part, x = self.part, self.x
        kb = tables["khd"][a - u0:b - u0] * x.bc[a:b].to(tables["khd"].dtype).unsqueeze(-1)
        slot_states_and_reads(S, tables["Phi"][a - u0:b - u0], kb, None, self.v_rows, None, part.destF[a:b],
                              part.dest[a:b], None, a, read_f32=True, v_exact=self.v_exact, starts=starts,
                              store_end=starts is None, split=self.split, launch=self.rerun_launch)

    def segment(self, dS, tables, cot, u0: int, a: int, b: int, S, F, E, grads) -> None:
        """Segment ``a .. b - 1`` of the unit from ``u0``, from its start states ``S`` (read only): its start
        states into ``F``, ``dS`` carried to its start with the chunk-end adjoints into ``E``, the cotangents ``cot``
        (the unit's) and ``grads`` accumulated."""
        if paired_segment(a, b):
            return pair_segment(self, dS, tables, cot, u0, a, b, S, F, E, grads)
        n, (R, K, Dk, Dv) = b - a, dS.shape
        self.walk(S, tables, u0, a, b, starts=F[:n])
        slot_adjoints(dS, tables["Phi"][a - u0:b - u0], tables["qt"][a - u0:b - u0], self.dO_rows, self.coef[a:b],
                      self.part.destF[a:b], a, dS_end=E[:n], split=self.split, launch=self.chain_launch)
        per_batch = max(1, _BATCH_BYTES // (4 * R * K * max(Dk * Dv, Dk * self.x.C, self.x.C * Dv)))
        cotangents = (partial(_segment_cotangents_triton, start_block=self.start_block) if _COTANGENTS == "triton"
                      else _segment_cotangents)
        for c0 in range(a, b, per_batch):  # the cotangents' temporaries bounded (each as large as F)
            c1 = min(b, c0 + per_batch)
            local = slice(c0 - u0, c1 - u0)
            cotangents(c0, F[c0 - a:c1 - a], E[c0 - a:c1 - a], self.x, self.part, self.coef[c0:c1],
                       {n: tables[n][local] for n in ("qt", "khd")}, {n: t[local] for n, t in cot.items()}, grads)


def reverse_pass_kernels(part, init, every: int, dS, dO, x, grads, units, unit_tables, unit_done, kept=None):
    """``_reverse_pass`` without a score on kernels: ``dS`` (the final states' adjoint ``[R, K, Dk, Dv]`` float32)
    carried to the first chunk's start and returned (``dinit``); ``grads`` (``bv``, ``lam``) accumulated. ``init``
    the initial slot states and ``dO [R, T, Dv]`` the outputs' adjoint, both float32; ``every`` chunks per segment.
    ``kept``: the slot states at each segment's start ``[n, R, K, Dk, Dv]`` float32 as the forward's walk passed
    them (read only), else walked here from ``init``.

    ``units``: ranges of whole segments (:func:`segment_units`), taken last first. ``unit_tables(u0, u1)`` returns
    ``(tables, payload)``: the tables ``qt``, ``khd``, ``Phi`` of chunks ``u0 .. u1 - 1`` (float32, indexed from
    ``u0``) and anything for ``unit_done(u0, u1, cot, payload)``, called when the unit's cotangents ``cot`` (those
    tables' cotangents, each chunk's written once by its segment) are complete."""
    walks = _Walks(part, x, dO)
    segments = [(a, min(x.nC, a + every)) for a in range(0, x.nC, every)]
    in_unit = lambda u0, u1: [i for i, (a, _) in enumerate(segments) if u0 <= a < u1]  # noqa: E731
    checkpoints = list(kept) if kept is not None else _walked_checkpoints(walks, init, segments, units, unit_tables,
                                                                            in_unit)
    # A state a step in F and E: half as many where a segment goes two chunks a step.
    steps = max((b - a) // 2 if paired_segment(a, b) else b - a for a, b in segments)
    for u0, u1 in units[::-1]:
        tables, payload = unit_tables(u0, u1)
        cot = {n: torch.empty_like(tables[n]) for n in ("qt", "khd", "Phi")}  # each chunk's written by its segment
        F = torch.empty(steps, *init.shape, device=init.device, dtype=torch.float32)
        E = torch.empty_like(F)
        for i in in_unit(u0, u1)[::-1]:
            # (the forward's checkpoints serve every backward of the graph: the segment only reads them)
            walks.segment(dS, tables, cot, u0, *segments[i], checkpoints[i], F, E, grads)
        del F, E  # the start states and chunk-end adjoints (the unit's largest tensors) freed for unit_done's own
        unit_done(u0, u1, cot, payload)
    return dS


def _walked_checkpoints(walks: _Walks, init, segments, units, unit_tables, in_unit) -> list:
    """The slot states at each segment's start, walked from ``init`` unit by unit (each unit's tables computed for
    the walk and again by the reverse pass: only where the forward kept no checkpoints)."""
    checkpoints, S = [], init.contiguous().clone()
    for u0, u1 in units:
        tables = unit_tables(u0, u1)[0]
        for i in in_unit(u0, u1):
            checkpoints.append(S.clone())
            a, b = segments[i]
            if b < walks.x.nC:
                walks.walk(S, tables, u0, a, b)
    return checkpoints
