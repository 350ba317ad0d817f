#!/usr/bin/env python
"""The delta rule's chunked decisions with their block rows (float64 chunk-major keys, values, transposed values,
``|k|^2``) made by one kernel a block (``decide_delta_rule_wy(rows="kernel")``, the default since run 46) against
the torch copies (``rows="torch"``), in one process: forward time through ``dla_fast.forward`` in alternating rounds,
peak memory above what was allocated before the call, and whether outputs, scores and starts are bitwise equal (|k|^2
sums in another order: equal bits are likely, not required).

    python benchmarks/delta_block_rows_ab.py [CELLS] [--rounds 3]     # CELLS default 2x16384x64:moderate
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, alternating_ms, configs_named, delta_inputs, medians_text, peak_gib_and_ms  # noqa: E402,E501

import dla_fast  # noqa: E402
from dla_fast.ops.delta_rule import chunk_fwd  # noqa: E402

DECIDE = chunk_fwd.decide_delta_rule_wy
VARIANTS = ("torch", "kernel")


def forward(x, rows: str):
    chunk_fwd.decide_delta_rule_wy = functools.partial(DECIDE, rows=rows)
    with torch.no_grad():
        return dla_fast.forward(*x[:5], tau=TAU, beta=x[5], output_final_cache=True, return_trace=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", nargs="?", default="2x16384x64:moderate")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_block_rows_ab.py: needs a CUDA GPU")
    try:
        for spec in args.cells.split(","):
            name, wname = spec.split(":")
            x = delta_inputs(*configs_named(name)[0], WORKLOADS[wname])
            peak = {}
            for v in VARIANTS:  # each measured with nothing of the other's alive
                forward(x, v)
                peak[v], _ = peak_gib_and_ms(lambda v=v: forward(x, v))
            out = {v: forward(x, v) for v in VARIANTS}
            times = alternating_ms({v: lambda v=v: forward(x, v) for v in VARIANTS}, args.rounds)
            a, b = out["kernel"], out["torch"]
            same = (torch.equal(a[0], b[0]) and torch.equal(a[1].states, b[1].states)
                    and torch.equal(a[2].scores, b[2].scores) and torch.equal(a[2].starts, b[2].starts))
            peaks = ", ".join(f"{v} {gib:.2f} GiB" for v, gib in peak.items())
            print(f"{torch.cuda.get_device_name()}, {spec}: {medians_text(times)}; peak {peaks}; bitwise equal: "
                  f"{same}", flush=True)
    finally:
        chunk_fwd.decide_delta_rule_wy = DECIDE


if __name__ == "__main__":
    main()
