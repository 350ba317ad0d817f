"""``dla_fast.forward`` and ``dla_fast.step`` under ``torch.compile(fullgraph=True)``: the ``dla::`` custom ops
(``dla_fast/custom_ops.py``) against eager, outputs, final cache, trace and gradients, with no graph break and
no warning.

The CPU tests compile with the ``aot_eager`` backend: Dynamo, the ops' fake implementations, AOTAutograd's
joint graph (the registered backward) and the functionalisation of the in-place step, i.e. everything
``torch.compile`` does to the ops, in about a second per graph. ``inductor`` works on the CPU too (the layer
test below passes with it, float64) but only changes the code generated around the opaque ops, and its cold
C++ builds cost 20-50 s per graph on a two-core runner. The GPU test compiles with ``inductor`` in bfloat16,
where the Triton kernels run inside the ops.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import dla_fast

FIELDS = ("states", "counts", "info", "size")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def clean_compile():
    """A fresh Dynamo; afterwards, no graph break, no Python warning and no torch log warning (Dynamo and
    inductor log there, e.g. when they fail to trace a kernel)."""
    torch._dynamo.reset()
    counters.clear()
    handler = _Records()
    logger = logging.getLogger("torch")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not handler.records, [r.getMessage() for r in handler.records]


class DLALayer(nn.Module):
    """A small attention layer: projections, ``dla_fast.forward`` (scalar decay, or the delta rule with
    ``delta=True``), an output projection; it returns the final cache and the trace too."""

    def __init__(self, D=12, H=2, Dk=4, Dv=3, K=3, delta=False, chunk_size=8):
        super().__init__()
        self.H, self.Dk, self.Dv, self.K, self.delta, self.chunk_size = H, Dk, Dv, K, delta, chunk_size
        self.qkv = nn.Linear(D, H * (2 * Dk + Dv))
        self.gates = nn.Linear(D, H * (1 + K + delta))
        self.out = nn.Linear(H * Dv, D)

    def forward(self, x, cache=None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, self.H, -1).split([self.Dk, self.Dk, self.Dv], -1)
        gates = self.gates(x).view(B, T, self.H, -1)
        g = -F.softplus(gates[..., 0] + 1.0)  # log decays <= 0
        slot_weights = torch.softmax(gates[..., 1 : 1 + self.K], -1)
        beta = torch.sigmoid(gates[..., -1]) if self.delta else None
        o, final, trace = dla_fast.forward(q, F.normalize(k, dim=-1), v, g, slot_weights, tau=0.5, beta=beta,
                                           initial_cache=cache, return_trace=True, chunk_size=self.chunk_size)
        return self.out(o.reshape(B, T, -1)), final, trace


def run_layer(layer, x, cache, seed=0):
    """The layer's outputs and the gradients of a loss on its output and final states w.r.t. its parameters,
    the input and the initial cache's states."""
    y, final, trace = layer(x, cache)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(final.states.shape, generator=gen, dtype=final.states.dtype)
    loss = y.square().sum() + (final.states * w).sum()
    leaves = [*layer.parameters(), x, cache.states]
    return y, final, trace, torch.autograd.grad(loss, leaves)


def assert_same(compiled, eager, tol):
    (y, final, trace, grads), (y_e, final_e, trace_e, grads_e) = compiled, eager
    assert torch.equal(trace.starts, trace_e.starts) and torch.equal(trace.merged, trace_e.merged)
    assert trace.scores.dtype == trace_e.scores.dtype and trace.starts.dtype == trace_e.starts.dtype
    for name in FIELDS:
        a, b = getattr(final, name), getattr(final_e, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=name)
    torch.testing.assert_close(trace.scores, trace_e.scores, atol=tol, rtol=tol)
    torch.testing.assert_close(y, y_e, atol=tol, rtol=tol)
    assert not final.info.requires_grad and not trace.scores.requires_grad  # as eagerly: o and states only
    for i, (a, b) in enumerate(zip(grads, grads_e)):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=f"gradient {i}")


def layer_case(seed, dtype, delta, B=2, T=40):
    """A layer, its input and an initial cache (from an eager prefill) whose states require grad."""
    torch.manual_seed(seed)
    layer = DLALayer(delta=delta).to(dtype)
    x = torch.randn(B, T, 12, dtype=dtype, requires_grad=True)
    with torch.no_grad():
        _, cache, _ = layer(torch.randn(B, 6, 12, dtype=dtype))
    cache.states.requires_grad_(True)
    return layer, x, cache


@pytest.mark.parametrize("delta", [False, True])
def test_compiled_layer_matches_eager(delta):
    layer, x, cache = layer_case(1, torch.float32, delta)
    with clean_compile():
        compiled = run_layer(torch.compile(layer, fullgraph=True, backend="aot_eager"), x, cache)
    eager = run_layer(layer, x, cache)
    trace = eager[2]
    assert trace.starts.any() and (trace.merged >= 0).any(), "the case should open slots and merge"
    assert_same(compiled, eager, tol=1e-6)


def decode(body, x, cache, beta):
    """Run ``body`` (a ``dla_fast.step`` call) over the time axis of ``x``; ``(o, trace)`` per token."""
    out = []
    for t in range(x["q"].shape[1]):
        token = [x[n][:, t] for n in ("q", "k", "v", "g", "slot_weights")]
        out.append(body(*token, cache, x["beta"][:, t] if beta else None))
    return out


def step_body(q, k, v, g, slot_weights, cache, beta):
    o, cache, (score, started, merged) = dla_fast.step(q, k, v, g, slot_weights, cache, tau=0.4, beta=beta,
                                                       return_trace=True)
    return o * 2.0, score, started, merged


def token_inputs(seed, B, T, H, Dk, Dv, K, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = dict(q=torch.randn(B, T, H, Dk, generator=gen), k=F.normalize(torch.randn(B, T, H, Dk, generator=gen), dim=-1),
             v=torch.randn(B, T, H, Dv, generator=gen), g=-0.4 * torch.rand(B, T, H, generator=gen),
             slot_weights=torch.rand(B, T, H, K, generator=gen), beta=torch.rand(B, T, H, generator=gen))
    return {n: a.to(device, dtype) for n, a in x.items()}


@pytest.mark.parametrize("beta", [False, True])
def test_compiled_decode_step_matches_eager(beta):
    x = token_inputs(3, 2, 24, 2, 4, 3, 3)
    prefill = [x[n][:, :5] for n in ("q", "k", "v", "g", "slot_weights")]
    _, cache, _ = dla_fast.forward(*prefill, beta=x["beta"][:, :5] if beta else None)
    tokens = {n: a[:, 5:] for n, a in x.items()}
    eager_cache, compiled_cache = cache.clone(), cache.clone()
    pointers = [getattr(compiled_cache, f).data_ptr() for f in FIELDS]
    with clean_compile():
        compiled = decode(torch.compile(step_body, fullgraph=True, backend="aot_eager"), tokens, compiled_cache, beta)
    eager = decode(step_body, tokens, eager_cache, beta)
    assert pointers == [getattr(compiled_cache, f).data_ptr() for f in FIELDS], "the cache is updated in place"
    for got, want in zip(compiled, eager):
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and torch.equal(a, b)
    for name in FIELDS:
        assert torch.equal(getattr(compiled_cache, name), getattr(eager_cache, name)), name
    assert int(eager_cache.size.min()) == 3, "the decode should fill the cache and merge"


def test_the_ops_fake_implementations_match_their_kernels():
    """``torch.library.opcheck``: schema (the step's mutations declared), fake tensors (shapes, dtypes, devices
    of every output), autograd registration."""
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    x = token_inputs(4, 1, 7, 2, 4, 3, 3, dtype=torch.float64)
    base = [x[n].requires_grad_() for n in ("q", "k", "v", "g", "slot_weights")]
    _, cache, trace = dla_fast.forward(*(a.detach() for a in base), tau=0.3, return_trace=True)
    states = cache.states.clone().requires_grad_()
    scalars = (0.3, 4, 1e-6, 1e-6)
    torch.library.opcheck(torch.ops.dla.forward.default, (*base, None, None, None, None, None, None, *scalars),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.dla.forward.default,
                          (*base, x["beta"], trace.starts, states, cache.counts, cache.info, cache.size, *scalars),
                          test_utils=utils)
    d_o, d_states = torch.ones_like(x["v"]), torch.ones_like(states)
    torch.library.opcheck(torch.ops.dla.forward_backward.default,
                          (*(a.detach() for a in base), None, None, None, trace.starts, trace.merged, d_o, d_states,
                           4, 1e-6, 1e-6), test_utils=utils)
    for dtype in (torch.float32, torch.float64):  # the step's score: float64 from the torch step
        token = [x[n][:, 0].detach().to(dtype) for n in ("q", "k", "v", "g", "slot_weights")]
        c = cache.to(dtype=dtype)
        torch.library.opcheck(torch.ops.dla.step.default,
                              (*token, None, None, c.states, c.counts, c.info, c.size, 0.3, 1e-6, 1e-6),
                              test_utils=utils)


def test_value_checks_run_when_the_compiled_forward_runs():
    """While tracing, ``forward`` checks shapes, dtypes and scalars only; the value checks run in the op's kernel
    (the eager code), with eager's messages."""
    x = token_inputs(5, 1, 6, 1, 4, 3, 2)
    args = [x[n] for n in ("q", "k", "v", "g", "slot_weights")]
    f = torch.compile(lambda *a: dla_fast.forward(*a)[0], fullgraph=True, backend="aot_eager")
    with clean_compile():
        f(*args)
    args[3] = args[3].abs() + 0.1
    with pytest.raises(ValueError, match="g: expected log decays g <= 0"):
        f(*args)
    with pytest.raises(Exception, match="expected shape"):  # a shape error surfaces while tracing
        f(*args[:4], args[4][..., 0])


def test_the_surrogate_runs_eagerly_only():
    x = token_inputs(6, 1, 6, 1, 4, 3, 2)
    f = torch.compile(lambda *a: dla_fast.forward(*a, surrogate_temperature=0.5)[0], fullgraph=True,
                      backend="aot_eager")
    with pytest.raises(Exception, match="surrogate_temperature"):
        f(*(x[n] for n in ("q", "k", "v", "g", "slot_weights")))


class RawDLA(nn.Module):
    """``dla_fast.forward`` on given inputs and a scale: what the compiled graph holds around the op is exact, so
    compiled and eager run the same kernels on the same inputs."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, q, k, v, g, slot_weights):
        o, final, trace = dla_fast.forward(q, k, v, g, slot_weights, tau=0.5, return_trace=True)
        return o.float() * self.scale, final, trace


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_forward_and_step_on_cuda_bf16():
    """On CUDA (bfloat16, Dk = Dv = 64: the Triton kernels) the ops hide the kernels from Dynamo. The compiled
    backward is the torch one (the eager call runs the Triton backward): the gradients agree to bf16 precision."""
    x = token_inputs(7, 2, 200, 2, 64, 64, 4, dtype=torch.bfloat16, device="cuda")
    leaves = [x[n].clone().requires_grad_() for n in ("q", "k", "v", "g", "slot_weights")]
    model = RawDLA().cuda()
    results = []
    for run in (torch.compile(model, fullgraph=True, backend="inductor"), model):
        with clean_compile() if run is not model else contextlib.nullcontext():
            o, final, trace = run(*leaves)
            grads = torch.autograd.grad(o.square().sum() + final.states.square().sum(), leaves)
        results.append((o, final, trace, grads))
    (o, final, trace, grads), (o_e, final_e, trace_e, grads_e) = results
    assert torch.equal(trace.starts, trace_e.starts) and torch.equal(trace.merged, trace_e.merged)
    assert trace.starts.any() and (trace.merged >= 0).any(), "the case should open slots and merge"
    torch.testing.assert_close(o, o_e, atol=1e-2, rtol=1e-2)
    for name in FIELDS:
        a, b = getattr(final, name), getattr(final_e, name)
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-3, rtol=1e-3, msg=name)
    for name, a, b in zip("qkvgw", grads, grads_e):
        assert a.dtype == b.dtype
        err = float((a.float() - b.float()).norm() / b.float().norm())
        assert err <= 2e-2, f"d{name}: {err:.2e}"
    # The decode step (the in-place Triton step) continuing the compiled forward's cache.
    tokens = token_inputs(8, 2, 12, 2, 64, 64, 4, dtype=torch.bfloat16, device="cuda")
    eager_cache = dla_fast.Cache(*(getattr(final, f).detach().clone() for f in FIELDS))
    compiled_cache = eager_cache.clone()
    with clean_compile():
        compiled = decode(torch.compile(step_body, fullgraph=True, backend="inductor"), tokens, compiled_cache, False)
    eager = decode(step_body, tokens, eager_cache, False)
    for got, want in zip(compiled, eager):
        for a, b in zip(got, want):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)
    for name in FIELDS:
        torch.testing.assert_close(getattr(compiled_cache, name), getattr(eager_cache, name), atol=1e-4, rtol=1e-4)
    # The fakes on the Triton paths (the step's score is float32 there, float64 from the torch step).
    utils = ("test_schema", "test_faketensor")
    token = [tokens[n][:, 0] for n in ("q", "k", "v", "g", "slot_weights")]
    c = eager_cache
    torch.library.opcheck(torch.ops.dla.step.default, (*token, None, None, c.states, c.counts, c.info, c.size, 0.4,
                                                       1e-6, 1e-6), test_utils=utils)
    torch.library.opcheck(torch.ops.dla.forward.default, (*(a.detach() for a in leaves), None, None, c.states,
                                                          c.counts, c.info, c.size, 0.5, 64, 1e-6, 1e-6),
                          test_utils=utils)
