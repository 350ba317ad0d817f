"""Streaming: splitting a call anywhere and passing the cache on changes nothing."""

from __future__ import annotations

import numpy as np

from dla_fast.testing.strategies import Spec, build, cases
from dla_ref import Trace
from properties.checks import assert_same_call
from properties.layout import stepwise
from properties.registry import prop

SPLIT_AT_MERGES = build(Spec(seed=21, T=14, K=3, data="piecewise", tau_mode="observed", tau_quantile=0.4,
                             splits=(1, 5, 9)))
SPLIT_FULL_CACHE = build(Spec(seed=22, T=10, K=2, data="random", prefix=5, tau_mode="zero", splits=(0, 3, 10)))


def _run_in_pieces(impl, case, points):
    """Run ``case`` in pieces at ``points`` (sorted token indices), passing the cache on."""
    edges = [0, *points, case.T]
    cache = None if case.initial_cache is None else case.initial_cache.copy()
    outs, scores, starts, merged = [], [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        o, cache, trace = case.time_slice(lo, hi, cache).run(impl)
        outs.append(o)
        scores.append(trace.scores)
        starts.append(trace.starts)
        merged.append(trace.merged)
    return np.concatenate(outs, 1), cache, Trace(np.concatenate(scores, 1), np.concatenate(starts, 1),
                                                   np.concatenate(merged, 1))


@prop(cases(), examples=[SPLIT_AT_MERGES, SPLIT_FULL_CACHE])
def test_streaming_split_equals_one_call(impl, case):
    """Split at the drawn points (any number, repeats and empty pieces allowed)."""
    one = case.run(impl)
    assert_same_call(case, one, _run_in_pieces(impl, case, list(case.spec.splits)), f"split at {case.spec.splits}")


@prop(cases(max_T=12), examples=[SPLIT_FULL_CACHE])
def test_streaming_at_every_split_point(impl, case):
    one = case.run(impl)
    for p in range(case.T + 1):
        assert_same_call(case, one, _run_in_pieces(impl, case, [p]), f"split at {p}")


@prop(cases(), examples=[SPLIT_AT_MERGES])
def test_token_by_token_equals_one_call(impl, case):
    one = case.run(impl)
    sw = stepwise(impl, case)
    final = sw.caches[-1] if sw.caches else (case.initial_cache if case.initial_cache is not None else one[1])
    assert_same_call(case, one, (sw.outputs, final, sw.trace), "token by token")
