"""CPU time with 1 torch thread: the delta rule's chunked forward against the per-token forward and ``dla_ref``,
and forward + backward through ``dla_fast.forward`` (the partition fixed; ``--no-baselines`` times that alone).

The issue #12 shape: ``(B, T, H, D) = (1, 2048, 2, 64)``, ``K = 30``, ``tau = 0.6``, the ``moderate`` workload of
``benchmarks/workloads.py`` with unit keys and ``beta ~ U(0.2, 0.8)``. CPU time (``time.process_time``), best of
3 for ``dla_fast`` and of 1 for the baselines: it stays stable on a shared machine where wall clock does not.

    python -m benchmarks.delta_rule_cpu [--T 2048] [--K 30] [--no-baselines]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import dla_fast
import dla_ref
from dla_fast.cache import Cache
from dla_fast.ops.delta_rule.recurrent import forward_delta_rule
from dla_ref.synthetic import piecewise_stationary

from .workloads import WORKLOADS


def _cpu_time(fn, rounds: int):
    best, out = float("inf"), None
    for _ in range(rounds):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--H", type=int, default=2)
    parser.add_argument("--K", type=int, default=30)
    parser.add_argument("--no-baselines", action="store_true", help="time dla_fast's forward and backward only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    T, H, K = args.T, args.H, args.K
    q, k, v, g, lam = piecewise_stationary(1, T, H, 64, 64, K, seed=0, recency=0.7, **WORKLOADS["moderate"])
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    beta = np.random.default_rng(0).uniform(0.2, 0.8, size=(1, T, H))
    f32 = [torch.as_tensor(x, dtype=torch.float32) for x in (q, k, v, g, lam, beta)]
    dla_fast.forward(*f32[:5], beta=f32[5])  # numba compilation outside the timing
    t_fast, (o, _, trace) = _cpu_time(lambda: dla_fast.forward(*f32[:5], beta=f32[5], return_trace=True), 3)
    dO = torch.randn(o.shape, generator=torch.Generator().manual_seed(0))

    def forward_backward():
        x = [t.clone().requires_grad_(True) for t in f32]
        o_g = dla_fast.forward(*x[:5], beta=x[5])[0]
        (o_g * dO).sum().backward()

    forward_backward()
    t_fb, _ = _cpu_time(forward_backward, 3)
    print(f"(1, {T}, {H}, 64), K = {K}: dla_fast forward {t_fast * 1e3:.1f} ms, forward + backward {t_fb * 1e3:.1f} ms "
          f"(backward {(t_fb - t_fast) * 1e3:.1f} ms)")
    if args.no_baselines:
        return

    def per_token():
        c = Cache.empty(1, H, K, 64, 64, dtype=torch.float32)
        return forward_delta_rule(*f32, None, c.states, c.counts, c.info.double(), c.size, tau=0.6, eps=1e-6,
                                  norm_eps=1e-6)

    t_tok, _ = _cpu_time(per_token, 1)
    t_ref, (o_ref, _, trace_ref) = _cpu_time(lambda: dla_ref.forward(q, k, v, g, lam, beta=beta), 1)
    same = float((trace_ref.starts == trace.starts.numpy()).mean())
    print(f"(1, {T}, {H}, 64), K = {K}: boundary rate {float(trace.starts.float().mean()):.3f}, decisions equal "
          f"{same:.4f}, max |o - o_ref| / max |o_ref| {np.abs(o.numpy() - o_ref).max() / np.abs(o_ref).max():.1e}")
    print(f"dla_fast (chunked) {t_fast * 1e3:.1f} ms | per-token {t_tok * 1e3:.1f} ms ({t_tok / t_fast:.1f}x) | "
          f"dla_ref {t_ref * 1e3:.1f} ms ({t_ref / t_fast:.1f}x)")


if __name__ == "__main__":
    main()
