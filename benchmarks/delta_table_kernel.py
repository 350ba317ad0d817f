#!/usr/bin/env python
"""The delta rule's WY table kernel alone (``wy_tables_triton``), both modes, over every chunk of one cell in one
launch, at several (warps, load stages), in one process: the output stage's tables (``output_tables_rows``: the
API's inputs read in place, float32 tables) and the decisions' (``score_tables_triton``: float64 chunk-major
inputs). Each variant's tables against the first variant's, and the output tables of the first 8 chunks against
torch's float64 ``wy_tables``. Run 26 (H200, (2, 16384, 16, 64)): output tables 2.83 ms at 8 warps, decisions'
1.87 ms at 4.

    python benchmarks/delta_table_kernel.py [--cell 2x16384x64:moderate] [--variants 4x1,8x1,8x2,8x3] [--f32 4,8]
                                            [--out DIR]

``--variants``: ``WARPSxSTAGES`` pairs (``stages``: the products' loads in flight; 1 compiles without
asynchronous copies), optionally ``xKEYBLOCK`` and ``xMAXNREG`` for the decisions' tables (``4x1x16x168``: key
blocks of 16, 168 registers a thread; 0: none). Run 66 (H100): none faster than the default (2.03 ms; 2.44-3.64),
nor ``K K^T`` and ``akap`` made 16 rows at a time (2.45 ms: removed).
``--f32``: also the output tables computed in float32 (``wy_tables_f32_triton``, the forward's up to 64 features
since run 45) at each number of warps, timed and compared with the first variant's float64 tables (``4p``: four
warps, every product tf32x3, as before run 55; else bf16 products of the keys and queries where they are bf16).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, bench_ms, configs_named, delta_inputs  # noqa: E402

from dla_fast.ops.delta_rule.wy_tables import wy_tables  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_f32_triton import output_tables_rows_f32  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_rows, score_tables_triton  # noqa: E402

C = 64


def chunk_major(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, *F]`` (T a multiple of C) as float64 ``[nC, B H, C, *F]``."""
    B, T, H = x.shape[:3]
    y = x.double().reshape(B, T // C, C, H, *x.shape[3:]).movedim(3, 2)
    return y.movedim(1, 0).reshape(T // C, B * H, C, *x.shape[3:]).contiguous()


def cell_inputs(cell: str):
    """``(config, q, k, g, beta)`` of a ``BxTxD:workload`` cell (``gpu_bench``'s delta-rule inputs)."""
    name, wname = cell.split(":")
    cfg = configs_named(name)[0]
    q, k, _, g, _, beta = delta_inputs(*cfg, WORKLOADS[wname])
    return cfg, q, k, g, beta


def max_rel(got, want) -> float:
    return max(float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-300))
               for a, b in zip(got, want))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x64:moderate")
    ap.add_argument("--variants", default="4x1,8x1,4x2,8x2,8x3")
    ap.add_argument("--f32", default="", help="warps of the float32 output-table kernel to time, comma-separated "
                    "(suffix p: every product tf32x3, split16=False)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_table_kernel.py: needs a CUDA GPU")
    cfg, q, k, g, beta = cell_inputs(args.cell)
    nC = q.shape[1] // C
    kc, gc, bc = (chunk_major(x) for x in (k, g, beta))
    rows, first = [], None
    for item in args.variants.split(","):
        given = [int(n) for n in item.split("x")]
        # (unnamed trailing fields take their defaults: until run 66 a key block alone padded the register cap with 64)
        warps, stages, key_block, maxnreg = given + [4, 1, 64, 0][len(given):]
        outputs = lambda: output_tables_rows(q, k, g, beta, 0, nC, dtype=torch.float32, num_warps=warps,  # noqa: E731
                                             stages=stages)
        scores = lambda: score_tables_triton(kc, gc, bc, num_warps=warps, stages=stages,  # noqa: E731
                                             key_block=key_block, maxnreg=maxnreg or None)
        got = (list(outputs().values()), list(scores()))
        first = first or got
        rows.append(dict(warps=warps, stages=stages, key_block=key_block, maxnreg=maxnreg,
                         output_ms=bench_ms(outputs, rep=50), scores_ms=bench_ms(scores, rep=50),
                         output_vs_first=max_rel(got[0], first[0]), scores_vs_first=max_rel(got[1], first[1])))
        print(rows[-1], flush=True)
    for item in [n for n in args.f32.split(",") if n]:
        warps, split16 = int(item.rstrip("p")), False if item.endswith("p") else None
        f32 = lambda: output_tables_rows_f32(q, k, g, beta, 0, nC, num_warps=warps, split16=split16)  # noqa: E731
        rows.append(dict(f32_warps=item, output_ms=bench_ms(f32, rep=50),
                         output_vs_first=max_rel(list(f32().values()), first[0])))
        print(rows[-1], flush=True)
    want, _ = wy_tables(chunk_major(q)[:8], kc[:8], gc[:8], bc[:8])
    tab = output_tables_rows(q, k, g, beta, 0, 8, dtype=torch.float64)
    vs_torch = {n: max_rel([tab[n]], [want[n]]) for n in ("attn", "qt", "Phi")}
    card = torch.cuda.get_device_name()
    with open(os.path.join(args.out, f"delta_table_kernel_{card.replace(' ', '_')}_{datetime.date.today()}.json"),
              "w") as f:
        json.dump(dict(card=card, cell=args.cell, rows=rows, vs_torch_float64=vs_torch), f, indent=1)
    print(f"{card}, {cfg}, all {nC} chunks x {cfg[0] * cfg[2]} rows in one launch; the first 8 chunks' output "
          f"tables against torch float64: {vs_torch}")
    print("| warps | stages | key block, registers | output tables ms | decisions' tables ms | vs first "
          "(outputs / decisions) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "f32_warps" in r:
            print(f"| {r['f32_warps']} (float32) | - | - | {r['output_ms']:.2f} | - | {r['output_vs_first']:.1e} / - |")
        else:
            launch = f"{r['key_block']}, {r['maxnreg'] or '-'}"
            print(f"| {r['warps']} | {r['stages']} | {launch} | {r['output_ms']:.2f} | {r['scores_ms']:.2f} | "
                  f"{r['output_vs_first']:.1e} / {r['scores_vs_first']:.1e} |")


if __name__ == "__main__":
    main()
