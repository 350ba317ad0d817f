#!/usr/bin/env python
"""The delta rule's forward with its slot walk one, two or four chunks a step (``chunk_fwd.forward_delta_rule_triton
(walk_steps=)``, run 50: ``chunk_fwd_steps`` composes each pair of steps' tables), with or without the walk's early
loads (``chunk_fwd.EARLY_LOADS``), in one process: forward time through ``dla_fast.forward`` in alternating rounds,
each variant's walk kernels by GPU time (CUPTI, one call) and the host's time a call (``host_ms``), and how far its
outputs and final cache states lie from the first variant's (relative to the largest entry; 0 where only the loads
differ; where the steps differ, the reads' tf32 rounding of 16-bit inputs, then the outputs' own rounding: run 51
measured 2.4e-3 to 5.5e-3 in bf16 outputs). Runs 50-51 measured reads in a kernel apart from the walk too (slower:
removed, docs/performance.md "Run 51").

    python benchmarks/delta_walk_steps_ab.py [CELLS] [--variants 1,1e,2e,4e] [--rounds 3]

CELLS default ``2x16384x64:moderate``; a variant is the chunks a step, ``e`` for the early loads, ``p`` for the state
products in one tf32 pass (``chunk_fwd.ONE_PASS_WALK_16BIT``), and optionally ``@BVxWARPSxSTAGES[xMAXNREG]``, the walk
kernel's launch (``2e@2x4x1x168``: Dv blocks of 2, capped at 168 registers).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delta_forward_kernels import kernels_of_one_call  # noqa: E402
from gpu_bench import TAU, WORKLOADS, alternating_ms, configs_named, delta_inputs, medians_text  # noqa: E402

import dla_fast  # noqa: E402
from dla_fast.ops.delta_rule import chunk_fwd  # noqa: E402

FORWARD = chunk_fwd.forward_delta_rule_triton
DEFAULTS = (chunk_fwd.EARLY_LOADS, chunk_fwd.ONE_PASS_WALK_16BIT)
# The kernels whose time the walk steps move (the rest of the forward does not depend on them).
WALK_KERNELS = ("dla_delta_states_kernel", "dla_delta_pair_steps_kernel")


def forward(x, variant: str):
    steps, _, launch = variant.partition("@")
    walk_launch = tuple(int(f) for f in launch.split("x")) if launch else None
    chunk_fwd.forward_delta_rule_triton = functools.partial(FORWARD, walk_steps=int(steps.strip("ep")),
                                                            walk_launch=walk_launch)
    chunk_fwd.EARLY_LOADS = "e" in steps
    chunk_fwd.ONE_PASS_WALK_16BIT = "p" in steps
    with torch.no_grad():
        return dla_fast.forward(*x[:5], tau=TAU, beta=x[5], output_final_cache=True)


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30))


def walk_kernel_ms(x, variant: str) -> str:
    found = kernels_of_one_call(lambda: forward(x, variant))
    ms = {name: sum(e - s for n, _, s, e in found if n.startswith(name)) / 1e3 for name in WALK_KERNELS}
    return " + ".join(f"{n} {t:.3f}" for n, t in ms.items()) + " ms"


def host_ms(x, variant: str, calls: int = 3) -> float:
    """Milliseconds a call takes to return to the host, the GPU idle before the first (no synchronisation after):
    near the GPU time, the forward waits on the host or synchronises (run 51's open question: call 4's (2, 16384)
    cell, slower at two chunks a step although its walk kernels were faster)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        forward(x, variant)
    took = (time.perf_counter() - start) / calls * 1e3
    torch.cuda.synchronize()
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", nargs="?", default="2x16384x64:moderate")
    ap.add_argument("--variants", default="1,1e,2e,4e")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_walk_steps_ab.py: needs a CUDA GPU")
    variants = args.variants.split(",")
    try:
        for spec in args.cells.split(","):
            name, wname = spec.split(":")
            x = delta_inputs(*configs_named(name)[0], WORKLOADS[wname])
            out = {v: forward(x, v) for v in variants}
            ref_o, ref_cache = out[variants[0]][:2]
            for v in variants:
                o, cache = out[v][:2]
                print(f"{spec} {v}: o {relative_gap(o, ref_o):.1e}, states "
                      f"{relative_gap(cache.states, ref_cache.states):.1e} from {variants[0]}; kernels "
                      f"{walk_kernel_ms(x, v)}; host {host_ms(x, v):.2f} ms a call", flush=True)
            times = alternating_ms({v: lambda v=v: forward(x, v) for v in variants}, args.rounds)
            print(f"{torch.cuda.get_device_name()}, {spec}: {medians_text(times)}", flush=True)
    finally:
        chunk_fwd.forward_delta_rule_triton = FORWARD
        chunk_fwd.EARLY_LOADS, chunk_fwd.ONE_PASS_WALK_16BIT = DEFAULTS


if __name__ == "__main__":
    main()
