"""Kernel tuning settings of the Triton paths: one frozen object, read once, passed to the launchers.

Every field was measured (docs/triton.md, docs/training.md); the defaults are the measured best on an
H200. Settings change speed only, never results beyond float rounding: the pipeline and the table's
scan/matmul forms compute the same quantities in another order. Benchmarks compare variants by passing a
modified copy (``dataclasses.replace(DEFAULT_SETTINGS, pipeline=True)``) to the launchers.
"""

from __future__ import annotations

from dataclasses import dataclass

LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")  # what ``launch_overrides`` may set
# The kernels whose launches read ``launch_overrides`` (tests/test_triton_backward.py checks this list against the
# launches of a forward and a backward).
LAUNCH_KERNELS = ("dla_table_kernel", "dla_carry_kernel", "dla_read_scales_kernel", "dla_bstate_kernel",
                  "dla_output_kernel", "dla_bwd_q_kernel", "dla_bwd_db_kernel", "dla_bwd_scan_kernel",
                  "dla_bwd_kv_kernel")


@dataclass(frozen=True)
class TritonSettings:
    """Knobs of the scalar-decay Triton forward and backward.

    Attributes:
        table_scan: build the per-chunk score table with scans (True) or two ``C^3`` matmuls.
        table_precision: ``input_precision`` of the table's fp32 dots ("ieee": the decisions read them).
        side_stream: compute the prefix states on a side stream, overlapping the sequential carry scan and
            merge simulation (which occupy only B * H programs).
        table_overlap: run the table kernel concurrently with the carry scan, which waits on per-(row, chunk)
            flags. Like ``pipeline``, taken only when 4 B H <= the SM count (``chunk_fwd.concurrent_decisions``).
        pipeline: run the merge simulation concurrently with the carry scan, one chunk behind, through a
            per-(b, h) flag. Both: 7-16 % off the forward at (2, 16384) and (1, 65536) on an H200
            (docs/benchmarks.md run 19), bitwise the same results.
        carry_warps: warps of the carry scan; None: 8 when its state tile exceeds 64 x 64, else 4.
        carry_guesses: decide every chunk in parallel from a guessed entry slot first (``dla_carry_guess_kernel``:
            the slot leaving the chunk before along the path from a fresh slot at its first token), so that the
            carry scan (``dla_carry_walk_kernel``) decides only the chunks whose guess may not hold (those after a
            chunk that does not end on its fresh path's last start: 47 / 3 / 0 % on issue #11's sparse / moderate /
            dense workloads, counted on the CPU, run 39) and jumps over the rest; the merge simulation reads the
            guessed chunks without waiting for the walk. Bit for bit the plain walk's results (H200, run 41, eight
            cells). Taken for decided boundaries and heads of up to 64 features on 4 warps on a Hopper GPU
            (``chunk_fwd.takes_carry_guesses``); the carry scan then waits for the table kernel instead of overlapping
            it (``table_overlap`` does not apply). H200, run 41, kernel entry: (1, 65536) moderate 6.07 -> 4.55 ms,
            (2, 16384) moderate 2.12 -> 1.85, dense -7 to -10 %, (8, 4096) -4 to -8 %, but (2, 16384) sparse 1.98 ->
            2.18 (+10 %: half its chunks are walked).
        carry_guess_depth: with ``carry_guesses``, how many chunks back a chunk's guess may start: above 1, a chunk
            after one without a boundary (whose one-deep guess then fails) is guessed again from the slot leaving the
            nearest chunk before it with a boundary, grown through the chunks between (``dla_carry_deep_guess_kernel``;
            the walk then takes such rows by ``_walk_suspects``). Counted on the CPU (sparse, 4096 tokens,
            benchmarks/carry_deep_guesses.py): the walk decides 44.5 % of chunks one deep, 7.0 % four deep, 3.1 %
            eight deep. Taken only where it pays: with few rows (the merge simulation pipelined,
            ``chunk_fwd.concurrent_decisions``), rows of at least ``deep_guess_min_chunks`` chunks, and in the rows
            where the guess kernel finds at least ``deep_guess_share`` of the chunks without a boundary (the host
            reads the counts back and launches the deeper guesses' kernels only if some row takes them); the other
            rows take the one-deep walk. H200, run 48, 8 against 1 in one process: (1, 65536) sparse **-21 to -23 %**
            (5.30-5.40 -> 4.14-4.20 ms) in seven calls; moderate and dense +1.1 / +1.9 % (call 11, this form). Bit
            for bit the plain walk's results at every depth.
        deep_guess_share: the least share of a row's chunks (after the first) without a boundary, as the guess kernel
            decides them, for the row to take the deeper guesses (``carry_guess_depth`` > 1): about 45 % / 1.5 % / 0
            on issue #11's sparse / moderate / dense workloads.
        deep_guess_min_chunks: the least chunks (of 64 tokens) a call's rows have for the deeper guesses
            (``carry_guess_depth`` > 1); shorter rows take the one-deep walk. H200, run 48: at (2, 16384) (256 chunks)
            depth 8 gave sparse -7 to +1 % and moderate / dense +1 to +15 % (calls 1-6), at 1024
            chunks -21 to -23 % sparse: 512.
        deep_merge_after_walk: where some row takes the deeper guesses, the merge simulation after the walk, every
            chunk's closing-slot tables made first (as with many rows), instead of beside the walk (pipelined). There
            the walk is short and the pipelined merge kernel follows it through the ~44 % of chunks whose guesses it
            cannot read ahead, making those chunks' tables itself: ~3,200 modeled cycles a chunk against ~640-910
            from tables (sm_90, run 53). The same results bit for bit. H100, run 59, against pipelined: (1, 65536)
            sparse 4.224 -> 3.913 and 4.219 -> 3.916 ms (-7.2 to -7.4 %), its merge kernel 1,290 -> 710-771 us;
            the cells that take no deeper guesses run as before.
        deep_merge_prefetch: where the merge simulation runs after the deep walk (``deep_merge_after_walk``), it asks
            L1 for each chunk's closing-slot tables two chunks ahead of their use (``prefetch.global.L1``), besides
            reading them a chunk ahead: those rows' chunks mostly have no or one boundary and take less time than a
            load's round trip (sm_90 model: 820 modeled cycles a chunk, ~440 of them waiting). Any such instruction in
            the kernel moves ptxas's schedule of its event loop, 321 -> 382 modeled cycles an event: so only there.
            H100, run 65: (1, 65536) sparse, the forward 3.895 -> 3.776 ms (-3.1 %) and its merge kernel 591 -> 480
            us against run 64's code; taken wherever the merge runs after the walk, (8, 4096, 64) dense (which takes
            no deeper guesses) went 477 -> 573 us (+5.3 % the forward). The same results bit for bit.
        decision_blocks: with few rows and guessed chunks (the merge simulation pipelined), how many blocks of chunks
            the table, guess and closing-table kernels are launched in, one block after another, each published by a
            count of chunks; after each block's kernels the walk and the merge simulation over that block are
            launched, on streams of their own, and wait on the count, so that they run beside the next blocks'
            kernels instead of after the whole call's guesses (``chunk_fwd._decide_in_blocks``). By blocks the walk
            is one deep: where the deeper guesses may follow, the first block's guess counts are read back while the
            second block runs, and if some row takes the deeper guesses on them the call goes on without blocks
            after queueing every block's kernels. 1: the call's decisions at once. The same results bit for bit.
            H100: run 58, 4 blocks against 1 (one deep): (1, 65536) moderate 3.772 -> 3.450 ms and 3.948 -> 3.457,
            dense -9.4 / -10.7 %, sparse +24 % (its deeper guesses lost); (2, 16384) moderate 1.771 -> 1.800 in one
            call and 2.206 -> 3.358 in another (the host's six launches a block set the pace there). Run 59, the
            default (4, rows of at least ``decision_blocks_min_chunks``) against run 58's: (1, 65536) moderate
            3.825 -> 3.477 ms (-9.1 %), dense 9.398 -> 8.561 (-8.9 %), sparse 4.221 -> 3.981 (-5.7 %: the deeper
            guesses kept, the merge simulation after the walk).
        decision_blocks_min_chunks: the least chunks (of 64 tokens) a call's rows have for ``decision_blocks``; shorter
            rows decide at once. 512, as ``deep_guess_min_chunks``: at (2, 16384) (256 chunks) four blocks were
            host-bound (run 58).
        output_group: old slot states read per tensor-core product in the output kernel, for float32 inputs (2: 168
            registers without spills at 64 features, three programs per SM; faster than 4 in 8 of 9 cells on an H200,
            docs/benchmarks.md run 21). 16-bit inputs read one per product, scaled after it (run 44).
        bwd_stages: software-pipelining stages of the backward's old-start loop (dq kernel).
        bwd_warps: warps of the backward's dq kernel.
        bwd_start_ranges: how many ranges of chunks the backward's dB, reverse-scan and dk/dv stages take, one
            range's surviving starts' dB held at a time: less peak memory for a little more time. None: chosen by
            ``chunk_bwd.start_range_count`` (ranges only where the dk/dv stage holds the peak by a margin: 128
            features in 16 bits, or after grouped reads; H200, run 23: -0.17 GiB for +0.8-3.7 % at (8, 4096, 16,
            128); run 39, dense: -0.07 / -0.25 GiB for +3 to +8 % at 64 / 128 features; docs/training.md,
            "Memory"). Bitwise the same gradients.
        grouped_reads: read the old slot starts by their chunk (from the prefix state before the chunk and its
            tokens) instead of from their materialised prefix states, in the output (``dla_output_grouped_kernel``)
            and in the backward's dq stage (``dla_bwd_q_grouped_kernel``, whose later stages then take ranges of
            chunks): no ``dla_bstate_kernel``, no start-state buffer but the initial cache's. ``dla_output_kernel``'s
            and ``dla_bwd_q_kernel``'s launch overrides apply to them. Up to 32 slots (K); beyond, the materialised
            reads whatever this says (``chunk_fwd.GROUPED_READS_MAX_KP``), and on a GPU below 64 features (a known
            fault: ``chunk_fwd.GROUPED_READS_MIN_GPU_DIM``). None: for 16-bit inputs on a GPU when the
            surviving starts number at least ``chunk_fwd.GROUPED_READS_SURVIVORS`` per (row, chunk), i.e. where they
            crowd their chunks (H200, (8, 4096, 16, 64) dense: forward 2.11 -> 1.97 ms, its peak 0.75 -> 0.27 GiB,
            run 37; fwd+bwd 6.65 -> 6.72 ms, its peak 0.93 -> 0.69 GiB, run 38; (2, 16384) dense fwd+bwd +3.6 %,
            peak 0.82 -> 0.64 GiB, run 39; sparse forward 1.38 -> 2.15 ms if forced). The same results up to
            rounding (bf16: o 8e-5 relative, dq 1.5e-4, dg 5.4e-4).
        launch_overrides: ``((kernel, option, value), ...)``: launch options (``num_warps``, ``num_stages``,
            ``maxnreg``) in place of the measured ones of the named ``triton.jit`` kernels, for sweeps
            (``benchmarks/forward_variants.py``, ``benchmarks/backward_settings_ab.py``); empty in use.
    """

    table_scan: bool = True
    table_precision: str = "ieee"
    side_stream: bool = True
    table_overlap: bool = True
    pipeline: bool = True
    carry_warps: int | None = None
    carry_guesses: bool = True
    carry_guess_depth: int = 8
    deep_guess_share: float = 0.125
    deep_guess_min_chunks: int = 512
    deep_merge_after_walk: bool = True
    deep_merge_prefetch: bool = True
    decision_blocks: int = 4
    decision_blocks_min_chunks: int = 512
    output_group: int = 2
    bwd_stages: int = 2
    bwd_warps: int = 4
    bwd_start_ranges: int | None = None
    grouped_reads: bool | None = None
    launch_overrides: tuple = ()

    def __post_init__(self):
        if not (isinstance(self.carry_guess_depth, int) and 1 <= self.carry_guess_depth <= 64):
            raise ValueError(f"carry_guess_depth: expected an int from 1 to 64, got {self.carry_guess_depth!r}")
        if not (isinstance(self.deep_guess_share, (int, float)) and 0 <= self.deep_guess_share <= 1):
            raise ValueError(f"deep_guess_share: expected a number from 0 to 1, got {self.deep_guess_share!r}")
        if not (isinstance(self.deep_guess_min_chunks, int) and self.deep_guess_min_chunks >= 0):
            raise ValueError(f"deep_guess_min_chunks: expected an int >= 0, got {self.deep_guess_min_chunks!r}")
        if not (isinstance(self.decision_blocks, int) and 1 <= self.decision_blocks <= 64):
            raise ValueError(f"decision_blocks: expected an int from 1 to 64, got {self.decision_blocks!r}")
        if not (isinstance(self.decision_blocks_min_chunks, int) and self.decision_blocks_min_chunks >= 0):
            raise ValueError(f"decision_blocks_min_chunks: expected an int >= 0, got "
                             f"{self.decision_blocks_min_chunks!r}")
        for item in self.launch_overrides:  # a wrong entry would fail inside Triton's launcher, far from here
            ok = isinstance(item, tuple) and len(item) == 3 and item[0] in LAUNCH_KERNELS
            if not (ok and item[1] in LAUNCH_OPTIONS and isinstance(item[2], int) and item[2] > 0):
                raise ValueError(f"launch_overrides: expected (one of {LAUNCH_KERNELS}, one of {LAUNCH_OPTIONS}, a "
                                 f"positive int), got {item!r}")

    def launch(self, kernel, **options) -> dict:
        """A kernel's launch ``options`` with this object's ``launch_overrides`` for ``kernel`` (the ``triton.jit``
        function, or its name) applied."""
        kernel = kernel if isinstance(kernel, str) else kernel.__name__
        options.update({option: value for name, option, value in self.launch_overrides if name == kernel})
        return options


DEFAULT_SETTINGS = TritonSettings()
