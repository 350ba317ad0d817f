"""Symmetries: positive scaling of v and k, independence of batch entries and heads."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from dla_fast.testing.strategies import Spec, build, cases
from properties import independent as ind
from properties.checks import assert_same_call
from properties.layout import replay
from properties.registry import prop

SCALED_MERGES = build(Spec(seed=31, T=12, K=3, data="piecewise", tau_mode="observed", tau_quantile=0.3))


@prop(st.tuples(cases(), st.integers(-20, 20)), examples=[(SCALED_MERGES, 7), (SCALED_MERGES, -9)])
def test_scaling_values_by_a_power_of_two_is_exact(impl, case):
    """``v -> 2^e v`` with ``norm_eps -> 4^e norm_eps`` (the guard scaled along): scores, decisions,
    merges bit for bit; ``o`` and the states times ``2^e`` exactly (powers of two commute with rounding)."""
    case, e = case
    c = 2.0**e
    scaled = case.replace(f"v*2^{e}, norm_eps*4^{e}", v=case.v * c, norm_eps=case.norm_eps * c * c,
                          initial_cache=_scaled_cache(case.initial_cache, c))
    o1, c1, t1 = case.run(impl)
    o2, c2, t2 = scaled.run(impl)
    _assert_exact_scaling(case, (o1, c1, t1), (o2, c2, t2), c, f"v*2^{e}")


@prop(st.tuples(cases(backbone="scalar"), st.integers(-20, 20)), examples=[(SCALED_MERGES, 5)])
def test_scaling_keys_by_a_power_of_two_is_exact(impl, case):
    """Scalar decay: ``k -> 2^e k`` scales every state exactly like ``v -> 2^e v``. (The delta rule's
    transition reads ``k k^T``, so scaling k changes the backbone itself: no such property there.)"""
    case, e = case
    c = 2.0**e
    scaled = case.replace(f"k*2^{e}, norm_eps*4^{e}", k=case.k * c, norm_eps=case.norm_eps * c * c,
                          initial_cache=_scaled_cache(case.initial_cache, c))
    _assert_exact_scaling(case, case.run(impl), scaled.run(impl), c, f"k*2^{e}")


@prop(st.tuples(cases(data=st.sampled_from(("random", "piecewise", "repeated"))), st.floats(0.01, 100.0),
                st.booleans()),
      examples=[(SCALED_MERGES, 3.7, False), (SCALED_MERGES, 0.3, True)])
def test_scaling_values_or_keys_by_any_positive_constant(impl, case):
    """``v -> c v`` (or ``k -> c k``, scalar decay), any ``c > 0``, with the guards made negligible
    (``eps = norm_eps = 1e-30``; the exact test above covers the guards): scores agree to rounding,
    decisions agree wherever the score is farther than that from tau, and with the unscaled decisions
    forced (``boundaries=``) ``o`` scales by c."""
    case, c, keys = case
    keys = keys and case.beta is None
    name = "k" if keys else "v"
    change = dict(k=case.k * c) if keys else dict(v=case.v * c)
    base = case.replace("eps=norm_eps=1e-30", eps=1e-30, norm_eps=1e-30)
    o1, c1, t1 = base.run(impl)
    forced = base.replace(f"{name}*{c}, boundaries=the unscaled decisions", boundaries=t1.starts.copy(),
                          initial_cache=_scaled_cache(case.initial_cache, c), **change)
    o2, c2, t2 = forced.run(impl)
    tol = 1e-9
    ind.assert_close(t2.scores, t1.scores, np.abs(t1.scores) + 1.0, rtol=tol, what=f"scores with {name}*{c}")
    # Merges compare sums of scores: where two densities agree to rounding, the choice may differ; then
    # the outputs are compared up to that token only.
    valid = np.ones(o1.shape[:3], dtype=bool)
    for b, t, h in np.argwhere(t1.merged != t2.merged):
        if not valid[b, t, h]:
            continue
        before = replay(t1, base.initial_cache, case.K, b, h)[t].before
        d = [(x.info + y.info) / (x.count + y.count) for x, y in zip(before[:-1], before[1:])]
        i1, i2 = t1.merged[b, t, h], t2.merged[b, t, h]
        assert abs(d[i1] - d[i2]) <= tol * (abs(d[i1]) + 1.0), (
            f"{name}*{c}: merge at (b={b}, t={t}, h={h}) chose pair {i2} instead of {i1}, densities {d}")
        valid[b, t:, h] = False
    ind.assert_close(np.where(valid[..., None], o2, 0), np.where(valid[..., None], c * o1, 0),
                     c * ind.output_scale(case)[..., None], rtol=tol, atol=1e-300, what=f"o with {name}*{c} vs c * o")
    free = forced.replace("boundaries as drawn", boundaries=case.boundaries)
    _, _, t3 = free.run(impl)
    flips = t3.starts != t1.starts
    if flips.any():
        b, t, h = (int(x) for x in np.argwhere(flips)[0])
        margin = abs(t1.scores[b, t, h] - case.tau)
        assert margin <= tol * (abs(t1.scores[b, t, h]) + 1.0), (
            f"{name}*{c}: decision at (b={b}, t={t}, h={h}) flipped although its score {t1.scores[b, t, h]!r} "
            f"is {margin:.3e} from tau={case.tau!r}")


def _scaled_cache(cache, c):
    if cache is None:
        return None
    out = cache.copy()
    out.states = out.states * c
    return out


def _assert_exact_scaling(case, one, scaled, c, what):
    (o1, c1, t1), (o2, c2, t2) = one, scaled
    assert (t1.starts == t2.starts).all() and (t1.merged == t2.merged).all(), f"{what}: decisions or merges differ"
    assert (t1.scores == t2.scores).all(), (
        f"{what}: scores differ, max |diff| {np.abs(t1.scores - t2.scores).max():.3e}")
    assert (o2 == c * o1).all(), f"{what}: o is not exactly c * o, max |diff| {np.abs(o2 - c * o1).max():.3e}"
    assert (c2.states == c * c1.states).all() and (c2.counts == c1.counts).all() and (c2.info == c1.info).all(), (
        f"{what}: final cache is not exactly scaled")


def _permutation_case(axis):
    return st.tuples(cases(**{axis: st.integers(2, 3)}), st.randoms(use_true_random=False))


def _permute(case, perm, axis_name):
    """The case with batch entries (axis 0) or heads (axis 2) permuted."""
    ax = 0 if axis_name == "B" else 2
    take = lambda x: None if x is None else np.take(x, perm, axis=ax)  # noqa: E731
    cache = None
    if case.initial_cache is not None:
        cache = case.initial_cache.copy()
        cax = 0 if axis_name == "B" else 1  # cache layout [B, H, ...]
        for f in ("states", "counts", "info", "size"):
            setattr(cache, f, np.take(getattr(cache, f), perm, axis=cax))
    return case.replace(f"{axis_name} permuted by {list(perm)}", q=take(case.q), k=take(case.k), v=take(case.v),
                        g=take(case.g), slot_weights=take(case.slot_weights), beta=take(case.beta),
                        boundaries=take(case.boundaries), initial_cache=cache)


def _check_permutation(impl, case, rnd, axis_name):
    n = case.B if axis_name == "B" else case.H
    perm = list(range(n))
    rnd.shuffle(perm)
    if perm == sorted(perm):
        perm = perm[1:] + perm[:1]
    perm = np.array(perm)
    o, cache, trace = case.run(impl)
    o2, cache2, trace2 = _permute(case, perm, axis_name).run(impl)
    ax, cax = (0, 0) if axis_name == "B" else (2, 1)
    expected_trace = type(trace)(*(np.take(x, perm, axis=ax) for x in (trace.scores, trace.starts, trace.merged)))
    expected_cache = cache.copy()
    for f in ("states", "counts", "info", "size"):
        setattr(expected_cache, f, np.take(getattr(cache, f), perm, axis=cax))
    permuted_case = _permute(case, perm, axis_name)
    assert_same_call(permuted_case, (np.take(o, perm, axis=ax), expected_cache, expected_trace),
                     (o2, cache2, trace2), f"{axis_name} permuted by {perm.tolist()}")


@prop(_permutation_case("B"))
def test_permuting_batch_entries_permutes_everything(impl, case):
    case, rnd = case
    _check_permutation(impl, case, rnd, "B")


@prop(_permutation_case("H"))
def test_permuting_heads_permutes_everything(impl, case):
    case, rnd = case
    _check_permutation(impl, case, rnd, "H")
