#!/usr/bin/env python
"""Kernel timeline of one scalar-decay Triton forward on a GPU: which kernels run when, on which stream.

The stage profile (``forward_scalar_decay_triton(profile=...)``) times windows between CUDA events on the
current stream, which also hold the glue and the host's launch time; it cannot say whether two kernels on
different streams overlapped. This takes the kernels' own start and end times (CUPTI, through
``torch.profiler``) for one call after two warm-up calls, prints them in start order with the stream, and says
how long each pair of the decision stages (table, carry scan, merge simulation) ran at the same time, and how
long the GPU was busy (any kernel running) against the span: the rest is the GPU waiting for the host.

    python benchmarks/forward_timeline.py --out DIR [--config 2x16384] [--workload moderate] \
        [--variants default,serial,api]

Variants: ``default`` and ``serial`` (no concurrent decision stages) at the kernel entry, ``api`` the defaults
through ``dla_fast.forward`` (its validation included, no final cache: as gpu_bench times it).

Writes ``forward_timeline_<card>_<date>_<config>_<workload>_<variant>.json`` (the kernel list) and the Chrome trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, api_forward, configs_named, workload  # noqa: E402

from dla_fast.settings import DEFAULT_SETTINGS  # noqa: E402

STAGES = {"table": "dla_table_kernel", "carry": "dla_carry_kernel", "merge": "dla_merge_kernel"}


def kernels_of(trace_path: str) -> list[dict]:
    """The GPU kernels of a Chrome trace: name, stream, start and duration (us), in start order."""
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    ks = [dict(name=e["name"], stream=e.get("args", {}).get("stream"), ts=float(e["ts"]), dur=float(e["dur"]))
          for e in events if e.get("cat") == "kernel"]
    ks.sort(key=lambda e: e["ts"])
    t0 = ks[0]["ts"] if ks else 0.0
    for e in ks:
        e["start_us"] = e["ts"] - t0
        e["end_us"] = e["start_us"] + e["dur"]
    return ks


def overlap_us(ks: list[dict], a: str, b: str) -> float | None:
    """Microseconds during which a kernel named like ``a`` and one named like ``b`` both ran."""
    ka = [e for e in ks if a in e["name"]]
    kb = [e for e in ks if b in e["name"]]
    if not ka or not kb:
        return None
    return sum(max(0.0, min(x["end_us"], y["end_us"]) - max(x["start_us"], y["start_us"])) for x in ka for y in kb)


def busy_us(ks: list[dict]) -> float:
    """Microseconds during which at least one kernel ran."""
    total, end = 0.0, None
    for e in sorted(ks, key=lambda e: e["start_us"]):
        if end is None or e["start_us"] > end:
            total += e["end_us"] - e["start_us"]
            end = e["end_us"]
        elif e["end_us"] > end:
            total += e["end_us"] - end
            end = e["end_us"]
    return total


def timeline(cfg, wname, variant: str, out_dir: str) -> dict:
    """One forward's kernels (after two warm-up calls) under ``variant`` ("default", "serial" or "api"), printed
    and returned; the Chrome trace and the kernel list are written to out_dir."""
    from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton

    settings = DEFAULT_SETTINGS if variant != "serial" else \
        dataclasses.replace(DEFAULT_SETTINGS, table_overlap=False, pipeline=False)
    B, T, H, Dk, Dv = cfg
    q, k, v, g, w = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)

    def call():
        if variant == "api":
            return api_forward(q, k, v, g, w)
        return forward_scalar_decay_triton(q, k, v, g, w, tau=TAU, settings=settings)

    call()
    call()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        call()
        torch.cuda.synchronize()
    card = torch.cuda.get_device_name().replace(" ", "_")
    stem = os.path.join(out_dir, f"forward_timeline_{card}_{datetime.date.today()}_{'x'.join(map(str, cfg))}_"
                        f"{wname}_{variant}")
    prof.export_chrome_trace(stem + ".trace.json")
    ks = kernels_of(stem + ".trace.json")
    print(f"== {cfg} {wname} {variant}")
    for e in ks:
        print(f"{e['start_us']:9.1f} {e['end_us']:9.1f} {e['dur']:8.1f} us  stream {e['stream']!s:>4}  "
              f"{e['name'][:70]}")
    pairs = {f"{a}+{b}": overlap_us(ks, STAGES[a], STAGES[b]) for a, b in (("table", "carry"), ("carry", "merge"))}
    result = dict(config=list(cfg), workload=wname, variant=variant, settings=dataclasses.asdict(settings),
                  card=torch.cuda.get_device_name(), span_us=ks[-1]["end_us"] if ks else 0.0, busy_us=busy_us(ks),
                  overlap_us=pairs, kernels=ks)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--config", default="2x16384", help="BxT or BxTxD of gpu_bench's configs")
    ap.add_argument("--workload", default="moderate", choices=list(WORKLOADS))
    ap.add_argument("--variants", default="default,serial", help="default, serial and/or api")
    args = ap.parse_args()
    cfg = configs_named(args.config)[0]
    os.makedirs(args.out, exist_ok=True)
    results = [timeline(cfg, args.workload, v, args.out) for v in args.variants.split(",")]
    for r in results:  # the summary last
        own = {STAGES[n]: [(round(e["start_us"], 1), round(e["end_us"], 1)) for e in r["kernels"]
                           if STAGES[n] in e["name"]] for n in STAGES}
        print(f"{r['variant']}: kernels span {r['span_us']:.1f} us, GPU busy {r['busy_us']:.1f} us; "
              f"overlap (us) {r['overlap_us']}; "
              f"decision kernels (start, end) {own}")


if __name__ == "__main__":
    main()
