#!/usr/bin/env python
"""One source tree's forward through ``dla_fast.forward``, timed and saved, to compare two trees in one device call.

Here each tree runs in a process of its own, the trees alternating (old, new, old, new), and ``--compare`` then reads
what they wrote (``forward_revision_ab.py`` instead imports both into one process under other module names and
compares their kernel-entry forwards there, bit for bit and in interleaved rounds). The tree measured is the
``dla_fast`` found first on ``PYTHONPATH``; an old one is unpacked with ``git archive <commit> dla_fast | tar -x -C
DIR``:

    PYTHONPATH=DIR:$PWD python benchmarks/tree_forward_ab.py --tag old --out OUT [--delta] [--cells ...] [--save]
    PYTHONPATH=$PWD     python benchmarks/tree_forward_ab.py --tag new --out OUT [--delta] [--cells ...] [--save]
    python benchmarks/tree_forward_ab.py --compare OUT

Per cell (``gpu_bench``'s configs and workloads: bf16, K = 30, tau = 0.6; ``--delta``: its delta-rule inputs with
``beta``): the forward's ``do_bench`` median, the wall time of one call synchronised before and after and the host's
share of it (the time until the call returned), the stream syncs of one call (torch's sync debug mode) and the time of
each ``dla_*`` kernel of one call (CUPTI). ``--save`` keeps ``o`` and the trace for ``--compare``, which prints the
times by tag and whether the tags' outputs and decisions are equal. Run 34 (docs/benchmarks.md) measured the table
kernel and the delta forward's syncs with the scratch scripts this one gathers (it has not run on a GPU itself yet).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
import warnings

import torch

import dla_fast  # before gpu_bench, which puts this checkout first on sys.path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delta_forward_kernels import kernel_totals  # noqa: E402
from gpu_bench import K_SLOTS, TAU, WORKLOADS, configs_named, delta_inputs, workload  # noqa: E402

SCALAR_CELLS = "8x4096x64:sparse,8x4096x64:moderate,8x4096x64:dense,2x16384x64:moderate,8x4096x128:moderate"
DELTA_CELLS = "2x16384x64:moderate,1x65536x64:moderate,2x16384x64:sparse"


def forward_of(cell: str, delta: bool):
    """``(call, inputs)``: one forward of the cell (no final cache, the trace returned)."""
    name, wl = cell.split(":")
    cfg = configs_named(name)[0]
    if delta:
        q, k, v, g, w, beta = delta_inputs(*cfg, WORKLOADS[wl])
        return lambda: dla_fast.forward(q, k, v, g, w, tau=TAU, beta=beta, output_final_cache=False,
                                        return_trace=True)
    q, k, v, g, w = workload(*cfg, K_SLOTS, **WORKLOADS[wl])
    return lambda: dla_fast.forward(q, k, v, g, w, tau=TAU, output_final_cache=False, return_trace=True)


def syncs_of(call) -> int:
    """The stream syncs of one call, as torch's sync debug mode counts them."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def kernels_of(call) -> dict:
    """us per ``dla_*`` kernel name in one call (CUPTI, ``delta_forward_kernels``'s profile of one call)."""
    return {name: us for name, us in kernel_totals(call).items() if name.startswith("dla_")}


def measure(cell: str, delta: bool, save_to: str | None) -> dict:
    import triton

    call = forward_of(cell, delta)
    with torch.no_grad():
        o, _, trace = call()
        ms = triton.testing.do_bench(call, warmup=50, rep=400, return_mode="median")
        issue, wall = [], []
        for _ in range(10):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            issue.append((t1 - t0) * 1e3)
            wall.append((time.perf_counter() - t0) * 1e3)
        row = dict(ms=ms, wall_ms=statistics.median(wall), host_ms=statistics.median(issue), syncs=syncs_of(call),
                   kernels_us=kernels_of(call))
    if save_to:
        torch.save(dict(o=o.cpu(), scores=trace.scores.cpu(), starts=trace.starts.cpu()), save_to)
    return row


def compare(out: str) -> None:
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "tree_ab_*.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    cells = list(dict.fromkeys(c for r in runs for c in r["cells"]))
    print("| cell | " + " | ".join(f"{r['tag']} ms (wall, host, syncs)" for r in runs) + " |")
    print("|" + " --- |" * (len(runs) + 1))
    for cell in cells:
        rows = [r["cells"].get(cell) for r in runs]
        print(f"| {cell} | " + " | ".join("-" if x is None else
                                          f"{x['ms']:.3f} ({x['wall_ms']:.2f}, {x['host_ms']:.2f}, {x['syncs']})"
                                          for x in rows) + " |")
    saved = {}
    for p in glob.glob(os.path.join(out, "tree_out_*.pt")):
        tag, cell = os.path.basename(p)[len("tree_out_"):-3].split("__")
        saved.setdefault(cell, {})[tag] = torch.load(p)
    for cell, by_tag in sorted(saved.items()):
        if len(by_tag) < 2:
            continue
        (ta, a), (tb, b) = list(by_tag.items())[:2]
        rel = ((a["scores"].double() - b["scores"].double()).abs() / b["scores"].double().abs().clamp_min(1e-12))
        print(f"{cell}: {ta} against {tb}: starts differing {int((a['starts'] != b['starts']).sum())}, o bitwise "
              f"{torch.equal(a['o'], b['o'])}, scores max relative difference {rel.max().item():.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", help="this tree's name in the results")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--delta", action="store_true", help="the delta-rule forward (beta given)")
    ap.add_argument("--cells", default=None, help=f"BxTxD:workload,... (default {SCALAR_CELLS}; --delta {DELTA_CELLS})")
    ap.add_argument("--save", action="store_true", help="keep o and the trace for --compare")
    ap.add_argument("--compare", metavar="DIR", help="compare the runs written to DIR, then exit")
    args = ap.parse_args()
    if args.compare:
        return compare(args.compare)
    if not torch.cuda.is_available() or not args.tag:
        raise SystemExit("tree_forward_ab.py: needs a CUDA GPU and --tag (or --compare DIR)")
    cells = args.cells or (DELTA_CELLS if args.delta else SCALAR_CELLS)
    result = dict(tag=args.tag, tree=dla_fast.__file__, card=torch.cuda.get_device_name(), cells={})
    print(args.tag, "tree", dla_fast.__file__, flush=True)
    for cell in cells.split(","):
        save_to = os.path.join(args.out, f"tree_out_{args.tag}__{cell.replace(':', '_')}.pt") if args.save else None
        result["cells"][cell] = row = measure(cell, args.delta, save_to)
        print(f"{args.tag} {cell}: {row['ms']:.3f} ms, wall {row['wall_ms']:.2f}, host {row['host_ms']:.2f}, "
              f"syncs {row['syncs']}", flush=True)
    with open(os.path.join(args.out, f"tree_ab_{args.tag}_{os.getpid()}.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
