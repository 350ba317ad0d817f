"""dla_fast rejects what dla_ref rejects, with the same messages (shared dla_ref.validation)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fast_cases import random_inputs

import dla_fast
import dla_ref


def _good():
    return random_inputs(31, 2, 5, 3, 4, 4, 3, beta=True)


def _set(name, index, value):
    def mutate(x):
        x[name] = x[name].copy()
        x[name][index] = value
        return x
    return mutate


def _reshape(name, shape):
    def mutate(x):
        x[name] = np.zeros(shape)
        return x
    return mutate


BAD_INPUTS = {
    "q_nan": _set("q", (0, 1, 2, 3), np.nan),
    "v_inf": _set("v", (1, 0, 0, 0), np.inf),
    "g_positive": _set("g", (0, 2, 1), 0.5),
    "beta_above_one": _set("beta", (1, 1, 1), 1.5),
    "slot_weights_nan": _set("slot_weights", (0, 0, 0, 2), np.nan),
    "q_rank": _reshape("q", (2, 5, 3)),
    "k_shape": _reshape("k", (2, 5, 3, 5)),
    "v_batch": _reshape("v", (1, 5, 3, 4)),
    "g_shape": _reshape("g", (2, 5)),
    "K_one": _reshape("slot_weights", (2, 5, 3, 1)),
    "beta_shape": _reshape("beta", (2, 5, 2)),
}


def _message(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_get_the_reference_message(case):
    x = BAD_INPUTS[case](_good())
    ref = _message(lambda: dla_ref.forward(**x))
    t = {n: torch.as_tensor(a) for n, a in x.items()}
    assert _message(lambda: dla_fast.forward(**t)) == ref


@pytest.mark.parametrize("kw", [dict(tau=float("nan")), dict(eps=0.0), dict(norm_eps=-1.0), dict(tau="high")])
def test_bad_scalars_get_the_reference_message(kw):
    x = _good()
    t = {n: torch.as_tensor(a) for n, a in x.items()}
    assert _message(lambda: dla_fast.forward(**t, **kw)) == _message(lambda: dla_ref.forward(**x, **kw))


def test_boundaries_must_be_boolean():
    x = _good()
    x["boundaries"] = np.zeros((2, 5, 3))
    t = {n: torch.as_tensor(a) for n, a in x.items()}
    ref = _message(lambda: dla_ref.forward(**x))
    assert ref == "boundaries: expected a boolean array, got dtype float64"
    assert _message(lambda: dla_fast.forward(**t)) == "boundaries: expected a boolean array, got dtype torch.float64"


def _bad_caches():
    _, cache, _ = dla_ref.forward(**_good())
    too_big = cache.copy()
    too_big.size[0, 0] = 4
    zero_count = cache.copy()
    zero_count.counts[1, 2, 0] = 0
    stray = cache.copy()
    stray.size[0, 1] = 1
    negative_info = cache.copy()
    negative_info.info[0, 0, 0] = -1.0
    nan_state = cache.copy()
    nan_state.states[1, 1, 0, 0, 0] = np.nan
    wrong_K = dla_ref.Cache.empty(2, 3, 4, 4, 4)
    return {"size_above_K": too_big, "zero_count": zero_count, "stray_count": stray,
            "negative_info": negative_info, "nan_state": nan_state, "wrong_K": wrong_K}


@pytest.mark.parametrize("case", sorted(_bad_caches()))
def test_bad_initial_caches_get_the_reference_message(case):
    bad = _bad_caches()[case]
    x = _good()
    ref = _message(lambda: dla_ref.forward(**x, initial_cache=bad))
    t = {n: torch.as_tensor(a) for n, a in x.items()}
    bad_fast = dla_fast.Cache.from_ref(bad, dtype=torch.float64)
    assert _message(lambda: dla_fast.forward(**t, initial_cache=bad_fast)) == ref


def test_forward_specific_arguments():
    t = {n: torch.as_tensor(a) for n, a in _good().items()}
    with pytest.raises(ValueError, match="chunk_size: expected a positive integer"):
        dla_fast.forward(**t, chunk_size=0)
    with pytest.raises(ValueError, match=re.escape("initial_cache: expected a dla_fast.Cache")):
        dla_fast.forward(**t, initial_cache="cache")


def test_step_checks():
    x = {n: torch.as_tensor(a[:, 0]) for n, a in _good().items()}
    with pytest.raises(ValueError, match=re.escape("q: expected shape [B, H, Dk]")):
        dla_fast.step(x["q"][None], x["k"], x["v"], x["g"], x["slot_weights"], None)
    with pytest.raises(ValueError, match="g: expected log decays g <= 0"):
        dla_fast.step(x["q"], x["k"], x["v"], x["g"] + 1.0, x["slot_weights"], None)
    with pytest.raises(ValueError, match=re.escape("beta: expected values in [0, 1]")):
        dla_fast.step(x["q"], x["k"], x["v"], x["g"], x["slot_weights"], None, beta=x["beta"] + 2.0)
    wrong = dla_fast.Cache.empty(2, 3, 5, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape("cache.states: expected shape [2, 3, 3, 4, 4]")):
        dla_fast.step(x["q"], x["k"], x["v"], x["g"], x["slot_weights"], wrong)
    bad = dla_fast.Cache.empty(2, 3, 3, 4, 4, dtype=torch.float64)
    bad.size[0, 0] = 7
    with pytest.raises(ValueError, match=re.escape("cache.size: expected values in [0, K=3]")):
        dla_fast.step(x["q"], x["k"], x["v"], x["g"], x["slot_weights"], bad)


def test_value_checks_take_one_host_sync(monkeypatch):
    """All value checks are stacked and read back once (dla_fast.validation.raise_first)."""
    from dla_fast import validation

    calls = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append(self.shape) or original(self))
    t = {n: torch.as_tensor(a) for n, a in _good().items()}
    _, cache, _ = dla_fast.forward(**t)
    calls.clear()
    validation.validate_forward(*(t[n] for n in ("q", "k", "v", "g", "slot_weights", "beta")), None, 0.6,
                                 1e-6, 1e-6, cache, 64)
    assert len(calls) == 1  # every flag (finite inputs, g, beta, the cache's checks) in one read-back
