#!/usr/bin/env python
"""The delta rule's backward with its reverse pass on kernels against the torch pass, in one process: a training
step through the public API (``gpu_bench.py``'s delta cell: bf16, K = 30, FLA-style unit keys and betas), its time,
peak memory, the two passes' gradients against each other and where each backward's GPU time goes (CUDA ops).

The torch pass is forced by wrapping ``delta_rule_backward`` as ``dla_fast.autograd`` calls it (``kernels=False``).
A third variant takes the tables' cotangents by batched torch products (``chunk_bwd._COTANGENTS = "torch"``; the
default is their kernels since run 25); a fourth splits the values in the backward's slot-state walks as if they were
not exact in tf32 (as before run 26). (Runs 27-28's variants of the kernels' path, the checkpoints walked again, the
tables and their adjoint in torch or computed twice, the partition from the trace or in torch, were removed with
their switches in run 31; their measurements are in docs/performance.md.)
``--variants`` picks some of them (the torch pass always runs: the gradients are compared against it).
``--block-elements N,...`` adds a kernels variant per value of ``chunk_torch_bwd._BLOCK_ELEMENTS`` (the blocks of
chunks of the tables and their adjoint: ~350 torch operations per block, 8 blocks at (2, 16384, 16, 64) at the
default 2^22).

    python benchmarks/delta_backward_ab.py [--cells 2x16384x64:moderate,8x4096x64:moderate] [--block-elements N,...]
        [--variants kernels,kernels_cotangents_torch,...] [--out DIR]

Writes ``delta_backward_ab_<card>_<date>.json`` and ``delta_backward_ops_<card>_<date>.txt`` to DIR; the table is
printed last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import WORKLOADS, configs_named, delta_inputs, dla_gdn, grad_leaves, peak_gib_and_ms, wall_ms  # noqa: E402

import dla_fast.autograd as autograd  # noqa: E402
import dla_fast.ops.delta_rule.chunk_bwd as chunk_bwd  # noqa: E402
import dla_fast.ops.delta_rule.chunk_torch_bwd as chunk_torch_bwd  # noqa: E402

original = autograd.delta_rule_backward


def torch_pass(*args, **kw):
    """``delta_rule_backward`` with its reverse pass in torch, chunk by chunk."""
    return original(*args, **{**kw, "kernels": False})


def step(leaves, dO):
    for x in leaves:
        x.grad = None
    dla_gdn(*leaves)[0].backward(dO)
    return [x.grad.float() for x in leaves]


def ops_table(leaves, dO) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        step(leaves, dO)
        torch.cuda.synchronize()
    return p.key_averages().table(sort_by="cuda_time_total", row_limit=25)


def _configure(backward, block: int, cotangents: str, exact) -> None:
    """One variant's settings: the backward ``dla_fast.autograd`` calls, the tables' blocks, the cotangents' path,
    the test for values exact in tf32 (the backward's slot-state walks multiply them in one pass then)."""
    autograd.delta_rule_backward = backward
    chunk_torch_bwd._BLOCK_ELEMENTS, chunk_bwd._COTANGENTS, chunk_bwd.exact_in_tf32 = block, cotangents, exact


def cell(cfg, wname: str, ops_file, block_elements=(), names=None) -> dict:
    leaves = grad_leaves(*delta_inputs(*cfg, WORKLOADS[wname]))
    dO = torch.randn_like(leaves[2])
    row = dict(config=list(cfg), workload=wname)
    with torch.no_grad():  # the forward alone, so that the backward's share of a step shows
        dla_gdn(*leaves)
        row["forward_ms"] = sorted(wall_ms(lambda: dla_gdn(*leaves)) for _ in range(3))[1]
    grads = {}
    default = dict(backward=original, block=chunk_torch_bwd._BLOCK_ELEMENTS, cotangents=chunk_bwd._COTANGENTS,
                   exact=chunk_bwd.exact_in_tf32)
    variants = {"kernels": {}, "torch": dict(backward=torch_pass), "kernels_cotangents_torch": dict(cotangents="torch"),
                "kernels_values_split": dict(exact=lambda x: False)}
    variants.update({f"kernels_blocks_{n}": dict(block=n) for n in block_elements})
    if names:
        variants = {n: c for n, c in variants.items() if n in names or n == "torch"}
    try:
        for name, changes in variants.items():
            _configure(**{**default, **changes})
            grads[name] = step(leaves, dO)  # compiles outside the measurements
            peak, _ = peak_gib_and_ms(lambda: step(leaves, dO))
            ms = sorted(wall_ms(lambda: step(leaves, dO)) for _ in range(3))[1]
            row[name] = dict(fwd_bwd_ms=ms, peak_gib=peak)
            print(f"== {cfg} {wname} {name}: fwd+bwd {ms:.1f} ms, peak {peak:.2f} GiB", file=ops_file)
            print(ops_table(leaves, dO), file=ops_file, flush=True)
    finally:
        _configure(**default)
    rel = lambda xs, ys: [float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) for a, b in zip(xs, ys)]  # noqa: E731
    for name in grads:
        row[name]["max_rel_diff_vs_torch"] = dict(zip(("q", "k", "v", "g", "slot_weights", "beta"),
                                                      rel(grads[name], grads["torch"])))
        if "kernels" in grads:  # how far each variant moved the default's gradients
            row[name]["max_rel_diff_vs_kernels"] = max(rel(grads[name], grads["kernels"]))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="2x16384x64:moderate")
    ap.add_argument("--block-elements", default="", help="comma-separated values of _BLOCK_ELEMENTS to add")
    ap.add_argument("--variants", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_backward_ab.py: needs a CUDA GPU (the kernels' pass runs where the Triton kernels do)")
    card = torch.cuda.get_device_name().replace(" ", "_")
    stem = f"{card}_{datetime.date.today()}"
    os.makedirs(args.out, exist_ok=True)
    rows = []
    with open(os.path.join(args.out, f"delta_backward_ops_{stem}.txt"), "w") as ops_file:
        for item in args.cells.split(","):
            name, wname = item.split(":")
            blocks = [int(n) for n in args.block_elements.split(",") if n]
            names = [n for n in args.variants.split(",") if n]
            rows.append(cell(configs_named(name)[0], wname, ops_file, blocks, names))
            torch.cuda.empty_cache()
    with open(os.path.join(args.out, f"delta_backward_ab_{stem}.json"), "w") as f:
        json.dump(dict(card=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    print("| config | workload | forward ms | variant | fwd+bwd ms | peak GiB | max rel. difference vs torch pass | "
          "vs the default |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for name in [n for n in r if isinstance(r[n], dict) and "fwd_bwd_ms" in r[n]]:
            v = r[name]
            print(f"| {tuple(r['config'])} | {r['workload']} | {r['forward_ms']:.1f} | {name} | "
                  f"{v['fwd_bwd_ms']:.1f} | {v['peak_gib']:.2f} | {max(v['max_rel_diff_vs_torch'].values()):.1e} | "
                  f"{v.get('max_rel_diff_vs_kernels', float('nan')):.1e} |")


if __name__ == "__main__":
    main()
