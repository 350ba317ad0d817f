#!/usr/bin/env python
"""What the public API costs over the Triton forward's kernel entry: ``dla_fast.forward`` (validation and the value
checks, no final cache: as ``gpu_bench.py`` times it) against ``forward_scalar_decay_triton`` without and with its
value checks (no final cache, no trace), alternating in one process.

    python benchmarks/api_vs_entry.py 2x16384x64:moderate,8x4096x64:sparse [--rounds 3] [--out DIR]

Per cell: the median of ``--rounds`` rounds of ``bench_ms`` for each of ``api``, ``entry`` and ``entry_checks``, and
the rounds. Writes ``api_vs_entry_<card>_<date>.txt`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import (  # noqa: E402
    K_SLOTS,
    TAU,
    WORKLOADS,
    api_forward,
    bench_ms,
    configs_named,
    fwd,
    report_cells,
    workload,
)


def compare_cell(cell: str, rounds: int) -> list[str]:
    import torch

    cname, wname = cell.split(":")
    B, T, H, Dk, Dv = configs_named(cname)[0]
    x = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS[wname], seed=11)
    entry = dict(tau=TAU, final_cache=False, trace=False)
    calls = {"api": lambda: api_forward(*x), "entry": lambda: fwd(*x, **entry),
             "entry_checks": lambda: fwd(*x, **entry, check_values=True)}
    ms = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(rounds):
            for name, call in calls.items():
                ms[name].append(bench_ms(call, rep=60))
    return [f"== {cell}"] + [f"  {name}: {statistics.median(t):.3f} ms, rounds {[round(v, 3) for v in t]}"
                             for name, t in ms.items()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", help="BxTxD:workload,... (gpu_bench's configs and workloads)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("api_vs_entry: needs a CUDA GPU")
    header = f"dla_fast.forward against the kernel entry (tau {TAU}, K {K_SLOTS}, {args.rounds} alternating rounds)"
    report_cells("api_vs_entry", header, args.cells, lambda cell: compare_cell(cell, args.rounds), args.out)


if __name__ == "__main__":
    main()
