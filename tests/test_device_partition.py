"""The torch backwards' partition tables built in torch on the device (``common.live_starts.DevicePartition``)
against the numba ones they replaced (``common.partition.Partition``): the integer tables equal bit for bit on drawn
structures, the backward's gradients equal bit for bit with either, and the public API's backward runs with the numba
tables out of reach and matches the autograd oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import dla_fast
from dla_fast.ops.common import partition as numba_partition
from dla_fast.ops.common.live_starts import DevicePartition
from dla_fast.ops.common.partition import Partition
from dla_fast.ops.common.structure import Structure
from dla_fast.ops.delta_rule import chunk_torch_bwd
from dla_fast.ops.delta_rule.chunk_torch_bwd import delta_rule_backward
from dla_fast.ops.scalar_decay import chunk_torch_bwd as scalar_chunk_torch_bwd
from dla_fast.ops.scalar_decay.chunk_torch_bwd import scalar_decay_backward
from properties.gradient_oracle import assert_rel_close, straightforward


def draw_structure(rng, R, T, K, rate, *, size0=None, any_merge=False, lengths=None) -> Structure:
    """Starts at ``rate`` (forced on an empty cache); a start on a full cache merges a random pair; ``any_merge``:
    also, at random, on a cache of two or more slots (not what the forward does: the tables' generality). Rows end
    at ``lengths`` (no start after, as the API pads them)."""
    size0 = rng.integers(0, K + 1, R) if size0 is None else np.asarray(size0)
    starts = rng.random((R, T)) < rate
    merged = np.full((R, T), -1)
    size = size0.copy()
    for t in range(T):
        for r in range(R):
            if lengths is not None and t >= lengths[r]:
                starts[r, t] = False
                continue
            starts[r, t] |= size[r] == 0
            if not starts[r, t]:
                continue
            if size[r] == K or (any_merge and size[r] >= 2 and rng.random() < 0.3):
                merged[r, t] = rng.integers(0, size[r] - 1)
            else:
                size[r] += 1
    return Structure(torch.tensor(starts), torch.tensor(merged, dtype=torch.int8), torch.tensor(size0), K)


def _both(structure, C):
    R, T = structure.starts.shape
    kc = torch.zeros(1)
    return [cls(structure, R, T, C, structure.K, None, None, kc, None) for cls in (Partition, DevicePartition)]


# (R, T, K, C, boundary rate, initial sizes or None (drawn), any_merge, row lengths or None)
TABLE_CASES = [
    (3, 70, 4, 16, 0.3, None, False, None),
    (2, 150, 5, 64, 0.8, (5, 2), False, None),  # a full and a partial initial cache, several chunks
    (2, 37, 3, 5, 1.0, (0, 3), False, None),  # a boundary at every token
    (2, 90, 6, 8, 0.03, (6, 0), False, None),  # sparse: long slots over many chunks
    (1, 1, 2, 64, 0.5, (2,), False, None),  # one token
    (3, 40, 4, 1, 0.5, None, False, None),  # chunks of one token
    (2, 63, 8, 3, 0.6, None, True, None),  # merges of any pair, also below capacity
    (3, 100, 4, 16, 0.5, (4, 1, 0), False, (100, 37, 5)),  # rows that end early
]


@pytest.mark.parametrize("R,T,K,C,rate,size0,any_merge,lengths", TABLE_CASES)
def test_device_tables_equal_the_numba_tables(R, T, K, C, rate, size0, any_merge, lengths):
    rng = np.random.default_rng(R * 1000 + T + K)
    for _ in range(6):
        old, new = _both(draw_structure(rng, R, T, K, rate, size0=size0, any_merge=any_merge, lengths=lengths), C)
        for name in ("JF", "destF", "dest", "m_start", "first"):
            a, b = getattr(old, name), getattr(new, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        for name in ("mF", "Rt"):
            assert np.array_equal(getattr(old, name), getattr(new, name)), name
        for b0, b1 in ((0, old.nC), (old.nC // 2, old.nC), (0, 1)):
            assert torch.equal(old.recency(b0, b1), new.recency(b0, b1)), (b0, b1)


def _backward_inputs(seed, R, T, Dk, Dv, K, dtype, size0):
    rng = np.random.default_rng(seed)
    t = lambda *s: torch.tensor(rng.standard_normal(s), dtype=dtype)  # noqa: E731
    k = t(R, T, Dk)
    k = k / k.norm(dim=-1, keepdim=True)
    g = -torch.tensor(0.05 + 0.3 * rng.random((R, T)), dtype=dtype)
    beta = torch.tensor(0.1 + 0.85 * rng.random((R, T)), dtype=dtype)
    init = t(R, K, Dk, Dv) * (torch.arange(K).view(1, K) < torch.tensor(size0).view(R, 1)).view(R, K, 1, 1)
    return (t(R, T, Dk), k, t(R, T, Dv), g, beta, t(R, T, K), init), t(R, T, Dv), t(R, K, Dk, Dv)


def _backward(backbone: str, x, structure, dO, dS, **kw):
    """The torch backward of a backbone on ``_backward_inputs``' tensors (the scalar decay ignores beta)."""
    if backbone == "delta":
        return delta_rule_backward(*x, structure, dO, dS, **kw)
    q, k, v, g, _, lam, init = x
    return scalar_decay_backward(q, k, v, g, lam, init, structure, dO, dS, **kw)


@pytest.mark.parametrize("backbone", ["delta", "scalar"])
@pytest.mark.parametrize("dtype,score", [(torch.float64, False), (torch.float32, False), (torch.float64, True)])
def test_backward_gradients_equal_with_either_tables(backbone, dtype, score, monkeypatch):
    """Either backbone's torch backward with the device tables and with the numba ones: every gradient equal bit for
    bit (the tables are equal integers, read by the same code). Several chunks, a ragged last one, an initial cache
    (full and partial rows), the score's part."""
    R, T, Dk, Dv, K, C = 3, 75, 4, 3, 4, 16
    size0 = (4, 2, 0)
    structure = draw_structure(np.random.default_rng(7), R, T, K, 0.35, size0=size0)
    x, dO, dS = _backward_inputs(8, R, T, Dk, Dv, K, dtype, size0)
    dscores = torch.tensor(np.random.default_rng(9).standard_normal((R, T))) if score else None
    run = lambda: _backward(backbone, x, structure, dO, dS, chunk_size=C, checkpoint_every=2, dscores=dscores)  # noqa: E731
    new = run()
    module = chunk_torch_bwd if backbone == "delta" else scalar_chunk_torch_bwd
    monkeypatch.setattr(module, "DevicePartition", Partition)
    old = run()
    for i, (a, b) in enumerate(zip(new, old)):
        assert a.dtype == b.dtype and torch.equal(a, b), i


# Tensor methods that bring a value to the host (on a GPU: a synchronisation each).
_TO_HOST = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
            torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.__float__, torch.Tensor.nonzero, torch.nonzero,
            torch.Tensor.any, torch.Tensor.all, torch.equal}


class _HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _TO_HOST:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backbone", ["delta", "scalar"])
@pytest.mark.parametrize("C", [16, 64])
def test_the_backward_brings_one_value_to_the_host(C, backbone):
    """No per-chunk or per-token host synchronisation: either backbone's whole torch backward (tables, checkpoints,
    reverse pass, blocks) reads one tensor on the host, the tables' widths, whatever the number of chunks (T = 300:
    19 or 5 chunks)."""
    R, T, Dk, Dv, K = 3, 300, 4, 3, 4
    structure = draw_structure(np.random.default_rng(7), R, T, K, 0.35, size0=(4, 2, 0))
    x, dO, dS = _backward_inputs(8, R, T, Dk, Dv, K, torch.float64, (4, 2, 0))
    with _HostReads() as reads:
        _backward(backbone, x, structure, dO, dS, chunk_size=C)
    assert reads.calls == ["cpu", "numpy"]


@pytest.mark.parametrize("backbone", ["delta", "scalar"])
def test_api_backward_needs_no_numba_tables_and_matches_the_oracle(backbone, monkeypatch):
    """dla_fast.forward (with beta for the delta rule), then .backward(), with the numba table builders replaced by
    ones that raise: the gradients (q, k, v, g, slot_weights, beta, the initial states) against autograd through
    the per-token oracle with the same decisions (T = 150: three chunks of 64, merges, an initial cache)."""

    def unreachable(*_):
        raise AssertionError("the numba partition tables ran")

    monkeypatch.setattr(numba_partition, "_chunk_tables", unreachable)
    monkeypatch.setattr(numba_partition, "_recency", unreachable)
    rng = np.random.default_rng(12)
    B, T, H, Dk, Dv, K = 1, 150, 2, 3, 2, 4

    def draw(T, grad):
        x = dict(q=rng.standard_normal((B, T, H, Dk)), k=rng.standard_normal((B, T, H, Dk)) / math.sqrt(Dk),
                 v=rng.standard_normal((B, T, H, Dv)), g=-0.05 - 0.3 * rng.random((B, T, H)),
                 slot_weights=rng.standard_normal((B, T, H, K)), beta=0.05 + 0.9 * rng.random((B, T, H)))
        if backbone == "scalar":
            del x["beta"]
        return {n: torch.tensor(a, requires_grad=grad) for n, a in x.items()}

    with torch.no_grad():
        _, cache, _ = dla_fast.forward(**draw(20, False), tau=0.4)
    x = draw(T, True)
    cache.states.requires_grad_(True)
    o, final, trace = dla_fast.forward(**x, tau=0.4, initial_cache=cache, return_trace=True)
    assert int((trace.merged >= 0).sum()) > 10
    leaves = [*x.values(), cache.states]
    gen = torch.Generator().manual_seed(0)
    dO = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    dS = torch.randn(final.states.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((o * dO).sum() + (final.states * dS).sum(), leaves)
    o_ref, S_ref = straightforward(x["q"], x["k"], x["v"], x["g"], x["slot_weights"], x.get("beta"), cache.states,
                                   cache.size, trace.starts, trace.merged)
    want = torch.autograd.grad((o_ref * dO).sum() + (S_ref * dS).sum(), leaves)
    for n, a, b in zip([*x, "initial_states"], got, want):
        assert_rel_close(a, b, f"d/d{n}", rtol=1e-9 if n != "g" else 1e-6)
