#!/usr/bin/env python
"""The delta-rule forward with its output WY tables in float32 (``chunk_fwd.output_tables``, this tree's choice up to
64 features) against the float64 kernel's, in one process (run 45): alternating timing rounds through
``dla_fast.forward`` and the distance between the two forwards' ``o`` and final slot states (max |diff| over the
float64-table forward's max |entry|).

    python benchmarks/delta_output_tables_ab.py CELLS [--rounds 3]

CELLS: ``BxTxD:workload[:f32],...`` (``gpu_bench``'s delta-rule inputs; ``:f32`` casts them to float32, whose ``o``
is float32 and so shows the tables' own difference rather than bf16 rounding).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, alternating_ms, configs_named, delta_inputs, medians_text  # noqa: E402

import dla_fast  # noqa: E402
from dla_fast.ops.delta_rule import chunk_fwd  # noqa: E402
from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_rows  # noqa: E402

VARIANTS = {
    "float32 tables": chunk_fwd.output_tables,
    "float64 tables": lambda q, k, g, beta, b0, nb: output_tables_rows(q, k, g, beta, b0, nb, dtype=torch.float32),
}


def forward(x, variant: str):
    chunk_fwd.output_tables = VARIANTS[variant]
    with torch.no_grad():
        return dla_fast.forward(*x[:5], tau=TAU, beta=x[5], output_final_cache=True)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cells")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("delta_output_tables_ab.py: needs a CUDA GPU")
    try:
        for spec in args.cells.split(","):
            name, wname, *cast = spec.split(":")
            x = delta_inputs(*configs_named(name)[0], WORKLOADS[wname])
            x = [t.float() for t in x] if cast == ["f32"] else x
            out = {v: forward(x, v) for v in VARIANTS}
            times = alternating_ms({v: lambda v=v: forward(x, v) for v in VARIANTS}, args.rounds, rep=60)
            (o32, c32, _), (o64, c64, _) = out.values()
            print(f"{torch.cuda.get_device_name()}, {spec}: {medians_text(times)}; o {distance(o32, o64):.2e}, states "
                  f"{distance(c32.states, c64.states):.2e}", flush=True)
    finally:
        chunk_fwd.output_tables = VARIANTS["float32 tables"]


if __name__ == "__main__":
    main()
