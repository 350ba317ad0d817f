#!/usr/bin/env python
"""The scalar-decay Triton backward, timed and fingerprinted, for comparisons between trees or settings.

    python benchmarks/backward_ab.py --out FILE.json [--variants default,bwd_warps=8]

Per cell of ``CELLS`` (bf16, K = 30, gpu_bench's workloads and seed): fwd+bwd through ``dla_fast.forward``, then
from one forward's kept structure the backward alone under each variant of ``TritonSettings`` (``default`` or
``field=value[;field=value]``), its stage times and a fingerprint of every gradient (three integer hashes of the
bit patterns: equal fingerprints mean bitwise-equal gradients in practice). Run it in two trees' roots (an old
tree from ``git archive``) in one device call to compare them; variants compare settings in one process.
Used in docs/benchmarks.md run 22.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, WORKLOADS, api_forward, bench_ms, dla_fwd_bwd, grad_leaves, workload  # noqa: E402

from dla_fast.settings import DEFAULT_SETTINGS  # noqa: E402

CELLS = [((8, 4096, 16, 64, 64), "moderate"), ((8, 4096, 16, 64, 64), "dense"), ((2, 16384, 16, 64, 64), "moderate"),
         ((8, 4096, 16, 128, 128), "moderate"), ((8, 4096, 16, 128, 128), "dense")]


def settings_of(variant: str):
    """``default`` or ``field=value[;field=value]`` (integers) applied to the default settings."""
    if variant == "default":
        return DEFAULT_SETTINGS
    fields = dict(kv.split("=") for kv in variant.split(";"))
    return dataclasses.replace(DEFAULT_SETTINGS, **{k: int(v) for k, v in fields.items()})


def fingerprint(t):
    bits = t.detach().contiguous().view(-1)
    bits = bits.view(torch.int16 if bits.element_size() == 2 else torch.int32).to(torch.int64)
    idx = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64)
    return [int(bits.sum()), int((bits * (idx % 1009 + 1)).sum()), int((bits * bits).sum() % (2**61 - 1))]


def cell(cfg, wl, variants):
    from dla_fast.ops.scalar_decay.chunk_bwd import backward_scalar_decay_triton

    B, T, H, Dk, Dv = cfg
    q, k, v, g, w = grad_leaves(*workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wl], seed=11))
    torch.manual_seed(5)
    dO = torch.randn(B, T, H, Dv, device="cuda", dtype=q.dtype)
    row = dict(fwd_bwd_ms=bench_ms(lambda: dla_fwd_bwd(q, k, v, g, w, dO), rep=50))
    o, _, _ = api_forward(q, k, v, g, w)
    kept = o.grad_fn.record.structure.triton  # the autograd context of DLAFunction
    size0 = torch.zeros(B * H, dtype=torch.int64, device="cuda")
    args = (q.detach(), k.detach(), v.detach(), g.detach(), w.detach(), None, size0, kept, dO, None)
    with torch.no_grad():
        for name in variants:
            st, prof = settings_of(name), {}
            grads = backward_scalar_decay_triton(*args, settings=st, profile=prof)
            backward_scalar_decay_triton(*args, settings=st, profile=prof)
            row[name] = dict(stages_ms={kk: round(vv, 3) for kk, vv in prof.items() if kk.endswith("_ms")},
                             ms=bench_ms(lambda: backward_scalar_decay_triton(*args, settings=st), rep=50),
                             fingerprint={n: fingerprint(x) for n, x in zip("qkvgw", grads) if x is not None})
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--variants", default="default", help="comma-separated: default, field=value[;field=value]")
    args = ap.parse_args()
    variants = args.variants.split(",")
    out = {}
    for cfg, wl in CELLS:
        out[f"{cfg}/{wl}"] = row = cell(cfg, wl, variants)
        print(cfg, wl, json.dumps({kk: ({k2: v2 for k2, v2 in vv.items() if k2 != "fingerprint"}
                                        if isinstance(vv, dict) else vv) for kk, vv in row.items()}), flush=True)
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
