#!/usr/bin/env python
"""How much of the scalar-decay forward's output stage could hide behind its decision stages: a probe, before any
kernel is built to pipeline them.

The forward runs its decisions (table, carry scan, merge simulation: sequential chains that leave SMs idle at few
rows, and at 128 rows one program per SM) and only then its output stage (start states, read scales, output kernel:
parallel over chunks). An output stage that followed the merge simulation chunk by chunk would overlap the two. Its
gain depends on how much the output's programs slow the chains down when they share the SMs, which this measures
without the pipeline: one call's decisions on the current stream beside the output stage of the same inputs (its
structure computed by an earlier call) on a second stream, so that both do exactly the forward's work.

Per cell, at the kernel entry (no final cache, no trace, no value checks; medians of ``bench_ms``):
- ``forward``: the forward as it is; ``decide``: the same with the output stage left out (the prefix states kept);
  ``output``: the output stage alone (its host synchronisation left out: the survivors are known);
- ``beside``: decide and output launched together; ``after_table``: the output waits for the table kernel (a
  pipelined output could not start before the first chunks are decided);
- ``hidden``: the share of ``output`` that ``after_table`` hides, ``(decide + output - after_table) / output``;
- ``output_grouped``, ``grouped_after_table``, ``hidden grouped``: the same with the old starts read by chunk
  (``TritonSettings.grouped_reads``), which needs no start states and so no host synchronisation to size them.

Not modelled: a pipelined output's programs would wait on flags (holding SM slots while they poll) and could not run
ahead of the merge simulation, so ``after_table`` is a bound on the gain, not a prediction of it.

    python benchmarks/output_overlap_probe.py 8x4096x64:moderate,2x16384x64:moderate [--out DIR]
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, bench_ms, cells_main, configs_named, ms_text, workload  # noqa: E402


@contextmanager
def patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def decisions_only(q, k, v, g, w, entry: dict):
    """A callable: the forward at its kernel entry with ``entry``'s keywords, its output stage left out (the prefix
    states kept)."""
    from dla_fast.ops.scalar_decay import chunk_fwd

    def decide():
        with patched(chunk_fwd, "_output", lambda *a, **kw: None):
            chunk_fwd.forward_scalar_decay_triton(q, k, v, g, w, **entry)

    return decide


def stage_calls(q, k, v, g, w, entry: dict) -> tuple:
    """``(o, calls)``: the forward's ``o`` for these inputs and ``calls``, callables on the current stream:
    ``forward`` (the forward at its kernel entry with ``entry``'s keywords), ``decide`` (the same with the output stage
    left out), ``output`` (the output stage alone on the structure of the first call, its survivors known: no host
    synchronisation; returns its ``o``, bitwise the forward's) and ``output_grouped`` (the same with the old starts
    read by chunk, ``TritonSettings.grouped_reads``: no start states, so no count to size them by)."""
    import dataclasses

    import torch

    from dla_fast.ops.scalar_decay import chunk_fwd
    from dla_fast.ops.scalar_decay.chunk_fwd_states import prefix_states
    from dla_fast.settings import DEFAULT_SETTINGS

    fwd = chunk_fwd.forward_scalar_decay_triton
    cfg = chunk_fwd.launch_config(q, v, w)
    o, _, _, s = fwd(q, k, v, g, w, **entry)
    hs, gs = prefix_states(k, v, g, torch.zeros(cfg.BH, cfg.Dk, cfg.Dv, device=q.device), split=cfg.split,
                           prec=cfg.prec)
    survivors = s.survivors

    def known_survivors(masks, death, T, readback=None, meanwhile=None):
        if meanwhile is not None:
            meanwhile()
        return survivors, [0]  # no value check flagged

    def output(settings=DEFAULT_SETTINGS):
        with patched(chunk_fwd, "surviving_starts", known_survivors):
            return chunk_fwd._output(cfg, q, k, v, g, w, s, hs, gs, None, settings, readback=None)

    grouped = dataclasses.replace(DEFAULT_SETTINGS, grouped_reads=True)
    return o, dict(forward=lambda: fwd(q, k, v, g, w, **entry), decide=decisions_only(q, k, v, g, w, entry),
                   output=output,
                   output_grouped=lambda: output(grouped))


def probe_cell(cell: str) -> list[str]:
    import torch

    from dla_fast.ops.scalar_decay import chunk_fwd

    cname, wname = cell.split(":")
    B, T, H, Dk, Dv = configs_named(cname)[0]
    x = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)
    with torch.no_grad():
        o_ref, calls = stage_calls(*x, dict(tau=TAU, final_cache=False, trace=False))
        side = torch.cuda.Stream()
        table_done = []
        score_tables = chunk_fwd._score_tables

        def marking_tables(*a, **kw):
            tables, launch = score_tables(*a, **kw)

            def launch_and_mark():
                launch()
                table_done.append(torch.cuda.current_stream().record_event())
            return tables, launch_and_mark

        def together(wait_for_table: bool, output: str = "output"):
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            table_done.clear()
            with patched(chunk_fwd, "_score_tables", marking_tables):
                calls["decide"]()
            with torch.cuda.stream(side):
                if wait_for_table:
                    side.wait_event(table_done[0])
                calls[output]()
            main.wait_stream(side)

        same = bool(torch.equal(calls["output"](), o_ref))
        ms = {name: bench_ms(calls[name]) for name in ("forward", "decide", "output", "output_grouped")}
        ms["beside"] = bench_ms(lambda: together(False))
        ms["after_table"] = bench_ms(lambda: together(True))
        ms["grouped_after_table"] = bench_ms(lambda: together(True, "output_grouped"))
    hidden = (ms["decide"] + ms["output"] - ms["after_table"]) / ms["output"]
    hidden_grouped = (ms["decide"] + ms["output_grouped"] - ms["grouped_after_table"]) / ms["output_grouped"]
    return [f"== {cell} (the output stage alone gives the forward's o bitwise: {same})",
            f"  {ms_text(ms)}; hidden {100 * hidden:.0f} %, grouped "
            f"{100 * hidden_grouped:.0f} %"]


def main():
    cells_main("output_overlap_probe", lambda _: f"the output stage beside the decisions (kernel entry, tau {TAU}, K "
               f"{K_SLOTS}, medians)", probe_cell, rounds=False)


if __name__ == "__main__":
    main()
