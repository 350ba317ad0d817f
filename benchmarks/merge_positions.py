#!/usr/bin/env python
"""Where the merge simulation's events fall: the share of merges whose pair is among the last W pairs of the cache.

    python benchmarks/merge_positions.py [--T 4096] [--H 4]

Pair K - 2 joins the newest closed slot and the slot a boundary is closing; pair 0 the two oldest slots. Each of
``gpu_bench``'s workloads (B = 1, Dk = Dv = 64, K = 30, tau = 0.6) goes through ``dla_fast.forward`` on the CPU in
float32, and the trace's merged pairs are counted. A design that treats the events at the cache's tail apart from the
others (docs/performance.md, "Run 63") pays in proportion to these shares.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, workload  # noqa: E402

import dla_fast  # noqa: E402

WINDOWS = (1, 2, 3, 4, 6, 8)


def merge_shares(wname: str, T: int, H: int) -> tuple[int, dict, float]:
    """``(events, {W: share of events among the last W pairs}, share at pair 0)`` for workload ``wname``."""
    q, k, v, g, w = workload(1, T, H, 64, 64, K_SLOTS, **WORKLOADS[wname], device="cpu", seed=11, dtype=torch.float32)
    trace = dla_fast.forward(q, k, v, g, w, tau=TAU, return_trace=True)[-1]
    pairs = Counter(p for p in trace.merged.flatten().tolist() if p >= 0)
    events = sum(pairs.values())
    last = K_SLOTS - 2
    shares = {W: sum(pairs[p] for p in range(last - W + 1, last + 1)) / max(events, 1) for W in WINDOWS}
    return events, shares, pairs[0] / max(events, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--H", type=int, default=4)
    args = ap.parse_args()
    print(f"| workload | events | {' | '.join(f'W = {W}' for W in WINDOWS)} | pair 0 |")
    print("| --- | --- |" + " --- |" * (len(WINDOWS) + 1))
    for wname in WORKLOADS:
        events, shares, first = merge_shares(wname, args.T, args.H)
        print(f"| {wname} | {events:,} | {' | '.join(f'{shares[W]:.2f}' for W in WINDOWS)} | {first:.2f} |")


if __name__ == "__main__":
    main()
