#!/usr/bin/env python
"""Where a training step's torch operations go: one delta-rule step through the public API (``gpu_bench.py``'s
delta cell: bf16, K = 30, moderate). Two views of the same step (Triton kernels are not torch operations: see
``delta_backward_ab.py``'s CUDA tables for them):

- by operation: each top-level torch operation's device and host time (``torch.profiler``, no stacks);
- by caller: each dispatched operation's count and host time grouped by the ``dla_fast`` line that issued it (a
  ``TorchDispatchMode`` reading the Python frames, so it works wherever torch does: run 27's attribution through the
  profiler's Python stacks came back empty on the H200's Python 3.12, and with stacks under the Triton interpreter
  the profiler ran out of 24 GB at (1, 512, 2, 32); run 28). Dispatched operations are what reach the kernels'
  dispatcher: ``to`` shows as ``_to_copy``, ``contiguous`` as ``clone``, views as ``view`` and alike.

    python benchmarks/step_torch_ops.py [--cell 2x16384x16x64] [--top 45]

Without CUDA the step runs on the CPU (with ``TRITON_INTERPRET=1 DLA_FAST_BACKEND=triton`` on the kernels' path; the
interpreter's own copies then show at the kernels' launch lines as ``set_``, ``empty``, ``copy_``).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, delta_inputs, dla_gdn, grad_leaves  # noqa: E402


def caller() -> str:
    """The innermost ``dla_fast`` frame of the Python stack (``file:line function``), or ``?``."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace(os.sep, "/")
        if "/dla_fast/" in path and "/triton/" not in path:
            return f"{path.split('/dla_fast/')[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


class ByCaller(TorchDispatchMode):
    """Counts and host time of the dispatched operations by (caller, operation)."""

    def __init__(self):
        super().__init__()
        self.calls, self.host_s = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        key = (caller(), func.overloadpacket.__name__)
        began = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.host_s[key] += time.perf_counter() - began
        self.calls[key] += 1
        return out


def by_operation(step, dev: str, top: int) -> None:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with profile(activities=activities) as p:
        step()
    device_us, host_us, calls = collections.Counter(), collections.Counter(), collections.Counter()
    for e in p.events():
        if not e.name.startswith("aten::") or (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")):
            continue  # top-level torch operations only
        device_us[e.name] += e.device_time_total
        host_us[e.name] += e.cpu_time_total
        calls[e.name] += 1
    print(f"torch operations' device time {sum(device_us.values()) / 1e3:.2f} ms, host time "
          f"{sum(host_us.values()) / 1e3:.1f} ms, {sum(calls.values())} top-level operations")
    print("| device ms | host ms | calls | operation |")
    print("| --- | --- | --- | --- |")
    for name, us in sorted(device_us.items(), key=lambda kv: (-kv[1], -host_us[kv[0]]))[:top]:
        print(f"| {us / 1e3:.3f} | {host_us[name] / 1e3:.2f} | {calls[name]} | {name} |")


def by_caller(step, top: int) -> None:
    mode = ByCaller()
    with mode:
        step()
    per_caller = collections.defaultdict(collections.Counter)
    for (where, op), n in mode.calls.items():
        per_caller[where][op] += n
    host = collections.Counter()
    for (where, _), s in mode.host_s.items():
        host[where] += s
    print(f"\n{sum(mode.calls.values())} dispatched operations, {sum(host.values()) * 1e3:.1f} ms of host time in "
          "them, by caller:")
    print("| calls | host ms | caller | operations |")
    print("| --- | --- | --- | --- |")
    for where, ops in sorted(per_caller.items(), key=lambda kv: -sum(kv[1].values()))[:top]:
        listed = ", ".join(f"{op} {n}" for op, n in ops.most_common(5))
        print(f"| {sum(ops.values())} | {host[where] * 1e3:.2f} | {where} | {listed} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x16x64", help="BxTxHxD")
    ap.add_argument("--top", type=int, default=45)
    args = ap.parse_args()
    B, T, H, D = (int(n) for n in args.cell.split("x"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    leaves = grad_leaves(*delta_inputs(B, T, H, D, D, WORKLOADS["moderate"], device=dev))
    dO = torch.randn_like(leaves[2])

    def step():
        for x in leaves:
            x.grad = None
        dla_gdn(*leaves)[0].backward(dO)
        if dev == "cuda":
            torch.cuda.synchronize()

    step()  # compiles and warms up outside the measurements
    print(f"{dev}, {args.cell}:")
    by_operation(step, dev, args.top)
    by_caller(step, args.top)


if __name__ == "__main__":
    main()
