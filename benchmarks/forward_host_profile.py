#!/usr/bin/env python
"""Where the host's time goes in one scalar-decay Triton forward on a GPU (cProfile), through ``dla_fast.forward``
and at the kernel entry, beside the wall time per call.

A forward whose host work per call (torch ops, Triton launches) exceeds its GPU time is host-bound: the wall time
then follows the host, and the GPU idles between kernels (``forward_timeline.py`` shows the gaps). Run 20
(docs/benchmarks.md) found the API's value checks and the glue around the kernels there.

    python benchmarks/forward_host_profile.py --out DIR [--configs 2x16384,8x4096] [--workload moderate]

Prints the wall time per call (20 calls after 3 warm-up calls, synchronised at the end) and the functions with the
most own time; writes ``host_profile_<path>_<config>.txt`` (own time and cumulative time) under DIR. cProfile slows
Python-heavy code down: compare its rows with each other, and the wall times only without it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, api_forward, configs_named, fwd, workload  # noqa: E402

CALLS = 20


def wall_ms(fn) -> float:
    """Wall time per call over CALLS back-to-back calls (after warm-up), synchronised once at the end."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / CALLS * 1e3


def profiled(fn) -> tuple[str, str]:
    """cProfile's tables (own time, cumulative time) over CALLS calls."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    own, cumulative = io.StringIO(), io.StringIO()
    pstats.Stats(prof, stream=own).sort_stats("tottime").print_stats(45)
    pstats.Stats(prof, stream=cumulative).sort_stats("cumulative").print_stats(60)
    return own.getvalue(), cumulative.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--configs", default="2x16384,8x4096x64", help="BxT or BxTxD of gpu_bench's configs")
    ap.add_argument("--workload", default="moderate", choices=list(WORKLOADS))
    args = ap.parse_args()
    for cfg in configs_named(args.configs):
        q, k, v, g, w = workload(*cfg, K_SLOTS, **WORKLOADS[args.workload], seed=11)
        paths = {"api": lambda: api_forward(q, k, v, g, w), "entry": lambda: fwd(q, k, v, g, w, tau=TAU)}
        for name, fn in paths.items():
            with torch.no_grad():
                ms = wall_ms(fn)
                own, cumulative = profiled(fn)
            stem = f"host_profile_{name}_{'x'.join(map(str, cfg))}"
            with open(os.path.join(args.out, stem + ".txt"), "w") as f:
                f.write(f"{cfg} {args.workload} {name}: wall {ms:.3f} ms per call\n{own}{cumulative}")
            print(f"== {cfg} {args.workload} {name}: wall {ms:.3f} ms per call")
            print("\n".join(own.splitlines()[:30]))


if __name__ == "__main__":
    main()
