#!/usr/bin/env python
"""A training step through the public API under several backward ``TritonSettings`` in one process: peak memory,
time and a bit-pattern fingerprint of every gradient per variant (the method of docs/benchmarks.md run 23, calls
5-8, there a scratch script).

``dla_fast.forward`` takes no settings; the variant reaches the Triton backward through a wrapper of
``chunk_bwd.backward_scalar_decay_triton`` (``autograd._triton_grads`` looks it up at each call). The step is
``gpu_bench.py``'s training cell (bf16, K = 30, a warm-up call first); the peak is above the memory live before it.

    python benchmarks/backward_settings_ab.py --variants one=bwd_start_ranges:1,auto=bwd_start_ranges:None \\
        [--cells 8x4096x64:dense,8x4096x128:moderate] [--out DIR]
    python benchmarks/backward_settings_ab.py --variants default=,kv4=dla_bwd_kv_kernel.num_warps:4

Writes ``backward_settings_ab_<card>_<date>.json`` to DIR; the table is printed last.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import hashlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import K_SLOTS, WORKLOADS, configs_named, dla_fwd_bwd, grad_leaves, peak_and_ms, workload  # noqa: E402

import dla_fast.ops.scalar_decay.chunk_bwd as chunk_bwd  # noqa: E402
from dla_fast.settings import DEFAULT_SETTINGS  # noqa: E402


def parse_variants(text: str) -> dict:
    """``name=field:value;field:value,name=...`` -> ``{name: TritonSettings}`` (values as Python literals); a field
    ``kernel.option`` is a launch override (``launch_overrides``), e.g. ``kv4=dla_bwd_kv_kernel.num_warps:4``."""
    out = {}
    for item in text.split(","):
        name, _, fields = item.partition("=")
        changes, launch = {}, []
        for pair in filter(None, fields.split(";")):
            field, _, value = pair.partition(":")
            if "." in field:
                kernel, _, option = field.partition(".")
                launch.append((kernel, option, ast.literal_eval(value)))
            else:
                changes[field] = ast.literal_eval(value)
        out[name] = dataclasses.replace(DEFAULT_SETTINGS, **changes, **({"launch_overrides": tuple(launch)}
                                                                         if launch else {}))
    return out


def fingerprint(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes()).hexdigest()[:12]


def cell(cfg, wname: str, variants: dict) -> dict:
    leaves = grad_leaves(*workload(*cfg, K_SLOTS, **WORKLOADS[wname], seed=11))
    dO = torch.randn(*cfg[:3], cfg[4], device="cuda", dtype=leaves[0].dtype,
                     generator=torch.Generator("cuda").manual_seed(5))
    original = chunk_bwd.backward_scalar_decay_triton
    row = dict(config=list(cfg), workload=wname)
    try:
        for name, settings in variants.items():
            chunk_bwd.backward_scalar_decay_triton = (
                lambda *a, _s=settings, **kw: original(*a, **{**kw, "settings": _s}))
            ms, peak = peak_and_ms(lambda: dla_fwd_bwd(*leaves, dO), False)
            for x in leaves:
                x.grad = None
            dla_fwd_bwd(*leaves, dO)
            row[name] = dict(ms=ms, peak_gib=peak, grads={n: fingerprint(x.grad) for n, x in zip("qkvgw", leaves)})
    finally:
        chunk_bwd.backward_scalar_decay_triton = original
    row["bitwise_equal"] = len({json.dumps(row[n]["grads"]) for n in variants}) == 1
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", required=True, help="name=field:value;field:value,name=...")
    ap.add_argument("--cells", default="8x4096x64:moderate,8x4096x64:dense,8x4096x128:moderate,8x4096x128:dense")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("backward_settings_ab.py: needs a CUDA GPU (the Triton backward and its peak memory)")
    variants = parse_variants(args.variants)
    rows = []
    for item in args.cells.split(","):
        name, wname = item.split(":")
        rows.append(cell(configs_named(name)[0], wname, variants))
        r = rows[-1]
        print(tuple(r["config"]), wname, "bitwise" if r["bitwise_equal"] else "DIFFERENT",
              {n: (round(r[n]["ms"], 3), round(r[n]["peak_gib"], 3)) for n in variants}, flush=True)
        torch.cuda.empty_cache()
    card = torch.cuda.get_device_name().replace(" ", "_")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"backward_settings_ab_{card}_{datetime.date.today()}.json"), "w") as f:
        settings = {n: dataclasses.asdict(s) for n, s in variants.items()}
        json.dump(dict(card=torch.cuda.get_device_name(), variants=settings, rows=rows), f, indent=1)
    print("| config | workload | " + " | ".join(f"{n} ms / GiB" for n in variants) + " | gradients |")
    print("|" + " --- |" * (len(variants) + 3))
    for r in rows:
        print(f"| {tuple(r['config'])} | {r['workload']} | "
              + " | ".join(f"{r[n]['ms']:.3f} / {r[n]['peak_gib']:.3f}" for n in variants)
              + f" | {'bitwise equal' if r['bitwise_equal'] else 'DIFFER'} |")


if __name__ == "__main__":
    main()
