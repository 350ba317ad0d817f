#!/usr/bin/env python
"""The delta rule's slot-state kernels alone on one forward's tables: the chain of slot adjoints (the backward's
kernel A, ``chunk_bwd_chain``) against the forward's slot-state kernel, with its reads (as the forward runs it) and
without them storing each chunk's start states (as the backward reruns it), over the same blocks of chunks, in one
process. Run 24 measured the chain at 25.9 ms against the forward kernel's 9.4 at (2, 16384, 16, 64) moderate.

    python benchmarks/delta_chain_kernel.py [--cell 2x16384x64:moderate] [--per-launch 16] [--once] [--out DIR]
                                            [--launch 2x4x2,4x4x1]

``--once``: each kernel's blocks run once, untimed (for ``ncu --kernel-name regex:dla_delta``). ``--launch``: the three
walks at each ``BVxWARPSxSTAGES`` in place of ``state_block``'s (run 28 took 4x4x1 at 64 features this way); a fourth
field caps the forward walks' registers (``2x4x1x128``; the chain keeps its own).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, bench_ms, configs_named, delta_inputs  # noqa: E402

from dla_fast.ops.delta_rule import chunk_fwd  # noqa: E402
from dla_fast.ops.delta_rule.chunk_bwd_chain import slot_adjoints  # noqa: E402
from dla_fast.ops.delta_rule.chunk_fwd_partition import partition_and_intra  # noqa: E402
from dla_fast.ops.delta_rule.chunk_fwd_states import slot_states_and_reads  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_rows  # noqa: E402


def stage_inputs(cfg, wname: str) -> dict:
    """One device forward's tables and slot maps (its stage 3's arguments, captured), a drawn ``dO`` and final
    adjoint."""
    B, T, H, Dk, Dv = cfg
    q, k, v, g, w, beta = delta_inputs(*cfg, WORKLOADS[wname])
    K = w.shape[-1]
    i64 = dict(device=q.device, dtype=torch.int64)
    cache = (torch.zeros(B, H, K, Dk, Dv, device=q.device), torch.zeros(B, H, K, **i64),
             torch.zeros(B, H, K, device=q.device, dtype=torch.float64), torch.zeros(B, H, **i64))
    real, seen = chunk_fwd._states_and_outputs, {}

    def keep(q, k, v, g, beta, lam, s, size0, row_lengths, slots, *rest):
        seen.update(s=s, size0=size0, row_lengths=row_lengths)
        return real(q, k, v, g, beta, lam, s, size0, row_lengths, slots, *rest)

    chunk_fwd._states_and_outputs = keep
    try:
        chunk_fwd.forward_delta_rule_triton(q, k, v, g, w, beta, None, *cache, tau=TAU)
    finally:
        chunk_fwd._states_and_outputs = real
    nC, R = -(-T // 64), B * H
    tab = output_tables_rows(q, k, g, beta, 0, nC, dtype=torch.float32)
    coef, dest_f, dest = partition_and_intra(seen["s"], seen["size0"], seen["row_lengths"], tab["attn"], v, beta, w, 0,
                                             torch.zeros(B, T, H, Dv, device=q.device))
    live = torch.arange(K, device=q.device) < seen["s"].size.view(R, 1)
    return dict(tab=tab, coef=coef, dest_f=dest_f, dest=dest, v=v, dO=torch.randn_like(v), nC=nC,
                states=torch.randn(R, K, Dk, Dv, device=q.device) * live.view(R, K, 1, 1))


def runners(x: dict, per: int, launch=None) -> dict:
    """The three walks over every block of ``per`` chunks (the chain last to first), at the kernels' ``launch``
    shape ``(BV, warps, stages)`` (None: their default)."""
    tab, nC = x["tab"], x["nC"]
    R, K, Dk, Dv = x["states"].shape
    buf = torch.empty(min(per, nC), R, K, Dk, Dv, device=x["v"].device)
    o = torch.zeros(x["v"].shape, device=x["v"].device)
    blocks = [(a, min(nC, a + per)) for a in range(0, nC, per)]

    def forward(reads: bool):
        S = x["states"].clone()
        for a, b in blocks:
            slot_states_and_reads(S, tab["Phi"][a:b], tab["kb"][a:b], tab["qt"][a:b], x["v"], x["coef"][a:b],
                                  x["dest_f"][a:b], x["dest"][a:b], o if reads else None, a, read_f32=False,
                                  v_exact=True, starts=None if reads else buf[:b - a], launch=launch)

    def chain():
        dS = x["states"].clone()
        for a, b in blocks[::-1]:
            slot_adjoints(dS, tab["Phi"][a:b], tab["qt"][a:b], x["dO"], x["coef"][a:b], x["dest_f"][a:b], a,
                          dS_end=buf[:b - a], launch=None if launch is None else launch[:3])

    return dict(forward_with_reads=lambda: forward(True), rerun_storing_starts=lambda: forward(False), chain=chain)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="2x16384x64:moderate")
    ap.add_argument("--per-launch", type=int, default=16)
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--launch", default="", help="BVxWARPSxSTAGES shapes to time, comma-separated")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_chain_kernel.py: needs a CUDA GPU")
    if args.launch:
        return sweep(args)
    name, wname = args.cell.split(":")
    x = stage_inputs(configs_named(name)[0], wname)
    walks = runners(x, args.per_launch)
    if args.once:
        for fn in walks.values():
            fn()
        torch.cuda.synchronize()
        return
    row = dict(cell=args.cell, per_launch=args.per_launch)
    row.update({n: bench_ms(fn, rep=20) for n, fn in walks.items()})
    card = torch.cuda.get_device_name().replace(" ", "_")
    with open(os.path.join(args.out, f"delta_chain_kernel_{card}_{datetime.date.today()}.json"), "w") as f:
        json.dump(dict(card=torch.cuda.get_device_name(), **row), f, indent=1)
    print(" | ".join(f"{n} {v:.2f} ms" if isinstance(v, float) else f"{n} {v}" for n, v in row.items()))


def sweep(args) -> None:
    """The three walks at each ``--launch`` shape, one process; a shape that fails to build is reported, not raised."""
    name, wname = args.cell.split(":")
    x = stage_inputs(configs_named(name)[0], wname)
    rows = []
    for shape in args.launch.split(","):
        launch = tuple(int(n) for n in shape.split("x"))
        row = dict(BV=launch[0], warps=launch[1], stages=launch[2], maxnreg=launch[3] if len(launch) > 3 else 0)
        try:
            walks = runners(x, args.per_launch, launch)
            row.update({n: bench_ms(fn, rep=10) for n, fn in walks.items()})
        except Exception as e:  # noqa: BLE001 (e.g. too much shared memory for the shape)
            row["error"] = repr(e)[:200]
        rows.append(row)
        print(row, flush=True)
    card = torch.cuda.get_device_name().replace(" ", "_")
    with open(os.path.join(args.out, f"delta_slot_launch_{card}_{datetime.date.today()}_{name}.json"), "w") as f:
        json.dump(dict(card=torch.cuda.get_device_name(), cell=args.cell, rows=rows), f, indent=1)
    print("| BV | warps | stages | register cap | forward (reads) ms | rerun (stores) ms | kernel A ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        times = [f"{r[n]:.2f}" if n in r else r["error"][:40] for n in ("forward_with_reads", "rerun_storing_starts",
                                                                        "chain")]
        print(f"| {r['BV']} | {r['warps']} | {r['stages']} | {r['maxnreg'] or '-'} | " + " | ".join(times) + " |")


if __name__ == "__main__":
    main()
