"""The worked example of docs/algorithm.md, checked number by number against values worked out by hand.

T = 5, Dk = Dv = 2, K = 2, tau = 0.6, scalar decay, q_t = (1, 1), lambda_t = (1, 0.5):

    t   k_t     v_t          a_t   I_t                      decision
    0   (1, 0)  (1, 0)       1     0 (empty cache)          opens slot A
    1   (1, 0)  (1, 0)       1     0 (same direction)       joins A
    2   (0, 1)  (0, 2)       1     sqrt(2 - sqrt(2))        opens slot B
    3   (0, 1)  (7/8, 2)     1/2   sqrt(2) / 5              joins B
    4   (1, 0)  (25/8, 0)    1     sqrt(2 - sqrt(2))        cache full: merge (A, B), open slot C

Up to the guards, I_t = sqrt(2 - 2 cos(theta)) where theta is the angle between the open state P and
P' (see docs/algorithm.md). The hand values are exact when the guards are negligible (eps = norm_eps =
1e-300); with the default guards (1e-6) they move by less than 1e-6, and the score of t = 1 becomes the
guards' own 1.5e-6.
"""

import numpy as np
import pytest

import dla_ref

TAU = 0.6
R2 = np.sqrt(2.0)
CHORD_45 = np.sqrt(2.0 - R2)  # sqrt(2 - sqrt(2)) = 0.765367: a 45-degree turn of the open state
CHORD_24_25 = R2 / 5.0  # cos = 24/25: sqrt(2 - 48/25) = sqrt(2)/5 = 0.282843

# Hand-computed results (docs/algorithm.md, "A worked example").
SCORES = np.array([0.0, 0.0, CHORD_45, CHORD_24_25, CHORD_45])
STARTS = np.array([True, False, True, False, True])
MERGED = np.array([-1, -1, -1, -1, 0])
OUTPUTS = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 2.0], [1.375, 3.0], [4.0625, 1.5]])
FINAL_STATES = np.array([[[1.0, 0.0], [0.875, 3.0]], [[3.125, 0.0], [0.0, 0.0]]])
FINAL_COUNTS = np.array([4, 1])
FINAL_INFO = np.array([CHORD_45 + CHORD_24_25, CHORD_45])
TINY = 1e-300  # guards that change nothing in float64


def example(B: int = 1, H: int = 1):
    """The worked example's inputs, [1, 5, 1, .] (or tiled to [B, 5, H, .])."""
    q = np.ones((5, 2))
    k = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=np.float64)
    v = np.array([[1, 0], [1, 0], [0, 2], [7 / 8, 2], [25 / 8, 0]])
    g = np.array([0.0, 0.0, 0.0, np.log(0.5), 0.0])
    lam = np.tile([1.0, 0.5], (5, 1))

    def tile(x):
        x = x[None, :, None]
        return np.tile(x, (B, 1, H) + (1,) * (x.ndim - 3))

    return tile(q), tile(k), tile(v), tile(g), tile(lam)


def test_worked_example_with_negligible_guards_matches_the_hand_values_exactly():
    o, cache, trace = dla_ref.forward(*example(), tau=TAU, eps=TINY, norm_eps=TINY)
    np.testing.assert_allclose(trace.scores[0, :, 0], SCORES, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(trace.starts[0, :, 0], STARTS)
    np.testing.assert_array_equal(trace.merged[0, :, 0], MERGED)
    np.testing.assert_allclose(o[0, :, 0], OUTPUTS, rtol=1e-14)
    assert cache.size[0, 0] == 2
    np.testing.assert_allclose(cache.states[0, 0], FINAL_STATES, rtol=1e-14)
    np.testing.assert_array_equal(cache.counts[0, 0], FINAL_COUNTS)
    np.testing.assert_allclose(cache.info[0, 0], FINAL_INFO, rtol=1e-14)


def test_worked_example_with_default_guards():
    o, cache, trace = dla_ref.forward(*example(), tau=TAU)
    scores = trace.scores[0, :, 0]
    # t = 1: P' = 2P points the same way; only the guards separate N(P') from N(P):
    # I_1 = (1/sqrt(0.25 + 1e-6) - 2/sqrt(1 + 1e-6)) / (1/sqrt(0.25 + 1e-6) + 1e-6) = 1.5e-6 (to 1e-12).
    assert scores[1] == pytest.approx(1.5e-6, abs=1e-11)
    np.testing.assert_allclose(scores[[0, 2, 3, 4]], SCORES[[0, 2, 3, 4]], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(trace.starts[0, :, 0], STARTS)
    np.testing.assert_array_equal(trace.merged[0, :, 0], MERGED)
    # The states and outputs do not involve the guards at all.
    np.testing.assert_array_equal(o[0, :, 0], OUTPUTS)
    np.testing.assert_array_equal(cache.states[0, 0], FINAL_STATES)
    np.testing.assert_array_equal(cache.counts[0, 0], FINAL_COUNTS)
    np.testing.assert_allclose(cache.info[0, 0], FINAL_INFO, rtol=0, atol=2e-6)  # Ibar_0 includes I_1 = 1.5e-6
    assert cache.info[0, 0, 0] == pytest.approx(scores[0] + scores[1] + scores[2] + scores[3], rel=1e-15)


def test_worked_example_state_by_state():
    """Stop after each token (a streaming call per prefix) and compare the whole cache with the hand trace."""
    q, k, v, g, lam = example()
    A1 = [[2.0, 0.0], [0.0, 0.0]]
    expected = [  # (states, counts, info) after each token
        ([[[1.0, 0.0], [0.0, 0.0]]], [1], [0.0]),
        ([A1], [2], [0.0]),
        ([A1, [[0.0, 0.0], [0.0, 2.0]]], [2, 1], [0.0, CHORD_45]),
        ([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.875, 3.0]]], [2, 2], [0.0, CHORD_45 + CHORD_24_25]),
        (FINAL_STATES, FINAL_COUNTS, FINAL_INFO),
    ]
    for t, (states, counts, info) in enumerate(expected):
        _, cache, _ = dla_ref.forward(q[:, : t + 1], k[:, : t + 1], v[:, : t + 1], g[:, : t + 1], lam[:, : t + 1],
                                      tau=TAU, eps=TINY, norm_eps=TINY)  # fmt: skip
        m = len(counts)
        assert cache.size[0, 0] == m, t
        np.testing.assert_allclose(cache.states[0, 0, :m], states, rtol=1e-14, err_msg=f"t={t}")
        np.testing.assert_array_equal(cache.counts[0, 0, :m], counts, err_msg=f"t={t}")
        np.testing.assert_allclose(cache.info[0, 0, :m], info, rtol=1e-14, atol=0, err_msg=f"t={t}")
        assert not cache.states[0, 0, m:].any() and not cache.counts[0, 0, m:].any()


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_continuation_split_equals_one_call(split):
    """Streaming: two calls, the second continuing from the first's cache, give the one-call results."""
    args = example()
    o, cache, trace = dla_ref.forward(*args, tau=TAU)
    head = [x[:, :split] for x in args]
    tail = [x[:, split:] for x in args]
    o1, c1, tr1 = dla_ref.forward(*head, tau=TAU)
    o2, c2, tr2 = dla_ref.forward(*tail, tau=TAU, initial_cache=c1)
    np.testing.assert_array_equal(np.concatenate([o1, o2], axis=1), o)
    for name in ("scores", "starts", "merged"):
        np.testing.assert_array_equal(np.concatenate([tr1[name], tr2[name]], axis=1), trace[name])
    for name in ("states", "counts", "info", "size"):
        np.testing.assert_array_equal(getattr(c2, name), getattr(cache, name))


def test_continuation_scores_its_first_token_against_the_cache_it_is_given():
    """Only the first token of an *empty* cache is exempt from the score: split before t = 3, the second
    call's first token is scored against slot B (sqrt(2)/5, joins B), not treated as a first token."""
    args = example()
    _, c1, _ = dla_ref.forward(*[x[:, :3] for x in args], tau=TAU, eps=TINY, norm_eps=TINY)
    o2, c2, tr2 = dla_ref.forward(*[x[:, 3:] for x in args], tau=TAU, initial_cache=c1, eps=TINY, norm_eps=TINY)
    assert tr2.scores[0, 0, 0] == pytest.approx(CHORD_24_25, rel=1e-14)
    assert not tr2.starts[0, 0, 0]
    np.testing.assert_allclose(o2[0, :, 0], OUTPUTS[3:], rtol=1e-14)


def test_each_batch_and_head_is_independent_in_the_b_t_h_d_layout():
    """The example placed at (b=1, h=2) of a [2, 5, 3, .] call, with unrelated data elsewhere, gives the
    hand values there; every other (b, h) equals a call on that slice alone."""
    rng = np.random.default_rng(1)
    q, k, v, g, lam = (rng.standard_normal(x.shape) for x in example(B=2, H=3))
    g = -np.abs(g)
    for full, one in zip((q, k, v, g, lam), example()):
        full[1, :, 2] = one[0, :, 0]
    o, cache, trace = dla_ref.forward(q, k, v, g, lam, tau=TAU, eps=TINY, norm_eps=TINY)
    np.testing.assert_allclose(o[1, :, 2], OUTPUTS, rtol=1e-14)
    np.testing.assert_allclose(trace.scores[1, :, 2], SCORES, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(cache.states[1, 2], FINAL_STATES, rtol=1e-14)
    for b in range(2):
        for h in range(3):
            sl = lambda x: x[b : b + 1, :, h : h + 1]  # noqa: E731
            o1, c1, tr1 = dla_ref.forward(sl(q), sl(k), sl(v), sl(g), sl(lam), tau=TAU, eps=TINY, norm_eps=TINY)
            np.testing.assert_array_equal(o1[0, :, 0], o[b, :, h])
            np.testing.assert_array_equal(tr1.scores[0, :, 0], trace.scores[b, :, h])
            np.testing.assert_array_equal(c1.states[0, 0], cache.states[b, h])


def test_read_weights_all_ones_give_the_single_state_backbone():
    """lambda = 1 everywhere: o_t = q_t^T (sum of all slots) = decayed linear attention. At t = 4 the
    single state is [[1 + 25/8, 0], [7/8, 3]] (slot A decayed by 1/2 at t = 3), so o_4 = (5, 3)."""
    q, k, v, g, lam = example()
    o, _, _ = dla_ref.forward(q, k, v, g, np.ones_like(lam), tau=TAU)
    np.testing.assert_array_equal(o[0, :, 0], [[1, 0], [2, 0], [2, 2], [1.875, 3], [5, 3]])


def test_float32_inputs_are_computed_in_float64():
    o, cache, trace = dla_ref.forward(*(x.astype(np.float32) for x in example()), tau=TAU, eps=TINY, norm_eps=TINY)
    assert o.dtype == cache.states.dtype == cache.info.dtype == trace.scores.dtype == np.float64
    assert cache.counts.dtype == cache.size.dtype == trace.merged.dtype == np.int64
    assert trace.starts.dtype == np.bool_
    # exp(float32(log 0.5)) is 0.5 only to float32 precision, hence the looser tolerance.
    np.testing.assert_allclose(trace.scores[0, :, 0], SCORES, rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose(o[0, :, 0], OUTPUTS, rtol=1e-7)


def test_scale_of_values_leaves_the_scores_unchanged_and_scales_the_output():
    """v * 1e25: scores and decisions as before, o * 1e25. (In float32, X*X would overflow here.) At this
    scale norm_eps (default) is negligible; eps is a guard on ||N(P)|| ~ 2, which scaling does not
    change, so it is made negligible too."""
    q, k, v, g, lam = example()
    o, cache, trace = dla_ref.forward(q, k, v * 1e25, g, lam, tau=TAU, eps=TINY)
    np.testing.assert_allclose(trace.scores[0, :, 0], SCORES, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(trace.starts[0, :, 0], STARTS)
    np.testing.assert_allclose(o[0, :, 0], OUTPUTS * 1e25, rtol=1e-14)
