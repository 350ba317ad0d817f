#!/usr/bin/env python
"""Time the Triton backward's tuning knobs side by side (one forward per config, then the backward alone).

    python benchmarks/gpu_backward_variants.py

Prints, per config and knob setting, the dq kernel's time and the whole backward's (median ms, bf16,
moderate workload, K = 30); the defaults in ``dla_fast/triton_backward.py`` are the measured best.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_bench import K_SLOTS, TAU, WORKLOADS, bench_ms, workload  # noqa: E402
from dla_fast.triton_backward import backward_scalar_decay_triton  # noqa: E402
from dla_fast.triton_forward import forward_scalar_decay_triton  # noqa: E402

VARIANTS = [dict(DLA_TRITON_BWD_STAGES=s, DLA_TRITON_BWD_WARPS=w) for s in ("1", "2") for w in ("8", "4")]


def main():
    print(torch.cuda.get_device_name())
    for cfg in [(2, 16384, 16, 64, 64), (1, 65536, 16, 64, 64)]:
        B, T, H, Dk, Dv = cfg
        q, k, v, g, w = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS["moderate"], seed=11)
        keep = {}
        forward_scalar_decay_triton(q, k, v, g, w, tau=TAU, keep=keep)
        dO = torch.randn(B, T, H, Dv, device="cuda", dtype=q.dtype)
        size0 = torch.zeros(B * H, dtype=torch.int64, device="cuda")
        args = (q, k, v, g, w, None, size0, keep, dO, None)
        ref = None
        for var in VARIANTS:
            os.environ.update(var)
            out = backward_scalar_decay_triton(*args)
            if ref is None:
                ref = out
            same = all(torch.equal(a, b) for a, b in zip(out[:5], ref[:5]))
            prof = {}
            backward_scalar_decay_triton(*args, profile=prof)
            ms = bench_ms(lambda: backward_scalar_decay_triton(*args), rep=50)
            print(f"{cfg} {var}: backward {ms:.3f} ms, dq {prof['dq_ms']:.3f} ms, equal to the first variant: {same}",
                  flush=True)


if __name__ == "__main__":
    main()
