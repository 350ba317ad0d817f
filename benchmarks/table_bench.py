#!/usr/bin/env python
"""The table stage (issue #11): the current ``dla_table_kernel`` against the one it replaced, on the GPU.

    python benchmarks/table_bench.py --out DIR        # ~1 minute on an H200

At (2, 16384), (1, 65536), (8, 4096) with Dk = Dv = 64 and (8, 4096) with 128 (H = 16, bf16, moderate workload of
``gpu_bench.py``, tau = 0.6), the kernel alone (no side stream competing, unlike ``gpu_bench.py``'s stage profile):

1. correctness: the folded table unfolded against the baseline's lower triangle (``benchmarks/table_baseline.py``),
   the orbits, the carry vectors and the chunk decays, bit for bit (the max |difference| is printed if not;
   table entries may differ by a few ulps: the fold reads X from the other of Triton's two scans of it,
   docs/performance.md "Table stage");
2. time per launch (median of ``triton.testing.do_bench``) of the baseline, the new kernel as launched
   (``maxnreg=128``) and without the register cap.

Prints one line per config and writes ``table_bench.json`` under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from gpu_bench import WORKLOADS, workload  # noqa: E402
from table_baseline import dla_table_kernel_baseline  # noqa: E402

from dla_fast.ops.common.triton_utils import block_sizes  # noqa: E402
from dla_fast.ops.scalar_decay.chunk_fwd import _score_tables, launch_config  # noqa: E402
from dla_fast.ops.scalar_decay.chunk_fwd_decide import dla_table_kernel  # noqa: E402
from dla_fast.settings import DEFAULT_SETTINGS  # noqa: E402

C = 64
K = 30
TAU = 0.6
CONFIGS = [(2, 16384, 16, 64, 64), (1, 65536, 16, 64, 64), (8, 4096, 16, 64, 64), (8, 4096, 16, 128, 128)]


def unfold_index(dev):
    """``(t, p, offset)`` of every p < t: where the folded table keeps I[t, p] (``table_offset``)."""
    t, p = torch.tril_indices(C, C, -1, device=dev)
    off = torch.where(t >= C // 2, (t - C // 2) * C + p, (C // 2 - t) * C + p + C - t)
    return t, p, off


def main():
    import triton

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--rep", type=int, default=200, help="do_bench's time budget per measurement, ms")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    rows, ok = [], True
    for shape in CONFIGS:
        B, T, H, Dk, Dv = shape
        q, k, v, g, w = workload(B, T, H, Dk, Dv, K, **WORKLOADS["moderate"], seed=0)
        cfg = launch_config(q, v, w)
        rl = torch.full((cfg.BH,), T, device=q.device, dtype=torch.int32)
        new = _score_tables(cfg, k, v, g, rl, TAU, 1e-6, 1e-6, False, DEFAULT_SETTINGS)
        BK, BVF, _ = block_sizes(Dk, Dv)
        old = (torch.empty(cfg.BH, cfg.NC, C, C, device=q.device), torch.empty_like(new[1]), torch.empty_like(new[2]),
               torch.empty_like(new[3]))
        const = dict(C=C, BK=BK, BVF=BVF, NEED_ANC=True, LOWP=cfg.lowp, PREC=DEFAULT_SETTINGS.table_precision, LOGC=6,
                     SCAN=True, num_warps=8)
        scal = (T, H, Dk, Dv, TAU, 1e-6, 1e-6)

        def base():
            dla_table_kernel_baseline[(cfg.NC, cfg.BH)](k, v, g, rl, *old, *scal, **const)

        def current():
            _score_tables(cfg, k, v, g, rl, TAU, 1e-6, 1e-6, False, DEFAULT_SETTINGS)

        def uncapped():
            dla_table_kernel[(cfg.NC, cfg.BH)](k, v, g, rl, *new, *scal, **const)

        base()
        torch.cuda.synchronize()
        t, p, off = unfold_index(q.device)
        got = new[0].reshape(cfg.BH, cfg.NC, C * C // 2)[:, :, off]
        want = old[0][:, :, t, p]
        row = dict(config=list(shape), table_equal=bool(torch.equal(got, want)),
                   table_maxdiff=float((got - want).abs().max()), orbits_equal=bool(torch.equal(new[1], old[1])),
                   cvec_equal=bool(torch.equal(new[2], old[2])), decay_equal=bool(torch.equal(new[3], old[3])))
        ok &= row["table_equal"] and row["orbits_equal"] and row["cvec_equal"] and row["decay_equal"]
        for name, fn in (("baseline", base), ("new", current), ("new_uncapped", uncapped)):
            row[name + "_ms"] = triton.testing.do_bench(fn, rep=args.rep, return_mode="median")
        table_mb = new[0].numel() * 4 / 1e6
        row["bytes_mb"] = (k.numel() * k.element_size() + v.numel() * v.element_size()) / 1e6 + table_mb + \
            (new[1].numel() * 8 + new[2].numel() * 4) / 1e6
        rows.append(row)
        print(f"{shape} base {row['baseline_ms']:.3f} ms  new {row['new_ms']:.3f}  uncapped "
              f"{row['new_uncapped_ms']:.3f}  ({row['bytes_mb']:.0f} MB)  equal: table {row['table_equal']} (max diff "
              f"{row['table_maxdiff']:.2e}) orbits {row['orbits_equal']} cvec {row['cvec_equal']} decay "
              f"{row['decay_equal']}", flush=True)
    with open(os.path.join(args.out, "table_bench.json"), "w") as f:
        json.dump(dict(rows=rows, ok=bool(ok)), f, indent=1)
    print("ALL EQUAL" if ok else "DIFFERENCES (see above)")


if __name__ == "__main__":
    main()
