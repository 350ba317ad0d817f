#!/usr/bin/env python
"""Check on the GPU that the pipelined carry-scan / merge-simulation mode (``TritonSettings(pipeline=True)``: the
two sequential passes run concurrently, synchronised by per-(b, h) flags) gives bitwise the same results
as the serial mode, and that it does not hang (run it under `timeout`). Exit status 0 iff equal."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, workload  # noqa: E402

from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton  # noqa: E402
from dla_fast.settings import TritonSettings  # noqa: E402

ok = True
CASES = [((2, 4096, 16, 64, 64), "moderate"), ((2, 4096, 16, 64, 64), "dense"), ((1, 16384, 4, 128, 128), "sparse")]
for shape, wl in CASES:
    q, k, v, g, w = workload(*shape, 30, **WORKLOADS[wl], seed=3)
    res = []
    for pipeline in (False, True):
        res.append(forward_scalar_decay_triton(q, k, v, g, w, tau=0.6, settings=TritonSettings(pipeline=pipeline)))
        torch.cuda.synchronize()
    a, b = res
    same = torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1])) and all(
        torch.equal(x, y) for x, y in zip(a[2], b[2]))
    print(shape, wl, "pipelined == serial:", same, flush=True)
    ok &= same
sys.exit(0 if ok else 1)
