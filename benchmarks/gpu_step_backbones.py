"""GPU time of one decode step, scalar decay against the delta rule (issue #12), at B = 1, H = 16, K = 30.

``dla_fast.step`` on a full cache, tau = 0 (a merge at every step), bf16 tokens, replayed from a CUDA graph
(the GPU time, as docs/benchmarks.md run 13 measures the scalar-decay step). Usage:
``python benchmarks/gpu_step_backbones.py``.
"""

from __future__ import annotations

import torch

import dla_fast

B, H, K = 1, 16, 30


def graph_us_per_step(D: int, delta_rule: bool, reps: int = 1000) -> float:
    counts = torch.randint(1, 50, (B, H, K), device="cuda")
    cache = dla_fast.Cache(0.1 * torch.randn(B, H, K, D, D, device="cuda"), counts,
                           torch.rand(B, H, K, device="cuda") * counts, torch.full((B, H), K, device="cuda"),
                           checked=True)
    q, k, v = (torch.randn(B, H, D, device="cuda") for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)  # unit keys: the delta rule's transition stays a contraction
    token = [x.bfloat16() for x in (q, k, v)] + [torch.full((B, H), -0.1, device="cuda"),
                                                   torch.rand(B, H, K, device="cuda")]
    beta = torch.full((B, H), 0.5, device="cuda") if delta_rule else None
    dla_fast.step(*token, cache, tau=0.0, beta=beta)
    assert cache.scratch["step_triton_"] is not None, "the Triton step did not run"
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dla_fast.step(*token, cache, tau=0.0, beta=beta)
    for _ in range(20):
        graph.replay()
    began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    began.record()
    for _ in range(reps):
        graph.replay()
    ended.record()
    torch.cuda.synchronize()
    return began.elapsed_time(ended) * 1e3 / reps


if __name__ == "__main__":
    for D in (64, 128):
        for delta_rule in (False, True):
            print(f"D = {D} {'delta rule' if delta_rule else 'scalar decay'}: "
                  f"{graph_us_per_step(D, delta_rule):.1f} us per step (graph replay)")
