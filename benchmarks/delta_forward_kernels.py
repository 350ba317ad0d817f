#!/usr/bin/env python
"""Where one delta-rule forward's GPU time goes: every kernel of a call through ``dla_fast.forward`` (``gpu_bench``'s
delta cell: bf16, K = 30, unit keys), its total time and launches by name and stream (CUPTI, through
``torch.profiler``, one call after two warm-up calls), the busy time of each stream, and the span from the first
kernel's start to the last one's end. Kernels on different streams may overlap: the stream totals say how much.

    python benchmarks/delta_forward_kernels.py [--cells 2x16384x64:moderate,1x65536x64:moderate] [--gaps N]
                                               [--training] [--out DIR]

``--gaps N``: also the busiest stream's idle time (from one kernel's end to the next one's start) summed by the
kernels on either side, the N largest: where the host, or a wait on another stream, held that stream back.
``--training``: a training step instead (the forward, then the backward of ``<dO, o>`` into q, k, v, g, beta and the
slot weights), as ``gpu_bench``'s fwd+bwd times it.

Writes ``delta_forward_kernels_<card>_<date>.json`` (``delta_training_kernels_...`` with ``--training``); the tables are
printed last.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward_timeline import idle_gaps  # noqa: E402
from gpu_bench import WORKLOADS, configs_named, delta_inputs, dla_gdn, grad_leaves  # noqa: E402


def kernels_of_one_call(fn) -> list:
    """``[(name, stream, start us, end us)]`` of the GPU kernels of one ``fn()`` after two warm-up calls."""
    fn(), fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    found = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.elapsed_us() > 0:
            found.append((e.name, getattr(e, "device_resource_id", 0), e.time_range.start, e.time_range.end))
    return found


def kernel_totals(fn) -> dict[str, float]:
    """GPU time of one ``fn()`` per kernel name (us, names cut at 60 characters), longest first."""
    total = collections.Counter()
    for name, _, start, end in kernels_of_one_call(fn):
        total[name[:60]] += end - start
    return dict(total.most_common())


def training_step(x):
    """``fn()`` of one forward and backward through the API on leaves made from the inputs ``x``."""
    leaves = grad_leaves(*x)
    do = torch.randn_like(x[2])  # (as gpu_bench's fwd+bwd: gradients accumulate into the same leaves)

    def step():
        dla_gdn(*leaves)[0].backward(do)

    return step


def summary(found: list, gaps: int = 0) -> dict:
    by_name = collections.defaultdict(lambda: [0.0, 0])
    by_stream = collections.defaultdict(float)
    for name, stream, start, end in found:
        key = (name[:60], stream)
        by_name[key][0] += (end - start) / 1e3
        by_name[key][1] += 1
        by_stream[stream] += (end - start) / 1e3
    span = (max(e for *_, e in found) - min(s for _, _, s, _ in found)) / 1e3
    rows = sorted(([n, s, ms, k] for (n, s), (ms, k) in by_name.items()), key=lambda r: -r[2])
    busiest = max(by_stream, key=by_stream.get)
    mine = sorted((dict(name=n, start_us=s, end_us=e) for n, st, s, e in found if st == busiest),
                  key=lambda k: k["start_us"])
    idle = [[us, a, b] for (a, b), us in idle_gaps(mine).most_common(gaps)]
    return dict(span_ms=span, streams_ms={str(s): ms for s, ms in by_stream.items()}, kernels=rows, idle_us=idle)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="2x16384x64:moderate,1x65536x64:moderate")
    ap.add_argument("--gaps", type=int, default=0, help="the busiest stream's N largest idle times (docstring)")
    ap.add_argument("--training", action="store_true", help="a training step instead of a forward (docstring)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_forward_kernels.py: needs a CUDA GPU")
    cells = {}
    for spec in args.cells.split(","):
        name, wname = spec.split(":")
        x = delta_inputs(*configs_named(name)[0], WORKLOADS[wname])
        if args.training:
            cells[spec] = summary(kernels_of_one_call(training_step(x)), args.gaps)
            continue
        with torch.no_grad():
            cells[spec] = summary(kernels_of_one_call(lambda: dla_gdn(*x)), args.gaps)
    card = torch.cuda.get_device_name()
    what = "training" if args.training else "forward"
    path = os.path.join(args.out, f"delta_{what}_kernels_{card.replace(' ', '_')}_{datetime.date.today()}.json")
    with open(path, "w") as f:
        json.dump(dict(card=card, cells=cells), f, indent=1)
    for spec, c in cells.items():
        streams = ", ".join(f"{s}: {ms:.2f}" for s, ms in c["streams_ms"].items())
        print(f"\n{card}, {datetime.date.today()}, {what} {spec}: span {c['span_ms']:.2f} ms; busy by stream {streams}")
        print("| kernel | stream | ms | launches |")
        print("| --- | --- | --- | --- |")
        for name, stream, ms, n in c["kernels"][:24 if args.training else 16]:
            print(f"| {name} | {stream} | {ms:.2f} | {n} |")
        if c["idle_us"]:
            idle = sum(g[0] for g in c["idle_us"])
            print(f"\nThe busiest stream's idle time by the kernels around it, the {len(c['idle_us'])} largest "
                  f"({idle:.0f} us in all):")
            print("| idle us | after | before |")
            print("| --- | --- | --- |")
            for us, before, after in c["idle_us"]:
                print(f"| {us:.0f} | {before} | {after} |")


if __name__ == "__main__":
    main()
