#!/usr/bin/env python
"""Whether the scalar-decay forward waits for the host or the GPU: its host time split at the call's one
synchronisation, in steady state.

    python benchmarks/forward_host_split.py [--cells 8x4096x64:sparse,2x16384x64:moderate]

Per cell (``gpu_bench``'s configs and workloads: bf16, K = 30, tau = 0.6, through ``dla_fast.forward`` as
``gpu_bench`` times it), 60 back-to-back calls after 5 warm-up calls, the wait in the forward's synchronisation
(``torch.cuda.Event.synchronize``, the read-back of the surviving-start count) timed: the period (wall time per call),
h1 (the host's time from a call's start to that wait), the wait, h2 (after it, to the call's return), medians. A wait
near zero means the host reached the synchronisation after the GPU had finished the decisions: the call is host-bound
(its period is then the host's h1 + h2). Where a call synchronises more than once (decisions by blocks: the deeper
guesses' counts), h1, the wait and h2 are the first synchronisation's; "host not waiting" is the call's time less all
its waits, and each wait is listed (medians). Run 35 (docs/benchmarks.md) found the (8, 4096, 64) sparse cell
host-bound on one H200 machine. The machine's host speed (``host_speed.py``) is printed before and after the cells.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, WORKLOADS, api_forward, configs_named, workload  # noqa: E402
from host_speed import describe, host_speed  # noqa: E402

CELLS = "8x4096x64:sparse,8x4096x64:moderate,8x4096x64:dense,2x16384x64:moderate,8x4096x128:moderate"
CALLS = 60


def split_of(call, waits: list) -> dict:
    """``call`` run CALLS times back to back: the period and the medians of h1, the wait and h2, in ms."""
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    rows = []
    start = time.perf_counter()
    for _ in range(CALLS):
        waits.clear()
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        w0, w1 = waits[0] if waits else (t0, t0)
        each = [(b - a) * 1e3 for a, b in waits]
        rows.append(((w0 - t0) * 1e3, (w1 - w0) * 1e3, (t1 - w1) * 1e3, (t1 - t0) * 1e3 - sum(each), each))
    torch.cuda.synchronize()
    period = (time.perf_counter() - start) / CALLS * 1e3
    h1, wait, h2, host = (statistics.median(r[i] for r in rows) for i in range(4))
    per_sync = [statistics.median(r[4][i] for r in rows if len(r[4]) > i) for i in range(max(len(r[4]) for r in rows))]
    return dict(period_ms=period, h1_ms=h1, wait_ms=wait, h2_ms=h2, syncs_per_call=len(waits), host_ms=host,
                waits_ms=per_sync)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default=CELLS, help="BxTxD:workload,...")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("forward_host_split.py: needs a CUDA GPU")
    waits = []
    plain = torch.cuda.Event.synchronize

    def timed(event):
        t = time.perf_counter()
        plain(event)
        waits.append((t, time.perf_counter()))

    print("host speed before:", describe(host_speed()))
    torch.cuda.Event.synchronize = timed
    print(f"{torch.cuda.get_device_name()}: period, h1 (host until the synchronisation), wait, h2 (after it), ms")
    for cell in args.cells.split(","):
        name, wl = cell.split(":")
        q, k, v, g, w = workload(*configs_named(name)[0], K_SLOTS, **WORKLOADS[wl], seed=11)
        with torch.no_grad():
            r = split_of(lambda: api_forward(q, k, v, g, w), waits)  # noqa: B023
        print(f"{cell}: period {r['period_ms']:.3f}, h1 {r['h1_ms']:.3f}, wait {r['wait_ms']:.3f}, "
              f"h2 {r['h2_ms']:.3f}; syncs a call {r['syncs_per_call']}; host not waiting {r['host_ms']:.3f}, each "
              f"wait {', '.join(f'{w:.3f}' for w in r['waits_ms'])}", flush=True)
    torch.cuda.Event.synchronize = plain
    print("host speed after:", describe(host_speed()))


if __name__ == "__main__":
    main()
