#!/usr/bin/env python
"""Launch settings of two delta-rule kernel families, each timed at several settings in one process against its
defaults (H200, run 28): kernel B's start-slot kernel (``table_cotangents``' ``start_block``, ``start_warps``,
``start_stages``) on one segment of 16 chunks of random slot states and adjoints, and the decisions a chunk at a time
(``decide_delta_rule_wy``'s warps, stages, groups and blocks) on a benchmark workload. Outputs are compared with the
defaults' (kernel B: the largest difference over the largest entry; the decisions: equal or not). The slot-state
kernels' shapes: ``delta_chain_kernel.py --launch``.

    python benchmarks/delta_launch_settings.py [--cell 2x16384x64:moderate] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, bench_ms, configs_named, delta_inputs  # noqa: E402

from dla_fast.ops.delta_rule.chunk_bwd_cotangents import table_cotangents  # noqa: E402
from dla_fast.ops.delta_rule.chunk_fwd_decide_wy import decide_delta_rule_wy  # noqa: E402

KERNEL_B = [dict(), dict(start_block=64, start_warps=8, start_stages=2), dict(start_block=64, start_warps=4),
            dict(start_block=32, start_warps=8), dict(start_block=32, start_stages=2), dict(start_block=16)]
DECISIONS = [dict(), dict(chain_warps=4), dict(chain_warps=16), dict(chain_stages=1), dict(chain_stages=3),
             dict(pair_group=4), dict(pair_group=8), dict(pair_tokens=8), dict(table_warps=8), dict(chain_block=32)]


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def kernel_b(cfg) -> list:
    """``table_cotangents`` on 16 chunks of ``cfg``'s rows with every start slot listed (one merge) and the tokens
    landing in the last few slots, as a full cache's chunks do."""
    B, T, H, Dk, Dv = cfg
    n, R, K, C = 16, B * H, 30, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    dest_f = torch.arange(K, device="cuda").expand(n, R, K).contiguous()
    dest_f[..., 3] = 2
    dest = torch.randint(K - 4, K, (n, R, C), device="cuda", generator=gen)
    args = (rand(n, R, K, Dk, Dv), rand(n, R, K, Dk, Dv), dest_f, dest, torch.rand(n, R, C, K, device="cuda",
            generator=gen), rand(n, R, C, Dk), rand(n, R, C, Dv), rand(n, R, C, Dk), rand(n, R, C, Dv))
    ref = table_cotangents(*args)
    rows = []
    for kw in KERNEL_B:
        row = dict(settings=kw)
        try:
            row["max_rel_diff"] = max(_rel(a, b) for a, b in zip(table_cotangents(*args, **kw), ref))
            row["ms"] = bench_ms(lambda: table_cotangents(*args, **kw), rep=20)
        except Exception as e:  # noqa: BLE001 (a setting that does not build)
            row["error"] = repr(e)[:200]
        rows.append(row)
        print("kernel B", row, flush=True)
    return rows


def decisions(cfg, wname: str) -> list:
    """``decide_delta_rule_wy`` on the workload's inputs from an empty cache."""
    B, T, H, Dk, Dv = cfg
    q, k, v, g, w, beta = delta_inputs(*cfg, WORKLOADS[wname])

    def run(**kw):
        P = torch.zeros(B, H, Dk, Dv, device="cuda", dtype=torch.float64)
        size = torch.zeros(B, H, device="cuda", dtype=torch.int64)
        return decide_delta_rule_wy(k, v, g, beta, open_states=P, size=size, tau=TAU, **kw)

    ref = run()
    rows = []
    for kw in DECISIONS:
        row = dict(settings=kw)
        try:
            row["equal"] = all(torch.equal(a, b) for a, b in zip(run(**kw), ref))
            row["ms"] = bench_ms(lambda: run(**kw), rep=20)
        except Exception as e:  # noqa: BLE001
            row["error"] = repr(e)[:200]
        rows.append(row)
        print("decisions", row, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x64:moderate")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_launch_settings.py: needs a CUDA GPU")
    name, wname = args.cell.split(":")
    cfg = configs_named(name)[0]
    out = dict(card=torch.cuda.get_device_name(), cell=args.cell, kernel_b=kernel_b(cfg),
               decisions=decisions(cfg, wname))
    card = torch.cuda.get_device_name().replace(" ", "_")
    with open(os.path.join(args.out, f"delta_launch_settings_{card}_{datetime.date.today()}.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
