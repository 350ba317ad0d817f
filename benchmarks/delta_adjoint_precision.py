#!/usr/bin/env python
"""The delta backward's gradients with the tables' adjoint in 16-bit operands against the same backward with it in
float64 (``chunk_torch_bwd.ADJOINT_16BIT_OPERANDS``), with the reruns', kernel A's and kernel B's products in one
tf32 pass (``ONE_PASS_CHAINS_16BIT``) and with the float32 tables (``FLOAT32_SAVED_TABLES_16BIT``), on one training
step's bf16 inputs through ``dla_fast.forward``: per gradient, the largest difference relative to its largest entry,
and the same for float32 copies of the inputs (whose backward keeps float64 and split products) against the bf16
run's float64-adjoint gradients: the bf16 inputs' own spread.

    python benchmarks/delta_adjoint_precision.py [--cell 2x16384x64:moderate]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, configs_named, delta_inputs, grad_leaves  # noqa: E402

import dla_fast  # noqa: E402
from dla_fast.ops.delta_rule import chunk_torch_bwd  # noqa: E402

NAMES = ("dq", "dk", "dv", "dg", "dw", "dbeta")


def gradients(x, dO, operands, one_pass=False, float32_tables=False):
    """The six gradients of one step, the 16-bit inputs' tables adjoint in ``operands``, their chains' products in
    one tf32 pass where ``one_pass``, their tables from the float32 kernel where ``float32_tables``."""
    chunk_torch_bwd.ADJOINT_16BIT_OPERANDS = operands
    chunk_torch_bwd.ONE_PASS_CHAINS_16BIT = one_pass
    chunk_torch_bwd.FLOAT32_SAVED_TABLES_16BIT = float32_tables
    leaves = grad_leaves(*x)
    dla_fast.forward(*leaves[:5], tau=TAU, beta=leaves[5], output_final_cache=False)[0].backward(dO.to(x[0].dtype))
    return [t.grad.double() for t in leaves]


def spread(got, want) -> str:
    """Each gradient's largest difference relative to its largest entry."""
    rel = [(a - w).abs().max().item() / w.abs().max().item() for a, w in zip(got, want)]
    return "  ".join(f"{n} {r:.2e}" for n, r in zip(NAMES, rel))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", default="2x16384x64:moderate")
    args = ap.parse_args()
    cname, wname = args.cell.split(":")
    x = delta_inputs(*configs_named(cname)[0], WORKLOADS[wname])
    dO = torch.randn_like(x[2], dtype=torch.float32)
    f64 = gradients(x, dO, torch.float64)
    print(f"{args.cell} bf16 inputs, adjoint bf16 against float64:  {spread(gradients(x, dO, torch.bfloat16), f64)}")
    print(f"{args.cell} bf16 inputs, adjoint tf32 against float64:  {spread(gradients(x, dO, torch.float32), f64)}")
    one = spread(gradients(x, dO, torch.float32, one_pass=True), f64)
    print(f"{args.cell} bf16 inputs, adjoint tf32, chains one tf32 pass, against float64:  {one}")
    f32 = spread(gradients(x, dO, torch.float32, float32_tables=True), f64)
    print(f"{args.cell} bf16 inputs, adjoint tf32, float32 saved tables, against float64:  {f32}")
    both = spread(gradients(x, dO, torch.float32, one_pass=True, float32_tables=True), f64)
    print(f"{args.cell} bf16 inputs, adjoint tf32, both switches (the default since run 77), against float64:  {both}")
    x32 = [t.float() for t in x]
    print(f"{args.cell} float32 inputs against bf16 inputs' float64: {spread(gradients(x32, dO, torch.float64), f64)}")


if __name__ == "__main__":
    main()
