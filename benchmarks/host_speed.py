#!/usr/bin/env python
"""This machine's host speed, to read beside host-sensitive timings: microseconds a call of pure Python, a tiny torch
CUDA op, an allocation and an empty Triton launch (through Triton's own launcher).

    python benchmarks/host_speed.py

The lent GPU machines' hosts differ (run 62: the same forward's host time outside its waits 2.53 ms on one, 1.86 on
another; run 63: a forward host-bound on one machine, GPU-bound on the next), and one machine's numbers moved by up to
2x within a minute. ``forward_host_split.py`` prints them before and after its cells.
"""

from __future__ import annotations

import time

import torch
import triton
import triton.language as tl


@triton.jit
def _empty_kernel(x_ptr, n, B: tl.constexpr):
    pass


def _us_per_call(fn, calls: int) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def host_speed() -> dict:
    """Microseconds a call (host time; the GPU work is queued, not waited for)."""
    x = torch.zeros(16, device="cuda")
    return dict(python_sum100_us=_us_per_call(lambda: sum(range(100)), 20000),
                torch_add_us=_us_per_call(lambda: x.add_(1), 5000),
                torch_empty_us=_us_per_call(lambda: torch.empty(1024, device="cuda"), 5000),
                triton_launch_us=_us_per_call(lambda: _empty_kernel[(1,)](x, 16, B=16), 5000))


def describe(speed: dict) -> str:
    return ", ".join(f"{name[:-3]} {us:.2f} us" for name, us in speed.items())


if __name__ == "__main__":
    print("host speed:", describe(host_speed()))
