#!/usr/bin/env python
"""A model of the delta decisions' pair stage on an H100 (docs/performance.md "Run 72"), CPU only: each (row, chunk)'s
work from the workloads' traces, each program's duration taken as its instruction count (sm_90 SASS counts), and a
launch's time as the list schedule of its programs on 132 SMs in grid order.

    python benchmarks/delta_pair_launch_model.py [--T 8192] [--heads 4] [--draws 50]

For each workload it prints, against the one-launch kernel of runs 32-69 (32 groups of two starts a chunk, whole
rows), the pieces of run 71 in one launch by its programs' mean and by the schedule (one wave: its slowest program
sets it), and the pieces in three launches (sums; scores a group of starts a program; paths, not counted).
Each start's next boundary is the next start after it in its chunk (the path the forward took).
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, delta_inputs  # noqa: E402

C, G, PW, SMS = 64, 16, 8, 132
SUMS = 160 * 256  # the sums: 160 (start, block of 16 tokens) steps a chunk of 256 instructions (run 70)
OLD_SCORES = 32 * 1205  # runs 32-69: 32 groups of two starts over the whole row, 1,205 instructions each (run 71)
PIECE, GROUP = 1534, 115  # a [16, 8] piece of scores, a group's own work (sm_90, runs 71-72)
SLOTS_ONE, SLOTS_SCORES = 8, 10  # programs an SM: the one kernel (255 registers), the scores' kernel (192)


def pieces_per_group(starts) -> list[int]:
    """The pieces of scores each group of ``G`` starts takes in a chunk with these starts (bools, ``[C]``): from the
    piece after its first start to the one holding its last start's next boundary (the row's end where none)."""
    at = np.flatnonzero(starts)
    nxt = np.array([next((u for u in at if u > p), C) for p in range(C)])
    out = []
    for p0 in range(0, C, G):
        first = (p0 + 1) // PW
        last = nxt[p0:p0 + G].max()
        out.append(max(0, (last // PW if last < C else C // PW - 1) - first + 1) if first * PW < C else 0)
    return out


def makespan(durations, slots: int, sms: int = SMS) -> float:
    """The time the programs take, each started in order on the first free one of ``sms * slots`` slots."""
    free = [0.0] * (sms * slots)
    end = 0.0
    for d in durations:
        t = heapq.heappop(free) + d
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def workload_groups(name: str, T: int, heads: int) -> np.ndarray:
    """``[row-chunks, C / G]``: the pieces of each group, from the CPU forward's trace of a benchmark workload."""
    import dla_fast

    x = delta_inputs(1, T, heads, 64, 64, WORKLOADS[name], device="cpu")
    starts = np.asarray(dla_fast.forward(*x[:5], tau=TAU, beta=x[5], return_trace=True)[-1].starts.cpu())[0]
    return np.array([pieces_per_group(starts[c0:c0 + C, h]) for h in range(heads) for c0 in range(0, T, C)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--draws", type=int, default=50, help="launches of 1,024 (row, chunk)s drawn from the trace")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for name in WORKLOADS:
        groups = workload_groups(name, args.T, args.heads)
        scores = groups * PIECE + GROUP
        old, one, three = [], [], []
        for _ in range(args.draws):
            b = rng.choice(len(groups), 1024)
            old.append(makespan(np.full(1024, SUMS + OLD_SCORES), SLOTS_ONE))
            one.append(makespan(SUMS + scores[b].sum(1), SLOTS_ONE))
            three.append(makespan(np.full(1024, SUMS), SLOTS_ONE) + makespan(scores[b].ravel(), SLOTS_SCORES))
        mean = (SUMS + scores.sum(1).mean()) / (SUMS + OLD_SCORES) - 1
        split = np.mean(three) / np.mean(one) - 1
        print(f"{name}: pieces in one launch against runs 32-69's kernel: mean {mean:+.0%}, scheduled "
              f"{np.mean(one) / np.mean(old) - 1:+.0%}; in three launches against one {split:+.0%} (pieces a group: "
              f"mean {groups.mean():.2f})", flush=True)


if __name__ == "__main__":
    main()
