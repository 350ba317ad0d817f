"""Bad input is a ValueError that names the argument; T = 0 is valid and changes nothing."""

import re

import numpy as np
import pytest

import dla_ref
from dla_ref import Cache

B, T, H, DK, DV, K = 2, 3, 2, 4, 5, 3


def inputs(**overrides):
    """Valid arguments (B=2, T=3, H=2, Dk=4, Dv=5, K=3, delta rule, with boundaries), some replaced."""
    rng = np.random.default_rng(0)
    args = dict(
        q=rng.standard_normal((B, T, H, DK)),
        k=rng.standard_normal((B, T, H, DK)),
        v=rng.standard_normal((B, T, H, DV)),
        g=-rng.random((B, T, H)),
        slot_weights=rng.random((B, T, H, K)),
        beta=rng.random((B, T, H)),
        boundaries=rng.random((B, T, H)) < 0.5,
    )
    args.update(overrides)
    return args


def call(**overrides):
    args = inputs(**overrides)
    return dla_ref.forward(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("g"), args.pop("slot_weights"), **args)


def a_cache(**overrides):
    """A valid cache for these sizes: (b, h) hold 2, 0, 3, 1 slots."""
    cache = Cache.empty(B, H, K, DK, DV)
    for (b, h), m in zip(((0, 0), (0, 1), (1, 0), (1, 1)), (2, 0, 3, 1)):
        cache.size[b, h] = m
        cache.counts[b, h, :m] = np.arange(1, m + 1)
        cache.info[b, h, :m] = 0.25
        cache.states[b, h, :m] = 1.0
    for name, value in overrides.items():
        setattr(cache, name, value)
    return cache


def raises_naming(name):
    return pytest.raises(ValueError, match="^" + re.escape(name))


def test_valid_inputs_pass():
    o, cache, trace = call(initial_cache=a_cache())
    assert o.shape == (B, T, H, DV) and trace.scores.shape == (B, T, H)
    assert cache.states.shape == (B, H, K, DK, DV)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("q", (B, T, H)),  # wrong rank
        ("q", (B, T, H, DK, 1)),
        ("k", (B, T, H)),
        ("k", (B, T, H, DK + 1)),  # Dk differs from q
        ("k", (B + 1, T, H, DK)),
        ("k", (B, T + 1, H, DK)),
        ("k", (B, T, H + 1, DK)),
        ("v", (B, T, H)),
        ("v", (B, T + 1, H, DV)),
        ("v", (B, T, H + 1, DV)),
        ("g", (B, T, H, 1)),
        ("g", (B, T + 1, H)),
        ("g", (B, T, H + 1)),
        ("slot_weights", (B, T, H)),
        ("slot_weights", (B + 1, T, H, K)),
        ("slot_weights", (B, T - 1, H, K)),
        ("beta", (B, T)),
        ("beta", (B, T, H + 1)),
        ("boundaries", (B, T, H, 1)),
        ("boundaries", (B, T - 1, H)),
    ],
)
def test_wrong_rank_or_mismatched_size_names_the_argument(name, shape):
    value = np.zeros(shape, dtype=bool) if name == "boundaries" else -np.ones(shape) * 0.5
    with raises_naming(name):
        call(**{name: value})


def test_empty_feature_dimensions_are_rejected():
    with raises_naming("q"):
        call(q=np.zeros((B, T, H, 0)), k=np.zeros((B, T, H, 0)))
    with raises_naming("q/v"):
        call(v=np.zeros((B, T, H, 0)))


@pytest.mark.parametrize("capacity", [0, 1])
def test_capacity_below_two_is_rejected(capacity):
    with raises_naming("slot_weights"):
        call(slot_weights=np.ones((B, T, H, capacity)))


def test_positive_log_decay_is_rejected():
    g = -np.ones((B, T, H))
    g[1, 2, 0] = 1e-12
    with raises_naming("g"):
        call(g=g)
    call(g=np.zeros((B, T, H)))  # g = 0: no decay, valid


@pytest.mark.parametrize("bad", [-1e-12, 1.0 + 1e-12, -3.0, 2.0])
def test_beta_outside_the_unit_interval_is_rejected(bad):
    beta = np.full((B, T, H), 0.5)
    beta[0, 1, 1] = bad
    with raises_naming("beta"):
        call(beta=beta)


def test_beta_at_the_ends_of_the_unit_interval_is_valid():
    call(beta=np.zeros((B, T, H)))
    call(beta=np.ones((B, T, H)))


@pytest.mark.parametrize("name", ["q", "k", "v", "g", "slot_weights", "beta"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_any_array_is_rejected(name, bad):
    value = inputs()[name].copy()
    value[(1, 2, 1) + (0,) * (value.ndim - 3)] = bad
    with raises_naming(name):
        call(**{name: value})


@pytest.mark.parametrize("dtype", [np.int64, np.float64, np.uint8])
def test_non_boolean_boundaries_are_rejected(dtype):
    with raises_naming("boundaries"):
        call(boundaries=np.zeros((B, T, H), dtype=dtype))


def test_boundaries_as_nested_python_bools_are_accepted():
    call(boundaries=np.zeros((B, T, H), dtype=bool).tolist())


@pytest.mark.parametrize("tau", [np.nan, "0.5", None, [0.5]])
def test_tau_must_be_a_real_number(tau):
    with raises_naming("tau"):
        call(tau=tau)


@pytest.mark.parametrize("tau", [np.inf, -np.inf, 0.0, -1.0, 5.0, np.float32(0.6), 1])
def test_tau_may_be_any_real_or_infinite(tau):
    call(tau=tau)


@pytest.mark.parametrize("name", ["eps", "norm_eps"])
@pytest.mark.parametrize("bad", [0.0, -1e-6, np.inf, np.nan, "1e-6", None, True])
def test_guards_must_be_positive_finite_numbers(name, bad):
    with raises_naming(name):
        call(**{name: bad})


@pytest.mark.parametrize("name", ["eps", "norm_eps"])
@pytest.mark.parametrize("good", [1e-3, 1, np.float32(1e-6), np.float64(1e-12)])
def test_guards_accept_numpy_and_python_reals(name, good):
    call(**{name: good})


# ---------------------------------------------------------------------------------------------------
# initial_cache
# ---------------------------------------------------------------------------------------------------


def test_initial_cache_must_be_a_cache():
    with raises_naming("initial_cache"):
        call(initial_cache={"states": a_cache().states})


@pytest.mark.parametrize(
    "field, shape",
    [
        ("states", (B, H, K + 1, DK, DV)),  # another K
        ("states", (B, H, K, DK + 1, DV)),  # another Dk
        ("states", (B, H, K, DK, DV + 1)),  # another Dv
        ("states", (B + 1, H, K, DK, DV)),  # another B
        ("states", (B, H + 1, K, DK, DV)),  # another H
        ("states", (B, H, K, DK)),  # wrong rank
        ("counts", (B, H, K + 1)),
        ("counts", (B, H)),
        ("info", (B, H, K - 1)),
        ("size", (B, H + 1)),
        ("size", (B,)),
    ],
)
def test_initial_cache_of_another_shape_is_rejected(field, shape):
    value = np.zeros(shape, dtype=getattr(a_cache(), field).dtype)
    with raises_naming(f"initial_cache.{field}"):
        call(initial_cache=a_cache(**{field: value}))


def test_initial_cache_from_a_call_with_another_capacity_is_rejected():
    _, other, _ = call(slot_weights=np.ones((B, T, H, K + 1)))
    with raises_naming("initial_cache"):
        call(initial_cache=other)


@pytest.mark.parametrize(
    "field, index, value",
    [
        ("size", (0, 0), K + 1),  # more slots than the capacity
        ("size", (1, 1), -1),
        ("counts", (0, 0, 1), 0),  # a used slot (size 2) with no tokens
        ("counts", (1, 1, 0), -2),
        ("counts", (0, 0, 2), 1),  # an unused slot with tokens
        ("counts", (0, 1, 0), 3),  # (0, 1) is empty
        ("states", (1, 0, 2, 0, 0), np.nan),
        ("states", (0, 0, 0, 3, 4), np.inf),
        ("info", (0, 0, 0), np.nan),
        ("info", (1, 0, 2), -np.inf),
        ("info", (1, 0, 1), -0.5),  # a sum of scores is never negative
    ],
)
def test_initial_cache_with_inconsistent_sizes_counts_or_values_is_rejected(field, index, value):
    cache = a_cache()
    getattr(cache, field)[index] = value
    with raises_naming(f"initial_cache.{field}"):
        call(initial_cache=cache)


@pytest.mark.parametrize("field, value", [("size", 1.5), ("counts", 1.5)])
def test_initial_cache_sizes_and_counts_must_be_whole_numbers(field, value):
    cache = a_cache()
    array = getattr(cache, field).astype(np.float64)
    array[(1, 0) if field == "size" else (1, 0, 0)] = value
    with raises_naming(f"initial_cache.{field}"):
        call(initial_cache=a_cache(**{field: array}))


# ---------------------------------------------------------------------------------------------------
# T = 0
# ---------------------------------------------------------------------------------------------------


def empty_in_time(**overrides):
    """Every array of inputs() cut to T = 0, some replaced."""
    args = {name: value[:, :0] for name, value in inputs().items()}
    args.update(overrides)
    return args


def test_zero_tokens_return_empty_outputs_and_an_empty_cache():
    o, cache, trace = call(**empty_in_time())
    assert o.shape == (B, 0, H, DV) and o.dtype == np.float64
    for name in ("scores", "starts", "merged"):
        assert trace[name].shape == (B, 0, H)
    assert cache.states.shape == (B, H, K, DK, DV)
    assert not cache.size.any() and not cache.counts.any() and not cache.states.any()


def test_zero_tokens_return_the_initial_cache_unchanged():
    initial = a_cache()
    _, cache, _ = call(**empty_in_time(initial_cache=initial))
    for name in ("states", "counts", "info", "size"):
        np.testing.assert_array_equal(getattr(cache, name), getattr(initial, name))
    assert cache is not initial


def test_zero_tokens_still_validate():
    with raises_naming("initial_cache.states"):
        call(**empty_in_time(initial_cache=a_cache(states=np.zeros((B, H, K, DK, DV + 1)))))
    with raises_naming("slot_weights"):
        call(**empty_in_time(slot_weights=np.zeros((B, 0, H, 1))))


def test_initial_cache_with_nonzero_unused_slots_is_rejected():
    """Unused slots are all zero (dla_ref.Cache); a cache that says otherwise is inconsistent."""
    rng = np.random.default_rng(0)
    B, T, H, D, K = 1, 3, 1, 2, 3
    q, k, v = (rng.standard_normal((B, T, H, D)) for _ in range(3))
    g, w = -rng.random((B, T, H)), rng.random((B, T, H, K))
    _, cache, _ = dla_ref.forward(q, k, v, g, w, tau=float("inf"))  # one slot used of three
    bad_states = cache.copy()
    bad_states.states[0, 0, 2] = 1.0
    with pytest.raises(ValueError, match=r"initial_cache\.states: expected zero states on unused slots"):
        dla_ref.forward(q, k, v, g, w, initial_cache=bad_states)
    bad_info = cache.copy()
    bad_info.info[0, 0, 1] = 0.5
    with pytest.raises(ValueError, match=r"initial_cache\.info: expected zero sums on unused slots"):
        dla_ref.forward(q, k, v, g, w, initial_cache=bad_info)
