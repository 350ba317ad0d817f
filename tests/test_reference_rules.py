"""One hand-checked case per rule of docs/semantics.md ("One token, four rules" and its consequences).

Every expected value below is worked out in the comments from the contract's formulas, not by calling
dla_ref's own helpers. Shapes: the cases use B = H = 1 and Dk = Dv = 2 unless they say otherwise.
Up to the guards, the score is the chord between the directions of P and P':
I_t = sqrt(2 - 2 cos(theta)), cos(theta) = <P, P'> / (|P| |P'|) (docs/algorithm.md).
"""

import numpy as np
import pytest

import dla_ref
from dla_ref import Cache

TINY = 1e-300  # guards that change nothing in float64
E1, E2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])


def seq(k, v, g=None, q=None, lam=None, K=2):
    """[T, D] rows -> the contract's [1, T, 1, D] arrays (g: zeros, q: (1, 1), lambda: (1, 0.5, 0.25, ...))."""
    k, v = np.asarray(k, dtype=np.float64), np.asarray(v, dtype=np.float64)
    T = len(k)
    g = np.zeros(T) if g is None else np.asarray(g, dtype=np.float64)
    q = np.ones((T, k.shape[1])) if q is None else np.asarray(q, dtype=np.float64)
    lam = np.tile(0.5 ** np.arange(K), (T, 1)) if lam is None else np.asarray(lam, dtype=np.float64)
    return q[None, :, None], k[None, :, None], v[None, :, None], g[None, :, None], lam[None, :, None]


def per_token(x):
    """[T] boolean/float for B = H = 1 -> [1, T, 1]."""
    return np.asarray(x)[None, :, None]


def one_cache(states, counts, info, K):
    """A B = H = 1 cache holding the given slots (oldest first) in a capacity-K cache."""
    states, m = np.asarray(states, dtype=np.float64), len(counts)
    cache = Cache.empty(1, 1, K, states.shape[1], states.shape[2])
    cache.states[0, 0, :m] = states
    cache.counts[0, 0, :m] = counts
    cache.info[0, 0, :m] = info
    cache.size[0, 0] = m
    return cache


# ---------------------------------------------------------------------------------------------------
# Rule 1: the score, the first token, the threshold and the override
# ---------------------------------------------------------------------------------------------------


def test_first_token_of_an_empty_cache_scores_zero_and_opens_a_slot_even_against_the_override():
    _, cache, trace = dla_ref.forward(*seq([E1, E1], [E1, E1]), boundaries=per_token([False, False]))
    assert trace.scores[0, 0, 0] == 0.0 and trace.starts[0, 0, 0]
    assert cache.size[0, 0] == 1 and cache.counts[0, 0, 0] == 2
    # An explicitly empty initial cache is an empty cache too.
    _, _, trace = dla_ref.forward(*seq([E1], [E1]), boundaries=per_token([False]),
                                  initial_cache=Cache.empty(1, 1, 2, 2, 2))
    assert trace.starts[0, 0, 0] and trace.scores[0, 0, 0] == 0.0


def test_score_is_the_chord_between_normalised_states():
    """P = e1 e1^T; token k = e2, v = (0, y): P' = diag(1, y), cos = 1/sqrt(1 + y^2).
    y = 1: I = sqrt(2 - sqrt(2)) = 0.765367;  y = 3/4: cos = 4/5, I = sqrt(2/5) = 0.632456;
    y = sqrt(3): cos = 1/2, I = 1."""
    for y, expected in ((1.0, np.sqrt(2 - np.sqrt(2))), (0.75, np.sqrt(0.4)), (np.sqrt(3), 1.0)):
        _, _, trace = dla_ref.forward(*seq([E1, E2], [E1, y * E2]), tau=np.inf, eps=TINY, norm_eps=TINY)
        assert trace.scores[0, 1, 0] == pytest.approx(expected, rel=1e-14), y


def test_score_uses_the_transitioned_open_state():
    """P = e1 e1^T, then a = 1/2 and k = e2, v = e2 / 2: P' = diag(1/2, 1/2), cos = 1/sqrt(2),
    I = sqrt(2 - sqrt(2)). Without the decay P' = diag(1, 1/2), cos = 2/sqrt(5), I = 0.459506."""
    _, _, trace = dla_ref.forward(*seq([E1, E2], [E1, E2 / 2], g=[0, np.log(0.5)]), tau=np.inf, eps=TINY, norm_eps=TINY)
    assert trace.scores[0, 1, 0] == pytest.approx(np.sqrt(2 - np.sqrt(2)), rel=1e-14)


def test_score_eps_guards_a_zero_open_state():
    """t = 0 has k = 0, so the open state P is zero: N(P) = 0 and I_1 = ||N(P')|| / eps.
    P' = e1 e1^T: mean(P'^2) = 1/4, ||N(P')|| = 1 / sqrt(1/4 + norm_eps)."""
    for eps in (1e-6, 1e-3):
        _, _, trace = dla_ref.forward(*seq([[0, 0], E1], [E1, E1]), tau=np.inf, eps=eps)
        assert trace.scores[0, 1, 0] == pytest.approx(1 / np.sqrt(0.25 + 1e-6) / eps, rel=1e-14)
    # P = P' = 0: 0 / eps = 0, no boundary at tau = 0.6.
    _, _, trace = dla_ref.forward(*seq([[0, 0], [0, 0]], [E1, E1]))
    assert trace.scores[0, 1, 0] == 0.0 and not trace.starts[0, 1, 0]


def test_score_norm_eps_sits_inside_the_root_of_the_mean_square():
    """P = d e1 e1^T, P' = 2 d e1 e1^T (same direction) with d = 1e-3, norm_eps = 1e-6, eps -> 0:
    mean(P^2) = d^2/4, mean(P'^2) = d^2; N(P) = P / sqrt(d^2/4 + 1e-6) -> entry 1e-3/sqrt(1.25e-6) = 0.894427,
    N(P') -> 2e-3/sqrt(2e-6) = 1.414214; I = (1.414214 - 0.894427) / 0.894427 = 0.581139.
    (Without the guard the two directions are equal and I = 0.)"""
    d = 1e-3
    expected = (2 * d / np.sqrt(2e-6) - d / np.sqrt(1.25e-6)) / (d / np.sqrt(1.25e-6))
    assert expected == pytest.approx(0.581139, abs=1e-6)
    _, _, trace = dla_ref.forward(*seq([E1, E1], [d * E1, d * E1]), tau=np.inf, eps=TINY, norm_eps=1e-6)
    assert trace.scores[0, 1, 0] == pytest.approx(expected, rel=1e-13)


def test_a_score_exactly_at_tau_opens_a_slot():
    """The decision is I_t >= tau: tau equal to the score opens a slot, the next float above does not."""
    args = seq([E1, E2], [E1, 0.75 * E2])
    _, _, trace = dla_ref.forward(*args, tau=np.inf)
    score = trace.scores[0, 1, 0]  # ~ sqrt(2/5) = 0.632
    _, _, at = dla_ref.forward(*args, tau=score)
    _, _, above = dla_ref.forward(*args, tau=np.nextafter(score, np.inf))
    assert at.scores[0, 1, 0] == score and at.starts[0, 1, 0]
    assert not above.starts[0, 1, 0]


def test_tau_is_compared_in_float64_even_when_given_as_float32():
    """A float32 tau that lies above the float64 score, but that the score rounds to in float32, must
    not open a slot."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        k, v = rng.standard_normal((2, 2, 2))
        args = seq(k, v)
        _, _, trace = dla_ref.forward(*args, tau=np.inf)
        score = trace.scores[0, 1, 0]
        tau32 = np.float32(score)
        if float(tau32) > score:  # the score rounds up to tau32 in float32
            _, _, trace = dla_ref.forward(*args, tau=tau32)
            assert not trace.starts[0, 1, 0]
            return
    pytest.fail("no score rounding up in float32 found")  # pragma: no cover


def test_boundary_override_decides_but_the_scores_are_still_computed():
    """Token 1 repeats token 0 (I ~ 0), token 2 is orthogonal (I = 0.765): the override forces a slot at 1
    and none at 2; the scores are those of the same path computed without the override."""
    k, v = [E1, E1, E2], [E1, E1, E2]
    _, cache, trace = dla_ref.forward(*seq(k, v, K=3), boundaries=per_token([True, True, False]), eps=TINY,
                                      norm_eps=TINY)
    np.testing.assert_array_equal(trace.starts[0, :, 0], [True, True, False])
    # After t = 1 the open slot is e1 e1^T alone; t = 2 turns it by 45 degrees.
    np.testing.assert_allclose(trace.scores[0, :, 0], [0.0, 0.0, np.sqrt(2 - np.sqrt(2))], rtol=1e-14, atol=0)
    np.testing.assert_array_equal(cache.counts[0, 0], [1, 2, 0])
    assert cache.info[0, 0, 1] == pytest.approx(np.sqrt(2 - np.sqrt(2)), rel=1e-14)  # Ibar adds overridden scores


def test_tau_infinite_keeps_one_slot_and_tau_minus_infinite_opens_one_per_token():
    args = seq([E1, E2, E1, E2], [E2, E1, E1, E2], K=4)
    _, cache, trace = dla_ref.forward(*args, tau=np.inf)
    np.testing.assert_array_equal(trace.starts[0, :, 0], [True, False, False, False])
    assert cache.size[0, 0] == 1 and cache.counts[0, 0, 0] == 4
    for tau in (-np.inf, 0.0):  # scores are >= 0, so tau <= 0 opens a slot at every token
        _, cache, trace = dla_ref.forward(*args, tau=tau)
        assert trace.starts.all() and cache.size[0, 0] == 4


def test_every_token_its_own_slot_gives_lambda_weighted_decayed_attention():
    """tau <= 0 and K >= T: o_t = sum_s lambda_t[t - s] (a_{s+1}...a_t) (q_t . k_s) v_s.
    k_s = e1, v_s = (s + 1) e2, q = (1, 1), a = 1/2, lambda = (1, 0.1, 0.01):
    o_2 = 3 + 0.1 * (1/2) * 2 + 0.01 * (1/4) * 1 = 3.1025 (second entry)."""
    lam = np.tile([1.0, 0.1, 0.01], (3, 1))
    o, _, _ = dla_ref.forward(*seq([E1] * 3, [E2, 2 * E2, 3 * E2], g=[np.log(0.5)] * 3, lam=lam), tau=0.0)
    np.testing.assert_allclose(o[0, :, 0], [[0, 1], [0, 2 + 0.1 * 0.5], [0, 3.1025]], rtol=1e-15)


# ---------------------------------------------------------------------------------------------------
# Rule 2: the transition applies to every slot
# ---------------------------------------------------------------------------------------------------


def test_scalar_decay_applies_to_closed_slots():
    """Slot A = e1 e1^T closes at t = 1 (forced); t = 1 has a = 1/4, so A becomes e1 e1^T / 4.
    q = (1, 1), lambda = (1, 8): o_1 = q^T (e2 e2^T) + 8 * (1/4, 0) = (2, 1)."""
    lam = np.tile([1.0, 8.0], (2, 1))
    o, cache, _ = dla_ref.forward(*seq([E1, E2], [E1, E2], g=[0, np.log(0.25)], lam=lam),
                                  boundaries=per_token([True, True]))
    np.testing.assert_allclose(cache.states[0, 0, 0], [[0.25, 0], [0, 0]], rtol=1e-15)
    np.testing.assert_allclose(o[0, 1, 0], [2.0, 1.0], rtol=1e-15)


def test_delta_rule_transition_applies_to_closed_slots():
    """beta = 1/2 throughout; s_t = beta k v^T, A_t(X) = a (X - beta k k^T X).
    t = 0: k = e1, v = e1: slot A = e1 e1^T / 2.
    t = 1: k = v = e2, a = 1, forced new slot: A_t leaves A alone (its row 2 is zero); B = e2 e2^T / 2.
    t = 2: k = e1, v = e2, a = 1/2, forced to join B. The closed slot A becomes (1/2)(1 - 1/2) A = e1 e1^T / 8;
    B becomes (1/2) B + e1 e2^T / 2 = [[0, 1/2], [0, 1/4]].
    q = (1, 1), lambda = (1, 10): o_2 = q^T B + 10 q^T A = (0, 3/4) + (10/8, 0) = (1.25, 0.75).
    (The decay alone on the closed slot would give A = e1 e1^T / 4 and o_2 = (2.5, 0.75).)
    Score at t = 2: P = e2 e2^T / 2, P' = B: cos = (1/8) / ((1/2)(sqrt(5)/4)) = 1/sqrt(5)."""
    lam = np.tile([1.0, 10.0], (3, 1))
    args = seq([E1, E2, E1], [E1, E2, E2], g=[0, 0, np.log(0.5)], lam=lam)
    o, cache, trace = dla_ref.forward(*args, beta=per_token([0.5] * 3), boundaries=per_token([True, True, False]),
                                      eps=TINY, norm_eps=TINY)  # fmt: skip
    np.testing.assert_allclose(cache.states[0, 0, 0], [[0.125, 0], [0, 0]], rtol=1e-15)
    np.testing.assert_allclose(cache.states[0, 0, 1], [[0, 0.5], [0, 0.25]], rtol=1e-15)
    np.testing.assert_allclose(o[0, 2, 0], [1.25, 0.75], rtol=1e-15)
    assert trace.scores[0, 2, 0] == pytest.approx(np.sqrt(2 - 2 / np.sqrt(5)), rel=1e-14)


def test_delta_rule_score_uses_the_delta_transition_of_the_open_state():
    """beta = 1/2. t = 0: P = e1 e1^T / 2. t = 1: a = 1/2, k = e1, v = e2:
    P' = (1/2)(P - (1/2) e1 e1^T P) + e1 e2^T / 2 = [[1/8, 1/2], [0, 0]], along (1, 4): cos = 1/sqrt(17),
    I = sqrt(2 - 2/sqrt(17)) = 1.2308. (With the decay alone, P' = [[1/4, 1/2], [0, 0]]: cos = 1/sqrt(5).)"""
    args = seq([E1, E1], [E1, E2], g=[0, np.log(0.5)])
    _, _, trace = dla_ref.forward(*args, beta=per_token([0.5, 0.5]), eps=TINY, norm_eps=TINY)
    assert trace.scores[0, 1, 0] == pytest.approx(np.sqrt(2 - 2 / np.sqrt(17)), rel=1e-14)


def test_delta_rule_with_read_weights_all_ones_is_the_gated_delta_rule():
    """Same tokens, one gated-delta state S: t = 0: e1 e1^T / 2; t = 1: diag(1/2, 1/2);
    t = 2: (1/2) diag(1/4, 1/2) + e1 e2^T / 2 = [[1/8, 1/2], [0, 1/4]] (= A + B above)."""
    args = seq([E1, E2, E1], [E1, E2, E2], g=[0, 0, np.log(0.5)], lam=np.ones((3, 2)))
    o, _, _ = dla_ref.forward(*args, beta=per_token([0.5] * 3), boundaries=per_token([True, True, False]))
    np.testing.assert_allclose(o[0, :, 0], [[0.5, 0], [0.5, 0.5], [0.125, 0.75]], rtol=1e-15)


def test_delta_rule_erases_the_key_direction_in_the_open_slot():
    """beta = 1, k = e1 twice: S = e1 v_0^T, then A_t(S) = S - e1 e1^T S = 0 and S = e1 v_1^T:
    the open slot holds only v_1 (o_1 = q^T e1 v_1^T = v_1 for q = e1)."""
    q = np.tile(E1, (2, 1))
    o, cache, _ = dla_ref.forward(*seq([E1, E1], [[3.0, 1.0], [1.0, 2.0]], q=q), beta=per_token([1.0, 1.0]), tau=np.inf)
    np.testing.assert_allclose(o[0, 1, 0], [1.0, 2.0], rtol=1e-15)
    assert cache.counts[0, 0, 0] == 2


# ---------------------------------------------------------------------------------------------------
# Rule 3: the update and the capacity-bounded merge
# ---------------------------------------------------------------------------------------------------


def merge_step(counts, info, K, states=None):
    """One token that is forced to open a slot on a full cache holding (counts, info); the token has k = 0
    and g = 0, so every state is unchanged by the step, s_t = 0 and I_t = 0 exactly."""
    m = len(counts)
    if states is None:
        states = [np.diag([i + 1.0, 10.0 * (i + 1)]) for i in range(m)]
    cache = one_cache(states, counts, info, K)
    _, out, trace = dla_ref.forward(*seq([[0, 0]], [E1], K=K), initial_cache=cache, boundaries=per_token([True]))
    return out, trace


def test_merge_at_a_full_cache_joins_the_lowest_density_pair():
    """K = 3, (n, Ibar) = (1, 3), (1, 1), (1, 1): pair densities 2, 1 -> pair (1, 2) merges."""
    cache, trace = merge_step([1, 1, 1], [3.0, 1.0, 1.0], K=3)
    assert trace.merged[0, 0, 0] == 1
    np.testing.assert_array_equal(cache.counts[0, 0], [1, 2, 1])
    np.testing.assert_array_equal(cache.info[0, 0], [3.0, 2.0, 0.0])
    np.testing.assert_array_equal(cache.states[0, 0, 0], np.diag([1.0, 10.0]))
    np.testing.assert_array_equal(cache.states[0, 0, 1], np.diag([2.0 + 3.0, 20.0 + 30.0]))  # S_1 + S_2
    np.testing.assert_array_equal(cache.states[0, 0, 2], np.zeros((2, 2)))  # the new slot: s_t = 0


def test_merge_density_tie_goes_to_the_oldest_pair():
    """(n, Ibar) = (1, 1), (1, 1), (1, 1): both pairs have density 1 -> pair (0, 1)."""
    cache, trace = merge_step([1, 1, 1], [1.0, 1.0, 1.0], K=3)
    assert trace.merged[0, 0, 0] == 0
    np.testing.assert_array_equal(cache.counts[0, 0], [2, 1, 1])
    np.testing.assert_array_equal(cache.info[0, 0], [2.0, 1.0, 0.0])
    np.testing.assert_array_equal(cache.states[0, 0, 0], np.diag([3.0, 30.0]))
    # Four slots, three tied pairs (densities 0.5): still the oldest.
    _, trace = merge_step([2, 2, 2, 2], [1.0, 1.0, 1.0, 1.0], K=4)
    assert trace.merged[0, 0, 0] == 0


def test_merge_density_is_the_pair_sum_of_scores_over_the_pair_sum_of_counts():
    """K = 4, (n, Ibar) = (9, 0), (1, 1), (1, 0.4), (1, 0.4): pair densities 1/10, 1.4/2, 0.8/2
    -> pair (0, 1). (The mean of the two slot densities would pick (2, 3): 0.5, 0.7, 0.4.)"""
    cache, trace = merge_step([9, 1, 1, 1], [0.0, 1.0, 0.4, 0.4], K=4)
    assert trace.merged[0, 0, 0] == 0
    np.testing.assert_array_equal(cache.counts[0, 0], [10, 1, 1, 1])


def test_no_merge_below_capacity_and_none_without_a_new_slot():
    """A cache with K - 1 slots: a new slot is appended with no merge. A full cache and no new slot: the
    open slot grows, nothing merges."""
    cache, trace = merge_step([1, 1], [1.0, 1.0], K=3)
    assert trace.merged[0, 0, 0] == -1
    np.testing.assert_array_equal(cache.counts[0, 0], [1, 1, 1])
    full = one_cache([np.eye(2)] * 3, [1, 1, 1], [1.0, 1.0, 1.0], K=3)
    _, out, trace = dla_ref.forward(*seq([[0, 0]], [E1], K=3), initial_cache=full, boundaries=per_token([False]))
    assert trace.merged[0, 0, 0] == -1 and not trace.starts[0, 0, 0]
    np.testing.assert_array_equal(out.counts[0, 0], [1, 1, 2])


def test_a_new_slot_holds_the_token_contribution_count_one_and_its_score():
    """Slot A = e1 e1^T; token k = e2, v = (0, 1) scores sqrt(2 - sqrt(2)) >= 0.6 and opens (e2 e2^T, 1, I)."""
    _, cache, trace = dla_ref.forward(*seq([E1, E2], [E1, E2]), eps=TINY, norm_eps=TINY)
    assert trace.starts[0, 1, 0]
    np.testing.assert_array_equal(cache.states[0, 0, 1], [[0, 0], [0, 1]])
    assert cache.counts[0, 0, 1] == 1
    assert cache.info[0, 0, 1] == pytest.approx(np.sqrt(2 - np.sqrt(2)), rel=1e-14)


def test_forward_leaves_the_initial_cache_untouched():
    cache = one_cache([np.eye(2), 2 * np.eye(2)], [1, 1], [0.5, 0.5], K=2)
    before = cache.copy()
    _, out, _ = dla_ref.forward(*seq([E1, E2], [E1, E2]), initial_cache=cache, tau=0.0)
    for name in ("states", "counts", "info", "size"):
        np.testing.assert_array_equal(getattr(cache, name), getattr(before, name))
    assert out is not cache and out.states is not cache.states


# ---------------------------------------------------------------------------------------------------
# Rule 4: the read, in recency order, after the update
# ---------------------------------------------------------------------------------------------------


def test_read_weights_are_in_recency_order_newest_first():
    """Slots A = e1 e1^T (older) and B = e2 e2^T (open), q = (1, 1):
    lambda = (1, 0) reads B only: (0, 1); lambda = (0, 1) reads A only: (1, 0); (2, 3): (3, 2)."""
    k = v = [E1, E2]
    for lam_1, expected in (([1.0, 0.0], [0, 1]), ([0.0, 1.0], [1, 0]), ([2.0, 3.0], [3, 2])):
        lam = np.array([[1.0, 0.0], lam_1])
        o, _, trace = dla_ref.forward(*seq(k, v, lam=lam))
        assert trace.starts[0, 1, 0]
        np.testing.assert_array_equal(o[0, 1, 0], expected)


def test_read_weights_beyond_the_live_slots_are_unused():
    """One live slot: lambda[1:] (here 1e9) must not matter. o_0 = q^T e1 e1^T = (1, 0)."""
    o, _, _ = dla_ref.forward(*seq([E1], [E1], lam=[[1.0, 1e9, 1e9]], K=3))
    np.testing.assert_array_equal(o[0, 0, 0], [1.0, 0.0])


def test_read_includes_the_current_token():
    """The output at t reads the cache after the update: o_0 = q_0^T k_0 v_0^T = 3 * (1, 2) for q = (1, 2),
    k = e2 * 1.5."""
    o, _, _ = dla_ref.forward(*seq([[0.0, 1.5]], [[1.0, 2.0]], q=[[1.0, 2.0]]))
    np.testing.assert_array_equal(o[0, 0, 0], [3.0, 6.0])
