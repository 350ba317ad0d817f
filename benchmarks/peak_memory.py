#!/usr/bin/env python
"""Where one DLA fwd+bwd step's peak memory is: the CUDA allocator's history replayed, the allocations live at the
peak grouped by their innermost ``dla_fast`` (or ``gpu_bench``) source line.

The step is ``gpu_bench.py``'s training cell (public API, bf16, K = 30, a warm-up call first so that the leaves'
``.grad`` exist); the peak is above the memory live before the step, as ``gpu_bench.py`` reports it.

    python benchmarks/peak_memory.py 8x4096x64:moderate,2x16384x64:dense [--out DIR]

Appends to ``DIR/peak_memory.txt`` (default ``$OUT`` or ``.``). Used in docs/training.md ("Memory", run 23).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, WORKLOADS, configs_named, dla_fwd_bwd, grad_leaves, workload  # noqa: E402


def source_line(frames: list[dict]) -> str:
    """The innermost frame in this repository's library (or the benchmark), as ``file:line function``."""
    ours = [f for f in frames if "dla_fast" in f["filename"] or "gpu_bench" in f["filename"]]
    f = ours[0] if ours else (frames[0] if frames else dict(filename="?", line=0, name="?"))
    return f"{f['filename'].split('/')[-1]}:{f['line']} {f['name']}"


def live_at_peak(trace: list[dict]) -> tuple[int, dict]:
    """``(peak bytes, {address: (bytes, source line)})`` of the allocations recorded in ``trace``."""
    live, now, peak, at_peak = {}, 0, 0, {}
    for e in trace:
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], source_line(e.get("frames", [])))
            now += e["size"]
            if now > peak:
                peak, at_peak = now, dict(live)
        elif e["action"] == "free_requested" and e["addr"] in live:
            now -= live.pop(e["addr"])[0]
    return peak, at_peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", help="comma-separated BxTxD:workload")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    with open(os.path.join(args.out, "peak_memory.txt"), "a") as out:
        for cell in args.cells.split(","):
            name, wname = cell.split(":")
            cfg = configs_named(name)[0]
            q, k, v, g, w = grad_leaves(*workload(*cfg, K_SLOTS, **WORKLOADS[wname], seed=11))
            dO = torch.randn(*cfg[:3], cfg[4], device="cuda", dtype=q.dtype)
            dla_fwd_bwd(q, k, v, g, w, dO)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
            dla_fwd_bwd(q, k, v, g, w, dO)
            torch.cuda.synchronize()
            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            peak = torch.cuda.max_memory_allocated() - before
            _, at_peak = live_at_peak(snapshot["device_traces"][0])
            groups = collections.Counter()
            for size, where in at_peak.values():
                groups[where] += size
            print(f"== {cfg} {wname}: peak above the start {peak / 2**20:.1f} MiB", file=out)
            for where, size in groups.most_common(12):
                print(f"   {size / 2**20:9.1f} MiB  {where}", file=out)
            out.flush()
            print(cfg, wname, f"{peak / 2**20:.1f} MiB", flush=True)
            del q, k, v, g, w, dO, snapshot, at_peak
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
