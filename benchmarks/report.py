"""Print the CPU benchmark table of docs/benchmarks.md: ``python -m benchmarks.report [--quick]``.

Times (wall clock, best of several rounds; one round for the slow baselines at T >= 2048) of dla_fast,
the per-token torch recurrence and dla_ref on the workloads of ``benchmarks/workloads.py``, the measured
boundary rates, and the issue's targets. ``--quick`` skips the baselines at T = 8192.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numba
import numpy as np
import torch

import dla_fast
import dla_ref
from benchmarks import workloads as wl

CLOCK = time.perf_counter


def best_of(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the slow baselines at T = 8192")
    parser.add_argument("--T", type=int, nargs="*", default=[512, 2048, 8192])
    parser.add_argument("--threads", type=int, default=wl.THREADS)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time (for a machine shared with other work; use --threads 1)")
    parser.add_argument("--workloads", nargs="*", default=list(wl.WORKLOADS))
    args = parser.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                   platform.processor())
    print(f"{datetime.date.today()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numba {numba.__version__}, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}, clock {CLOCK.__name__}")
    print()
    print("| workload | T | boundary rate | dla_fast ms | us/token | recurrence ms | dla_ref ms | vs recurrence | "
          "vs dla_ref |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    dla_fast.forward(*wl.torch_inputs("sparse", 64))  # numba compile (cached on disk after the first run)
    for name in args.workloads:
        for T in args.T:
            x = wl.torch_inputs(name, T)
            dla_fast.forward(*x)
            t_fast = best_of(lambda: dla_fast.forward(*x), 5)
            _, _, trace = dla_fast.forward(*x, return_trace=True)
            rate = wl.boundary_rate(trace)
            slow_rounds = 3 if T < 2048 else 1
            t_rec = t_ref = float("nan")
            if not (args.quick and T >= 8192):
                t_rec = best_of(lambda: wl.recurrent_forward(*x), slow_rounds)
                xr = wl.inputs(name, T)
                t_ref = best_of(lambda: dla_ref.forward(*xr, tau=wl.TAU), slow_rounds)
            print(f"| {name} | {T} | {rate:.1%} | {t_fast * 1e3:.1f} | {t_fast / T * 1e6:.1f} | {t_rec * 1e3:.0f} | "
                  f"{t_ref * 1e3:.0f} | {t_rec / t_fast:.0f}x | {t_ref / t_fast:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
