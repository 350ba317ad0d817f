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


def test_counts_beyond_float64s_integers_are_refused():
    """The merge simulation adds counts in float64: a cache whose row counts sum to 2**52 or more (no stream reaches
    one; the sums and a call's tokens must stay exact below 2**53) is refused by name, by the forward and the step,
    where its sums would have been rounded."""
    x = _good()
    _, cache, _ = dla_ref.forward(**x)
    t = {n: torch.as_tensor(a) for n, a in x.items()}
    huge = dla_fast.Cache.from_ref(cache, dtype=torch.float64)
    row = huge.counts[0, 1]
    expected = re.escape("initial_cache.counts: expected each row's counts to sum below 2**52")
    for count in (2**52 - int(row[1:].sum()), 2**62):
        row[0] = count
        with pytest.raises(ValueError, match=expected):
            dla_fast.forward(**t, initial_cache=huge)
    row[0] = 2**52 - 1 - int(row[1:].sum())
    dla_fast.forward(**t, initial_cache=huge)
    row[0] = 2**52
    s = {n: a[:, 0] for n, a in t.items() if n not in ("boundaries",)}
    with pytest.raises(ValueError, match=re.escape("cache.counts: expected each row's counts to sum below 2**52")):
        dla_fast.step(s["q"], s["k"], s["v"], s["g"], s["slot_weights"], huge, beta=s.get("beta"))


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
    empty = dla_fast.Cache.empty(2, 3, 3, 4, 4, dtype=torch.float64)
    bad = dla_fast.Cache(empty.states, empty.counts, empty.info, empty.size.clone())  # built by hand: unchecked
    bad.size[0, 0] = 7
    with pytest.raises(ValueError, match=re.escape("cache.size: expected values in [0, K=3]")):
        dla_fast.step(x["q"], x["k"], x["v"], x["g"], x["slot_weights"], bad)


def test_a_cache_is_checked_once_not_per_token(monkeypatch):
    """A hand-built cache is checked on its first step; after that (and for caches dla_fast built) the step
    reads back no cache values: the per-token path has no full-cache scan."""
    from dla_fast import validation

    x = {n: torch.as_tensor(a[:, 0]) for n, a in _good().items()}
    empty = dla_fast.Cache.empty(2, 3, 3, 4, 4, dtype=torch.float64)
    cache = dla_fast.Cache(empty.states.clone(), empty.counts.clone(), empty.info.clone(), empty.size.clone())
    assert not cache.checked
    seen = []
    original = validation.cache_checks
    monkeypatch.setattr(validation, "cache_checks", lambda *a, **kw: seen.append(1) or original(*a, **kw))
    for _ in range(3):
        dla_fast.step(x["q"], x["k"], x["v"], x["g"], x["slot_weights"], cache, beta=x["beta"])
    assert seen == [1] and cache.checked
    _, forwarded, _ = dla_fast.forward(**{n: torch.as_tensor(a) for n, a in _good().items()})
    assert forwarded.checked and forwarded.clone().checked and dla_fast.Cache.empty(1, 1, 2, 1, 1).checked
    assert not dla_fast.Cache.from_ref(forwarded.to_ref()).checked  # data from elsewhere is checked on use


def test_a_decode_loop_checks_its_signature_once_and_a_changed_call_again(monkeypatch):
    """Shapes, dtypes and scalars are checked on a cache's first step and again whenever the call's signature
    changes (step_signature): a bad call after good ones still gets its message, and the cache's scratch (the
    kernels' buffers) is dropped with the old signature."""
    from dla_fast import validation

    x = {n: torch.as_tensor(a[:, 0]) for n, a in _good().items()}
    token = [x[n] for n in ("q", "k", "v", "g", "slot_weights")]
    cache = dla_fast.Cache.empty(2, 3, 3, 4, 4, dtype=torch.float64)
    seen = []
    original = validation._step_dims
    monkeypatch.setattr(validation, "_step_dims", lambda *a: seen.append(1) or original(*a))
    for _ in range(3):
        dla_fast.step(*token, cache, beta=x["beta"])
    assert seen == [1]
    cache.scratch["sentinel"] = 1
    dla_fast.step(*token, cache, beta=x["beta"], tau=0.5)  # a new tau: a new signature
    assert seen == [1, 1] and "sentinel" not in cache.scratch
    with pytest.raises(ValueError, match=re.escape("q: expected shape [B, H, Dk]")):
        dla_fast.step(token[0][None], *token[1:], cache, beta=x["beta"], tau=0.5)
    with pytest.raises(ValueError, match="tau: expected a real number or"):
        dla_fast.step(*token, cache, beta=x["beta"], tau=float("nan"))
    with pytest.raises(ValueError, match=re.escape("k: expected the dtype of q")):
        dla_fast.step(token[0], token[1].float(), *token[2:], cache, beta=x["beta"], tau=0.5)
    replaced = dla_fast.Cache.empty(2, 3, 5, 4, 4, dtype=torch.float64)
    cache.states = replaced.states  # the wrong capacity: the identity of the cache's tensors is in the signature
    with pytest.raises(ValueError, match=re.escape("cache.states: expected shape [2, 3, 3, 4, 4]")):
        dla_fast.step(*token, cache, beta=x["beta"], tau=0.5)


def test_a_cache_pickles_and_copies_without_its_scratch():
    """The step's scratch (compiled kernels, device buffers) is this process's: pickling or deep-copying a
    cache leaves it behind, and the copy steps like the original."""
    import copy
    import pickle

    x = {n: torch.as_tensor(a[:, 0]) for n, a in _good().items()}
    token = [x[n] for n in ("q", "k", "v", "g", "slot_weights")]
    cache = dla_fast.Cache.empty(2, 3, 3, 4, 4, dtype=torch.float64)
    dla_fast.step(*token, cache, beta=x["beta"])
    cache.scratch["unpicklable"] = lambda: None
    copies = [pickle.loads(pickle.dumps(cache)), copy.deepcopy(cache)]
    assert all(c.scratch == {} and c.checked for c in copies) and "unpicklable" in cache.scratch
    outputs = [dla_fast.step(*token, c, beta=x["beta"])[0] for c in (*copies, cache)]
    assert all(torch.equal(o, outputs[-1]) for o in outputs)
    assert all(torch.equal(c.states, cache.states) and torch.equal(c.info, cache.info) for c in copies)


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


# Input hygiene: what dla_fast refuses beyond dla_ref (which takes NumPy and computes in float64).


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("name", ["q", "k", "v", "g", "slot_weights", "beta"])
def test_non_float_inputs_are_refused_not_cast(name, dtype):
    t = {n: torch.as_tensor(a, dtype=torch.float32) for n, a in _good().items()}
    t[name] = t[name].to(dtype)
    with pytest.raises(ValueError, match=rf"^{name}: expected a floating-point tensor .* got dtype {dtype}"):
        dla_fast.forward(**t)


@pytest.mark.parametrize("name", ["k", "v"])
def test_q_k_v_must_share_a_dtype(name):
    t = {n: torch.as_tensor(a, dtype=torch.float32) for n, a in _good().items()}
    t[name] = t[name].to(torch.bfloat16)
    with pytest.raises(ValueError, match=rf"^{name}: expected the dtype of q \(torch.float32\), got torch.bfloat16"):
        dla_fast.forward(**t)
    step = {n: x[:, 0] for n, x in t.items()}
    with pytest.raises(ValueError, match=rf"^{name}: expected the dtype of q"):
        dla_fast.step(step["q"], step["k"], step["v"], step["g"], step["slot_weights"], None, beta=step["beta"])


def test_g_slot_weights_and_beta_may_have_their_own_float_dtype():
    """Each is read in the compute dtype: a call with them in other float dtypes is the float32 call on their
    values (exactly: float16/bfloat16 values and a float64 g that holds float32 values convert without error)."""
    t = {n: torch.as_tensor(a, dtype=torch.float32) for n, a in _good().items()}
    mixed = dict(t, g=t["g"].double(), slot_weights=t["slot_weights"].half(), beta=t["beta"].bfloat16())
    o_mixed, _, _ = dla_fast.forward(**mixed)
    assert o_mixed.dtype == torch.float32  # o follows q
    rounded = dict(t, slot_weights=t["slot_weights"].half().float(), beta=t["beta"].bfloat16().float())
    assert torch.equal(o_mixed, dla_fast.forward(**rounded)[0])


def test_a_b_h_t_d_layout_gets_a_hint():
    """q, k, v transposed to [B, H, T, D] with g left as [B, T, H]: the error says what happened."""
    t = {n: torch.as_tensor(a, dtype=torch.float32) for n, a in _good().items()}
    for name in ("q", "k", "v", "slot_weights"):
        t[name] = t[name].transpose(1, 2)
    message = _message(lambda: dla_fast.forward(**t))
    assert message.startswith("g: expected shape [B, T, H]") and "look like [B, H, T, D]" in message
    assert "look like" in _message(lambda: dla_ref.forward(**{n: x.numpy() for n, x in t.items()}))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,D", [(torch.float32, 256), (torch.float32, 192), (torch.bfloat16, 256),
                                     (torch.float16, 256), (torch.float32, 16), (torch.bfloat16, 128)])
def test_every_documented_head_size_runs_on_the_gpu(dtype, D):
    """Dk = Dv up to 256 in every dtype (heads above 128 or below 32 take the torch path there)."""
    x = random_inputs(41, 1, 70, 2, D, D, 4)
    cpu = {n: torch.as_tensor(a, dtype=dtype) for n, a in x.items()}
    gpu = {n: t.cuda() for n, t in cpu.items()}
    o_ref, cache_ref, trace = dla_fast.forward(**{n: t.double() for n, t in cpu.items()}, return_trace=True)
    o, cache, _ = dla_fast.forward(**gpu, boundaries=trace.starts.cuda())  # the same partition (no margin flips)
    err = float((o.double().cpu() - o_ref).norm() / o_ref.norm())
    assert err < (1e-5 if dtype == torch.float32 else 2e-2), err
    assert torch.equal(cache.size.cpu(), cache_ref.size)
