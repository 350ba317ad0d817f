#!/usr/bin/env python
"""The delta decisions' pair kernel (``dla_delta_pairs_kernel``) alone at several launch settings, on the arguments
of one block of chunks captured from ``decide_delta_rule_wy`` on a benchmark workload (``triton.testing.do_bench``
median over ``--reps`` ms each). Every setting's outputs are compared with the default's: the scores (the pair table's
upper triangle), ``y0T``, the paths, last starts and ratios.

    python benchmarks/delta_pairs_launch.py [--cell 2x16384x64:moderate] [--reps 20] [--out DIR]
    python benchmarks/delta_pairs_launch.py --once   # the default launch once, between profiler start and stop
                                                      # (for ncu --profile-from-start off)

Settings: ``G`` (starts scored at once), ``QW`` (tokens per block of the sums), ``maxnreg`` (registers a thread,
capped: more programs per SM against spills). H200, run 32 (docs/performance.md): ``G`` 2 before 8; a second start's
operands loaded ahead (tried, removed) and capped registers slower.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, bench_ms, configs_named, delta_inputs  # noqa: E402

from dla_fast.ops.delta_rule import chunk_fwd_decide_wy as wy  # noqa: E402

SETTINGS = [dict(), dict(G=1), dict(G=4), dict(G=8), dict(QW=8), dict(maxnreg=168), dict(maxnreg=128)]


def captured_launch(cfg, wname: str):
    """``(grid, args, options)`` of the pair kernel's first launch in one call of the chunked decisions."""
    B, T, H, Dk, Dv = cfg
    q, k, v, g, w, beta = delta_inputs(*cfg, WORKLOADS[wname])
    seen = []
    real = wy.dla_delta_pairs_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                if not seen:
                    seen.append((grid, [a.clone() if torch.is_tensor(a) else a for a in args], dict(kw)))
                return real[grid](*args, **kw)
            return launch

    wy.dla_delta_pairs_kernel = Spy()
    try:
        P = torch.zeros(B, H, Dk, Dv, device="cuda", dtype=torch.float64)
        wy.decide_delta_rule_wy(k, v, g, beta, open_states=P, size=torch.zeros(B, H, device="cuda", dtype=torch.int64),
                                tau=TAU, concurrent=False)
    finally:
        wy.dla_delta_pairs_kernel = real
    return seen[0]


def launch(grid, args, options, setting: dict):
    """One launch at ``setting``; returns the outputs it wrote (fresh copies of the output buffers)."""
    args = list(args)
    for i in range(9, 14):  # pair, y0T, path, last, low
        args[i] = torch.empty_like(args[i])
    kw = dict(options, G=setting.get("G", options["G"]), QW=setting.get("QW", options["QW"]))
    if "maxnreg" in setting:
        kw["maxnreg"] = setting["maxnreg"]
    wy.dla_delta_pairs_kernel[grid](*args, **kw)
    C = kw["C"]
    upper = torch.triu(torch.ones(C, C, dtype=torch.bool, device="cuda"), 1)
    return [args[9][..., upper]] + args[10:14]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x64:moderate")
    ap.add_argument("--reps", type=int, default=20, help="do_bench's rep, ms")
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    name, wname = args.cell.split(":")
    grid, kargs, options = captured_launch(configs_named(name)[0], wname)
    if args.once:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        launch(grid, kargs, options, {})
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        return
    ref = launch(grid, kargs, options, {})
    rows = []
    for setting in SETTINGS:
        row = dict(setting=setting)
        try:
            out = launch(grid, kargs, options, setting)
            row["equal"] = all(torch.equal(a, b) for a, b in zip(out, ref))
            row["scores_max_rel"] = float(((out[0] - ref[0]).abs() / ref[0].abs().clamp(min=1e-300)).max())
            row["ms"] = bench_ms(lambda: launch(grid, kargs, options, setting), rep=args.reps)
        except Exception as e:  # noqa: BLE001 (a setting that does not build)
            row["error"] = repr(e)[:300]
        rows.append(row)
        print(row, flush=True)
    card = torch.cuda.get_device_name()
    with open(os.path.join(args.out, f"delta_pairs_launch_{card.replace(' ', '_')}_{datetime.date.today()}.json"),
              "w") as f:
        json.dump(dict(card=card, cell=args.cell, grid=list(grid), rows=rows), f, indent=1)
    print(f"{card}, {datetime.date.today()}, {args.cell}: the pair kernel on one block of {grid[1]} chunks x {grid[0]} "
          f"rows (do_bench median over {args.reps} ms)")
    print("| setting | ms | outputs equal to the default's | scores max rel diff |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['setting'] or 'default'} | {r.get('ms', float('nan')):.3f} | {r.get('equal', r.get('error'))} | "
              f"{r.get('scores_max_rel', float('nan')):.1e} |")


if __name__ == "__main__":
    main()
