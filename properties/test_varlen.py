"""Variable-length batches: a call on sequences packed with ``cu_seqlens`` is the same as one call per sequence.

The claim holds for any lengths (zero included), both backbones, any tau (tau <= 0 opens a slot at every
token, so padding that leaked into the structure would show) and the gradients. Checked on the torch paths
in float64 (exact up to rounding); the Triton path is checked in ``tests/test_varlen.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dla_fast
from dla_ref.synthetic import jittered_regimes

lengths_lists = st.lists(st.integers(0, 40), min_size=1, max_size=4)


def _inputs(lengths, seed, beta):
    total = sum(lengths)
    q, k, v, g, w = jittered_regimes(1, max(total, 1), 2, 4, 3, 3, seed=seed, regime_length=3.0, jitter=1.0)
    q, k, v, g, w = (x[:, :total] for x in (q, k, v, g, w))  # total may be 0
    x = dict(q=q, k=k, v=v, g=g, slot_weights=w)
    if beta:
        x["beta"] = np.random.default_rng(seed).random((1, total, 2))
    return {n: torch.tensor(a, dtype=torch.float64, requires_grad=True) for n, a in x.items()}


def _loss(o, states):
    weights = torch.linspace(-1.0, 1.0, o.numel(), dtype=o.dtype).view(o.shape)
    return (o * weights).sum() + states.square().sum()


@settings(max_examples=40)
@given(lengths=lengths_lists, seed=st.integers(0, 2**16), beta=st.booleans(), tau=st.sampled_from([0.0, 0.6, -1.0]))
def test_a_packed_call_is_one_call_per_sequence(lengths, seed, beta, tau):
    t = _inputs(lengths, seed, beta)
    cu = np.concatenate([[0], np.cumsum(lengths)])
    o, final, trace = dla_fast.forward(**t, tau=tau, cu_seqlens=torch.tensor(cu), return_trace=True, chunk_size=8)
    got = torch.autograd.grad(_loss(o, final.states), list(t.values()))
    outs, states, starts = [], [], []
    for i in range(len(lengths)):
        part = {n: x[:, cu[i]:cu[i + 1]] for n, x in t.items()}
        o_i, final_i, trace_i = dla_fast.forward(**part, tau=tau, return_trace=True, chunk_size=8)
        outs.append(o_i)
        states.append(final_i.states)
        starts.append(trace_i.starts)
        assert torch.equal(final.size[i], final_i.size[0]) and torch.equal(final.counts[i], final_i.counts[0])
    o_s, states_s = torch.cat(outs, 1), torch.cat(states, 0)
    torch.testing.assert_close(o, o_s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final.states, states_s, rtol=1e-12, atol=1e-12)
    assert torch.equal(trace.starts, torch.cat(starts, 1))
    want = torch.autograd.grad(_loss(o_s, states_s), list(t.values()))
    for name, a, b in zip(t, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
