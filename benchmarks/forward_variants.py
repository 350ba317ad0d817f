#!/usr/bin/env python
"""The scalar-decay Triton forward under several ``TritonSettings`` in one process: bitwise checks and times.

For each config and workload of ``gpu_bench.py`` (bf16, K = 30, tau = 0.6), every variant's outputs (``o``, the
final cache, the trace) must equal the first variant's bit for bit: the settings change the schedule, not the
arithmetic. Then each variant is timed in three interleaved rounds (``do_bench`` medians; the round median is
reported) beside ``chunk_simple_gla`` and ``chunk_log_linear_attn`` on the same inputs, and one stage profile is
taken per variant.

    python benchmarks/forward_variants.py --out DIR [--configs 2x16384,1x65536] [--variants serial,default] [--checks]

``--checks`` runs the inputs' value checks too, as ``dla_fast.forward`` does (the entry's default skips them).

Writes ``forward_variants_<card>_<date>.json`` and ``.log`` to DIR; the table is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backward_settings_ab import parse_variants  # noqa: E402
from gpu_bench import K_SLOTS, TAU, WORKLOADS, bench_ms, configs_named, log, round_order, warm_gpu, workload  # noqa: E402

from dla_fast.settings import DEFAULT_SETTINGS  # noqa: E402

VARIANTS = {
    "serial": dataclasses.replace(DEFAULT_SETTINGS, table_overlap=False, pipeline=False),
    "default": DEFAULT_SETTINGS,
    "overlap+pipeline": dataclasses.replace(DEFAULT_SETTINGS, table_overlap=True, pipeline=True),
    "pipeline": dataclasses.replace(DEFAULT_SETTINGS, table_overlap=False, pipeline=True),
    "group4": dataclasses.replace(DEFAULT_SETTINGS, output_group=4),
    "group1": dataclasses.replace(DEFAULT_SETTINGS, output_group=1),
}


def forward(q, k, v, g, w, settings, profile=None, check_values=False):
    from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton

    o, cache, trace, _ = forward_scalar_decay_triton(q, k, v, g, w, tau=TAU, settings=settings, profile=profile,
                                                     check_values=check_values)
    return (o, *cache, *trace)


def baselines(q, k, v, g):
    out = {}
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        out["simple_gla"] = bench_ms(lambda: chunk_simple_gla(q, k, v, g, scale=1.0))
    except Exception as e:  # noqa: BLE001
        out["simple_gla_error"] = repr(e)[:200]
    try:
        from fla.ops.log_linear_attn import chunk_log_linear_attn

        B, T, H, _ = q.shape
        ls = torch.rand(B, T, H, math.ceil(math.log2(T)) + 1, device=q.device, dtype=q.dtype)
        out["log_linear"] = bench_ms(lambda: chunk_log_linear_attn(q, k, v, g, ls, scale=1.0))
    except Exception as e:  # noqa: BLE001
        out["log_linear_error"] = repr(e)[:200]
    return out


def cell(cfg, wname, variants, fh, rounds=3, check_values=False):
    B, T, H, Dk, Dv = cfg
    q, k, v, g, w = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)
    first = None
    row = dict(config=list(cfg), workload=wname, bitwise_equal={}, stages={}, ms={})
    for name in variants:
        out = forward(q, k, v, g, w, VARIANTS[name], check_values=check_values)
        if first is None:
            first = out
            row["boundary_rate"] = float(out[6].float().mean())
        row["bitwise_equal"][name] = all(torch.equal(a, b) for a, b in zip(out, first))
        prof = {}
        forward(q, k, v, g, w, VARIANTS[name], profile=prof, check_values=check_values)
        row["stages"][name] = {kk: round(vv, 4) for kk, vv in prof.items() if kk.endswith("_ms")}
    del first, out
    times = {name: [] for name in variants}
    for i in range(rounds):
        for name in round_order(variants, i):
            times[name].append(bench_ms(lambda: forward(q, k, v, g, w, VARIANTS[name], check_values=check_values),
                                        rep=60))
    row["ms"] = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    row["ms_rounds"] = times
    row.update(baselines(q, k, v, g))
    log(json.dumps(row), fh)
    return row


def table(rows, variants):
    head = "| config | workload | rate | " + " | ".join(variants) + " | sGLA | LL | LL / best | bitwise |"
    lines = [head, "|" + " --- |" * (len(variants) + 7)]
    for r in rows:
        best = min(r["ms"].values())
        ll = r.get("log_linear", float("nan"))
        lines.append(
            f"| {tuple(r['config'])} | {r['workload']} | {r['boundary_rate']:.3f} | "
            + " | ".join(f"{r['ms'][n]:.3f}" for n in variants)
            + f" | {r.get('simple_gla', float('nan')):.3f} | {ll:.3f} | {ll / best:.2f}x | "
            + ("yes" if all(r["bitwise_equal"].values()) else f"NO {r['bitwise_equal']}") + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--configs", default="all", help="comma-separated BxT[xD] (e.g. 2x16384,8x4096x128) or all")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="names of VARIANTS, or name=spec as backward_settings_ab.py's (e.g. out1=dla_output_kernel."
                         "num_stages:1)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of GPU work before the first cell")
    ap.add_argument("--checks", action="store_true",
                    help="the inputs' value checks too (check_values=True), as dla_fast.forward runs them")
    args = ap.parse_args()
    configs = configs_named(args.configs)
    specs = [v for v in args.variants.split(",") if "=" in v]
    VARIANTS.update(parse_variants(",".join(specs)) if specs else {})
    variants = [v.partition("=")[0] for v in args.variants.split(",")]
    card = torch.cuda.get_device_name().replace(" ", "_")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"forward_variants_{card}_{datetime.date.today()}")
    rows = []
    warm_gpu(args.warmup)
    with open(stem + ".log", "w") as fh:
        log(f"{torch.cuda.get_device_name()} torch {torch.__version__} SMs "
            f"{torch.cuda.get_device_properties(0).multi_processor_count}", fh)
        for cfg in configs:
            for wname in args.workloads.split(","):
                rows.append(cell(cfg, wname, variants, fh, check_values=args.checks))
                torch.cuda.empty_cache()
        text = table(rows, variants)
        log(text, fh)
    with open(stem + ".json", "w") as f:
        json.dump(dict(card=torch.cuda.get_device_name(), date=str(datetime.date.today()), variants=variants,
                       settings={n: dataclasses.asdict(VARIANTS[n]) for n in variants}, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
