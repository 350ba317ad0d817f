#!/usr/bin/env python
"""What the public API costs over the Triton forward's kernel entry: ``dla_fast.forward`` (validation and the value
checks, no final cache: as ``gpu_bench.py`` times it) against ``forward_scalar_decay_triton`` without and with its
value checks (no final cache, no trace), alternating in one process.

    python benchmarks/api_vs_entry.py 2x16384x64:moderate,8x4096x64:sparse [--rounds 3] [--out DIR]

Per cell: the median of ``--rounds`` rounds of ``bench_ms`` for each of ``api``, ``entry`` and ``entry_checks``, and
the rounds. Writes ``api_vs_entry_<card>_<date>.txt`` under ``--out``.
"""

from __future__ import annotations

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
    cells_main,
    configs_named,
    fwd,
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
    cells_main("api_vs_entry", lambda rounds: f"dla_fast.forward against the kernel entry (tau {TAU}, K {K_SLOTS}, "
               f"{rounds} alternating rounds)", compare_cell)


if __name__ == "__main__":
    main()
