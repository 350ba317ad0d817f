#!/usr/bin/env python
"""The delta rule's forward with its slot walk one, two or four chunks a step (``chunk_fwd.forward_delta_rule_triton
(walk_steps=)``, run 50: ``chunk_fwd_steps`` composes each pair of steps' tables), in one process: forward time
through ``dla_fast.forward`` in alternating rounds, each variant's kernels by GPU time (CUPTI, one call), and how far
its outputs and final slot states lie from the one-chunk walk's (relative to the largest entry; float32 rounding,
~1e-6, is the expectation, the suite's bound 1e-5).

    python benchmarks/delta_walk_steps_ab.py [CELLS] [--steps 1,2,4] [--rounds 3]   # CELLS default 2x16384x64:moderate
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delta_forward_kernels import kernels_of_one_call  # noqa: E402
from gpu_bench import TAU, WORKLOADS, alternating_ms, configs_named, delta_inputs, medians_text  # noqa: E402

import dla_fast  # noqa: E402
from dla_fast.ops.delta_rule import chunk_fwd  # noqa: E402

FORWARD = chunk_fwd.forward_delta_rule_triton
# The kernels whose time the walk steps move (the rest of the forward does not depend on them).
WALK_KERNELS = ("dla_delta_states_kernel", "dla_delta_pair_steps_kernel")


def forward(x, steps: int):
    chunk_fwd.forward_delta_rule_triton = functools.partial(FORWARD, walk_steps=steps)
    with torch.no_grad():
        return dla_fast.forward(*x[:5], tau=TAU, beta=x[5], output_final_cache=True)


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30))


def walk_kernel_ms(x, steps: int) -> str:
    found = kernels_of_one_call(lambda: forward(x, steps))
    ms = {name: sum(e - s for n, _, s, e in found if n.startswith(name)) / 1e3 for name in WALK_KERNELS}
    return " + ".join(f"{n} {t:.3f}" for n, t in ms.items()) + " ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", nargs="?", default="2x16384x64:moderate")
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_walk_steps_ab.py: needs a CUDA GPU")
    steps = [int(s) for s in args.steps.split(",")]
    try:
        for spec in args.cells.split(","):
            name, wname = spec.split(":")
            x = delta_inputs(*configs_named(name)[0], WORKLOADS[wname])
            out = {s: forward(x, s) for s in steps}
            ref_o, ref_cache = out[steps[0]][:2]
            for s in steps:
                o, cache = out[s][:2]
                print(f"{spec} steps {s}: o {relative_gap(o, ref_o):.1e}, states "
                      f"{relative_gap(cache.states, ref_cache.states):.1e} from steps {steps[0]}; kernels "
                      f"{walk_kernel_ms(x, s)}", flush=True)
            times = alternating_ms({f"steps {s}": lambda s=s: forward(x, s) for s in steps}, args.rounds)
            print(f"{torch.cuda.get_device_name()}, {spec}: {medians_text(times)}", flush=True)
    finally:
        chunk_fwd.forward_delta_rule_triton = FORWARD


if __name__ == "__main__":
    main()
