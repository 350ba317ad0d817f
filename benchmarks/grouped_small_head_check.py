#!/usr/bin/env python
"""Does the grouped output kernel fault on this GPU at small heads? (issue #11, run 60: on an H100, Triton 3.6, the
forward with ``grouped_reads=True``, float32, (2, 400, 1, 32), K = 6 hit an illegal memory access; at 64 features it
ran; an H200 had passed the grouped backward tests at 32 features in run 44.)

Each case runs in a subprocess of its own (an illegal address poisons the CUDA context), with
``chunk_fwd.GROUPED_READS_MIN_GPU_DIM`` lifted so that the grouped reads are taken below 64 features:

    python benchmarks/grouped_small_head_check.py [--tree DIR ...]

``--tree`` (repeatable): another checkout's root put first on ``PYTHONPATH`` (e.g. one exported by
``forward_revision_ab.py --export REV DIR``), to tell whether a revision brought the fault. Prints one line a case.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CASE = """
import torch
from dla_fast.ops.scalar_decay import chunk_fwd
from dla_fast.settings import TritonSettings
chunk_fwd.GROUPED_READS_MIN_GPU_DIM = 0  # (absent before run 60: then nothing to lift)
torch.manual_seed(0)
B, T, H, D, K, dtype, cache = {B}, {T}, {H}, {D}, {K}, torch.{dtype}, {cache}
q, k, v = (torch.randn(B, T, H, D, device="cuda").to(dtype) for _ in range(3))
g = -torch.rand(B, T, H, device="cuda") * 0.2
w = torch.randn(B, T, H, K, device="cuda")
kw = {{}}
if cache:
    _, c, _, _ = chunk_fwd.forward_scalar_decay_triton(q[:, :90], k[:, :90], v[:, :90], g[:, :90], w[:, :90], tau=0.5)
    kw = dict(states=c[0], counts=c[1], info=c[2], size=c[3])
chunk_fwd.forward_scalar_decay_triton(q, k, v, g, w, tau=0.5, settings=TritonSettings(grouped_reads=True), **kw)
torch.cuda.synchronize()
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", default=["."])
    args = ap.parse_args()
    for tree in args.tree:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(tree), os.environ.get("PYTHONPATH", "")]))
        for D in (32, 64):
            for dtype in ("float32", "bfloat16"):
                for cache in (False, True):
                    code = CASE.format(B=2, T=400, H=1, D=D, K=6, dtype=dtype, cache=cache)
                    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                         timeout=300)
                    tail = (run.stderr.strip().splitlines() or ["ok"])[-1][:100] if run.returncode else "ok"
                    print(f"{tree}: D={D} {dtype} cache={cache}: {tail}", flush=True)


if __name__ == "__main__":
    main()
