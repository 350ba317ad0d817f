#!/usr/bin/env python
"""How the live slot starts at each chunk start spread over chunks (CPU, issue #11's dense peak memory).

The output stage reads every live old start's prefix state, materialised per surviving start (``bst``, one
``Dk x Dv`` each: the largest part of the dense cells' peak memory, docs/benchmarks.md run 37). The live starts
that lie in one earlier chunk c' could instead be read together through that chunk's start state ``H(c')`` and its
keys and values: one ``q^T H`` product and one masked intra-chunk attention per old chunk (three ``C x 64 x 64``
products) in place of one product per start. This counts, on ``gpu_bench``'s three workloads (T = 4096, 4 heads,
64 features, K = 30, tau = 0.6, float32 on the CPU), the live old starts at each chunk start, the chunks they lie
in, the surviving starts per (row, chunk), and the read FLOPs of the grouped form over the per-start one.

    python benchmarks/live_start_groups.py        # ~10 s
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, workload  # noqa: E402

import dla_fast  # noqa: E402

C = 64


def live_lists(starts, merged, K: int):
    """Per chunk start (after the first), the live slot starts before it, from a row's trace (``starts [T]``,
    ``merged [T]``): a new slot with a full cache first merges pair ``merged`` (its right start dies)."""
    live, out = [], []
    for t in range(len(starts)):
        if t % C == 0 and t > 0:
            out.append(list(live))
        if starts[t]:
            if len(live) == K:
                del live[int(merged[t]) + 1]
            live.append(t)
    return out


def main():
    for wname in WORKLOADS:
        q, k, v, g, w = workload(1, 4096, 4, 64, 64, K_SLOTS, **WORKLOADS[wname], seed=11, device="cpu",
                                 dtype=torch.float32)
        _, _, trace = dla_fast.forward(q, k, v, g, w, tau=TAU, return_trace=True)
        lives, groups, survivors = [], [], 0
        for h in range(q.shape[2]):
            lists = live_lists(trace.starts[0, :, h].tolist(), trace.merged[0, :, h].tolist(), K_SLOTS)
            lives += [len(x) for x in lists]
            groups += [len({a // C for a in x}) for x in lists]
            survivors += len({a for x in lists for a in x})
        live, chunks = statistics.mean(lives), statistics.mean(groups)
        print(f"{wname:9s} rate {float(trace.starts.float().mean()):.3f}: live old starts at a chunk start "
              f"{live:5.1f} in {chunks:4.1f} chunks ({live / chunks:3.1f} a chunk); surviving starts per (row, chunk) "
              f"{survivors / len(lives):3.1f}; read FLOPs grouped / per start {3 * chunks / live:.2f}")


if __name__ == "__main__":
    main()
