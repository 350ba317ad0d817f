#!/usr/bin/env python
"""The tables' adjoint kernel (``wy_tables_adjoint_triton``) at several head widths, each precision and both sources of
its tables and scratch (the float64 table kernel's, ``output_tables_saved``; the float32 one's,
``output_tables_rows_f32(save=True)`` as ``delta_table_adjoint.saved_f32`` launches it, up to 64 features), at the
launch the library takes: per gradient, the largest difference from torch autograd through ``wy_tables`` in float64,
relative to the gradient's largest entry, and how far two launches on the same inputs differ (a race would show there).
Run 77 found wrong gradients on an H100 with tf32 operands at 16 warps and, on the float32 tables, at 32 features;
this checks the widths the tests do not reach. On a GPU only: Triton's interpreter multiplies bf16 operands wrongly (the
tests patch it: ``conftest._bf16_dots``).

    python benchmarks/delta_adjoint_widths.py [--widths 16,32,64,128] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delta_table_adjoint import saved_f32  # noqa: E402

from dla_fast.ops.delta_rule.wy_tables import wy_tables  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_adjoint_triton import wy_tables_adjoint_triton  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_saved  # noqa: E402

WRONG = 0.05  # far above every precision's rounding (bf16 operands: ~3e-3)


def table_inputs(Dk: int, seed: int):
    """Chunk-major float64 ``q, k [2, 3, 64, Dk]`` (unit rows), ``g, b [2, 3, 64]``, and the generator."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.nn.functional.normalize(torch.randn(2, 3, 64, Dk, generator=gen, dtype=torch.float64), dim=-1)
            for _ in range(2))
    g = -0.2 * torch.rand(2, 3, 64, generator=gen, dtype=torch.float64)
    b = torch.rand(2, 3, 64, generator=gen, dtype=torch.float64)
    return q, k, g, b, gen


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="16,32,64,128")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = args.device
    for Dk in (int(n) for n in args.widths.split(",")):
        q, k, g, b, gen = table_inputs(Dk, Dk)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, g, b)]
        want_tables, _ = wy_tables(*leaves, scores=False)
        cot = {n: torch.randn(want_tables[n].shape, generator=gen).float() for n in ("attn", "qt", "khd", "Phi")}
        want = torch.autograd.grad(sum((cot[n].double() * want_tables[n]).sum() for n in cot), leaves)
        cot = {n: c.to(dev) for n, c in cot.items()}
        sources = [("float64 tables", output_tables_saved(*(x.to(dev) for x in (q, k, g, b)), dtype=torch.float32))]
        if Dk <= 64:
            sources.append(("float32 tables", saved_f32(*(x.float().to(dev) for x in (q, k, g, b)))))
        for source, (tab, saved) in sources:
            for operands in (torch.float64, torch.float32, torch.bfloat16):
                runs = [wy_tables_adjoint_triton(g.to(dev), tab, saved, cot, operands=operands) for _ in range(2)]
                err = [((a.cpu().double() - w).abs().max() / w.abs().max()).item() for a, w in zip(runs[0], want)]
                apart = max((x - y).abs().max().item() for x, y in zip(*runs))
                flag = "  <-- WRONG" if max(err) > WRONG else ""
                print(f"Dk {Dk:3d} {source}, {str(operands)[6:]:8s} operands: dq {err[0]:.1e}  dk {err[1]:.1e}  "
                      f"dg {err[2]:.1e}  db {err[3]:.1e}  (two launches apart by {apart:.1e}){flag}", flush=True)


if __name__ == "__main__":
    main()
