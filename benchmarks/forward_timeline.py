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

Variants: ``default``, ``serial`` (no concurrent decision stages), ``guess`` and ``guess_serial`` (the same with
``carry_guesses``, the default since run 41), ``plain`` and ``plain_serial`` (without it) at the kernel entry, ``api``
the defaults through ``dla_fast.forward`` (its validation included, no final cache: as gpu_bench times it);
``blocks4`` (four decision blocks at any length), ``one_block`` and ``merge_beside_deep_walk`` (run 59's defaults
undone one at a time).

Writes ``forward_timeline_<card>_<date>_<config>_<workload>_<variant>.json`` (the kernel list) and the Chrome trace.

One call after a synchronisation starts on an idle GPU, and the host's work before its first kernel shows as idle
time that back-to-back calls hide behind the previous call's kernels. ``--steady CELLS`` (``BxTxD:workload,...``)
instead profiles 8 back-to-back calls through ``dla_fast.forward`` (``BxTxD:workload:variant``: a variant's settings at
the kernel entry, with the value checks; CUDA activity only: less host slowdown) and, over
the 6 calls between the second and the last, reports the GPU's period (kernel span per call), its busy time and idle
time per call, the idle gaps by the kernels on either side, and each kernel's time per call; beside the wall period of
30 calls without the profiler. Writes ``forward_steady_<card>_<date>.txt``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, TAU, WORKLOADS, api_forward, configs_named, workload  # noqa: E402

from dla_fast.settings import DEFAULT_SETTINGS  # noqa: E402

# the stages by kernel name (a part of it: "dla_carry_" is the plain carry scan, the guess kernel and the walk)
STAGES = {"table": "dla_table_kernel", "carry": "dla_carry_", "merge": "dla_merge_kernel"}
SERIAL = dataclasses.replace(DEFAULT_SETTINGS, table_overlap=False, pipeline=False)
VARIANT_SETTINGS = {  # the kernel-entry variants; "api" is the defaults through dla_fast.forward
    "default": DEFAULT_SETTINGS,
    "serial": SERIAL,
    "guess": dataclasses.replace(DEFAULT_SETTINGS, carry_guesses=True),
    "guess_serial": dataclasses.replace(SERIAL, carry_guesses=True),
    "plain": dataclasses.replace(DEFAULT_SETTINGS, carry_guesses=False),
    "plain_serial": dataclasses.replace(SERIAL, carry_guesses=False),
    "blocks4": dataclasses.replace(DEFAULT_SETTINGS, decision_blocks=4, decision_blocks_min_chunks=0),
    "one_block": dataclasses.replace(DEFAULT_SETTINGS, decision_blocks=1),
    "merge_beside_deep_walk": dataclasses.replace(DEFAULT_SETTINGS, deep_merge_after_walk=False),
}


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
    """One forward's kernels (after two warm-up calls) under ``variant`` (a key of ``VARIANT_SETTINGS`` or "api"),
    printed and returned; the Chrome trace and the kernel list are written to out_dir."""
    from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton

    settings = VARIANT_SETTINGS.get(variant, DEFAULT_SETTINGS)
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


def short_name(name: str) -> str:
    """A kernel's name without its template arguments and parameters."""
    return name.split("<")[0].split("(")[0].replace("void ", "")[-40:]


def kernel_us_per_call(ks: list[dict], calls: int) -> dict[str, float]:
    """Each kernel's GPU time per call, us: the durations of ``calls`` calls' kernels (``kernels_of``) summed by
    ``short_name``, over ``calls``; the longest first."""
    total = collections.Counter()
    for e in ks:
        total[short_name(e["name"])] += e["dur"]
    return {name: us / calls for name, us in total.most_common()}


def profiled_kernels(call, calls: int = 10) -> dict[str, float]:
    """``kernel_us_per_call`` of ``calls`` back-to-back ``call()``s (CUPTI, through ``torch.profiler``)."""
    import tempfile

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        return kernel_us_per_call(kernels_of(path), calls)


def call_starts(ks: list[dict]) -> list[int]:
    """The indices of each call's first table kernel in ``ks`` (start order): the first table kernel, and the first
    after each output kernel (decisions by blocks launch one table kernel a block)."""
    starts, after_output = [], True
    for i, e in enumerate(ks):
        if STAGES["table"] in e["name"] and after_output:
            starts.append(i)
            after_output = False
        elif "dla_output" in e["name"]:
            after_output = True
    return starts


def steady_summary(ks: list[dict], calls: int) -> dict:
    """Of ``calls`` back-to-back forwards' kernels (``kernels_of``, start order), the whole calls between the second
    table kernel and the last one (none next to the profiler's start or end): their number ``n``, the GPU's span and
    busy time (us), the idle gaps keyed by the kernels before and after them, and each kernel's time."""
    tables = call_starts(ks)
    if len(tables) != calls:
        raise SystemExit(f"forward_timeline --steady: expected {calls} calls, found {len(tables)} first table kernels")
    middle = ks[tables[1]:tables[-1]]
    kernel_us = collections.Counter()
    for e in middle:
        kernel_us[short_name(e["name"])] += e["dur"]
    end = max(e["end_us"] for e in middle)
    return dict(n=calls - 2, span_us=end - middle[0]["start_us"], busy_us=busy_us(middle), gaps=idle_gaps(middle),
                kernel_us=kernel_us)


def idle_gaps(ks: list[dict]) -> collections.Counter:
    """The GPU's idle time (us) between kernels (``kernels_of``, start order; gaps over 1 us), summed by the short
    names of the kernels before and after each gap."""
    gaps, end, before = collections.Counter(), None, None
    for e in ks:
        if end is not None and e["start_us"] > end + 1.0:
            gaps[(short_name(before["name"]), short_name(e["name"]))] += e["start_us"] - end
        if end is None or e["end_us"] > end:
            end, before = e["end_us"], e
    return gaps


def steady(cell: str, out_dir: str, calls: int = 8) -> list[str]:
    """``cell`` (``BxTxD:workload`` through ``dla_fast.forward``, or ``BxTxD:workload:variant`` at the kernel entry
    with the value checks, as the API runs them), ``calls`` back-to-back calls profiled after ten unprofiled ones: the
    report's lines (module docstring)."""
    from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton

    cname, wname, variant = (cell + ":api").split(":")[:3]
    B, T, H, Dk, Dv = configs_named(cname)[0]
    q, k, v, g, w = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)

    def call():
        if variant == "api":
            return api_forward(q, k, v, g, w)
        return forward_scalar_decay_triton(q, k, v, g, w, tau=TAU, settings=VARIANT_SETTINGS[variant],
                                           check_values=True)

    for _ in range(10):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(30):
        call()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / 30 * 1e3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    path = os.path.join(out_dir, f"forward_steady_{cname}_{wname}_{variant}.trace.json")
    prof.export_chrome_trace(path)
    r = steady_summary(kernels_of(path), calls)
    n = r["n"]
    lines = [f"== {cell}: wall period {wall:.3f} ms unprofiled; profiled, per call: GPU span "
             f"{r['span_us'] / n / 1e3:.3f} ms, busy {r['busy_us'] / n / 1e3:.3f} ms, idle "
             f"{(r['span_us'] - r['busy_us']) / n / 1e3:.3f} ms",
             "  idle gaps per call (us), by (kernel before -> kernel after):"]
    lines += [f"    {us / n:8.1f}  {a} -> {b}" for (a, b), us in r["gaps"].most_common(8)]
    lines.append("  kernel time per call (us):")
    lines += [f"    {us / n:8.1f}  {name}" for name, us in r["kernel_us"].most_common(14)]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--config", default="2x16384", help="BxT or BxTxD of gpu_bench's configs")
    ap.add_argument("--workload", default="moderate", choices=list(WORKLOADS))
    ap.add_argument("--variants", default="default,serial", help=f"{', '.join(VARIANT_SETTINGS)} and/or api")
    ap.add_argument("--steady", metavar="CELLS", help="BxTxD:workload,...: back-to-back calls instead (docstring)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.steady:
        lines = [line for cell in args.steady.split(",") for line in steady(cell, args.out)]
        print("\n".join(lines))
        path = os.path.join(args.out, f"forward_steady_{torch.cuda.get_device_name().replace(' ', '_')}_"
                                      f"{datetime.date.today()}.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return
    cfg = configs_named(args.config)[0]
    unknown = set(args.variants.split(",")) - set(VARIANT_SETTINGS) - {"api"}
    if unknown:
        raise SystemExit(f"forward_timeline --variants: unknown {sorted(unknown)}; expected {list(VARIANT_SETTINGS)}"
                         " or api")
    results = [timeline(cfg, args.workload, v, args.out) for v in args.variants.split(",")]
    for r in results:  # the summary last
        own = {STAGES[n]: [(round(e["start_us"], 1), round(e["end_us"], 1)) for e in r["kernels"]
                           if STAGES[n] in e["name"]] for n in STAGES}
        print(f"{r['variant']}: kernels span {r['span_us']:.1f} us, GPU busy {r['busy_us']:.1f} us; "
              f"overlap (us) {r['overlap_us']}; "
              f"decision kernels (start, end) {own}")


if __name__ == "__main__":
    main()
