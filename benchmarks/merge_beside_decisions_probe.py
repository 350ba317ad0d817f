#!/usr/bin/env python
"""How much the merge simulation slows down beside the decisions' parallel kernels: a probe, before the merge
simulation is made to start with the call (docs/performance.md, run 52, "the merge simulation from the first chunk").

At few rows the forward's chain is table kernel -> guess kernel -> merge simulation (one warp a row, sequential over
chunks) -> output stage. A merge simulation that followed the table and guess kernels chunk by chunk would overlap
them, and its gain depends on how much their programs slow its one warp per row down when they share the SMs (run 20
saw a merge chunk take 4.2 us beside the table kernel against 1.7 alone). This measures that without building the
pipeline: the merge kernel on an earlier call's decisions (not pipelined: its masks and scores are final, nothing
to wait for) alone, and beside one call's decisions (table, guesses, carry walk and that call's own merge
simulation) started at the same time on another stream.

Per cell, at the kernel entry (medians of ``bench_ms``; the merge kernel's own time from CUDA events on its stream):
- ``merge``: the merge kernel alone; ``decide``: the forward's decision stages alone (its output stage left out);
- ``merge beside``: the merge kernel while ``decide`` runs beside it, and ``both``: the wall time of the two;
- ``slowdown``: ``merge beside / merge``; a merge simulation started with the call would run at about that speed
  while the table and guess kernels run, then at its own.

    python benchmarks/merge_beside_decisions_probe.py 1x65536x64:moderate,2x16384x64:moderate [--out DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, bench_ms, cells_main, configs_named, ms_text, workload  # noqa: E402
from output_overlap_probe import decisions_only  # noqa: E402


def probe_calls(q, k, v, g, w) -> dict:
    """Callables on the current stream for these inputs: ``merge`` (the merge kernel, not pipelined, on the structure
    of a first forward, each call from the empty cache again; returns the structure) and ``decide`` (the forward's
    decision stages at its kernel entry, the output stage left out), with ``structure``, the first forward's."""
    import torch

    from dla_fast.ops.scalar_decay import chunk_fwd

    entry = dict(tau=TAU, final_cache=False, trace=False)
    structure = chunk_fwd.forward_scalar_decay_triton(q, k, v, g, w, **entry)[3]
    cfg = chunk_fwd.launch_config(q, v, w)
    rows = torch.full((cfg.BH,), cfg.T, device=q.device, dtype=torch.int32)
    unused = structure.masks  # the pipelined mode's tables and flags: not read without it
    closing = chunk_fwd.closing_tables(cfg, structure.masks, structure.scores, rows)  # made once: the kernel alone

    def merge():
        counts = torch.zeros(cfg.BH, cfg.K, device=q.device, dtype=torch.int64)
        info = torch.zeros(cfg.BH, cfg.K, device=q.device, dtype=torch.float64)
        size = torch.zeros(cfg.BH, device=q.device, dtype=torch.int64)
        return chunk_fwd.merge_simulation(cfg, structure.masks, structure.scores, rows, unused, unused, counts, info,
                                          size, unused, pipeline=False, tables=closing)

    return dict(merge=merge, decide=decisions_only(q, k, v, g, w, entry), structure=structure)


def probe_cell(cell: str) -> list[str]:
    import torch

    cname, wname = cell.split(":")
    B, T, H, Dk, Dv = configs_named(cname)[0]
    x = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)
    with torch.no_grad():
        calls = probe_calls(*x)
        again = calls["merge"]()
        same = all(torch.equal(getattr(again, n), getattr(calls["structure"], n))
                   for n in ("death", "merged", "live", "livem", "counts", "info"))
        side = torch.cuda.Stream()
        spans = []

        def both():
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                calls["merge"]()
                end.record()
            calls["decide"]()
            main.wait_stream(side)
            spans.append((start, end))

        ms = {name: bench_ms(calls[name]) for name in ("merge", "decide")}
        ms["both"] = bench_ms(both)
        torch.cuda.synchronize()
        beside = sorted(s.elapsed_time(e) for s, e in spans[-50:])
        ms["merge beside"] = beside[len(beside) // 2]
    return [f"== {cell} (the merge kernel alone gives the forward's structure bitwise: {same})",
            f"  {ms_text(ms)}; slowdown {ms['merge beside'] / ms['merge']:.2f}x"]


def main():
    cells_main("merge_beside_decisions_probe", lambda _: f"the merge kernel beside the decisions (kernel entry, tau "
               f"{TAU}, K {K_SLOTS}, medians)", probe_cell, rounds=False)


if __name__ == "__main__":
    main()
