#!/usr/bin/env python
"""The merge simulation (issue #11): the current ``dla_merge_kernel`` against the one it replaced, on the GPU.

    python benchmarks/merge_bench.py --out DIR        # ~1 minute on an H200

For (1, 65536, 16, 64, 64) and (2, 16384, 16, 64, 64), workloads sparse / moderate / dense of
``gpu_bench.py`` (bf16, K = 30, tau = 0.6): one Triton forward gives the merge stage's real inputs (each
chunk's boundary mask and the scores); then, from an empty cache,

1. correctness: every output of the kernel (deaths, merged pairs, live starts per chunk, final counts, float64
   information sums, sizes) bit for bit against the baseline (``benchmarks/merge_baseline.py``), for the
   default kernel (FAST: branch-free divisions and a warp ballot, inline PTX) and for FAST=False (plain
   ``/`` and reductions: the interpreter's path, which isolates the inline PTX if only FAST differs);
2. time per call (median of ``triton.testing.do_bench``) of the three (the current kernel's with the closing-slot
   tables' kernel it reads), and per boundary event of the busiest row (the rows run in parallel, one warp each, so
   the slowest row sets the time);
3. the pipelined forward (``TritonSettings(pipeline=True)``) against the serial one, bitwise, at 16K moderate.

Prints a compact table (us/event last) and writes ``merge_bench.json`` under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from gpu_bench import WORKLOADS, workload  # noqa: E402
from merge_baseline import dla_merge_kernel_baseline  # noqa: E402

from dla_fast.backend import interpreting  # noqa: E402
from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton  # noqa: E402
from dla_fast.ops.scalar_decay.chunk_fwd_decide import (  # noqa: E402
    CT_ROWS,
    dla_closing_tables_kernel,
    dla_merge_kernel,
)
from dla_fast.settings import TritonSettings  # noqa: E402

C = 64
K = 30
TAU = 0.6
CONFIGS = [(1, 65536, 16, 64, 64), (2, 16384, 16, 64, 64)]
FIELDS = ("death", "death0", "merged", "live", "livem", "fpos", "counts", "info", "size")


def merge_inputs(shape, wl):
    """``(masks [BH, NC] int64, scores [BH, NC*C] float32, T, BH)`` from one forward on the workload."""
    B, T, H, Dk, Dv = shape
    q, k, v, g, w = workload(B, T, H, Dk, Dv, K, **WORKLOADS[wl], seed=0)
    s = forward_scalar_decay_triton(q, k, v, g, w, tau=TAU)[3]
    torch.cuda.synchronize()
    return s.masks.contiguous(), s.scores.contiguous(), T, B * H


def buffers(BH, NC, dev):
    KP = max(1 << (K - 1).bit_length(), 2)
    big = 2**31 - 1
    return dict(
        death=torch.full((BH, NC * C), big, device=dev, dtype=torch.int32),
        death0=torch.full((BH, K), big, device=dev, dtype=torch.int32),
        merged=torch.full((BH, NC * C), -1, device=dev, dtype=torch.int64),
        live=torch.zeros(BH, NC, KP, device=dev, dtype=torch.int32),
        livem=torch.zeros(BH, NC, device=dev, dtype=torch.int32),
        fpos=torch.zeros(BH, KP, device=dev, dtype=torch.int32),
        counts=torch.zeros(BH, K, device=dev, dtype=torch.int64),
        info=torch.zeros(BH, K, device=dev, dtype=torch.float64),
        size=torch.zeros(BH, device=dev, dtype=torch.int64),
    )


def launcher(variant, masks, scores, T, BH):
    """``(run, outputs)``: ``run()`` resets the in/out cache (empty) and launches the variant's kernel once (with the
    closing-slot tables' kernel before it, but for the baseline, which has none)."""
    dev = masks.device
    NC = masks.shape[1]
    KP = max(1 << (K - 1).bit_length(), 2)
    o = buffers(BH, NC, dev)
    rlen = torch.full((BH,), T, device=dev, dtype=torch.int64)
    flag = torch.zeros(BH, device=dev, dtype=torch.int32)
    args = (masks, scores, rlen, o["counts"], o["info"], o["size"], o["death"], o["death0"], o["merged"], o["live"],
            o["livem"], o["fpos"], T, K, scores, scores, flag)
    tables = torch.empty(BH, NC, CT_ROWS, C, device=dev, dtype=torch.float64)

    def run():
        o["counts"].zero_()
        o["info"].zero_()
        o["size"].zero_()
        if variant == "baseline":
            dla_merge_kernel_baseline[(BH,)](*args, C=C, KP=KP, PIPE=False, num_warps=1)
        else:
            fast = variant == "new" and not interpreting()
            dla_closing_tables_kernel[(NC, BH)](masks, scores, rlen, tables, T, scores, scores, C=C, SCORES=False,
                                                FAST=fast, num_warps=1)
            dla_merge_kernel[(BH,)](*args, flag, tables, C=C, KP=KP, KW=max(KP, 32), PIPE=False, FAST=fast,
                                    num_warps=1)

    return run, o


def first_difference(a, b):
    bad = (a != b).nonzero()
    i = tuple(int(x) for x in bad[0])
    return f"{int(bad.shape[0])} entries differ, first at {i}: baseline {a[i].item()} vs {b[i].item()}"


def pipelined_equals_serial():
    q, k, v, g, w = workload(2, 16384, 16, 64, 64, K, **WORKLOADS["moderate"], seed=3)
    res = [forward_scalar_decay_triton(q, k, v, g, w, tau=TAU, settings=TritonSettings(pipeline=p))
           for p in (False, True)]
    torch.cuda.synchronize()
    a, b = res
    return bool(torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
                and all(torch.equal(x, y) for x, y in zip(a[2], b[2])))


def main():
    import triton

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--rep", type=int, default=200, help="do_bench's time budget per measurement, ms")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    rows = []
    ok = True
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    for shape in CONFIGS:
        for wl in ("sparse", "moderate", "dense"):
            masks, scores, T, BH = merge_inputs(shape, wl)
            bits = torch.stack([(masks >> i) & 1 for i in range(C)], -1).sum((1, 2))  # boundaries per row
            runs = {v: launcher(v, masks, scores, T, BH) for v in ("baseline", "new", "plain")}
            for run, _ in runs.values():
                run()
            torch.cuda.synchronize()
            base = runs["baseline"][1]
            row = dict(config=list(shape), workload=wl, events_max=int(bits.max()),
                       events_mean=float(bits.float().mean()), merges_max=int((base["merged"] >= 0).sum(1).max()))
            for v in ("new", "plain"):
                diffs = {f: first_difference(base[f], runs[v][1][f]) for f in FIELDS
                         if not torch.equal(base[f], runs[v][1][f])}
                row[f"{v}_bit_exact"] = not diffs
                row[f"{v}_diffs"] = diffs
                ok &= not diffs
            for v, (run, _) in runs.items():
                row[f"{v}_ms"] = float(triton.testing.do_bench(run, warmup=1, rep=args.rep, return_mode="median"))
            for v in runs:
                row[f"{v}_us_per_event"] = 1e3 * row[f"{v}_ms"] / max(row["events_max"], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    pipe_ok = pipelined_equals_serial()
    ok &= pipe_ok
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, rows=rows,
               pipelined_equals_serial=pipe_ok, all_ok=ok, seconds=time.time() - t_start)
    with open(os.path.join(args.out, "merge_bench.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"\npipelined forward == serial: {pipe_ok}; all bit-exact: {ok}; {res['seconds']:.0f} s\n")
    print("| config | workload | events/row max | exact new/plain | baseline ms | new ms | plain ms | speedup "
          "| baseline us/event | new us/event |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {tuple(r['config'][:2])} | {r['workload']} | {r['events_max']} "
              f"| {r['new_bit_exact']}/{r['plain_bit_exact']} | {r['baseline_ms']:.3f} | {r['new_ms']:.3f} "
              f"| {r['plain_ms']:.3f} | {r['baseline_ms'] / r['new_ms']:.1f}x "
              f"| {r['baseline_us_per_event']:.3f} | {r['new_us_per_event']:.3f} |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
