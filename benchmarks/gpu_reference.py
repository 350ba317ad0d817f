#!/usr/bin/env python
"""Precompute (on a CPU) the float64 dla_ref results that gpu_bench.py compares the Triton forward with at
T = 65,536: inputs from ``gpu_bench.workload`` on the CPU generator (seeded, then rounded to the dtype),
outputs saved to ``.gpuref/ref_T65536_<dtype>.npz`` (scores, decisions, merges, the final cache and o at
every 8th token). About a minute of CPU per (dtype, head).

    python benchmarks/gpu_reference.py float32|bfloat16
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpu_bench import TAU, WORKLOADS, workload  # noqa: E402

import dla_ref  # noqa: E402

SHAPE = (1, 65536, 2, 64, 64, 30)
SEED = 7


def main(dname):
    dt = getattr(torch, dname)
    q, k, v, g, w = workload(*SHAPE, **WORKLOADS["moderate"], device="cpu", seed=SEED, dtype=dt, random_weights=True)
    o, c, tr = dla_ref.forward(*(x.double().numpy() for x in (q, k, v, g, w)), tau=TAU)
    idx = np.arange(0, SHAPE[1], 8)
    meta = dict(shape=SHAPE, seed=SEED, workload=WORKLOADS["moderate"], tau=TAU,
                checksum=[float(x.double().sum()) for x in (q, k, v, g, w)])
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".gpuref")
    os.makedirs(root, exist_ok=True)
    np.savez_compressed(os.path.join(root, f"ref_T65536_{dname}.npz"), meta=json.dumps(meta), o_idx=idx,
                        o_sub=o[:, idx].astype(np.float32), scores=tr.scores, starts=tr.starts, merged=tr.merged,
                        states=c.states, counts=c.counts, info=c.info, size=c.size)
    print(dname, "rate", tr.starts.mean(), "merges", (tr.merged >= 0).sum())


if __name__ == "__main__":
    main(sys.argv[1])
