"""First-call cost of the Triton paths on a GPU: compile time, and whether a new length or dtype recompiles.

    python benchmarks/gpu_compile_time.py

Each row runs in a fresh process (Triton's in-memory cache empty; its on-disk cache is pointed at a fresh
temporary folder), so the first call includes compiling every kernel it launches. Prints one line per case:
the first call, the second call with the same shapes, a call at another sequence length (a recompile would
show as seconds), and the first backward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASE = r"""
import json, sys, time, torch
sys.path.insert(0, {root!r})
import dla_fast
D, dtype = {D}, getattr(torch, {dtype!r})

def inputs(T):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, T, 4, D, device="cuda", generator=g).to(dtype) for _ in range(3))
    g_ = -torch.rand(1, T, 4, device="cuda", generator=g)
    return q, k, v, g_, torch.rand(1, T, 4, 30, device="cuda", generator=g)

def timed(fn):
    torch.cuda.synchronize(); t = time.perf_counter(); out = fn(); torch.cuda.synchronize()
    return out, time.perf_counter() - t

x = inputs(4096)
_, first = timed(lambda: dla_fast.forward(*x))
_, second = timed(lambda: dla_fast.forward(*x))
_, other_T = timed(lambda: dla_fast.forward(*inputs(4001)))
leaves = [t.clone().requires_grad_(True) for t in x]
o, _, _ = dla_fast.forward(*leaves)
_, backward = timed(lambda: o.float().square().sum().backward())
cache = dla_fast.Cache.empty(1, 4, 30, D, D, device="cuda")
tok = [t[:, 0] for t in x]
_, step_first = timed(lambda: dla_fast.step(*tok, cache))
_, step_second = timed(lambda: dla_fast.step(*tok, cache))
print(json.dumps(dict(first_s=first, second_s=second, other_T_s=other_T, first_backward_s=backward,
                      first_step_s=step_first, second_step_s=step_second)))
"""


def main() -> None:
    rows = {}
    for D, dtype in ((64, "bfloat16"), (128, "bfloat16"), (64, "float32")):
        with tempfile.TemporaryDirectory() as cache_dir:
            env = dict(os.environ, TRITON_CACHE_DIR=cache_dir)
            out = subprocess.run([sys.executable, "-c", CASE.format(root=ROOT, D=D, dtype=dtype)], env=env,
                                 capture_output=True, text=True, timeout=600)
        if out.returncode:
            print(f"D={D} {dtype}: failed\n{out.stderr[-2000:]}", flush=True)
            continue
        rows[f"D{D}_{dtype}"] = row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"D={D} {dtype}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
