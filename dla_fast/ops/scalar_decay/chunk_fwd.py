"""Triton prefill forward of DLA, scalar-decay backbone (NVIDIA GPUs; also runs under TRITON_INTERPRET=1).

The call is a few kernels and a little torch glue (docs/triton.md: the design, FLOP and byte counts,
precision; docs/chunked-algorithm.md: the notation):

1. ``dla_table_kernel`` (parallel over (bh, chunk)): each chunk's score table ``I[t, p]`` (the score of token
   ``t`` if the open slot is exactly ``p..t-1``), ``next(p)`` and the bitmask of every ``p``'s orbit;
2. ``dla_carry_kernel`` (one program per bh, sequential over chunks): the scores against the carried open
   slot, each chunk's first boundary and boundary mask, the open slot carried on;
3. ``dla_closing_tables_kernel`` (parallel over (chunk, bh)): every token's score assembled, and what the merges need
   of each chunk alone (the slots its boundaries close); ``dla_merge_kernel`` (one program per bh, sequential over
   boundary events): counts, information sums and the lowest-density merges; each start's death time, the live
   starts at every chunk start;
4. prefix states ``H`` before every chunk (on a side stream, overlapping 2-3), the surviving starts' states (not
   where the starts crowd their chunks: ``dla_output_grouped_kernel`` then reads each old chunk's starts together
   from ``H`` and the chunk's tokens, ``TritonSettings.grouped_reads``);
5. ``dla_read_scales_kernel`` (parallel over (bh, chunk), while the host synchronises): the older slots' read
   scales; ``dla_output_kernel`` (parallel over (bh, chunk, Dv block)): masked intra-chunk attention plus the
   telescoped reads of the older slots; ``dla_final_kernel``: the final cache.

With few rows (``concurrent_decisions``) stages 1-3 run concurrently: the carry scan waits on per-chunk flags
the table kernel sets, the merge simulation on the carry scan's (``TritonSettings.table_overlap``, ``pipeline``).

The kernels do not specialise on the sequence length ``T`` nor on the data-dependent number of surviving
starts (``do_not_specialize``): Triton would otherwise compile them again whenever ``T`` or that count
changes divisibility by 16 (each compile takes seconds; docs/triton.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import triton

from ...backend import interpreting
from ...settings import DEFAULT_SETTINGS, TritonSettings
from ..common.profiling import mark_stage
from ..common.triton_utils import (
    INT32_MAX,
    block_sizes,
    cached,
    check_int32_offsets,
    next_pow2,
    stream_besides_current,
    values_on_host,
    values_on_host_later,
    zeroed,
)
from ..common.value_checks import launch_value_checks, raise_flagged
from .chunk_fwd_decide import (
    CARRY_COMPILE_OPTIONS,
    CARRY_ROWS,
    CT_ROWS,
    dla_carry_deep_guess_kernel,
    dla_carry_guess_kernel,
    dla_carry_kernel,
    dla_carry_suspects_kernel,
    dla_carry_walk_kernel,
    dla_closing_tables_kernel,
    dla_merge_kernel,
    dla_publish_chunks_kernel,
    dla_table_kernel,
)
from .chunk_fwd_output import (
    dla_output_grouped_kernel,
    dla_output_kernel,
    dla_read_scales_kernel,
    output_group,
    output_launch,
    output_value_block,
)
from .chunk_fwd_states import (
    CHUNK,
    final_states,
    initial_prefixes,
    prefix_states,
    start_bits,
    start_states,
    surviving_starts,
)

MAX_DIM = 256

# On an H200 (2026-11-27) the forward's output was wrong at Dk = Dv = 16 (relative error 4e-2, states and
# decisions right; benchmarks/gpu_size_check.py) and one small-head harness run hit an illegal memory
# access; 32, 64 and 128 matched to 7e-7. The interpreter computes 16 correctly, so the fault is in how the
# small tiles compile. Until it is found, the GPU forward refuses heads below 32 (dla_fast.forward routes
# them to the torch path).
MIN_GPU_FORWARD_DIM = 32

# Surviving starts per (row, chunk) from which 16-bit inputs take the grouped reads (``TritonSettings.grouped_reads``
# None), in the forward and the backward: H200, run 37, (8, 4096, 16, 64): the output stage with its start states 474
# / 606 / 722 us against 1,215 / 860 / 580 grouped at 0.8 / 3.0 / 7.7 survivors (sparse / moderate / dense); (2,
# 16384) dense at 5.9: 698 / 693. The backward (run 38, 7.7 survivors): the recompute and dq stages 2.25 -> 2.14 ms.
# Run 39, fwd+bwd at 5.9 / 5.6 survivors ((2, 16384) / (1, 65536) dense): peak 0.817 -> 0.636 / 1.595 -> 1.201 GiB
# for +3.6 / +6 % time; below 5, moderate's 3.0 pays in time and meets the peak target without them.
GROUPED_READS_SURVIVORS = 5
# The grouped kernels hold [C, KP] tiles of the live list: measured at K = 30 (KP = 32); the backward's at KP = 256
# (sm_90, Triton 3.6, float32) spills 17.9 KB. Past it the materialised reads, whatever the setting.
GROUPED_READS_MAX_KP = 32
# On a GPU the grouped output kernel faults at 32 features with float32 inputs (H100, Triton 3.6, runs 60-61: an
# invalid shared-memory read in the float32 scales-by-indicator product, compute-sanitizer; run 59's tree the same;
# bf16 inputs at 32 and both dtypes at 64 ran). A compiler fault, not an index: the interpreter finds no access
# outside the arguments. Below this width a GPU takes the materialised reads whatever the setting (bf16 inputs too,
# until the GPU suite has run the grouped kernels, the backward's among them, on them there); the interpreter runs
# both (docs/triton.md, "Known fault").
GROUPED_READS_MIN_GPU_DIM = 64


def takes_grouped_reads(cfg: LaunchConfig, settings: TritonSettings, nsurv: int | None) -> bool:
    """Whether the output and the backward's dq stage read the old starts by chunk (``TritonSettings.grouped_reads``):
    up to ``GROUPED_READS_MAX_KP`` padded slots and, on a GPU, heads of at least ``GROUPED_READS_MIN_GPU_DIM``
    features, as set, or by default for 16-bit inputs whose ``nsurv`` surviving starts number at least
    ``GROUPED_READS_SURVIVORS`` per (row, chunk). ``nsurv`` None: whether they may be (before the count is known)."""
    if cfg.KP > GROUPED_READS_MAX_KP:
        return False
    if not interpreting() and min(cfg.Dk, cfg.Dv) < GROUPED_READS_MIN_GPU_DIM:
        return False
    if settings.grouped_reads is not None:
        return settings.grouped_reads
    return cfg.lowp and (nsurv is None or nsurv >= GROUPED_READS_SURVIVORS * cfg.BH * cfg.NC)


def check_dims(Dk: int, Dv: int) -> None:
    """The Triton kernels hold a ``Dk x 64`` state block in registers: heads up to 256 wide."""
    if Dk > MAX_DIM or Dv > MAX_DIM:
        raise ValueError(f"dla triton: Dk and Dv up to {MAX_DIM} are supported, got Dk={Dk}, Dv={Dv}")


def check_forward_dims(Dk: int, Dv: int) -> None:
    check_dims(Dk, Dv)
    if not interpreting() and min(Dk, Dv) < MIN_GPU_FORWARD_DIM:
        raise ValueError(
            f"dla triton forward: on a GPU Dk and Dv must be at least {MIN_GPU_FORWARD_DIM} (a known fault at "
            f"smaller heads, docs/triton.md), got Dk={Dk}, Dv={Dv}; dla_fast.forward runs them on the torch path"
        )


@dataclass
class DecidedStructure:
    """The partition as the kernels hold it (``O(T + T/C K)`` integers per row): what the output, the final
    cache and the Triton backward read.

    Attributes:
        masks: ``[BH, NC]`` int64, each chunk's boundary bitmask.
        death: ``[BH, NC*C]`` int32, the token at which a start's slot was merged into its left neighbour
            (INT32_MAX: never); death0 ``[BH, K]`` the same for the initial slots.
        live, livem: ``[BH, NC, KP]`` int32 start positions of the live slots at each chunk start (initial
            slots as -m0..-1) and their number ``[BH, NC]``.
        fpos: ``[BH, KP]`` int32, the final slots' start positions.
        size: ``[BH]`` int64 final sizes; counts ``[BH, K]`` int64; info ``[BH, K]`` float64.
        scores: ``[BH, NC*C]`` float32; merged ``[BH, NC*C]`` int64 (-1: no merge).
        survivors: the output stage's surviving starts (``chunk_fwd_states.Survivors``), kept for the
            backward (which would otherwise count them again: a host synchronisation); None before the output
            stage.
    """

    masks: torch.Tensor
    death: torch.Tensor
    death0: torch.Tensor
    live: torch.Tensor
    livem: torch.Tensor
    fpos: torch.Tensor
    size: torch.Tensor
    counts: torch.Tensor
    info: torch.Tensor
    scores: torch.Tensor
    merged: torch.Tensor
    survivors: tuple | None = None


def check_sizes(cfg: LaunchConfig) -> None:
    """The forward's and the backward's buffers within the kernels' 32-bit offsets (``check_int32_offsets``); the
    start states are indexed in 64 bits (their count depends on the data)."""
    B, T, H = cfg.B, cfg.T, cfg.H
    check_int32_offsets(**{
        "q, k, v or slot_weights (B T H x the last dimension)": B * T * H * max(cfg.Dk, cfg.Dv, cfg.K),
        "the prefix states (B H (T / 64 + 1) Dk Dv)": B * H * (cfg.NC + 1) * cfg.Dk * cfg.Dv,
        "the cache's states (B H K Dk Dv)": B * H * cfg.K * cfg.Dk * cfg.Dv,
    })


@dataclass
class LaunchConfig:
    """Shapes and compile-time choices of one call."""

    B: int
    T: int
    H: int
    Dk: int
    Dv: int
    K: int
    lowp: bool  # 16-bit tensor-core operands (16-bit inputs on a GPU)
    split: bool  # bf16 inputs: fp32 state products as three bf16 dots
    prec: str

    @property
    def BH(self):
        return self.B * self.H

    @property
    def NC(self):
        return -(-self.T // CHUNK)  # not triton.cdiv: on the host a constexpr function's call costs ~1.6 us

    @property
    def KP(self):
        return max(next_pow2(self.K), 2)


def launch_config(q, v, slot_weights) -> LaunchConfig:
    B, T, H, Dk = q.shape
    # 16-bit tensor-core dots on the GPU; the interpreter computes bf16 tl.dot wrongly, so it gets fp32 dots.
    gpu = not interpreting()
    return LaunchConfig(B, T, H, Dk, v.shape[-1], slot_weights.shape[-1],
                   lowp=q.dtype in (torch.bfloat16, torch.float16) and gpu, split=q.dtype == torch.bfloat16 and gpu,
                   prec="tf32x3" if gpu else "ieee")


def _zeroed_buffers(cfg: LaunchConfig, dev, empty_cache: bool) -> list[torch.Tensor]:
    """The call's zero-filled buffers (``zeroed``): the merge simulation's flag ``[BH]`` int32, the read-back
    ``[NC + 1]`` int64 (the per-chunk surviving starts, then the value checks' flags: ``_output``) and, for an empty
    cache (``empty_cache``), its counts ``[BH, K]`` int64, information sums ``[BH, K]`` float64 and size ``[BH]``
    int64 in one fill, its open slot P and prefix state h0 (``[BH, Dk, Dv]`` float32 each) in another: the returned
    cache's counts and sums are views, and keep their allocation alive, so the states are not in it."""
    BH, K, state = cfg.BH, cfg.K, (cfg.BH, cfg.Dk, cfg.Dv)
    small = [((BH,), torch.int32), ((cfg.NC + 1,), torch.int64)]
    if not empty_cache:
        return zeroed(dev, *small)
    return (zeroed(dev, *small, ((BH, K), torch.int64), ((BH, K), torch.float64), ((BH,), torch.int64))
            + zeroed(dev, (state, torch.float32), (state, torch.float32)))


def _initial_cache(cfg: LaunchConfig, states, counts, info, size, dev, empty):
    """``(states0 [BH, K, Dk, Dv] or None, counts [BH, K] int64, info [BH, K] float64, size0 [BH], P [BH, Dk,
    Dv])``: the cache to continue from and its open slot. ``counts`` and ``info`` are the merge simulation's own
    (it updates them in place): copies of the caller's. Without ``states``: ``empty``, zeros (``_zeroed_buffers``)."""
    if states is None:
        return (None, *empty)
    states0 = states.float().reshape(cfg.BH, cfg.K, cfg.Dk, cfg.Dv)
    size0 = size.long().reshape(cfg.BH).contiguous()
    open_idx = (size0 - 1).clamp(min=0)
    P = (states0[torch.arange(cfg.BH, device=dev), open_idx] * (size0 > 0)[:, None, None]).contiguous()
    counts0 = counts.reshape(cfg.BH, cfg.K).to(torch.int64, copy=True)
    info0 = info.reshape(cfg.BH, cfg.K).to(torch.float64, copy=True)
    return states0, counts0, info0, size0, P


def _score_tables(cfg: LaunchConfig, k, v, g, row_lengths, tau, eps, norm_eps, override: bool,
                  settings: TritonSettings, tflag=None):
    """Stage 1: ``(itab, anc, cvec, decay)``, the per-chunk score tables, orbits, the carry scan's per-token
    vectors (``CARRY_ROWS`` per token) and each chunk's total decay. ``tflag`` (int32 ``[BH, cdiv(NC, 32)]``
    zeros, or None): set each (bh, chunk)'s bit once its outputs are written, for a carry scan running
    concurrently."""
    f32 = dict(device=k.device, dtype=torch.float32)
    C, NC, BH = CHUNK, cfg.NC, cfg.BH
    BK, BVF, _ = block_sizes(cfg.Dk, cfg.Dv)
    itab = torch.empty(BH, NC, C, C, **f32)
    anc = torch.empty(BH, NC, C, device=k.device, dtype=torch.int64)
    cvec = torch.empty(BH, NC, CARRY_ROWS, C, **f32)
    decay = torch.empty(BH, NC, **f32)
    tables = (itab, anc, cvec, decay)

    def launch(c0: int = 0, c1: int = NC):  # chunks c0 .. c1 - 1 (a block of them: ``decision_blocks``)
        # 16-bit inputs: registers capped at 128, two programs per SM (sm_90, Triton 3.6: 140-145 uncapped, no
        # spill either way), 3-5 % off the whole forward (docs/benchmarks.md run 15, call 7). float32 would
        # spill: uncapped.
        cached(dla_table_kernel)[((c1 - c0) * BH,)](
            k, v, g, row_lengths, itab, anc, cvec, decay, decay if tflag is None else tflag, cfg.T, cfg.H, BH,
            cfg.Dk, cfg.Dv, float(tau), float(eps), float(norm_eps), C=C, BK=BK, BVF=BVF, NEED_ANC=not override,
            LOWP=cfg.lowp, PREC=settings.table_precision, LOGC=int(math.log2(C)), SCAN=settings.table_scan,
            PUBLISH=tflag is not None, c0=c0, **settings.launch(dla_table_kernel, num_warps=8,
                                                                maxnreg=128 if cfg.lowp else None),
        )
    return tables, launch


DEEP_GUESS_CHUNKS = 8  # chunks a program of dla_carry_deep_guess_kernel takes (most need no deeper guess)


@dataclass
class CarryGuesses:
    """The guessed carry scan's launches besides the walk (``_carry_scan``). ``launch(chunks)``: the guess kernel over
    chunks ``c0 .. c1 - 1`` (``c0 >= 1``: chunk 0 is walked), deciding each from its guessed entry slot (the one-deep
    ones' ``scores`` written when pipelined). Where the deeper guesses may follow (``deeper``: ``carry_guess_depth`` >
    1, pipelined, rows of at least ``deep_guess_min_chunks`` chunks) it also counts each row's chunks without a
    boundary into ``free``; ``take_deeper(free on the host, c1)`` then says, from the counts over chunks ``1 .. c1 -
    1``, whether some row has ``deep_guess_share`` of them (the kernels' ``takes_deeper_guesses`` judges each row on
    the whole row's), and clears ``deeper`` if not; ``launch_deeper()``, after the whole row's guesses, launches the
    deeper guesses' kernels and returns the orbit words the merge simulation then reads (a copy of ``anc`` that they
    edit). Without them the merge simulation reads ``anc``."""
    launch: Callable[..., None]
    take_deeper: Callable[[torch.Tensor, int], bool]
    launch_deeper: Callable[[], torch.Tensor]
    deeper: list[bool]  # one entry, cleared by take_deeper
    free: torch.Tensor | None


def _carry_scan(cfg: LaunchConfig, k, v, g, boundaries, row_lengths, tables, P, size0, scores, tau, eps, norm_eps,
                flag, pipeline: bool, settings: TritonSettings, tflag=None, guessed: bool = False):
    """Stage 2: ``((masks [BH, NC], carry scores [BH, NC*C]), guesses, launch)``, the outputs allocated here and
    filled by the launches; P (the open slot) advanced in place. ``tflag``: the table kernel's flags when it runs
    concurrently (the scan then waits on them), else None. ``guessed`` (``takes_carry_guesses``; not with ``tflag``):
    ``guesses`` (:class:`CarryGuesses`) decides every chunk but the first from its guessed entry slot and ``launch``
    (after it) walks only the chunks where a guess may not hold, one deep or, in the rows that take them, after the
    deeper guesses; else ``guesses`` is None and ``launch`` the plain carry scan."""
    itab, anc, cvec, decay = tables
    dev = k.device
    masks = torch.empty(cfg.BH, cfg.NC, device=dev, dtype=torch.int64)
    cscores = torch.empty(cfg.BH, cfg.NC * CHUNK, device=dev, dtype=torch.float32)
    override = boundaries is not None
    bnd = boundaries.contiguous().to(torch.int8) if override else masks
    BK, BVF, _ = block_sizes(cfg.Dk, cfg.Dv)
    BVC = BVF if BVF <= 128 else 64  # the carry kernel keeps P in registers up to Dv = 128
    warps = settings.carry_warps or (8 if BK * BVC > 64 * 64 else 4)
    scalars = (cfg.T, cfg.H, cfg.Dk, cfg.Dv, float(tau), float(eps), float(norm_eps))
    guesses = None
    options = settings.launch(dla_carry_kernel, num_warps=warps, **CARRY_COMPILE_OPTIONS)  # the carry scan's
    if guessed:
        breaks = torch.zeros(cfg.BH, triton.cdiv(cfg.NC, 32), device=dev, dtype=torch.int32)
        # the deeper guesses with few long rows only (``deep_guess_min_chunks``)
        depth = settings.carry_guess_depth if (pipeline and settings.deep_guess_min_chunks <= cfg.NC) else 1
        deep = [depth > 1]  # cleared by take_deeper where no row takes them

        def least_free(c1):  # boundary-free chunks (of 1 .. c1 - 1) for a row to take the deeper guesses
            return math.ceil(settings.deep_guess_share * (c1 - 1))

        if deep[0]:
            suspects = torch.zeros_like(breaks)
            depths = torch.ones(cfg.BH, cfg.NC, device=dev, dtype=torch.int32)
            free = torch.zeros(cfg.BH, device=dev, dtype=torch.int32)
            min_free = least_free(cfg.NC)
            # the merge simulation reads word 0 of each chunk at anc's stride (its code unchanged: its event loop's
            # schedule moves with any change, run 48); the other words are never written nor read
            orbits = torch.empty_like(anc)

        def launch_guesses(chunks=(1, cfg.NC)):
            cached(dla_carry_guess_kernel)[(chunks[1] - chunks[0], cfg.BH)](
                k, v, row_lengths, anc, cvec, size0, masks, cscores, itab, scores, breaks, *scalars,
                C=CHUNK, BK=BK, BV=BVC, PREC=cfg.prec, SPLIT=cfg.split, SCORES=pipeline,
                **(dict(free_ptr=free, orbit_ptr=orbits, DEEP=True) if deep[0] else {}), c_first=chunks[0], **options,
            )

        # the deeper guesses' kernels only if some row takes them (read back: launched idle, their programs delayed
        # the merge simulation by ~0.34 ms at (1, 65536) moderate and dense in some processes, run 48)
        def take_deeper(counts, c1):
            deep[0] = deep[0] and max(counts.tolist()) >= least_free(c1)
            return deep[0]

        def launch_deeper():
            if cfg.NC > 2:  # the deeper guesses read the first guesses' masks from a copy
                cached(dla_carry_deep_guess_kernel)[(triton.cdiv(cfg.NC - 2, DEEP_GUESS_CHUNKS), cfg.BH)](
                    k, v, row_lengths, anc, cvec, decay, masks.clone(), masks, cscores, depths, free, min_free,
                    orbits, *scalars, C=CHUNK, BK=BK, BV=BVC, PREC=cfg.prec, SPLIT=cfg.split, DEPTH=depth,
                    **options,
                )
            cached(dla_carry_suspects_kernel)[(cfg.NC - 1, cfg.BH)](masks, anc, depths, suspects, free, min_free,
                                                                     cfg.T, C=CHUNK, num_warps=1)
            return orbits

        guesses = CarryGuesses(launch_guesses, take_deeper, launch_deeper, deep, free if deep[0] else None)

        def launch(ready=None, chunks=None):  # ready, chunks: a block of chunks (``_decide_in_blocks``)
            cached(dla_carry_walk_kernel)[(cfg.BH,)](
                k, v, row_lengths, anc, cvec, decay, breaks, P, size0, masks, cscores, *scalars,
                C=CHUNK, BK=BK, BV=BVC, PREC=cfg.prec, SPLIT=cfg.split, PIPE=pipeline, flag_ptr=flag,
                **(dict(sus_ptr=suspects, depth_ptr=depths, free_ptr=free, min_free=min_free, DEPTH=depth)
                   if deep[0] else {}), **options,
                **({} if ready is None else dict(ready_ptr=ready, c_begin=chunks[0], c_end=chunks[1], BLOCKED=True)),
            )
    else:
        def launch():
            cached(dla_carry_kernel)[(cfg.BH,)](
                k, v, bnd, row_lengths, anc, cvec, decay, decay if tflag is None else tflag, P, size0, masks,
                cscores, *scalars, C=CHUNK, BK=BK, BV=BVC, NVB=triton.cdiv(BVF, BVC), OVERRIDE=override,
                PREC=cfg.prec, SPLIT=cfg.split, PIPE=pipeline, flag_ptr=flag, WAIT_TABLES=tflag is not None, **options,
            )
    return (masks, cscores), guesses, launch


def takes_carry_guesses(cfg: LaunchConfig, settings: TritonSettings, override: bool, device) -> bool:
    """Whether the carry scan takes guessed chunks (``TritonSettings.carry_guesses``): as set, for decided
    boundaries (not ``boundaries`` given), more than one chunk, and heads of up to 64 features on the carry scan's
    4 warps on a Hopper GPU (or the interpreter), where the three carry kernels lay their products out alike and the
    guesses give the plain walk's bits (H200, run 41); other GPUs lower the products otherwise, unchecked. Above 64
    features the guess kernel and the walk lay ``K P`` out over their 8 warps otherwise than the plain walk (sm_90,
    128 features: warps [4, 2] against [8, 1]), so its row sums add in another order: at (8, 4096, 16, 128) the
    decisions were the same but the carry scores 1-2 ulps apart, and sparse was 11 % slower."""
    warps = settings.launch(dla_carry_kernel, num_warps=settings.carry_warps or 4)["num_warps"]
    if not (settings.carry_guesses and not override and max(cfg.Dk, cfg.Dv) <= 64 and warps == 4 and cfg.NC > 1):
        return False
    return interpreting() or (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9)


def decided_structure(cfg: LaunchConfig, masks, scores, counts0, info0, size0) -> DecidedStructure:
    """The merge simulation's outputs (``merge_simulation``), allocated and initialised on the current stream.
    ``counts0`` (int64) and ``info0`` (float64), ``B * H * K`` each and contiguous (the caller's own copies), become
    the structure's and are updated in place."""
    dev = masks.device
    BH, NC, K, KP = cfg.BH, cfg.NC, cfg.K, cfg.KP
    if counts0.dtype != torch.int64 or info0.dtype != torch.float64:
        raise TypeError(f"merge_simulation: expected int64 counts and float64 info (updated in place), got "
                        f"{counts0.dtype} and {info0.dtype}")
    return DecidedStructure(
        masks=masks,
        death=torch.full((BH, NC * CHUNK), INT32_MAX, device=dev, dtype=torch.int32),
        death0=torch.full((BH, K), INT32_MAX, device=dev, dtype=torch.int32),
        live=torch.empty(BH, NC, KP, device=dev, dtype=torch.int32),
        livem=torch.empty(BH, NC, device=dev, dtype=torch.int32),
        fpos=torch.empty(BH, KP, device=dev, dtype=torch.int32),
        size=size0.clone(),
        counts=counts0.view(BH, K),
        info=info0.view(BH, K),
        scores=scores,
        merged=torch.full((BH, NC * CHUNK), -1, device=dev, dtype=torch.int64),
    )


def closing_tables(cfg: LaunchConfig, masks, scores, row_lengths, itab=None, cscores=None, chunks=None, tab=None):
    """The merge simulation's closing-slot tables of every chunk (``dla_closing_tables_kernel``: ``[BH, NC, CT_ROWS,
    C]`` float64, the counts' row holding float32), from the masks and the final scores, on the current stream. With
    ``itab`` and ``cscores`` the final scores are assembled first, into ``scores``, from the score tables and the carry
    scores. ``chunks`` ``(c0, c1)``: those chunks' only, into ``tab`` (a block of them, ``decision_blocks``)."""
    if tab is None:
        tab = torch.empty(cfg.BH, cfg.NC, CT_ROWS, CHUNK, device=masks.device, dtype=torch.float64)
    c0, c1 = chunks or (0, cfg.NC)
    assemble = itab is not None
    cached(dla_closing_tables_kernel)[(c1 - c0, cfg.BH)](
        masks, scores, row_lengths, tab, cfg.T, itab if assemble else tab, cscores if assemble else tab,
        C=CHUNK, SCORES=assemble, FAST=not interpreting(), c0=c0, num_warps=1,
    )
    return tab


def merge_simulation(cfg: LaunchConfig, masks, scores, row_lengths, itab, cscores, counts0, info0, size0, flag,
                     pipeline: bool, guessed_orbits=None, structure=None, tables=None, ready=None,
                     block=None, prefetch: bool = False) -> DecidedStructure:
    """Stage 3: the cache structure over the call (counts, information sums, merges, deaths, live lists), in
    ``structure`` (``decided_structure``'s, made beforehand) or made here. ``guessed_orbits`` (pipelined after the
    carry scan's guessed chunks): the carry scan's orbit words (``_carry_scan``), from which the merge simulation
    knows the chunks whose guesses hold without waiting for the walk. ``tables``: ``closing_tables``' of the chunks
    final before the kernel starts (every chunk unless pipelined; the guessed ones if ``guessed_orbits``); made here
    if None and needed. ``ready`` and ``block`` ``(c0, c1)`` (with ``guessed_orbits`` and ``structure``): those chunks
    only, from the state the block before left in ``structure``, waiting on the count ``ready`` of published chunks
    (``_decide_in_blocks``). ``prefetch`` (not pipelined): the closing-slot tables also prefetched two chunks ahead
    (``TritonSettings.deep_merge_prefetch``)."""
    s = structure or decided_structure(cfg, masks, scores, counts0, info0, size0)
    if tables is None and not pipeline:
        tables = closing_tables(cfg, masks, scores, row_lengths)
    if tables is None and guessed_orbits is not None:
        raise ValueError("merge_simulation: the guessed chunks' closing-slot tables are needed with guessed_orbits")
    K, KP = cfg.K, cfg.KP
    cached(dla_merge_kernel)[(cfg.BH,)](
        masks, scores, row_lengths, s.counts, s.info, s.size, s.death, s.death0, s.merged, s.live, s.livem, s.fpos,
        cfg.T, K, itab, cscores, flag, flag if guessed_orbits is None else guessed_orbits,
        s.info if tables is None else tables, C=CHUNK, KP=KP, KW=max(KP, 32), PIPE=pipeline, FAST=not interpreting(),
        GUESSED=guessed_orbits is not None, PREFETCH=prefetch and not pipeline,
        **(dict(ready_ptr=ready, size0_ptr=size0, c_begin=block[0], c_end=block[1], BLOCKED=True) if ready is not None
           else {}), num_warps=1,
    )
    return s


def concurrent_decisions(cfg: LaunchConfig, device) -> bool:
    """Whether the decision stages may wait on each other's flags (``TritonSettings.table_overlap`` and
    ``pipeline``): the carry scan on the table kernel's, the merge simulation on the carry scan's. Under the
    interpreter the kernels run one after the other, through the same flags.

    On a GPU a stage that waits holds its SMs, so the stage it waits for must always find room beside it:
    taken only when the B*H carry programs (at most two per SM) and merge programs (one warp each) leave at
    least three quarters of the SMs free, so that a few such forwards running at once on other streams cannot
    fill the GPU. With more rows the sequential stages already occupy much of the GPU. Not while a CUDA graph is
    being captured: a graph may run independent branches in any order, one after the other.
    """
    if interpreting():
        return True
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return False
    return torch.cuda.get_device_properties(device).multi_processor_count >= 4 * cfg.BH


def takes_decision_blocks(cfg: LaunchConfig, settings: TritonSettings) -> bool:
    """Whether the decisions go by blocks of chunks (``_decide_in_blocks``): ``decision_blocks`` > 1 and rows of at
    least ``decision_blocks_min_chunks`` chunks (where the call also takes the pipelined guesses: ``_decide``)."""
    return settings.decision_blocks > 1 and settings.decision_blocks_min_chunks <= cfg.NC


def decision_blocks(cfg: LaunchConfig, settings: TritonSettings) -> list[tuple[int, int]]:
    """The ranges of chunks ``(c0, c1)`` that ``_decide_in_blocks`` launches the decisions in
    (``TritonSettings.decision_blocks``), of equal size but the last; fewer where the row is short."""
    size = triton.cdiv(cfg.NC, settings.decision_blocks)
    return [(c0, min(c0 + size, cfg.NC)) for c0 in range(0, cfg.NC, size)]


def _decide_in_blocks(cfg: LaunchConfig, k, v, g, row_lengths, P, counts0, info0, size0, flag, tau, eps, norm_eps,
                      settings: TritonSettings, beside):
    """Stages 1-3 with few rows and guessed chunks, by blocks of chunks (``TritonSettings.decision_blocks``). Each
    block's table, guess and closing-table kernels go on the current stream, then ``dla_publish_chunks_kernel`` (the
    count of chunks published); after the next block's (queued first, so that the current stream need not wait for
    the host), the walk over the block on a high-priority stream of its own and the merge simulation over it on
    another, each continuing from the state the block before left and waiting on the count. So they run beside the
    next blocks' kernels, and every kernel that waits was launched after the kernels it waits for (run 19's rule: two
    streams may share a hardware queue, and a kernel queued behind one that waits on it would never start). By
    blocks the walk is one deep. Where the deeper guesses may follow (``CarryGuesses``), the first block's guesses
    count each row's chunks without a boundary, and the host reads the counts back while the second block runs: if
    some row takes the deeper guesses on them (sparse rows, where they pay more than blocks: run 59), the other
    blocks' kernels are queued and the call goes on as ``_decide`` does after the whole call's guesses.
    Returns ``(structure, beside's result)``. ``beside`` (``_decide``'s) is called with an event after the first
    block's kernels, right after the host has queued them. Queued with the inputs, the side stream's prefix states ran
    beside the first table kernel and slowed it (run 57, call 4: 628 -> 825 us); queued after the last block they came
    too late for the output stage (run 58, call 2). (Run 60's output stage by the same blocks, each block's beside the
    later blocks' merge simulations, was not faster and 2x slower back to back: removed in run 62.)"""
    dev = k.device
    on_gpu = dev.type == "cuda" and not interpreting()
    main = torch.cuda.current_stream(dev) if on_gpu else None
    tables, launch_tables = _score_tables(cfg, k, v, g, row_lengths, tau, eps, norm_eps, False, settings)
    scores = torch.empty(cfg.BH, cfg.NC * CHUNK, device=dev, dtype=torch.float32)
    (masks, cscores), guesses, launch_walk = _carry_scan(cfg, k, v, g, None, row_lengths, tables, P, size0, scores,
                                                         tau, eps, norm_eps, flag, True, settings, guessed=True)
    structure = decided_structure(cfg, masks, scores, counts0, info0, size0)
    ready = torch.zeros(1, device=dev, dtype=torch.int32)  # chunks published
    closing = torch.empty(cfg.BH, cfg.NC, CT_ROWS, CHUNK, device=dev, dtype=torch.float64)
    walk, merge = (stream_besides_current(dev, priority=-1) for _ in range(2)) if on_gpu else (None, None)
    if on_gpu:
        walk.wait_stream(main)  # the buffers above
        merge.wait_stream(main)
    blocks = decision_blocks(cfg, settings)
    side_results = []

    def queue_block(c0, c1):  # the block's kernels on the current stream, then its count
        launch_tables(c0, c1)
        if c1 > max(c0, 1):  # chunk 0 is walked
            guesses.launch(chunks=(max(c0, 1), c1))
        closing_tables(cfg, masks, scores, row_lengths, chunks=(c0, c1), tab=closing)
        cached(dla_publish_chunks_kernel)[(1,)](ready, c1, num_warps=1)
        if not side_results:
            side_results.append(beside(main.record_event() if on_gpu else None))

    queue_block(*blocks[0])
    counted = values_on_host_later(guesses.free) if guesses.deeper[0] else None  # the first block's counts
    queue_block(*blocks[1])
    if counted is not None and guesses.take_deeper(counted(), blocks[0][1]):
        for block in blocks[2:]:
            queue_block(*block)
        structure = _walk_and_merge(cfg, masks, scores, row_lengths, tables, cscores, counts0, info0, size0, flag,
                                    launch_walk, guesses.launch_deeper(), settings.deep_merge_after_walk, merge,
                                    structure, closing, prefetch=settings.deep_merge_prefetch)
        return structure, side_results[0]
    for b, (c0, c1) in enumerate(blocks):
        if b >= 1 and b + 1 < len(blocks):  # the next block first (the second already is): the stream never idles
            queue_block(*blocks[b + 1])
        with torch.cuda.stream(walk) if on_gpu else nullcontext():
            launch_walk(ready, (c0, c1))
        with torch.cuda.stream(merge) if on_gpu else nullcontext():
            merge_simulation(cfg, masks, scores, row_lengths, tables[0], cscores, counts0, info0, size0, flag, True,
                             tables[1], structure, closing, ready, (c0, c1))
    if on_gpu:
        main.wait_stream(walk)
        main.wait_stream(merge)
    return structure, side_results[0]


def _walk_and_merge(cfg: LaunchConfig, masks, scores, row_lengths, tables, cscores, counts0, info0, size0, flag,
                    launch_walk, orbits, after_walk: bool, mstream, structure, closing, profile=None,
                    prefetch: bool = False):
    """The walk (``launch_walk``) on the current stream and the merge simulation on ``mstream`` (None: the current
    stream), which the current stream then waits for: pipelined beside the walk, reading ahead the guessed chunks that
    ``orbits`` shows (None: none) from their closing-slot tables ``closing``; or after the walk (``after_walk``) from
    every chunk's tables, made first with the final scores assembled (into ``closing`` if given). Returns the
    structure (``structure``, made beforehand, or made here if None). ``prefetch``: ``merge_simulation``'s, after the
    walk."""
    main = torch.cuda.current_stream(masks.device) if mstream is not None else None
    if mstream is not None and not after_walk:
        mstream.wait_stream(main)
    launch_walk()
    if mstream is not None and after_walk:
        mstream.wait_stream(main)
    mark_stage(profile, "merge")
    with torch.cuda.stream(mstream) if mstream is not None else nullcontext():
        if after_walk:
            closing = closing_tables(cfg, masks, scores, row_lengths, tables[0], cscores, tab=closing)
        structure = merge_simulation(cfg, masks, scores, row_lengths, tables[0], cscores, counts0, info0, size0,
                                     flag, not after_walk, None if after_walk else orbits, structure, closing,
                                     prefetch=prefetch)
    if mstream is not None:
        main.wait_stream(mstream)
    return structure


def _decide(cfg: LaunchConfig, k, v, g, boundaries, row_lengths, P, counts0, info0, size0, flag, tau, eps, norm_eps,
            settings: TritonSettings, profile, beside):
    """Stages 1-3 on the current stream; the carry scan on its own stream when it overlaps the table kernel,
    the merge simulation on its own when pipelined (``concurrent_decisions``). ``flag``: zeroed int32 ``[BH]``, the
    pipeline's per-row progress. ``beside(after)`` queues the work that runs beside the decisions (the forward's
    prefix states and value checks) from the event ``after`` on, or from the inputs if None: called once the decision
    stages are queued, or by blocks of chunks (``_decide_in_blocks``, where ``takes_decision_blocks`` and the call
    takes the pipelined guesses; the ``profile``'s stages are then not marked) after the first block's. Returns
    ``(structure, beside's result)``."""
    dev = k.device
    on_gpu = dev.type == "cuda" and not interpreting()
    main = torch.cuda.current_stream(dev) if on_gpu else None
    few_rows = concurrent_decisions(cfg, dev)
    guessed = takes_carry_guesses(cfg, settings, boundaries is not None, dev)
    if guessed and few_rows and settings.pipeline and takes_decision_blocks(cfg, settings):
        return _decide_in_blocks(cfg, k, v, g, row_lengths, P, counts0, info0, size0, flag, tau, eps, norm_eps,
                                 settings, beside)
    overlap = settings.table_overlap and few_rows and not guessed  # the guesses read the tables whole
    pipeline = settings.pipeline and few_rows
    # table overlap on a GPU: the carry scan on a high-priority stream (the block scheduler may then place its
    # programs before the table kernel's rest), waiting chunk by chunk on the table kernel's (bh, chunk) flags. The
    # table kernel is launched first: a kernel waited on launched after the one that waits can deadlock (run 19: a
    # first launch can wait for the running kernels under lazy module loading; streams may share a hardware queue).
    concurrent = overlap and on_gpu
    tflag = torch.zeros(cfg.BH, triton.cdiv(cfg.NC, 32), device=dev, dtype=torch.int32) if overlap else None
    tables, launch_tables = _score_tables(cfg, k, v, g, row_lengths, tau, eps, norm_eps, boundaries is not None,
                                          settings, tflag)
    # pipeline: the merge simulation runs concurrently with the carry scan (its own stream), one chunk behind,
    # synchronised by a per-(b, h) flag; the two sequential passes then overlap.
    scores = torch.empty(cfg.BH, cfg.NC * CHUNK, device=dev, dtype=torch.float32)
    (masks, cscores), guesses, launch_carry = _carry_scan(
        cfg, k, v, g, boundaries, row_lengths, tables, P, size0, scores, tau, eps, norm_eps, flag, pipeline, settings,
        tflag, guessed)
    mstream = stream_besides_current(dev) if (pipeline and on_gpu) else None
    structure = None
    if mstream is not None:  # the merge simulation's buffers now: after the guesses' read-back only launches
        mstream.wait_stream(main)  # the zeroed counts and size
        with torch.cuda.stream(mstream):
            structure = decided_structure(cfg, masks, scores, counts0, info0, size0)
    if concurrent:
        cstream = stream_besides_current(dev, priority=-1)
        cstream.wait_stream(main)  # the inputs, not the tables
    launch_tables()
    if concurrent:
        with torch.cuda.stream(cstream):
            launch_carry()
    mark_stage(profile, "carry")  # when concurrent: the carry scan's time after the table kernel's end
    orbits, closing, deep = None, None, False  # closing: the merge simulation's closing-slot tables, made beforehand
    if guessed:  # before the merge simulation starts: it reads their decisions without waiting
        guesses.launch()
        if pipeline:  # the guessed chunks' tables, on the merge simulation's stream (while the host reads back)
            if mstream is not None:
                mstream.wait_stream(main)
            with torch.cuda.stream(mstream) if mstream is not None else nullcontext():
                closing = closing_tables(cfg, masks, scores, row_lengths)
        deep = guesses.deeper[0] and guesses.take_deeper(values_on_host(guesses.free), cfg.NC)  # the GPU waits
        orbits = guesses.launch_deeper() if deep else tables[1]
    after_walk = not pipeline or (deep and settings.deep_merge_after_walk)  # (deeper guesses: pipelined only)
    structure = _walk_and_merge(cfg, masks, scores, row_lengths, tables, cscores, counts0, info0, size0, flag,
                                (lambda: main.wait_stream(cstream)) if concurrent else launch_carry, orbits,
                                after_walk, mstream, structure, closing, profile,
                                prefetch=deep and settings.deep_merge_prefetch)
    return structure, beside(None)


class OutputStage:
    """Stage 5's buffers and launches (``_output``): ``o [B, T, H, Dv]`` in q's dtype, per chunk the old starts'
    read scales ``[C, KP]`` and per program their state indices ``[KP]`` (both read back group by group by the output
    kernels), and for grouped reads, if they may be taken, the chunks' decays to their ends (written by the scales'
    kernel)."""

    def __init__(self, cfg: LaunchConfig, q, k, v, g, slot_weights, s: DecidedStructure, hs, gs, hinit,
                 settings: TritonSettings):
        self.cfg, self.s, self.hs, self.gs, self.hinit, self.settings = cfg, s, hs, gs, hinit, settings
        self.inputs = (q, k, v, g, slot_weights)
        self.o = torch.empty(cfg.B, cfg.T, cfg.H, cfg.Dv, device=q.device, dtype=q.dtype)
        self.BK, self.BVF, self.BV = block_sizes(cfg.Dk, cfg.Dv)
        self.grid = (cfg.NC, cfg.BH, triton.cdiv(self.BVF, self.BV))  # the grouped kernel's
        self.OBV = output_value_block(self.BK, self.BVF, cfg.lowp)  # the output kernel's Dv block may be wider
        self.sc = torch.empty(cfg.BH * cfg.NC * CHUNK * cfg.KP, device=q.device, dtype=torch.float32)
        self.bsc = torch.empty(math.prod(self.grid) * cfg.KP, device=q.device, dtype=torch.int32)
        maybe_grouped = takes_grouped_reads(cfg, settings, None)
        self.dte = torch.empty(cfg.BH * cfg.NC * CHUNK, device=q.device, dtype=torch.float32) if maybe_grouped else None

    def read_scales(self):
        cfg, s = self.cfg, self.s
        g, slot_weights, sc = self.inputs[3], self.inputs[4], self.sc
        cached(dla_read_scales_kernel)[(cfg.NC, cfg.BH)](
            g, slot_weights, s.masks, s.death, s.death0, s.live, s.livem, self.gs, sc, sc, 0, sc, sc, sc, cfg.T, cfg.H,
            cfg.K, C=CHUNK, KP=cfg.KP, BWD=False, dte_ptr=self.dte, DTE=self.dte is not None,
            **self.settings.launch(dla_read_scales_kernel, num_warps=4))

    def _launch(self, bv: int, grouped: bool) -> tuple[int, dict]:  # both kernels' (dla_output_kernel's overrides)
        G = output_group(self.cfg.KP, self.BK, bv, self.cfg.lowp, self.settings.output_group)
        return G, self.settings.launch(dla_output_kernel, **output_launch(self.BK, bv, G, self.cfg.lowp, grouped))

    def initial_states(self):
        """The grouped reads' start-state buffer: only the initial slots' pseudo starts keep a state (``hinit``, in
        the start-state buffer's dtype), or a placeholder without an initial cache."""
        cfg, q = self.cfg, self.inputs[0]
        dt = q.dtype if cfg.lowp else torch.float32
        if self.hinit is None:
            return torch.empty(1, device=q.device, dtype=dt)
        return self.hinit.reshape(cfg.BH * cfg.K, cfg.Dk, cfg.Dv).to(dt)

    def grouped(self, bst):
        """The output, the old starts read by chunk from ``hs`` and the chunks' tokens."""
        cfg, s = self.cfg, self.s
        G, launch = self._launch(self.BV, grouped=True)
        cached(dla_output_grouped_kernel)[self.grid](
            *self.inputs, self.o, s.masks, s.death, s.live, s.livem, self.hs, self.gs, bst, self.sc, self.bsc,
            self.dte, cfg.T, cfg.H, cfg.Dk, cfg.Dv, cfg.K, C=CHUNK, BK=self.BK, BV=self.BV, KP=cfg.KP, LOWP=cfg.lowp,
            PREC=cfg.prec, G=G, HAS_INIT=self.hinit is not None, SPLITS=2, **launch)

    def materialised(self, bst, bidx, binit: int):
        """The output, the old starts read from their states ``bst`` (``bidx``; the initial slots' pseudo starts
        from ``binit`` on)."""
        cfg, s = self.cfg, self.s
        G, launch = self._launch(self.OBV, grouped=False)
        cached(dla_output_kernel)[(cfg.NC, cfg.BH, triton.cdiv(self.BVF, self.OBV))](
            *self.inputs, self.o, s.masks, s.death, s.live, s.livem, self.hs, bidx, bst, binit, self.sc, self.bsc,
            cfg.T, cfg.H, cfg.Dk, cfg.Dv, cfg.K, C=CHUNK, BK=self.BK, BV=self.OBV, KP=cfg.KP, LOWP=cfg.lowp,
            PREC=cfg.prec, G=G, **launch)


def _output(cfg: LaunchConfig, q, k, v, g, slot_weights, s: DecidedStructure, hs, gs, hinit, settings: TritonSettings,
            readback):
    """Stage 5: ``o [B, T, H, Dv]`` in q's dtype. ``readback`` (``_zeroed_buffers``'): the surviving starts are
    counted into its first ``NC`` entries and it is read back whole (the call's one host synchronisation); its last
    holds the value checks' flags (``launch_value_checks``; 0 if not run), the first violated of which raises."""
    stage = OutputStage(cfg, q, k, v, g, slot_weights, s, hs, gs, hinit, settings)
    # Everything is allocated before the synchronisation: after it the GPU has only the read scales (they need no
    # start state) to run until the next launch.
    s.survivors, flags = surviving_starts(s.masks, s.death, cfg.T, readback, meanwhile=stage.read_scales)
    if flags[0]:
        raise_flagged(flags[0])
    off, nsurv = s.survivors.off, s.survivors.count
    if takes_grouped_reads(cfg, settings, nsurv):
        stage.grouped(stage.initial_states())
        return stage.o
    bst, bidx = start_states(k, v, g, hs, s.masks, s.death, off, nsurv, hinit, cfg.K, lowp=cfg.lowp, prec=cfg.prec,
                             settings=settings)
    stage.materialised(bst, bidx, nsurv)
    return stage.o


def _trace(cfg: LaunchConfig, s: DecidedStructure):
    """``(scores float32, starts bool, merged int64)``, each ``[B, T, H]``."""
    def api_layout(x):
        return x[:, : cfg.T].reshape(cfg.B, cfg.H, cfg.T).permute(0, 2, 1)

    return api_layout(s.scores), api_layout(start_bits(s.masks)), api_layout(s.merged)


def _empty_call(cfg: LaunchConfig, q, states, counts, info, size):
    """T = 0: empty outputs, the cache unchanged."""
    dev = q.device
    B, H, K = cfg.B, cfg.H, cfg.K
    if states is None:
        cache = (torch.zeros(B, H, K, cfg.Dk, cfg.Dv, device=dev), torch.zeros(B, H, K, device=dev, dtype=torch.int64),
                 torch.zeros(B, H, K, device=dev), torch.zeros(B, H, device=dev, dtype=torch.int64))
    else:
        cache = (states.float().clone(), counts.long().clone(), info.float().clone(), size.long().clone())
    empty = torch.zeros(B, 0, H, device=dev)
    return torch.zeros(B, 0, H, cfg.Dv, device=dev, dtype=q.dtype), cache, (empty, empty.bool(), empty.long()), None


def _beside_decisions(cfg: LaunchConfig, q, k, v, g, slot_weights, h0, readback, settings: TritonSettings):
    """``(side stream or None, beside)``: ``beside(after)`` (``_decide``'s, called once) queues the prefix states and
    the value checks into ``readback`` unless None, and returns ``(hs, gs)``. Independent of the decisions, so on CUDA
    they run on a side stream while the sequential carry scan and merge simulation (B*H programs) leave most of the
    GPU idle: from the event ``after`` on, or from the inputs' point on the current stream if None."""
    dev = q.device
    use_side = dev.type == "cuda" and not interpreting() and settings.side_stream
    side = stream_besides_current(dev) if use_side else None
    inputs_ready = torch.cuda.current_stream(dev).record_event() if side is not None else None

    def beside(after):
        if side is not None:
            side.wait_event(after or inputs_ready)
        with torch.cuda.stream(side) if side is not None else nullcontext():
            hs, gs = prefix_states(k, v, g, h0, split=cfg.split, prec=cfg.prec)
            if readback is not None:
                launch_value_checks(q, k, v, g, slot_weights, flags=readback[cfg.NC:])
        return hs, gs

    return side, beside


def forward_scalar_decay_triton(
    q, k, v, g, slot_weights, *, tau, boundaries=None, states=None, counts=None, info=None, size=None,
    eps=1e-6, norm_eps=1e-6, lengths=None, settings: TritonSettings = DEFAULT_SETTINGS, profile: dict | None = None,
    check_values: bool = False, final_cache: bool = True, trace: bool = True,
):
    """DLA forward, scalar-decay backbone, on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1).

    Args:
        q, k: ``[B, T, H, Dk]``; v: ``[B, T, H, Dv]`` (float32, bfloat16 or float16, one dtype).
        g: ``[B, T, H]`` log decays (any float dtype, read as float32).
        slot_weights: ``[B, T, H, K]`` the read weights lambda (any float dtype).
        tau: the boundary threshold (float).
        boundaries: bool ``[B, T, H]`` overriding the decisions, or None.
        states, counts, info, size: the initial cache (``[B, H, K, Dk, Dv]`` float32, ``[B, H, K]`` int64,
            ``[B, H, K]`` float32, ``[B, H]`` int64), or all None for an empty cache. Not modified.
        eps, norm_eps: the score's guards.
        lengths: ``[B]`` integer or None: batch b's tokens are ``0 .. lengths[b] - 1``; the padding after them
            must be zero q/k/v/slot_weights with g = 0 (it then changes no state) and takes no decision and
            counts in no slot (variable-length batches, ``ops/common/varlen.py``). None: every row has T.
        settings: kernel tuning (:class:`dla_fast.settings.TritonSettings`).
        profile: a dict, or None: if given, each stage's time in ms (CUDA events, synchronising) and the
            mean number of live slot starts at chunk starts are written into it (benchmarks only).
        check_values: check that q, k, v, g and slot_weights are finite and g <= 0 (``dla_ref``'s value checks,
            in one kernel: ``ops/common/value_checks.py``), read back in this call's one host synchronisation;
            the first violated raises ``ValueError`` naming the argument before anything is returned. The
            kernels run safely on non-finite inputs (the results are then discarded). The initial cache's
            checks guard the kernels' indexing: the caller raises them before the call.
        final_cache, trace: compute the final cache and the trace (else None in their place).

    Returns:
        ``(o, (states, counts, info, size), (scores float32, starts bool, merged int64), structure)``: ``o``
        ``[B, T, H, Dv]`` in q's dtype, the final cache in the layout above, the trace ``[B, T, H]`` each, and
        the :class:`DecidedStructure` (the Triton backward's input; None for T = 0).
    """
    cfg = launch_config(q, v, slot_weights)
    check_forward_dims(cfg.Dk, cfg.Dv)
    check_sizes(cfg)
    if cfg.T == 0:  # nothing to check either: no values
        return _empty_call(cfg, q, states, counts, info, size)
    dev = q.device
    q, k, v, g, slot_weights = (x.contiguous() for x in (q, k, v, g, slot_weights))
    flag, readback, *empty_cache = _zeroed_buffers(cfg, dev, empty_cache=states is None)
    states0, counts0, info0, size0, P = _initial_cache(cfg, states, counts, info, size, dev, empty_cache[:4])
    h0, hinit = initial_prefixes(states0, cfg.BH, cfg.Dk, cfg.Dv, dev, zeros=empty_cache[4:])
    if lengths is None:
        row_lengths = torch.full((cfg.BH,), cfg.T, device=dev, dtype=torch.int32)
    else:
        row_lengths = lengths.to(dev, torch.int32).repeat_interleave(cfg.H)
    side, beside = _beside_decisions(cfg, q, k, v, g, slot_weights, h0, readback if check_values else None, settings)
    mark_stage(profile, "table")
    s, (hs, gs) = _decide(cfg, k, v, g, boundaries, row_lengths, P, counts0, info0, size0, flag, tau, eps, norm_eps,
                          settings, profile, beside)
    if side is not None:
        torch.cuda.current_stream(dev).wait_stream(side)
    mark_stage(profile, "output")
    pseudo = None if states is None else hinit  # the initial slots' pseudo starts' states
    o = _output(cfg, q, k, v, g, slot_weights, s, hs, gs, pseudo, settings, readback)
    mark_stage(profile, "final")
    cache = None
    if final_cache:
        final = final_states(k, v, g, hs, gs, s.fpos, s.size, hinit, size0, P, cfg.K, has_init=states is not None,
                             split=cfg.split, prec=cfg.prec)
        cache = (final.reshape(cfg.B, cfg.H, cfg.K, cfg.Dk, cfg.Dv), s.counts.reshape(cfg.B, cfg.H, cfg.K),
                 s.info.float().reshape(cfg.B, cfg.H, cfg.K), s.size.reshape(cfg.B, cfg.H))
    mark_stage(profile, "trace")
    call_trace = _trace(cfg, s) if trace else None
    mark_stage(profile, None)
    if profile is not None:
        profile["mean_live_at_chunk_start"] = float(s.livem.float().mean())
    return o, cache, call_trace, s
