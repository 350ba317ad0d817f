#!/usr/bin/env python
"""Time the Triton backward's tuning knobs side by side (one forward per config, then the backward alone).

    python benchmarks/gpu_backward_variants.py

Prints, per config and knob setting, the dq kernel's time and the whole backward's (median ms, bf16,
moderate workload, K = 30); the defaults in ``dla_fast/settings.py`` are the measured best.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_bench import K_SLOTS, TAU, WORKLOADS, bench_ms, workload  # noqa: E402
from dla_fast.ops.scalar_decay.chunk_bwd import backward_scalar_decay_triton  # noqa: E402
from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton  # noqa: E402
from dla_fast.settings import TritonSettings  # noqa: E402

VARIANTS = [TritonSettings(bwd_stages=s, bwd_warps=w) for s in (1, 2) for w in (8, 4)]


def main():
    print(torch.cuda.get_device_name())
    for cfg in [(2, 16384, 16, 64, 64), (1, 65536, 16, 64, 64)]:
        B, T, H, Dk, Dv = cfg
        q, k, v, g, w = workload(B, T, H, Dk, Dv, K_SLOTS, **WORKLOADS["moderate"], seed=11)
        kept = forward_scalar_decay_triton(q, k, v, g, w, tau=TAU)[3]
        dO = torch.randn(B, T, H, Dv, device="cuda", dtype=q.dtype)
        size0 = torch.zeros(B * H, dtype=torch.int64, device="cuda")
        args = (q, k, v, g, w, None, size0, kept, dO, None)
        ref = None
        for var in VARIANTS:
            out = backward_scalar_decay_triton(*args, settings=var)
            if ref is None:
                ref = out
            same = all(torch.equal(a, b) for a, b in zip(out[:5], ref[:5]))
            prof = {}
            backward_scalar_decay_triton(*args, settings=var, profile=prof)
            ms = bench_ms(lambda: backward_scalar_decay_triton(*args, settings=var), rep=50)  # noqa: B023
            print(f"{cfg} stages={var.bwd_stages} warps={var.bwd_warps}: backward {ms:.3f} ms, "
                  f"dq {prof['dq_ms']:.3f} ms, equal to the first variant: {same}",
                  flush=True)


if __name__ == "__main__":
    main()
