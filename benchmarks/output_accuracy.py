#!/usr/bin/env python
"""The bf16 forward's output error, this tree's and other revisions', against this tree's float32-input forward on the
same (bf16) values, in one process: whether a kernel change moved the output's accuracy.

    python benchmarks/output_accuracy.py CELLS [DIR ...]     # on the GPU; DIRs from forward_revision_ab.py --export

CELLS: ``BxTxD:workload,...`` (``gpu_bench``'s configs and workloads). Per cell and forward: whether its boundaries are
the float32 run's, and ``o``'s largest and RMS error over ``o``'s largest entry and RMS. Run 44 measured the output
kernel's reads scaled after their products with it (docs/benchmarks.md "Run 44", call 2).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward_revision_ab import flat, forwards  # noqa: E402
from gpu_bench import K_SLOTS, TAU, WORKLOADS, configs_named, workload  # noqa: E402

STARTS = 6  # the trace's boundaries in flat()'s list


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    fns = forwards(sys.argv[2:])
    for cell in sys.argv[1].split(","):
        cname, wname = cell.split(":")
        B, T, H, Dk, Dv = configs_named(cname)[0]
        x = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)
        with torch.no_grad():
            ref = flat(fns["this"](*[t.float() for t in x], tau=TAU))
            o_ref = ref[0].double()
            for name, fn in fns.items():
                out = flat(fn(*x, tau=TAU))
                err = out[0].double() - o_ref
                print(f"{cell} {name}: starts equal to fp32's {bool(torch.equal(out[STARTS], ref[STARTS]))}; "
                      f"max err / max|o| {float(err.abs().max() / o_ref.abs().max()):.3e}; "
                      f"rms err / rms o {float(err.pow(2).mean().sqrt() / o_ref.pow(2).mean().sqrt()):.3e}", flush=True)


if __name__ == "__main__":
    main()
