#!/usr/bin/env python
"""Do back-to-back forwards finish on this GPU? (issue #11, run 61: with ``TritonSettings(output_blocks=True)`` the
second of two back-to-back calls at (1, 65536) moderate and dense never returned, on an H100; the first call and the
single-call tests passed.)

Each (workload, setting) runs in a subprocess of its own with a watchdog: one call, then three rounds of ten calls
without a synchronisation between them (as a training loop or a benchmark runs them), timed with CUDA events. A call
that does not return within the watchdog's seconds prints the host's stack (where it waits) and ends the subprocess.
Run 62 (H100) found every call returning after run 61's fix::

    python benchmarks/back_to_back_check.py [--config 1x65536] [--workloads moderate,dense] [--watchdog 60]

Prints one line a round (ms a call) or the stack of a hang, per (workload, setting).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CASE = """
import dataclasses, faulthandler, sys, time, torch
sys.path.insert(0, {bench!r})
faulthandler.dump_traceback_later({watchdog}, exit=True)
from gpu_bench import K_SLOTS, TAU, WORKLOADS, workload
from dla_fast.ops.scalar_decay import chunk_fwd
from dla_fast.settings import DEFAULT_SETTINGS
settings = dataclasses.replace(DEFAULT_SETTINGS, output_blocks={blocks})
q, k, v, g, w = workload({B}, {T}, 16, {D}, {D}, K_SLOTS, **WORKLOADS[{wl!r}], seed=11)
call = lambda: chunk_fwd.forward_scalar_decay_triton(q, k, v, g, w, tau=TAU, settings=settings, check_values=True)
t = time.time(); call(); torch.cuda.synchronize()
print(f"first call {{time.time() - t:.1f}} s", flush=True)
for r in range(3):
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        call()
    e1.record(); torch.cuda.synchronize()
    print(f"round {{r}}: {{e0.elapsed_time(e1) / 10:.3f}} ms a call", flush=True)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="1x65536", help="BxT or BxTxD")
    ap.add_argument("--workloads", default="moderate,dense")
    ap.add_argument("--watchdog", type=int, default=60, help="seconds before a subprocess is called hung")
    args = ap.parse_args()
    B, T, *D = (int(x) for x in args.config.split("x"))
    bench = os.path.dirname(os.path.abspath(__file__))
    for wl in args.workloads.split(","):
        for blocks in (True, False):
            code = CASE.format(bench=bench, watchdog=args.watchdog, blocks=blocks, B=B, T=T, D=(D or [64])[0], wl=wl)
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=args.watchdog + 120)
            lines = [ln for ln in (run.stdout + run.stderr).splitlines() if "Warn" not in ln and "warn(" not in ln]
            print(f"== {args.config} {wl} output_blocks={blocks} (rc {run.returncode})", *lines[-12:], sep="\n",
                  flush=True)


if __name__ == "__main__":
    main()
