#!/usr/bin/env python
"""The delta backward's pair adjoint kernel (``chunk_bwd_pairs.pair_adjoint``) at several launch settings, on one
segment's real inputs captured from a training step through ``dla_fast.forward``: each setting's time (``do_bench``,
with the cotangents' clones, timed alone too) and whether its results are the default's bits.

    python benchmarks/delta_pair_adjoint_sweep.py [--cell 2x16384x64:moderate] [--settings 8x32,4x32,8x16,8x64]

``--settings``: ``WARPSxBLOCK_V`` pairs (``pair_adjoint(num_warps=, block_v=)``), the first the reference.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, bench_ms, configs_named, delta_inputs, grad_leaves  # noqa: E402

import dla_fast  # noqa: E402
from dla_fast.ops.delta_rule import chunk_bwd_pairs  # noqa: E402


def captured_segment(cell: str):
    """``(args, cot, grads)`` of the first ``pair_adjoint`` call of one training step at ``cell`` (copies)."""
    cname, wname = cell.split(":")
    x = delta_inputs(*configs_named(cname)[0], WORKLOADS[wname])
    leaves = grad_leaves(*x)
    seen, real = [], chunk_bwd_pairs.pair_adjoint

    def keep(*a, **kw):
        if not seen:
            copy = lambda d: {n: t.clone() for n, t in d.items()}  # noqa: E731
            seen.append(([t.clone() if torch.is_tensor(t) else t for t in a[:10]], copy(a[10]), copy(a[11])))
        return real(*a, **kw)

    chunk_bwd_pairs.pair_adjoint = keep
    try:
        o = dla_fast.forward(*leaves[:5], tau=TAU, beta=leaves[5], output_final_cache=False)[0]
        o.backward(torch.randn_like(o))
    finally:
        chunk_bwd_pairs.pair_adjoint = real
    return seen[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x64:moderate")
    ap.add_argument("--settings", default="8x32,4x32,8x16,8x64,4x16,4x64")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_pair_adjoint_sweep.py: needs a CUDA GPU")
    (inputs, cot0, grads0) = captured_segment(args.cell)
    fresh = lambda d: {n: t.clone() for n, t in d.items()}  # noqa: E731
    reference = None
    print(f"the cotangents' clones alone: {bench_ms(lambda: fresh(cot0), rep=50) * 1e3:.1f} us")
    for setting in args.settings.split(","):
        warps, block_v = (int(v) for v in setting.split("x"))
        cot, grads = fresh(cot0), fresh(grads0)
        try:
            chunk_bwd_pairs.pair_adjoint(*inputs, cot, grads, num_warps=warps, block_v=block_v)
            got = [*cot.values(), *grads.values()]
            reference = reference or got
            same = all(torch.equal(a, b) for a, b in zip(got, reference))
            us = 1e3 * bench_ms(lambda: chunk_bwd_pairs.pair_adjoint(*inputs, fresh(cot0), fresh(grads0),
                                                                     num_warps=warps, block_v=block_v), rep=50)
            print(f"warps {warps}, block_v {block_v}: {us:.1f} us a segment with the clones; "
                  f"the first setting's bits: {same}", flush=True)
        except Exception as e:  # noqa: BLE001 (a setting that does not build is reported)
            print(f"warps {warps}, block_v {block_v}: {repr(e)[:200]}", flush=True)


if __name__ == "__main__":
    main()
