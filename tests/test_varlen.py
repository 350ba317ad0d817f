"""Variable-length batches (``cu_seqlens``): a packed call equals one call per sequence, on every path.

The torch paths run in-process; the Triton forward and backward run in-process on CUDA or under
``TRITON_INTERPRET=1``, and otherwise in a subprocess under the interpreter (as ``tests/test_triton_kernels.py``).
Padding must change nothing: ``tau = 0`` (every token opens a slot) would open slots on padded tokens, and
``tau > 0`` would count them into the open slot, so both are exercised, with merges (small K).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from triton_here import CUDA, DEV, needs_kernels, runs_elsewhere

import dla_fast
from dla_ref.synthetic import jittered_regimes

LENGTHS = [37, 0, 64, 5, 90]  # a zero-length sequence, one chunk exactly, ragged chunks


def _packed(lengths, H=2, Dk=8, Dv=6, K=3, seed=0, beta=False):
    total = sum(lengths)
    q, k, v, g, w = jittered_regimes(1, total, H, Dk, Dv, K, seed=seed, regime_length=3.0, jitter=1.0)
    x = dict(q=q, k=k, v=v, g=g, slot_weights=w)
    if beta:
        x["beta"] = np.random.default_rng(seed).random((1, total, H))
    cu = np.concatenate([[0], np.cumsum(lengths)])
    return x, cu


def _tensors(x, dtype, device="cpu", grad=False):
    return {n: torch.tensor(a, dtype=dtype, device=device, requires_grad=grad) for n, a in x.items()}


def _one_by_one(t, cu, caches=None, **kw):
    """The reference for a packed call: each sequence alone, outputs concatenated, caches stacked."""
    outs, finals, traces = [], [], []
    for i in range(len(cu) - 1):
        part = {n: x[:, cu[i]:cu[i + 1]] for n, x in t.items()}
        init = None if caches is None else caches[i]
        o, final, trace = dla_fast.forward(**part, initial_cache=init, return_trace=True, **kw)
        outs.append(o)
        finals.append(final)
        traces.append(trace)
    cat = lambda name: torch.cat([getattr(tr, name) for tr in traces], 1)  # noqa: E731
    stack = lambda name: torch.cat([getattr(c, name) for c in finals], 0)  # noqa: E731
    return torch.cat(outs, 1), {n: stack(n) for n in ("states", "counts", "info", "size")}, {
        n: cat(n) for n in ("scores", "starts", "merged")}


def _assert_same(packed, separate, rtol):
    o, final, trace = packed
    o_s, final_s, trace_s = separate
    torch.testing.assert_close(o, o_s, rtol=rtol, atol=rtol)
    for name in ("counts", "size"):
        assert torch.equal(getattr(final, name), final_s[name]), name
    torch.testing.assert_close(final.states, final_s["states"], rtol=rtol, atol=rtol)
    torch.testing.assert_close(final.info, final_s["info"], rtol=rtol, atol=rtol)
    assert torch.equal(trace.starts, trace_s["starts"]) and torch.equal(trace.merged, trace_s["merged"])
    torch.testing.assert_close(trace.scores, trace_s["scores"], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("beta", [False, True], ids=["scalar_decay", "delta_rule"])
@pytest.mark.parametrize("tau", [0.0, 0.6, -1.0])
def test_packed_call_equals_one_call_per_sequence(beta, tau):
    x, cu = _packed(LENGTHS, beta=beta)
    t = _tensors(x, torch.float64)
    packed = dla_fast.forward(**t, tau=tau, cu_seqlens=torch.tensor(cu), return_trace=True, chunk_size=16)
    assert packed[0].shape == (1, sum(LENGTHS), 2, 6) and packed[1].states.shape[0] == len(LENGTHS)
    _assert_same(packed, _one_by_one(t, cu, tau=tau, chunk_size=16), rtol=1e-12)


def test_each_sequence_continues_from_its_own_initial_cache():
    x, cu = _packed(LENGTHS, seed=1)
    t = _tensors(x, torch.float64)
    x0, cu0 = _packed([20, 3, 11, 30, 8], seed=2)  # a first packed call gives one cache per sequence
    first = dla_fast.forward(**_tensors(x0, torch.float64), cu_seqlens=torch.tensor(cu0))[1]
    packed = dla_fast.forward(**t, initial_cache=first, cu_seqlens=torch.tensor(cu), return_trace=True)
    caches = [dla_fast.Cache(*(getattr(first, n)[i:i + 1] for n in ("states", "counts", "info", "size")))
              for i in range(len(LENGTHS))]
    _assert_same(packed, _one_by_one(t, cu, caches), rtol=1e-12)


@pytest.mark.parametrize("beta", [False, True], ids=["scalar_decay", "delta_rule"])
def test_packed_gradients_equal_the_separate_calls(beta):
    x, cu = _packed([23, 0, 41, 9], beta=beta, seed=3)
    gen = torch.Generator().manual_seed(0)

    def loss(o, final):
        dO = torch.randn(o.shape, generator=gen, dtype=o.dtype)
        dS = torch.randn(final.states.shape, generator=gen, dtype=o.dtype)
        return (o * dO).sum() + (final.states * dS).sum()

    t = _tensors(x, torch.float64, grad=True)
    o, final, _ = dla_fast.forward(**t, tau=0.4, cu_seqlens=torch.tensor(cu), chunk_size=16)
    got = torch.autograd.grad(loss(o, final), list(t.values()))
    gen.manual_seed(0)
    t2 = _tensors(x, torch.float64, grad=True)
    o2, finals, _ = _one_by_one(t2, cu, tau=0.4, chunk_size=16)
    want = torch.autograd.grad(loss(o2, dla_fast.Cache(finals["states"], finals["counts"], finals["info"],
                                                       finals["size"])), list(t2.values()))
    for name, a, b in zip(t, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("bad,match", [
    ([0, 3, 2], "nondecreasing"), ([1, 5], "from 0"), ([0, 4], "to total_T"), ([[0, 5]], "shape"),
    ([0.0, 5.0], "integer"),
])
def test_bad_cu_seqlens_are_named(bad, match):
    x, _ = _packed([5])
    with pytest.raises(ValueError, match=rf"cu_seqlens: .*{match}"):
        dla_fast.forward(**_tensors(x, torch.float32), cu_seqlens=torch.tensor(bad))


def test_cu_seqlens_needs_a_packed_batch_of_one():
    x, _ = _packed([5, 5])
    t = {n: torch.cat([a, a], 0) for n, a in _tensors(x, torch.float32).items()}
    with pytest.raises(ValueError, match=r"^q: with cu_seqlens, expected packed sequences"):
        dla_fast.forward(**t, cu_seqlens=torch.tensor([0, 5, 10]))


def _dla_record(o):
    """The forward record of the DLAFunction node behind ``o`` (found by walking its autograd graph)."""
    stack = [o.grad_fn]
    while stack:
        node = stack.pop()
        if hasattr(node, "record"):
            return node.record
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    raise AssertionError("no DLAFunction behind o")


@runs_elsewhere
@pytest.mark.interpreter_rerun("-k", "triton")
def test_interpreter_run(interpreter_rerun):
    """No GPU and no TRITON_INTERPRET: this file in a subprocess under the Triton interpreter (conftest.py)."""
    interpreter_rerun()


@needs_kernels
@pytest.mark.parametrize("tau", [0.0, 0.6])
def test_triton_packed_call_equals_one_call_per_sequence(monkeypatch, tau):
    """The Triton forward (each (sequence, head) row ends at its own length) and its backward."""
    monkeypatch.setenv("DLA_FAST_BACKEND", "triton")
    D = 32 if CUDA else 16  # the GPU routes heads below 32 to torch; the interpreter runs any size, slowly
    x, cu = _packed([30, 0, 64, 5, 70], H=1, Dk=D, Dv=D, K=3, seed=4)
    t = _tensors(x, torch.float32, DEV, grad=True)
    o, final, trace = dla_fast.forward(**t, tau=tau, cu_seqlens=torch.tensor(cu, device=DEV), return_trace=True)
    assert _dla_record(o).structure.triton is not None, "the Triton forward should have run"
    t2 = _tensors(x, torch.float32, DEV, grad=True)
    separate = _one_by_one(t2, cu, tau=tau)
    _assert_same((o, final, trace), separate, rtol=2e-5)
    got = torch.autograd.grad(o.square().sum() + final.states.sum(), list(t.values()))
    want = torch.autograd.grad(separate[0].square().sum() + separate[1]["states"].sum(), list(t2.values()))
    for name, a, b in zip(t, got, want):
        err = float((a - b).norm() / b.norm().clamp(min=1e-30))
        assert err < 1e-4, f"d{name}: {err:.2e}"
