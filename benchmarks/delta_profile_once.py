#!/usr/bin/env python
"""One delta-rule forward (or training step) through ``dla_fast.forward`` between ``torch.cuda.profiler`` start and
stop, after two warm-up calls: for ``ncu --profile-from-start off --kernel-name regex:NAME --launch-count 1``, which
then sees one launch of a kernel as a benchmark call runs it.

    ncu --profile-from-start off --kernel-name regex:dla_delta_states_kernel --launch-count 1 \\
        --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \\
        python3 benchmarks/delta_profile_once.py 2x16384x64:moderate [--backward] > walk.csv
    python3 benchmarks/ncu_source_summary.py walk.csv --top 30
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, configs_named, delta_inputs  # noqa: E402

import dla_fast  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cell", help="BxTxD:workload (gpu_bench's configs and workloads)")
    ap.add_argument("--backward", action="store_true", help="a training step (forward and backward)")
    args = ap.parse_args()
    name, workload = args.cell.split(":")
    x = delta_inputs(*configs_named(name)[0], WORKLOADS[workload])
    leaves = [t.detach().clone().requires_grad_(args.backward) for t in x]
    dO = torch.randn_like(x[2])

    def call():
        with torch.set_grad_enabled(args.backward):
            o = dla_fast.forward(*leaves[:5], tau=TAU, beta=leaves[5])[0]
            if args.backward:
                o.backward(dO)

    for _ in range(2):
        call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
