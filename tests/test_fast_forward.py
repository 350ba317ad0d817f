"""dla_fast.forward against dla_ref.forward: both backbones, float64 / float32 / bfloat16, on a grid of shapes.

float64 inputs run the same algorithm in float64, so everything must agree to rounding and the discrete
structure (starts, merges, counts, sizes) exactly. For float32 and bfloat16 the decisions may differ from
the reference only where the reference's own margin is tiny, so these tests measure the margins first
(``fast_cases.float_case``): a case whose decision margin is under ``DECISION_MARGIN`` is run with the
reference's decisions forced (``boundaries=``), and every case must have merge density gaps above
``DENSITY_MARGIN`` (relative) — the inputs below are chosen so; the assertion says so if a change
to the generators breaks that. float32 scores carry relative errors near 1e-6, far inside both margins.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fast_cases import F32, F64, assert_equivalent, float_case, random_inputs, run_fast, run_ref, synthetic_inputs

import dla_fast
import dla_ref

SHAPES = [  # B, T, H, Dk, Dv, K
    (1, 0, 2, 4, 3, 3),
    (1, 1, 1, 4, 4, 2),
    (2, 37, 3, 8, 6, 4),
    (1, 130, 2, 5, 7, 3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}H{}Dk{}Dv{}K{}".format(*s))
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("tau", [0.0, 0.6, math.inf])
def test_scalar_decay_float64_matches_the_reference(shape, chunk_size, tau):
    x = random_inputs(1, *shape)
    assert_equivalent(run_fast(x, tau=tau, chunk_size=chunk_size), run_ref(x, tau=tau), **F64)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}H{}Dk{}Dv{}K{}".format(*s))
@pytest.mark.parametrize("tau", [0.0, 0.6])
def test_delta_rule_float64_matches_the_reference(shape, tau):
    x = random_inputs(2, *shape, beta=True)
    assert_equivalent(run_fast(x, tau=tau), run_ref(x, tau=tau), **F64)


@pytest.mark.parametrize("workload", ["sparse", "dense"])
@pytest.mark.parametrize("beta", [None, 0.7])
@pytest.mark.parametrize("K", [2, 5])
def test_synthetic_workloads_float64_with_many_merges(workload, beta, K):
    x = synthetic_inputs(workload, K=K, beta=beta)
    fast, ref = run_fast(x, chunk_size=16), run_ref(x)
    assert_equivalent(fast, ref, **F64)
    if workload == "dense":
        assert (ref[2].merged >= 0).sum() > 50  # the cache is full and merges at almost every token


@pytest.mark.parametrize("beta", [False, True])
def test_boundaries_override_float64(beta):
    x = random_inputs(3, 2, 50, 2, 6, 5, 3, beta=beta)
    x["boundaries"] = np.random.default_rng(4).random((2, 50, 2)) < 0.3
    assert_equivalent(run_fast(x, chunk_size=16), run_ref(x), **F64)


@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("split", [1, 20, 32, 45])
def test_initial_cache_continuation_float64(beta, split):
    """A call continuing from the reference's cache after `split` tokens gives the rest of one call."""
    x = random_inputs(5, 2, 60, 2, 6, 5, 3, beta=beta)
    head = {n: a[:, :split] for n, a in x.items()}
    tail = {n: a[:, split:] for n, a in x.items()}
    _, cache_head, _ = run_ref(head)
    o_r, cache_r, trace_r = run_ref(x)
    o, cache, trace = run_fast(tail, initial_cache=cache_head, chunk_size=16)
    tail_trace = dla_ref.Trace(*(a[:, split:] for a in (trace_r.scores, trace_r.starts, trace_r.merged)))
    tail_ref = (o_r[:, split:], cache_r, tail_trace)
    assert_equivalent((o, cache, trace), tail_ref, **F64)


def test_streaming_through_dla_fast_caches_equals_one_call():
    x = random_inputs(6, 1, 90, 3, 5, 4, 3)
    whole = run_fast(x, chunk_size=8)
    cache, parts = None, []
    for lo, hi in [(0, 13), (13, 14), (14, 64), (64, 90)]:
        part = {n: torch.as_tensor(a[:, lo:hi]) for n, a in x.items()}
        o, cache, _ = dla_fast.forward(*part.values(), initial_cache=cache, chunk_size=8)
        parts.append(o.numpy())
    np.testing.assert_allclose(np.concatenate(parts, 1), whole[0], atol=1e-12)
    np.testing.assert_allclose(cache.states.numpy(), whole[1].states, atol=1e-12)
    np.testing.assert_array_equal(cache.counts.numpy(), whole[1].counts)


@pytest.mark.parametrize("workload", ["random", "sparse", "dense"])
@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_float32_matches_the_reference_within_float32_tolerances(workload, beta, chunk_size):
    if workload == "random":
        x = random_inputs(7, 2, 150, 2, 16, 16, 4, beta=beta)
    else:
        x = synthetic_inputs(workload, T=150, Dk=16, Dv=16, K=4, seed=3, beta=0.7 if beta else None)
    xr, ref = float_case(x, torch.float32)
    fast = run_fast({n: a for n, a in xr.items()}, dtype=torch.float32, chunk_size=chunk_size)
    assert_equivalent(fast, ref, **F32)


@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_inputs_keep_float32_states_and_scores(beta, dtype):
    x = synthetic_inputs("sparse", T=120, Dk=16, Dv=16, K=4, seed=5, beta=0.7 if beta else None)
    xr, ref = float_case(x, dtype)
    t = {n: torch.as_tensor(a).to(dtype) if n != "boundaries" else torch.as_tensor(a) for n, a in xr.items()}
    args = [t.pop(n) for n in ("q", "k", "v", "g", "slot_weights")]
    o, cache, trace = dla_fast.forward(*args, return_trace=True, chunk_size=32, **t)
    assert o.dtype == dtype and cache.states.dtype == torch.float32 and trace.scores.dtype == torch.float32
    # States and scores as float32 (the inputs are exact in float32); o is rounded once to the input dtype.
    fast = (o.to(torch.float64).numpy(), cache.to_ref(), trace.to_ref())
    o_tol = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    assert_equivalent(fast, ref, o_tol=o_tol, score_tol=F32["score_tol"], state_tol=F32["state_tol"])


def test_tau_infinite_is_the_single_state_backbone_and_all_ones_weights_ignore_the_structure():
    x = random_inputs(8, 1, 70, 2, 4, 4, 3)
    x["slot_weights"] = np.ones_like(x["slot_weights"])
    o_all, _, trace = run_fast(x, tau=0.0, chunk_size=16)
    o_one, cache, _ = run_fast(x, tau=math.inf, chunk_size=16)
    assert trace.starts.all() and (cache.size == 1).all()
    np.testing.assert_allclose(o_all, o_one, atol=1e-12)


def test_outputs_optional_and_dtypes():
    x = {n: torch.as_tensor(a, dtype=torch.float32) for n, a in random_inputs(9, 1, 20, 2, 4, 4, 3).items()}
    o, cache, trace = dla_fast.forward(*x.values(), output_final_cache=False)
    assert cache is None and trace is None and o.dtype == torch.float32 and o.shape == (1, 20, 2, 4)
    o, cache, trace = dla_fast.forward(*x.values(), return_trace=True)
    assert cache.states.dtype == torch.float32 and cache.info.dtype == torch.float32
    assert cache.counts.dtype == torch.int64 and cache.size.dtype == torch.int64
    assert trace.scores.dtype == torch.float32 and trace.starts.dtype == torch.bool
    assert trace.merged.dtype == torch.int64
    assert set(trace.keys()) == {"scores", "starts", "merged"} and trace["starts"] is trace.starts


def test_forward_does_not_modify_the_initial_cache():
    x = {n: torch.as_tensor(a) for n, a in random_inputs(10, 1, 30, 2, 4, 4, 3).items()}
    _, cache, _ = dla_fast.forward(*x.values())
    before = cache.clone()
    dla_fast.forward(*x.values(), initial_cache=cache)
    for f in ("states", "counts", "info", "size"):
        assert torch.equal(getattr(cache, f), getattr(before, f))


def test_cache_conversions_round_trip():
    _, ref_cache, _ = run_ref(random_inputs(11, 2, 25, 3, 4, 5, 3))
    cache = dla_fast.Cache.from_ref(ref_cache, dtype=torch.float64)
    back = cache.to_ref()
    for f in ("states", "counts", "info", "size"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ref_cache, f))
    empty = dla_fast.Cache.empty(2, 3, 4, 5, 6)
    assert empty.states.shape == (2, 3, 4, 5, 6) and empty.capacity == 4 and int(empty.size.sum()) == 0
    assert dla_fast.Cache.from_ref(ref_cache).info.dtype == torch.float32


def test_the_scalar_decay_seam_takes_raw_tensors_and_updates_the_cache_in_place():
    """The function the Triton path replaces on CUDA: documented signature, dtypes, in-place cache."""
    from dla_fast.ops.scalar_decay.chunk_torch import forward_scalar_decay

    x = random_inputs(12, 1, 40, 2, 4, 4, 3)
    t = {n: torch.as_tensor(a) for n, a in x.items()}
    B, T, H, Dk = t["q"].shape
    states = torch.zeros((B, H, 3, Dk, 4), dtype=torch.float64)
    counts = torch.zeros((B, H, 3), dtype=torch.int64)
    info = torch.zeros((B, H, 3), dtype=torch.float64)
    size = torch.zeros((B, H), dtype=torch.int64)
    o, scores, starts, merged = forward_scalar_decay(*t.values(), 0.6, None, states, counts, info, size,
                                                     chunk_size=16, eps=1e-6, norm_eps=1e-6)
    o_r, cache_r, trace_r = run_ref(x)
    np.testing.assert_allclose(o.numpy(), o_r, atol=1e-12)
    np.testing.assert_allclose(states.numpy(), cache_r.states, atol=1e-12)
    np.testing.assert_array_equal(starts.numpy(), trace_r.starts)
    assert scores.dtype == torch.float64 and merged.dtype == torch.int64


@pytest.mark.parametrize("block_elements", [1, 3 * 16 * 16 * 2])
def test_blocks_of_chunks_give_the_same_result(monkeypatch, block_elements):
    """The per-block precomputation (1 chunk per block, or 2) changes nothing."""
    import dla_fast.ops.scalar_decay.chunk_torch as chunked

    x = random_inputs(13, 1, 90, 3, 5, 4, 3)
    ref = run_ref(x, tau=0.3)
    monkeypatch.setattr(chunked, "_BLOCK_ELEMENTS", block_elements)
    assert_equivalent(run_fast(x, tau=0.3, chunk_size=16), ref, **F64)


@pytest.mark.parametrize("beta", [False, True])
def test_non_contiguous_inputs(beta):
    """Inputs that are views in another layout (here [B, H, T, D] transposed) give the same result."""
    x = random_inputs(14, 2, 64, 3, 5, 4, 3, beta=beta)
    t = {n: torch.as_tensor(a).transpose(1, 2).contiguous().transpose(1, 2) for n, a in x.items()}
    assert not t["q"].is_contiguous()
    o, cache, _ = dla_fast.forward(*[t.pop(n) for n in ("q", "k", "v", "g", "slot_weights")], chunk_size=16, **t)
    o_r, cache_r, _ = run_ref(x)
    np.testing.assert_allclose(o.numpy(), o_r, atol=1e-12)
    np.testing.assert_allclose(cache.states.numpy(), cache_r.states, atol=1e-12)
