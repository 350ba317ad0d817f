#!/usr/bin/env python
"""The delta rule's forward through ``dla_fast.forward`` (its value checks read once the forward is queued, run 45)
against the same call preceded by run 44's checks (``dla_ref``'s value checks as torch ops and ``raise_first``'s
host synchronisation), alternating rounds in one process, outputs compared bit for bit. The second adds only what
run 44 did before the kernels (the check kernel runs in both).

    python benchmarks/delta_value_checks_ab.py [CELLS]     # default 2x16384x64:moderate
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import TAU, WORKLOADS, alternating_ms, configs_named, delta_inputs, medians_text  # noqa: E402

import dla_fast  # noqa: E402
from dla_fast.validation import input_value_checks, raise_first  # noqa: E402


def deferred(q, k, v, g, w, beta):
    return dla_fast.forward(q, k, v, g, w, tau=TAU, beta=beta, output_final_cache=False)


def synchronised_first(q, k, v, g, w, beta):
    raise_first(input_value_checks(q, k, v, g, w, beta))
    return deferred(q, k, v, g, w, beta)


def main():
    if not torch.cuda.is_available():
        raise SystemExit("delta_value_checks_ab.py: needs a CUDA GPU")
    cells = sys.argv[1] if len(sys.argv) > 1 else "2x16384x64:moderate"
    for spec in cells.split(","):
        name, wname = spec.split(":")
        x = delta_inputs(*configs_named(name)[0], WORKLOADS[wname])
        with torch.no_grad():
            same = torch.equal(deferred(*x)[0], synchronised_first(*x)[0])
            calls = {"deferred": lambda: deferred(*x), "synchronised first": lambda: synchronised_first(*x)}
            times = alternating_ms(calls, 3, rep=60)
        print(f"{torch.cuda.get_device_name()}, {spec}: {medians_text(times)}; o bitwise equal {same}", flush=True)


if __name__ == "__main__":
    main()
