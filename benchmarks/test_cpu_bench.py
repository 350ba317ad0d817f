"""CPU benchmarks: dla_fast against dla_ref and the per-token torch recurrence (pytest-benchmark).

Not part of the default test run (``testpaths`` excludes ``benchmarks/``). Run explicitly:

    python -m pytest benchmarks --benchmark-only                       # everything (a few minutes)
    python -m pytest benchmarks --benchmark-only -k "dla_fast"         # the fast path only

Shape ``B = 1, H = 4, Dk = Dv = 64, K = 30, tau = 0.6`` at ``T`` in {512, 2048, 8192}, three workloads
(``benchmarks/workloads.py``); torch runs with ``workloads.THREADS`` (2) threads. The slow baselines run
one round at the largest ``T``. ``python -m benchmarks.report`` prints the table of docs/benchmarks.md.
"""

from __future__ import annotations

import pytest
import torch

import dla_fast
import dla_ref

try:
    from benchmarks import workloads as wl
except ImportError:  # `pytest benchmarks` without `python -m`: the repository root is not on sys.path
    import workloads as wl

torch.set_num_threads(wl.THREADS)

TS = (512, 2048, 8192)


def _rounds(T: int, slow: bool) -> dict:
    if not slow:
        return dict(rounds=5, iterations=1, warmup_rounds=1)
    return dict(rounds=1 if T >= 2048 else 3, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("workload", list(wl.WORKLOADS))
def test_dla_fast(benchmark, workload, T):
    x = wl.torch_inputs(workload, T)
    dla_fast.forward(*x)  # compile / warm up
    _, _, trace = benchmark.pedantic(lambda: dla_fast.forward(*x, return_trace=True), **_rounds(T, False))
    benchmark.extra_info.update(boundary_rate=wl.boundary_rate(trace), T=T, threads=torch.get_num_threads())


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("workload", list(wl.WORKLOADS))
def test_torch_recurrence(benchmark, workload, T):
    x = wl.torch_inputs(workload, T)
    benchmark.pedantic(lambda: wl.recurrent_forward(*x), **_rounds(T, True))
    benchmark.extra_info.update(T=T, threads=torch.get_num_threads())


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("workload", list(wl.WORKLOADS))
def test_dla_ref(benchmark, workload, T):
    x = wl.inputs(workload, T)
    _, _, trace = benchmark.pedantic(lambda: dla_ref.forward(*x, tau=wl.TAU), **_rounds(T, True))
    benchmark.extra_info.update(boundary_rate=wl.boundary_rate(trace), T=T)
