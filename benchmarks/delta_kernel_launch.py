#!/usr/bin/env python
"""One of the delta decisions' parallel kernels alone at several launch settings, on the arguments of its first
launch captured from ``decide_delta_rule_wy`` on a benchmark workload (``triton.testing.do_bench`` median over
``--reps`` ms each). Every setting's outputs are compared with the default's.

    python benchmarks/delta_kernel_launch.py [--kernel pairs|guess] [--cell 2x16384x64:moderate] [--reps 20]
        [--out DIR]
    python benchmarks/delta_kernel_launch.py --once   # the default launch once, between profiler start and stop
                                                       # (for ncu --profile-from-start off)

``pairs`` (``dla_delta_pair_scores_kernel``, which writes in place over its inputs: each setting starts from the
captured sums; outputs: the scores up to each start's next boundary, the pair table's only entries its readers read,
and the starts' next boundaries and ratios): ``G`` and ``PW`` (starts and tokens scored at once; the grid takes ``C /
G`` groups), ``maxnreg`` (registers a thread, capped: more programs per SM against spills). H200, run 32
(docs/performance.md), the single pair kernel of then: ``G`` 2 before 8 (whole rows, ``PW = C``); a second start's
operands loaded ahead (tried, removed) and capped registers slower. H100, run 72: shapes of four scores a lane within
one launch's noise of each other (15-25 % between calls): compare shapes through the forward's alternating rounds.

``guess`` (``dla_delta_guess_kernel``; outputs: the guessed slots, first boundaries, checks and the chunks'
decisions): warps, loads in flight, capped registers (these change no arithmetic: the chain must compute the same
bits; warps could, hence the comparison).
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

KERNELS = {  # name: (kernel attribute, its output arguments' indices, settings)
    "pairs": ("dla_delta_pair_scores_kernel", (3, 4),
              [dict(), dict(G=8, PW=16), dict(G=32, PW=4), dict(G=2, PW=64), dict(maxnreg=168)]),
    "guess": ("dla_delta_guess_kernel", range(16, 23),
              [dict(), dict(maxnreg=168), dict(maxnreg=128), dict(num_warps=4), dict(STAGES=1),
               dict(STAGES=1, maxnreg=168)]),
}


def captured_launch(kernel: str, cfg, wname: str):
    """``(grid, args, options)`` of the kernel's first launch in one call of the chunked decisions."""
    B, T, H, Dk, Dv = cfg
    q, k, v, g, w, beta = delta_inputs(*cfg, WORKLOADS[wname])
    seen = []
    attr = KERNELS[kernel][0]
    real = getattr(wy, attr)

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                if not seen:
                    seen.append((grid, [a.clone() if torch.is_tensor(a) else a for a in args], dict(kw)))
                return real[grid](*args, **kw)
            return launch

    setattr(wy, attr, Spy())
    try:
        P = torch.zeros(B, H, Dk, Dv, device="cuda", dtype=torch.float64)
        wy.decide_delta_rule_wy(k, v, g, beta, open_states=P, size=torch.zeros(B, H, device="cuda", dtype=torch.int64),
                                tau=TAU, concurrent=False)
    finally:
        setattr(wy, attr, real)
    return seen[0]


def launch(kernel: str, grid, args, options, setting: dict):
    """One launch at ``setting``; returns the outputs it wrote (fresh zeroed output buffers; for ``pairs``, copies of
    the captured pair table and scratch rows, which it reads and writes in place)."""
    attr, outputs, _ = KERNELS[kernel]
    args = list(args)
    for i in outputs:
        args[i] = args[i].clone() if kernel == "pairs" else torch.zeros_like(args[i])
    merged = dict(options, **setting)
    if kernel == "pairs":
        grid = (*grid[:2], merged["C"] // merged["G"])
    getattr(wy, attr)[grid](*args, **merged)
    written = [args[i] for i in outputs]
    if kernel == "pairs":  # the scores read: (p, t) with p < t <= p's next boundary; the boundaries and ratios
        pair, vec = written
        nxt, low = vec[..., wy.NEXT_ROW, :], vec[..., wy.LOW_ROW, :]
        written = [pair[read_scores(nxt, merged["C"])], nxt, low]
    return written


def read_scores(nxt, C: int):
    """The pair table's entries its readers read: start p's scores up to its next boundary ``nxt [..., C]`` (C:
    none)."""
    e = torch.arange(C, device=nxt.device)
    return (e > e.unsqueeze(-1)) & (e <= nxt.unsqueeze(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="pairs", choices=sorted(KERNELS))
    ap.add_argument("--cell", default="2x16384x64:moderate")
    ap.add_argument("--reps", type=int, default=20, help="do_bench's rep, ms")
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    name, wname = args.cell.split(":")
    grid, kargs, options = captured_launch(args.kernel, configs_named(name)[0], wname)
    if args.once:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        launch(args.kernel, grid, kargs, options, {})
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        return
    ref = launch(args.kernel, grid, kargs, options, {})
    rows = []
    for setting in KERNELS[args.kernel][2]:
        row = dict(setting=setting)
        try:
            out = launch(args.kernel, grid, kargs, options, setting)
            row["equal"] = all(torch.equal(a, b) for a, b in zip(out, ref))
            row["first_max_rel"] = float(((out[0] - ref[0]).abs() / ref[0].abs().clamp(min=1e-300)).max())
            row["ms"] = bench_ms(lambda: launch(args.kernel, grid, kargs, options, setting), rep=args.reps)
        except Exception as e:  # noqa: BLE001 (a setting that does not build)
            row["error"] = repr(e)[:300]
        rows.append(row)
        print(row, flush=True)
    card = torch.cuda.get_device_name()
    stem = f"delta_{args.kernel}_launch_{card.replace(' ', '_')}_{datetime.date.today()}.json"
    with open(os.path.join(args.out, stem), "w") as f:
        json.dump(dict(card=card, kernel=args.kernel, cell=args.cell, grid=list(grid), rows=rows), f, indent=1)
    print(f"{card}, {datetime.date.today()}, {args.cell}: {KERNELS[args.kernel][0]} on one launch, grid {list(grid)} "
          f"(do_bench median over {args.reps} ms)")
    print("| setting | ms | outputs equal to the default's | first output's max rel diff |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['setting'] or 'default'} | {r.get('ms', float('nan')):.3f} | {r.get('equal', r.get('error'))} | "
              f"{r.get('first_max_rel', float('nan')):.1e} |")


if __name__ == "__main__":
    main()
