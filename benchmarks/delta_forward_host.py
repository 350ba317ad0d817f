#!/usr/bin/env python
"""The host's side of one delta-rule forward through ``dla_fast.forward`` (run 45): the time until the call returns
(nothing synchronises: the host has queued everything) against the time until the GPU is done, three calls, then a
``cProfile`` of one call, by own time and by cumulative time. A host that returns long before the GPU is done can
still hold the GPU back where it queues slowly ahead of short kernels (``delta_forward_kernels.py --gaps``).

    python benchmarks/delta_forward_host.py [--cells 2x16384x64:moderate]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, configs_named, delta_inputs, dla_gdn  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="2x16384x64:moderate")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_forward_host.py: needs a CUDA GPU")
    for cell in args.cells.split(","):
        name, wname = cell.split(":")
        x = delta_inputs(*configs_named(name)[0], WORKLOADS[wname])
        with torch.no_grad():
            for _ in range(3):
                dla_gdn(*x)
            torch.cuda.synchronize()
            for _ in range(3):
                began = time.perf_counter()
                dla_gdn(*x)
                returned = time.perf_counter()
                torch.cuda.synchronize()
                done = time.perf_counter()
                print(f"{cell}: the host returns after {(returned - began) * 1e3:.2f} ms, the GPU is done after "
                      f"{(done - began) * 1e3:.2f} ms", flush=True)
            profile = cProfile.Profile()
            profile.enable()
            dla_gdn(*x)
            torch.cuda.synchronize()
            profile.disable()
        for order, rows in (("tottime", 25), ("cumulative", 45)):
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats(order).print_stats(rows)
            print(text.getvalue())


if __name__ == "__main__":
    main()
