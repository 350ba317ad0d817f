#!/usr/bin/env python
"""Check on the GPU that the pipelined carry-scan / merge-simulation mode (DLA_TRITON_PIPELINE=1: the
two sequential passes run concurrently, synchronised by per-(b, h) flags) gives bitwise the same results
as the serial mode, and that it does not hang (run it under `timeout`). Exit status 0 iff equal."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, workload  # noqa: E402

from dla_fast.triton_forward import forward_scalar_decay_triton as fwd  # noqa: E402

ok = True
for shape, wl in [((2, 4096, 16, 64, 64), "moderate"), ((2, 4096, 16, 64, 64), "dense"), ((1, 16384, 4, 128, 128), "sparse")]:
    q, k, v, g, w = workload(*shape, 30, **WORKLOADS[wl], seed=3)
    res = []
    for mode in ("0", "1"):
        os.environ["DLA_TRITON_PIPELINE"] = mode
        res.append(fwd(q, k, v, g, w, tau=0.6))
        torch.cuda.synchronize()
    a, b = res
    same = torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1])) and all(
        torch.equal(x, y) for x, y in zip(a[2], b[2]))
    print(shape, wl, "pipelined == serial:", same, flush=True)
    ok &= same
sys.exit(0 if ok else 1)
