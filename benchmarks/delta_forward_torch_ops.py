#!/usr/bin/env python
"""The torch operations of one delta-rule forward through ``dla_fast.forward`` (``gpu_bench``'s delta cell), by GPU
time with their input shapes (``torch.profiler``, one call after two warm-up calls): which of the forward's glue
(copies, casts, reductions around the Triton kernels) costs GPU time, and where it is called from. ``--training``: a
training step instead (``delta_forward_kernels.training_step``: the forward and the backward of ``<dO, o>``).

    python benchmarks/delta_forward_torch_ops.py [--cells 2x16384x64:moderate] [--rows 25] [--training]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delta_forward_kernels import training_step  # noqa: E402
from gpu_bench import WORKLOADS, configs_named, delta_inputs, dla_gdn  # noqa: E402


def profiled(fn, acts):
    """The profile of one ``fn()`` after two warm-up calls."""
    fn(), fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    return prof


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="2x16384x64:moderate")
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--training", action="store_true", help="a training step instead of a forward")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_forward_torch_ops.py: needs a CUDA GPU")
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    for cell in args.cells.split(","):
        name, wname = cell.split(":")
        x = delta_inputs(*configs_named(name)[0], WORKLOADS[wname])
        if args.training:
            prof = profiled(training_step(x), acts)
        else:
            with torch.no_grad():
                prof = profiled(lambda: dla_gdn(*x), acts)
        table = prof.key_averages(group_by_input_shape=True).table(sort_by="device_time_total", row_limit=args.rows,
                                                                   max_name_column_width=40,
                                                                   max_shapes_column_width=90)
        what = "training step" if args.training else "forward"
        print(f"{torch.cuda.get_device_name()}, {what}, {cell}:\n{table}", flush=True)


if __name__ == "__main__":
    main()
