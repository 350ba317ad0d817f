"""dla_fast.forward's gradients at the API: when they are built, dtypes, streaming, checkpointing, the surrogate's
switches. The gradient values themselves are checked against an independent oracle in
properties/test_gradients.py; these tests reuse that oracle on a longer multi-chunk call."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dla_fast
from dla_fast.ops.common.structure import Structure
from dla_fast.ops.scalar_decay.chunk_torch_bwd import scalar_decay_backward
from properties.gradient_oracle import assert_rel_close, straightforward


def inputs(seed, B=1, T=40, H=2, Dk=3, Dv=2, K=3, *, beta=False, dtype=torch.float64, grad=True):
    rng = np.random.default_rng(seed)
    x = dict(
        q=rng.standard_normal((B, T, H, Dk)),
        k=rng.standard_normal((B, T, H, Dk)) / math.sqrt(Dk),
        v=rng.standard_normal((B, T, H, Dv)),
        g=-0.05 - 0.3 * rng.random((B, T, H)),
        slot_weights=rng.standard_normal((B, T, H, K)),
    )
    if beta:
        x["beta"] = 0.05 + 0.9 * rng.random((B, T, H))
    return {n: torch.tensor(a, dtype=dtype, requires_grad=grad) for n, a in x.items()}


def loss_grads(x, out, names, seed=0):
    o, final = out[0], out[1]
    gen = torch.Generator().manual_seed(seed)
    dO = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    dS = torch.randn(final.states.shape, generator=gen, dtype=torch.float64).to(final.states.dtype)
    return torch.autograd.grad((o * dO).sum() + (final.states * dS).sum(), [x[n] for n in names])


def test_no_graph_unless_an_input_requires_grad():
    x = inputs(0, grad=False)
    o, cache, _ = dla_fast.forward(**x, tau=0.5)
    assert o.grad_fn is None and cache.states.grad_fn is None
    x = inputs(0)
    with torch.no_grad():
        o, cache, _ = dla_fast.forward(**x, tau=0.5)
    assert o.grad_fn is None and not o.requires_grad
    o, cache, _ = dla_fast.forward(**x, tau=0.5)
    assert o.requires_grad and cache.states.requires_grad


@pytest.mark.parametrize("beta", [False, True])
def test_an_output_left_out_of_the_loss_adds_nothing(beta):
    """Autograd hands the backward None for an output the loss does not reach (no zero tensor is made): the
    gradients equal those of the same loss plus zero times that output, exactly."""
    x = inputs(3, T=70, K=3, beta=beta)
    names = list(x)

    def grads(loss_of):
        o, final, _ = dla_fast.forward(**x, tau=0.4, chunk_size=16)
        return torch.autograd.grad(loss_of(o, final.states), [x[n] for n in names], allow_unused=True)

    for left_out, loss in (("final", lambda o, S: o.square().sum()), ("o", lambda o, S: S.square().sum())):
        zero = grads(lambda o, S, loss=loss: loss(o, S) + 0.0 * (S.sum() + o.sum()))
        for n, a, b in zip(names, grads(loss), zero):
            assert torch.equal(a, b), (left_out, n)


@pytest.mark.parametrize("beta", [False, True])
def test_a_long_multi_chunk_call_matches_the_oracle(beta):
    """T = 150 with the default chunk (64): three chunks, many boundaries and merges, an initial cache."""
    x = inputs(1, T=150, K=4, beta=beta)
    pre = inputs(2, T=20, K=4, beta=beta, grad=False)
    with torch.no_grad():
        _, cache, _ = dla_fast.forward(**pre, tau=0.4)
    cache.states.requires_grad_(True)
    x["initial_states"] = cache.states
    o, final, trace = dla_fast.forward(**{n: t for n, t in x.items() if n != "initial_states"}, tau=0.4,
                                       initial_cache=cache, return_trace=True)
    assert int((trace.merged >= 0).sum()) > 10
    names = [n for n in x]
    got = loss_grads(x, (o, final), names)
    o_ref, S_ref = straightforward(x["q"], x["k"], x["v"], x["g"], x["slot_weights"], x.get("beta"), cache.states,
                                   cache.size, trace.starts, trace.merged)
    want = loss_grads(x, (o_ref, dla_fast.Cache(S_ref, None, None, None)), names)
    for n, a, b in zip(names, got, want):
        assert_rel_close(a, b, f"d/d{n}", rtol=1e-9 if n != "g" else 1e-6)


@pytest.mark.parametrize("beta", [False, True])
def test_streaming_gradients_equal_one_call(beta):
    """Two calls passing the cache on (the second's gradient flows into the first through cache.states) give
    the gradients of one call with the same decisions."""
    x = inputs(3, T=30, beta=beta)
    names = list(x)
    o, final, trace = dla_fast.forward(**x, tau=0.5, chunk_size=8, return_trace=True)
    one = loss_grads(x, (o, final), names)
    first = {n: t[:, :13] for n, t in x.items()}
    second = {n: t[:, 13:] for n, t in x.items()}
    o1, c1, _ = dla_fast.forward(**first, tau=0.5, chunk_size=8)
    o2, c2, _ = dla_fast.forward(**second, tau=0.5, chunk_size=8, initial_cache=c1)
    two = loss_grads(x, (torch.cat([o1, o2], 1), c2), names)
    for n, a, b in zip(names, two, one):
        assert_rel_close(a, b, f"d/d{n} streamed vs one call", rtol=1e-9)


def test_checkpoint_spacing_does_not_change_the_gradients():
    rng = np.random.default_rng(4)
    R, T, Dk, Dv, K = 3, 37, 2, 3, 3
    t = lambda *s: torch.tensor(rng.standard_normal(s))  # noqa: E731
    q, k, v, dO, lam = t(R, T, Dk), t(R, T, Dk), t(R, T, Dv), t(R, T, Dv), t(R, T, K)
    g = -torch.tensor(rng.random((R, T)))
    starts = torch.tensor(rng.random((R, T)) < 0.4)
    starts[:, 0] = True
    merged = torch.full((R, T), -1, dtype=torch.int64)
    size = torch.zeros(R, dtype=torch.int64)
    for i in range(T):  # merge the oldest pair on every new slot of a full cache
        full = starts[:, i] & (size == K)
        merged[:, i] = torch.where(full, torch.zeros_like(size), merged[:, i])
        size = size - full.long() + starts[:, i].long()
    structure = Structure(starts, merged, torch.zeros(R, dtype=torch.int64), K)
    init = torch.zeros(R, K, Dk, Dv, dtype=torch.float64)
    results = [scalar_decay_backward(q, k, v, g, lam, init, structure, dO, t(R, K, Dk, Dv) * 0 + 1, chunk_size=4,
                                     checkpoint_every=e) for e in (None, 1, 2, 10, 100)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_get_gradients_in_their_dtype_close_to_float64(dtype):
    x64 = inputs(5, T=50)
    names = list(x64)
    # the same (rounded) inputs in dtype, decisions forced to float64's (a rounding may move a score)
    xl = {n: t.detach().to(dtype).requires_grad_(True) for n, t in x64.items()}
    x64r = {n: t.detach().to(dtype).to(torch.float64).requires_grad_(True) for n, t in x64.items()}
    o, final, tr = dla_fast.forward(**x64r, tau=0.5, chunk_size=16, return_trace=True)
    want = loss_grads(x64r, (o, final), names)
    o, final, _ = dla_fast.forward(**xl, tau=0.5, chunk_size=16, boundaries=tr.starts, return_trace=True)
    got = loss_grads(xl, (o, final), names)
    for n, a, b in zip(names, got, want):
        assert a.dtype == dtype
        rtol = 1e-4 if dtype == torch.float32 else 0.1
        assert_rel_close(a.to(torch.float64), b, f"d/d{n} in {dtype}", rtol=rtol, floor=float(b.abs().max()))


def test_surrogate_switches():
    x = inputs(6, T=20)
    for bad in (0.0, -1.0, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match="surrogate_temperature"):
            dla_fast.forward(**x, tau=0.5, surrogate_temperature=bad)
    # A tensor tau without the surrogate: the hard threshold's derivative, zero.
    tau = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    o, _, _ = dla_fast.forward(**x, tau=tau)
    (dtau,) = torch.autograd.grad(o.sum(), [tau])
    assert float(dtau) == 0.0
    # With it: a nonzero gradient, and the forward unchanged.
    o2, _, _ = dla_fast.forward(**x, tau=tau, surrogate_temperature=0.5)
    assert torch.equal(o2, o)
    (dtau,) = torch.autograd.grad(o2.sum(), [tau])
    assert float(dtau) != 0.0
    # The override takes every decision: no token is decided by its score, so no surrogate gradient.
    o3, _, tr = dla_fast.forward(**x, tau=tau, return_trace=True)
    o4, _, _ = dla_fast.forward(**x, tau=tau, boundaries=tr.starts, surrogate_temperature=0.5)
    (dtau,) = torch.autograd.grad(o4.sum(), [tau])
    assert float(dtau) == 0.0


def test_forward_saves_only_its_inputs_and_the_compact_structure():
    """What the backward keeps alive: the caller's input tensors themselves (no copies, no states) and
    ``starts`` (bool) / ``merged`` (int8) per token."""
    x = inputs(7, T=100, K=4)
    pre = inputs(8, T=10, K=4, grad=False)
    with torch.no_grad():
        _, cache, _ = dla_fast.forward(**pre, tau=0.4)
    cache.states.requires_grad_(True)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, final, _ = dla_fast.forward(**x, tau=0.4, initial_cache=cache, chunk_size=16)
    allowed = {t.data_ptr() for t in [*x.values(), cache.states]}
    assert packed and all(t.data_ptr() in allowed for t in packed), [tuple(t.shape) for t in packed]
    record = o.grad_fn.record
    assert record.o is None and record.final_states is None and record.scores is None
    B, T, H = o.shape[:3]
    assert record.structure.starts.dtype == torch.bool and record.structure.merged.dtype == torch.int8
    assert record.structure.starts.numel() == record.structure.merged.numel() == B * T * H
