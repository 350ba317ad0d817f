"""Shared by the dla_fast-against-dla_ref tests: inputs, runners, tolerances and the equivalence check."""

from __future__ import annotations

import math

import numpy as np
import torch

import dla_fast
import dla_ref
from dla_fast.testing import reference_margins
from dla_ref.synthetic import piecewise_stationary

DECISION_MARGIN = 1e-4  # |I_t - tau| (scores are O(1); float32 score errors are ~1e-6)
DENSITY_MARGIN = 1e-5  # relative gap between the two lowest pair densities at a merge


def random_inputs(seed, B, T, H, Dk, Dv, K, *, beta=False, decay=0.3):
    rng = np.random.default_rng(seed)
    x = dict(
        q=rng.standard_normal((B, T, H, Dk)),
        k=rng.standard_normal((B, T, H, Dk)) / math.sqrt(Dk),
        v=rng.standard_normal((B, T, H, Dv)),
        g=-decay * rng.random((B, T, H)),
        slot_weights=rng.random((B, T, H, K)),
    )
    if beta:
        x["beta"] = rng.random((B, T, H))
    return x


def synthetic_inputs(workload, B=1, T=200, H=2, Dk=8, Dv=8, K=4, seed=0, beta=None):
    params = {"sparse": dict(decay=0.5, jitter=0.3), "dense": dict(decay=0.3, jitter=1.0)}[workload]
    arrays = piecewise_stationary(B, T, H, Dk, Dv, K, seed=seed, beta=beta, **params)
    names = ["q", "k", "v", "g", "slot_weights"] + (["beta"] if beta is not None else [])
    return dict(zip(names, arrays))


def rounded(x, dtype):
    """Inputs rounded to ``dtype`` and back to float64 (what the reference must run on)."""
    return {n: (a if n == "boundaries" else torch.as_tensor(a).to(dtype).to(torch.float64).numpy())
            for n, a in x.items()}


def run_fast(x, dtype=torch.float64, initial_cache=None, **kw):
    t = {n: torch.as_tensor(a).to(dtype) if n != "boundaries" else torch.as_tensor(a) for n, a in x.items()}
    cache = None
    if initial_cache is not None:
        cache = dla_fast.Cache.from_ref(initial_cache, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    o, final, trace = dla_fast.forward(t.pop("q"), t.pop("k"), t.pop("v"), t.pop("g"), t.pop("slot_weights"),
                                       initial_cache=cache, return_trace=True, **t, **kw)
    assert o.dtype == dtype
    return o.to(torch.float64).numpy(), final.to_ref(), trace.to_ref()


def run_ref(x, **kw):
    x = dict(x)
    return dla_ref.forward(x.pop("q"), x.pop("k"), x.pop("v"), x.pop("g"), x.pop("slot_weights"), **x, **kw)


def assert_equivalent(fast, ref, *, o_tol, score_tol, state_tol):
    (o, cache, trace), (o_r, cache_r, trace_r) = fast, ref
    np.testing.assert_array_equal(trace.starts, trace_r.starts, err_msg="starts")
    np.testing.assert_array_equal(trace.merged, trace_r.merged, err_msg="merged")
    np.testing.assert_array_equal(cache.size, cache_r.size, err_msg="size")
    np.testing.assert_array_equal(cache.counts, cache_r.counts, err_msg="counts")
    scale = lambda a: max(1.0, float(np.abs(a).max())) if a.size else 1.0  # noqa: E731
    np.testing.assert_allclose(trace.scores, trace_r.scores, rtol=score_tol, atol=score_tol, err_msg="scores")
    np.testing.assert_allclose(o, o_r, rtol=0, atol=o_tol * scale(o_r), err_msg="o")
    np.testing.assert_allclose(cache.states, cache_r.states, rtol=0, atol=state_tol * scale(cache_r.states),
                               err_msg="states")
    np.testing.assert_allclose(cache.info, cache_r.info, rtol=score_tol, atol=score_tol * scale(cache_r.info),
                               err_msg="info")


F64 = dict(o_tol=1e-11, score_tol=1e-11, state_tol=1e-12)
F32 = dict(o_tol=2e-5, score_tol=2e-5, state_tol=2e-6)


def float_case(x, dtype, tau=0.6):
    """Reference on the rounded inputs, with the decisions forced where its margin is tiny."""
    xr = rounded(x, dtype)
    ref = run_ref(xr, tau=tau)
    decision, density = reference_margins(ref[2], tau)
    if decision < DECISION_MARGIN:
        xr["boundaries"] = ref[2].starts.copy()
        ref = run_ref(xr, tau=tau)
        decision, density = reference_margins(ref[2], tau, boundaries=xr["boundaries"])
    assert density > DENSITY_MARGIN, f"inputs too close to a density tie ({density:.2e}); pick another seed"
    return xr, ref
