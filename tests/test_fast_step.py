"""dla_fast.step (decoding) against dla_ref and against dla_fast.forward with T = 1."""

from __future__ import annotations

import pytest
import torch
from fast_cases import F32, F64, assert_equivalent, float_case, random_inputs, run_ref, synthetic_inputs

import dla_fast
from dla_fast.testing import numpy_adapter

step_adapter = {dt: numpy_adapter(dt, via="step") for dt in ("float64", "float32")}


@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 4, 4, 2), (2, 40, 3, 8, 6, 4), (1, 60, 2, 5, 7, 2)])
def test_steps_float64_match_the_reference(beta, shape):
    x = random_inputs(21, *shape, beta=beta)
    ref = run_ref(x)
    fast = step_adapter["float64"](**x)
    assert_equivalent(fast, ref, **F64)


@pytest.mark.parametrize("workload", ["sparse", "dense"])
@pytest.mark.parametrize("beta", [None, 0.7])
def test_steps_float32_match_the_reference(workload, beta):
    x = synthetic_inputs(workload, T=100, Dk=16, Dv=16, K=4, seed=2, beta=beta)
    xr, ref = float_case(x, torch.float32)
    assert_equivalent(step_adapter["float32"](**xr), ref, **F32)


@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_equals_forward_with_one_token_continuing_a_cache(beta, dtype):
    x = {n: torch.as_tensor(a).to(dtype) for n, a in random_inputs(22, 2, 31, 3, 8, 6, 4, beta=beta).items()}
    head = {n: a[:, :30] for n, a in x.items()}
    last = {n: a[:, 30] for n, a in x.items()}
    _, cache, _ = dla_fast.forward(*[head.pop(n) for n in ("q", "k", "v", "g", "slot_weights")], **head)
    o_f, cache_f, _ = dla_fast.forward(*(x[n][:, 30:] for n in ("q", "k", "v", "g", "slot_weights")),
                                       beta=x["beta"][:, 30:] if beta else None, initial_cache=cache)
    o_s, cache_s = dla_fast.step(*[last.pop(n) for n in ("q", "k", "v", "g", "slot_weights")], cache.clone(), **last)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(o_s, o_f[:, 0], atol=tol, rtol=tol)
    torch.testing.assert_close(cache_s.states, cache_f.states, atol=tol, rtol=tol)
    assert torch.equal(cache_s.counts, cache_f.counts) and torch.equal(cache_s.size, cache_f.size)


def test_step_updates_the_cache_in_place_without_reallocating():
    x = {n: torch.as_tensor(a, dtype=torch.float32) for n, a in random_inputs(23, 2, 12, 2, 4, 4, 2).items()}
    cache = dla_fast.Cache.empty(2, 2, 2, 4, 4)
    pointers = [getattr(cache, f).data_ptr() for f in ("states", "counts", "info", "size")]
    for t in range(12):  # K = 2: merges from the third slot on
        o, returned = dla_fast.step(*(x[n][:, t] for n in ("q", "k", "v", "g", "slot_weights")), cache, tau=0.0)
        assert returned is cache and o.shape == (2, 2, 4)
    assert pointers == [getattr(cache, f).data_ptr() for f in ("states", "counts", "info", "size")]
    assert torch.equal(cache.size, torch.full((2, 2), 2)) and int(cache.counts.sum()) == 2 * 2 * 12


def test_step_from_none_starts_an_empty_cache_and_keeps_input_dtype():
    x = {n: torch.as_tensor(a).to(torch.bfloat16) for n, a in random_inputs(24, 1, 1, 2, 4, 4, 3).items()}
    o, cache = dla_fast.step(*(x[n][:, 0] for n in ("q", "k", "v", "g", "slot_weights")), None)
    assert o.dtype == torch.bfloat16 and cache.states.dtype == torch.float32
    assert torch.equal(cache.size, torch.ones((1, 2), dtype=torch.int64))
