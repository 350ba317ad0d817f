#!/usr/bin/env python
"""The delta rule backward's blocks of tables and their adjoint, alone, over every chunk of one cell, in one process:
torch (``wy_tables`` and ``wy_tables_adjoint`` in float32, as the backward ran them before run 27) against the kernels
(``output_tables_saved`` and ``wy_tables_adjoint_triton``, float64) at several warps of the adjoint kernel, in the
backward's blocks of chunks (``chunk_torch_bwd._BLOCK_ELEMENTS``). Random float32 cotangents of ``attn``, ``qt``,
``khd`` and ``Phi``; each variant's gradients against torch's float64 adjoint on the first block.

    python benchmarks/delta_table_adjoint.py [--cell 2x16384x64:moderate] [--variants 8x1x16,16x1x32] [--out DIR]

``--variants``: the adjoint kernel's ``WARPSxSTAGESxDOT_K`` (its products' loads in flight and their reduction
step). The table kernel alone (its output mode with the scratch kept) is timed too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delta_table_kernel import cell_inputs, chunk_major, max_rel  # noqa: E402
from gpu_bench import bench_ms  # noqa: E402

from dla_fast.ops.delta_rule import chunk_torch_bwd  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables import wy_tables, wy_tables_adjoint  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_adjoint_triton import wy_tables_adjoint_triton  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_saved  # noqa: E402

C = 64


def torch_blocks(blocks, dtype):
    return [wy_tables_adjoint(*(x.to(dtype) for x in inp), *wy_tables(*(x.to(dtype) for x in inp), scores=False), cot)
            for inp, cot in blocks]


def kernel_blocks(blocks, warps, stages, dot_k):
    return [wy_tables_adjoint_triton(inp[2], *output_tables_saved(*inp), cot, num_warps=warps, stages=stages,
                                     dot_k=dot_k) for inp, cot in blocks]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x64:moderate")
    ap.add_argument("--variants", default="8x1x16,8x1x32,16x1x16,16x1x32")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_table_adjoint.py: needs a CUDA GPU")
    cfg, q, k, g, beta = cell_inputs(args.cell)
    qc, kc, gc, bc = (chunk_major(x) for x in (q, k, g, beta))
    qc, kc = qc.float(), kc.float()  # the backward's compute dtype
    nC, R = kc.shape[:2]
    block = max(1, chunk_torch_bwd._BLOCK_ELEMENTS // (R * C * C))
    gen = torch.Generator(device=kc.device).manual_seed(0)
    blocks = []
    for b0 in range(0, nC, block):
        inp = [x[b0:b0 + block] for x in (qc, kc, gc, bc)]
        shapes = dict(attn=(C, C), qt=(C, kc.shape[-1]), khd=(C, kc.shape[-1]), Phi=(kc.shape[-1],) * 2)
        cot = {n: torch.randn(inp[1].shape[:2] + s, generator=gen, device=kc.device) for n, s in shapes.items()}
        blocks.append((inp, cot))
    want = torch_blocks(blocks[:1], torch.float64)[0]
    rows = [dict(variant="torch float32", ms=bench_ms(lambda: torch_blocks(blocks, torch.float32), rep=20),
                 vs_float64=max_rel(torch_blocks(blocks[:1], torch.float32)[0], want))]
    print(rows[-1], flush=True)
    tables_alone = lambda: [output_tables_saved(*inp) for inp, _ in blocks]  # noqa: E731
    rows.append(dict(variant="the table kernel alone", ms=bench_ms(tables_alone, rep=20), vs_float64=float("nan")))
    for item in args.variants.split(","):
        warps, stages, dot_k = (int(n) for n in item.split("x"))
        rows.append(dict(variant=f"kernels, adjoint at {warps} warps, {stages} stages, steps of {dot_k}",
                         ms=bench_ms(lambda: kernel_blocks(blocks, warps, stages, dot_k), rep=20),
                         vs_float64=max_rel(kernel_blocks(blocks[:1], warps, stages, dot_k)[0], want)))
        print(rows[-1], flush=True)
    card = torch.cuda.get_device_name()
    with open(os.path.join(args.out, f"delta_table_adjoint_{card.replace(' ', '_')}_{datetime.date.today()}.json"),
              "w") as f:
        json.dump(dict(card=card, cell=args.cell, block_chunks=block, rows=rows), f, indent=1)
    print(f"{card}, {cfg}, {nC} chunks x {R} rows in blocks of {block} chunks: tables and adjoint")
    print("| variant | ms | max rel. difference vs torch float64 (first block) |")
    print("| --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['ms']:.2f} | {r['vs_float64']:.1e} |")


if __name__ == "__main__":
    main()
