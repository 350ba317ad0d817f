#!/usr/bin/env python
"""Where a training step's torch operations go: one delta-rule step through the public API (``gpu_bench.py``'s
delta cell: bf16, K = 30, moderate), profiled with Python stacks, each top-level torch operation's device and host
time grouped by the first ``dla_fast`` frame that called it. Triton kernels are not torch operations: see
``delta_backward_ab.py``'s CUDA tables for them.

    python benchmarks/step_torch_ops.py [--cell 2x16384x16x64] [--top 45]

The attribution reads the profiler's Python-function events (torch 2.13 on Python 3.11 fills them; run 27's
H200, torch 2.11 on Python 3.12, gave none: there the events' own ``stack`` is tried too, untested). Totals print
either way.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, _dla_gdn, _leaves, delta_inputs  # noqa: E402


def caller(event) -> str:
    """The first ``dla_fast`` frame above a torch operation (``file(line): function``), or ``?``."""
    frames = [f for f in (event.stack or []) if "dla_fast/" in f]
    if frames:
        return frames[0].split("dla_fast/")[-1]
    up = event.cpu_parent
    while up is not None:
        if "dla_fast/" in up.name:
            return up.name.split("dla_fast/")[-1]
        up = up.cpu_parent
    return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x16x64", help="BxTxHxD")
    ap.add_argument("--top", type=int, default=45)
    args = ap.parse_args()
    B, T, H, D = (int(n) for n in args.cell.split("x"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    leaves = _leaves(*delta_inputs(B, T, H, D, D, WORKLOADS["moderate"], device=dev))
    dO = torch.randn_like(leaves[2])

    def step():
        for x in leaves:
            x.grad = None
        _dla_gdn(*leaves)[0].backward(dO)
        if dev == "cuda":
            torch.cuda.synchronize()

    step()  # compiles and warms up outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with profile(activities=activities, with_stack=True) as p:
        step()
    device_us, host_us, calls = collections.Counter(), collections.Counter(), collections.Counter()
    for e in p.events():
        if not e.name.startswith("aten::") or (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")):
            continue  # top-level torch operations only
        key = (caller(e), e.name)
        device_us[key] += e.device_time_total
        host_us[key] += e.cpu_time_total
        calls[key] += 1
    print(f"{dev}, {args.cell}: torch operations' device time {sum(device_us.values()) / 1e3:.2f} ms, host time "
          f"{sum(host_us.values()) / 1e3:.1f} ms, {sum(calls.values())} top-level operations")
    print("| device ms | host ms | calls | operation | caller |")
    print("| --- | --- | --- | --- | --- |")
    for key, us in sorted(device_us.items(), key=lambda kv: (-kv[1], -host_us[kv[0]]))[:args.top]:
        print(f"| {us / 1e3:.3f} | {host_us[key] / 1e3:.2f} | {calls[key]} | {key[1]} | {key[0]} |")


if __name__ == "__main__":
    main()
