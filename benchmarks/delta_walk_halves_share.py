#!/usr/bin/env python
"""How often the delta slot walk in halves (``chunk_fwd_states.HALVES``, run 70) takes its lower half's token
product: the share of sub-chunks (64 tokens; steps of two chunks) with a token whose slot at the step's end lies
below ``KP / 2`` (16 at K = 30), on ``gpu_bench``'s delta workloads, from the CPU forward's trace (starts and merged
pairs). CPU only.

    python benchmarks/delta_walk_halves_share.py [--T 16384] [--heads 2]

Run 70 (T = 16384, two heads): the lower product in 8.8 % of the sparse, 2.3 % of the moderate and 8.8 % of the dense
sub-chunks (the dense cache's merges keep its newest tokens in its newest slots).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, delta_inputs  # noqa: E402

import dla_fast  # noqa: E402


def lower_shares(starts: np.ndarray, merged: np.ndarray, K: int, half: int, step: int, sub: int) -> tuple[int, int]:
    """Of one row's ``starts [T]`` (bool) and ``merged [T]`` (the pair fused before a start, where the cache was
    full), ``(sub-chunks that reach slots below half, sub-chunks)`` with the walk's steps of ``step`` tokens and
    sub-chunks of ``sub``: the slots replayed token by token, each step's tokens' slots read at its end."""
    slots, lower, total = [], 0, 0
    T = len(starts)
    for t in range(T):
        if starts[t] or not slots:
            if len(slots) == K:
                i = int(merged[t])
                slots[i:i + 2] = [slots[i] + slots[i + 1]]
            slots.append([t])
        else:
            slots[-1].append(t)
        if (t + 1) % step and t < T - 1:
            continue
        first = t // step * step
        where = {tok: j for j, s in enumerate(slots) for tok in s if tok >= first}
        for a in range(first, t + 1, sub):
            lower += min(where[tok] for tok in range(a, min(a + sub, t + 1))) < half
            total += 1
    return lower, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=2)
    args = ap.parse_args()
    K, D = 30, 64
    for name, wl in WORKLOADS.items():
        x = delta_inputs(1, args.T, args.heads, D, D, wl, device="cpu")
        trace = dla_fast.forward(*x[:5], tau=TAU, beta=x[5], return_trace=True)[-1]
        starts, merged = (np.asarray(a.cpu()) for a in (trace.starts, trace.merged))
        counts = [lower_shares(starts[0, :, h], merged[0, :, h], K, 16, 128, 64) for h in range(args.heads)]
        lower, total = (sum(c) for c in zip(*counts))
        print(f"{name}: starts {starts.mean():.4f} a token; the lower half's product in {lower} of {total} "
              f"sub-chunks ({lower / total:.1%})", flush=True)


if __name__ == "__main__":
    main()
