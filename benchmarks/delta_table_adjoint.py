#!/usr/bin/env python
"""The delta rule backward's blocks of tables and their adjoint, alone, over every chunk of one cell, in one process:
torch (``wy_tables`` and ``wy_tables_adjoint`` in float32, as the backward ran them before run 27) against the kernels
(``output_tables_saved`` and ``wy_tables_adjoint_triton``, float64) at several warps of the adjoint kernel, in the
backward's blocks of chunks (``chunk_torch_bwd._BLOCK_ELEMENTS``). Random float32 cotangents of ``attn``, ``qt``,
``khd`` and ``Phi``; each variant's gradients against torch's float64 adjoint on the first block.

    python benchmarks/delta_table_adjoint.py [--cell 2x16384x64:moderate] [--variants 8x1x16,16x1x32] [--out DIR]
    python benchmarks/delta_table_adjoint.py --variants 16x1x32,8x1x32xtf32,8x1x32xtf32x128,8x1x32xbf16 --float32-tables

``--variants``: the adjoint kernel's ``WARPSxSTAGESxDOT_K[xOPERANDS[xMAXNREG]]`` (its products' loads in flight and
their reduction step; OPERANDS ``float64`` (default), ``tf32``, ``bf16``: ``wy_tables_adjoint_triton(operands=)``, the
16-bit inputs' path; MAXNREG a register cap). ``--float32-tables``: each variant whose operands are not float64 also
with the tables and scratch of the float32 table kernel (``output_tables_rows_f32(save=True)``, the backward's
``FLOAT32_SAVED_TABLES_16BIT``). The table kernels alone are timed too.
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
from dla_fast.ops.delta_rule.wy_tables_f32_triton import output_tables_rows_f32  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_saved  # noqa: E402

C = 64
OPERANDS = {"float64": torch.float64, "tf32": torch.float32, "bf16": torch.bfloat16}


def torch_blocks(blocks, dtype):
    return [wy_tables_adjoint(*(x.to(dtype) for x in inp), *wy_tables(*(x.to(dtype) for x in inp), scores=False), cot)
            for inp, cot in blocks]


def saved_f32(q, k, g, b):
    """``output_tables_saved``'s ``(tables, saved)`` of chunk-major ``[nb, R, C, ...]`` inputs by the float32 table
    kernel (each chunk a row of its own, as ``output_tables_saved`` launches them)."""
    nb, R = k.shape[:2]
    as_rows = lambda x: x.contiguous().view(nb * R, C, 1, *x.shape[3:])  # noqa: E731
    tables, saved = output_tables_rows_f32(*(as_rows(x) for x in (q, k, g, b)), 0, 1, save=True)
    as_blocks = lambda d: {n: t.view(nb, R, *t.shape[2:]) for n, t in d.items()}  # noqa: E731
    return as_blocks(tables), as_blocks(saved)


def kernel_blocks(blocks, warps, stages, dot_k, operands=torch.float64, maxnreg=None, float32_tables=False):
    tables = saved_f32 if float32_tables else output_tables_saved
    return [wy_tables_adjoint_triton(inp[2], *tables(*inp), cot, num_warps=warps, stages=stages, dot_k=dot_k,
                                     operands=operands, maxnreg=maxnreg) for inp, cot in blocks]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x64:moderate")
    ap.add_argument("--variants", default="8x1x16,8x1x32,16x1x16,16x1x32")
    ap.add_argument("--float32-tables", action="store_true")
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
    if args.float32_tables:
        f32_alone = lambda: [saved_f32(*inp) for inp, _ in blocks]  # noqa: E731
        rows.append(dict(variant="the float32 table kernel alone (saving)", ms=bench_ms(f32_alone, rep=20),
                         vs_float64=float("nan")))
    for item in args.variants.split(","):
        parts = item.split("x")
        warps, stages, dot_k = (int(n) for n in parts[:3])
        operands = parts[3] if len(parts) > 3 else "float64"
        maxnreg = int(parts[4]) if len(parts) > 4 else None
        f32 = [False, True] if args.float32_tables and operands != "float64" else [False]
        for float32_tables in f32:
            kw = dict(operands=OPERANDS[operands], maxnreg=maxnreg, float32_tables=float32_tables)
            rows.append(dict(variant=f"kernels, adjoint at {warps} warps, {stages} stages, steps of {dot_k}, "
                                     f"{operands} operands, register cap {maxnreg}"
                                     + (", float32 tables" if float32_tables else ""),
                             ms=bench_ms(lambda kw=kw: kernel_blocks(blocks, warps, stages, dot_k, **kw), rep=20),
                             vs_float64=max_rel(kernel_blocks(blocks[:1], warps, stages, dot_k, **kw)[0], want)))
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
