"""The cache's structure: capacity, conservation, order, merges, decisions (contract: "Consequences").

Intermediate caches come from streaming the call one token at a time (:func:`properties.layout.stepwise`),
the layout a trace claims from :func:`properties.layout.replay`; neither trusts the implementation.
"""

from __future__ import annotations

import numpy as np

from dla_fast.testing.strategies import (
    DELTA_BETA_ONE,
    DELTA_BETA_ZERO,
    REPEATED_TIES,
    SCORE_AT_TAU,
    SCORE_AT_TAU_DELTA,
    TIED_DENSITIES,
    TIED_DENSITIES_AT_A_THRESHOLD,
    ZERO_SCORE_TIES,
    Spec,
    build,
    cases,
)
from properties import independent as ind
from properties.layout import cache_starts, replay, stepwise
from properties.registry import prop

# Deliberately constructed cases (run in every profile, before the drawn ones); the exact ties
# (ZERO_SCORE_TIES, REPEATED_TIES, SCORE_AT_TAU, TIED_DENSITIES, ...) are in dla_fast.testing.strategies.
# the forced merges of a boundary override into a full cache
FORCED_MERGES = build(Spec(seed=4, T=14, K=3, data="piecewise", boundaries="random", boundary_p=0.5, tau_mode="inf"))
# a continued stream whose first token meets a full cache
FULL_INITIAL_CACHE = build(Spec(seed=5, T=10, K=3, data="random", prefix=8, tau_mode="zero"))
# tau > every score: the first token of an empty cache must still open the slot
HIGH_TAU = build(Spec(seed=6, T=5, K=2, data="random", tau_mode="value", tau_value=2.0))
OVERRIDE_FIRST_FALSE = build(Spec(seed=7, T=6, K=2, data="random", boundaries="random", boundary_p=0.1))


def _size_before(sw, case, t):
    return case.initial_size if t == 0 else sw.caches[t - 1].size


@prop(cases(), examples=[FULL_INITIAL_CACHE, FORCED_MERGES])
def test_capacity_is_never_exceeded(impl, case):
    sw = stepwise(impl, case)
    for t, cache in enumerate(sw.caches):
        assert (cache.size <= case.K).all(), f"more than K={case.K} slots after token {t}: sizes {cache.size.tolist()}"
        assert (cache.size >= 1).all(), f"an empty cache after token {t}"
    _, final, _ = case.run(impl)
    assert (final.size <= case.K).all()


@prop(cases(), examples=[FULL_INITIAL_CACHE])
def test_counts_sum_to_tokens_seen(impl, case):
    sw = stepwise(impl, case)
    seen0 = case.initial_tokens
    for t, cache in enumerate(sw.caches):
        used = np.arange(case.K) < cache.size[..., None]
        assert (cache.counts.sum(-1) == seen0 + t + 1).all(), f"counts after token {t} do not sum to tokens seen"
        assert (cache.counts[used] >= 1).all(), f"a live slot with no token after token {t}"
        assert (cache.counts[~used] == 0).all(), f"an unused slot with a count after token {t}"


@prop(cases(), examples=[FULL_INITIAL_CACHE])
def test_information_sums_to_scores(impl, case):
    sw = stepwise(impl, case)
    info0 = np.zeros((case.B, case.H)) if case.initial_cache is None else case.initial_cache.info.sum(-1)
    running = info0.copy()
    for t, cache in enumerate(sw.caches):
        running = running + sw.trace.scores[:, t]
        ind.assert_close(cache.info.sum(-1), running, np.abs(running) + 1e-300, rtol=1e-12,
                         what=f"sum of Ibar after token {t} vs sum of scores")
        used = np.arange(case.K) < cache.size[..., None]
        assert (cache.info[~used] == 0).all(), f"an unused slot with information after token {t}"


@prop(cases(), examples=[FORCED_MERGES, FULL_INITIAL_CACHE])
def test_cache_matches_the_layout_its_trace_implies(impl, case):
    """Slots are contiguous, chronological and cover every token: the final cache's counts and
    information sums are exactly those of the contiguous layout rebuilt from the trace."""
    _, cache, trace = case.run(impl)
    for b in range(case.B):
        for h in range(case.H):
            steps = replay(trace, case.initial_cache, case.K, b, h)
            slots = steps[-1].after if steps else tuple(ind_slots(case, b, h))
            m = len(slots)
            assert cache.size[b, h] == m, f"(b={b}, h={h}): cache has {cache.size[b, h]} slots, the trace implies {m}"
            assert list(cache.counts[b, h, :m]) == [s.count for s in slots], (
                f"(b={b}, h={h}): counts {cache.counts[b, h, :m].tolist()} != layout {[s.count for s in slots]}")
            ind.assert_close(cache.info[b, h, :m], [s.info for s in slots], np.abs([s.info for s in slots]) + 1e-300,
                             rtol=1e-12, what=f"(b={b}, h={h}) Ibar vs the trace's scores")


def ind_slots(case, b, h):
    from properties.layout import initial_slots

    return initial_slots(case.initial_cache, b, h)


@prop(cases(), examples=[FORCED_MERGES, FULL_INITIAL_CACHE, DELTA_BETA_ZERO, DELTA_BETA_ONE])
def test_slot_states_hold_exactly_their_tokens(impl, case):
    """Every slot's state is the sum of its own tokens' contributions, each carried through every later
    transition (closed slots decay too): contiguity and coverage, checked on the states themselves."""
    _, cache, trace = case.run(impl)
    scale = ind.magnitude(case)
    for b in range(case.B):
        for h in range(case.H):
            if case.T == 0:
                continue
            steps = replay(trace, case.initial_cache, case.K, b, h)
            carried = ind.propagated(case, b, h)[-1]
            slots = steps[-1].after
            init_counts = [] if case.initial_cache is None else \
                case.initial_cache.counts[b, h, : int(case.initial_cache.size[b, h])].tolist()
            for i, slot in enumerate(slots):
                stop = slots[i + 1].start if i + 1 < len(slots) else case.T
                expected = ind.slot_state(carried, slot.start, stop, init_counts)
                ind.assert_close(cache.states[b, h, i], expected, scale[b, -1, h], rtol=1e-10, atol=1e-300,
                                 what=f"(b={b}, h={h}) state of slot {i} (tokens {slot.start}..{stop - 1})")


@prop(cases(), examples=[FORCED_MERGES, FULL_INITIAL_CACHE])
def test_merges_join_neighbours_only(impl, case):
    """A merge at token t replaces slots (i, i+1) of the cache before t by one slot holding both."""
    sw = stepwise(impl, case)
    prev = case.initial_cache
    for t, cache in enumerate(sw.caches):
        for b in range(case.B):
            for h in range(case.H):
                i = int(sw.trace.merged[b, t, h])
                if i < 0:
                    continue
                assert prev is not None and 0 <= i <= int(prev.size[b, h]) - 2, (
                    f"(b={b}, h={h}, t={t}): merge index {i} is not a pair of neighbours in the cache before")
                m = int(prev.size[b, h])
                counts = prev.counts[b, h, :m].tolist()
                info = prev.info[b, h, :m].tolist()
                expected_counts = counts[:i] + [counts[i] + counts[i + 1]] + counts[i + 2:] + [1]
                n = int(cache.size[b, h])
                assert cache.counts[b, h, :n].tolist() == expected_counts, (
                    f"(b={b}, h={h}, t={t}): merging pair {i} of counts {counts} should give {expected_counts}, "
                    f"got {cache.counts[b, h, :n].tolist()}")
                expected_info = info[:i] + [info[i] + info[i + 1]] + info[i + 2:]
                ind.assert_close(cache.info[b, h, : n - 1], expected_info, np.abs(expected_info) + 1e-300,
                                 rtol=1e-12, what=f"(b={b}, h={h}, t={t}) Ibar after merging pair {i}")
        prev = cache


@prop(cases(), examples=[FORCED_MERGES])
def test_partitions_only_coarsen(impl, case):
    """Every slot boundary at token t+1 at or before token t was already a boundary at token t."""
    sw = stepwise(impl, case)
    for b in range(case.B):
        for h in range(case.H):
            first = -int(case.initial_tokens[b, h])
            before = set(cache_starts(case.initial_cache, b, h, first)) if case.initial_cache is not None else set()
            for t, cache in enumerate(sw.caches):
                now = set(cache_starts(cache, b, h, first))
                new = {s for s in now if s <= t - 1} - before
                assert not new, (f"(b={b}, h={h}): slot boundaries {sorted(new)} appear at token {t} inside what "
                                 f"was one slot before (boundaries then {sorted(before)}, now {sorted(now)})")
                before = now


@prop(cases(), examples=[FORCED_MERGES, FULL_INITIAL_CACHE, ZERO_SCORE_TIES, TIED_DENSITIES])
def test_merges_only_at_a_new_slot_with_a_full_cache(impl, case):
    sw = stepwise(impl, case)
    for t, cache in enumerate(sw.caches):
        size0 = _size_before(sw, case, t)
        started, merged = sw.trace.starts[:, t], sw.trace.merged[:, t]
        full = size0 == case.K
        assert ((merged >= 0) == (started & full)).all(), (
            f"token {t}: merges {merged.tolist()} where new slots {started.tolist()} meet full caches {full.tolist()}")
        expected = np.where(started, np.minimum(size0 + 1, case.K), np.maximum(size0, 1))
        assert (cache.size == expected).all(), f"token {t}: sizes {cache.size.tolist()}, expected {expected.tolist()}"
        if t > 0 or case.initial_cache is not None:
            prev = sw.caches[t - 1] if t > 0 else case.initial_cache
            idx = np.maximum(cache.size - 1, 0)[..., None]
            open_count = np.take_along_axis(cache.counts, idx, -1)[..., 0]
            prev_open = np.take_along_axis(prev.counts, np.maximum(prev.size - 1, 0)[..., None], -1)[..., 0]
            expected_open = np.where(started, 1, prev_open + 1)
            assert (open_count == expected_open).all(), (
                f"token {t}: open slot counts {open_count.tolist()}, expected {expected_open.tolist()} "
                f"(a new slot holds exactly its first token)")


@prop(cases(), examples=[ZERO_SCORE_TIES, TIED_DENSITIES, TIED_DENSITIES_AT_A_THRESHOLD, REPEATED_TIES,
                         FULL_INITIAL_CACHE, DELTA_BETA_ZERO])
def test_merge_takes_the_lowest_density_pair_ties_to_the_oldest(impl, case):
    """Densities are computed from the implementation's own cache before the step (its own counts and
    information sums), so only the choice is judged: the lowest ``(Ibar_i + Ibar_i+1) / (n_i + n_i+1)``,
    the oldest pair among exact ties (a difference within 1e-12 of rounding may go either way)."""
    sw = stepwise(impl, case)
    for t in range(case.T):
        prev = sw.caches[t - 1] if t > 0 else case.initial_cache
        for b in range(case.B):
            for h in range(case.H):
                i = int(sw.trace.merged[b, t, h])
                if i < 0:
                    continue
                m = int(prev.size[b, h])
                n, info = prev.counts[b, h, :m], prev.info[b, h, :m]
                d = (info[:-1] + info[1:]) / (n[:-1] + n[1:])
                assert 0 <= i < len(d), f"(b={b}, h={h}, t={t}): merge index {i} outside 0..{len(d) - 1}"
                lowest = d.min()
                oldest = int(np.flatnonzero(d == lowest)[0])
                near = abs(d[i] - lowest) <= 1e-12 * abs(lowest) and d[i] != d[oldest]
                assert i == oldest or near, (
                    f"(b={b}, h={h}, t={t}): merged pair {i} (density {d[i]!r}); the lowest density is "
                    f"{lowest!r}, first at pair {oldest}; densities {d.tolist()}, counts {n.tolist()}")


@prop(cases(), examples=[SCORE_AT_TAU, SCORE_AT_TAU_DELTA, ZERO_SCORE_TIES, HIGH_TAU, OVERRIDE_FIRST_FALSE,
                         DELTA_BETA_ZERO])
def test_decisions_follow_the_threshold_or_the_override(impl, case):
    """A token opens a slot iff ``I_t >= tau`` (or ``boundaries[t]``); the first token of an empty cache
    always opens one, with score 0."""
    _, _, trace = case.run(impl)
    empty = case.initial_size == 0
    for t in range(case.T):
        first = empty if t == 0 else np.zeros_like(empty)
        rule = trace.scores[:, t] >= case.tau if case.boundaries is None else case.boundaries[:, t]
        expected = np.where(first, True, rule)
        got = trace.starts[:, t]
        assert (got == expected).all(), (
            f"token {t}: starts {got.tolist()}, expected {expected.tolist()} (scores {trace.scores[:, t].tolist()}, "
            f"tau {case.tau!r}, override {None if case.boundaries is None else case.boundaries[:, t].tolist()}, "
            f"empty cache {first.tolist()})")
        assert (trace.scores[:, t][first] == 0).all(), f"token {t}: the first token of an empty cache must score 0"


@prop(cases(), examples=[SCORE_AT_TAU, REPEATED_TIES, DELTA_BETA_ZERO, DELTA_BETA_ONE])
def test_scores_follow_the_definition(impl, case):
    """``I_t`` computed from the open slot's state, rebuilt from the trace's own decisions."""
    _, _, trace = case.run(impl)
    for b in range(case.B):
        for h in range(case.H):
            P = None
            if case.initial_cache is not None and case.initial_cache.size[b, h] > 0:
                P = case.initial_cache.states[b, h, int(case.initial_cache.size[b, h]) - 1]
            for t in range(case.T):
                q, k, v, a, beta = ind.token(case, b, t, h)
                s = ind.contribution(k, v, beta)
                if P is None:
                    expected = 0.0
                else:
                    P_next = ind.transition(P, a, k, beta) + s
                    expected = ind.score(P, P_next, case.eps, case.norm_eps)
                got = trace.scores[b, t, h]
                assert abs(got - expected) <= 1e-9 * (abs(expected) + 1e-3), (
                    f"(b={b}, h={h}, t={t}): score {got!r}, the definition gives {expected!r}")
                P = s if trace.starts[b, t, h] else ind.transition(P, a, k, beta) + s
