"""``dla_fast.layers.DynamicLinearAttention`` (docs/model.md): gradients, prefill + decode against one forward,
padded batches against the sequences alone, both backbones, ``torch.compile``, the cache protocol, bad
arguments; on CUDA (``gpu``), forward, backward and decoding in bfloat16.

Sizes are small (D = 32, two heads of 8, K = 3 or 4, T <= 24) so that the module runs in seconds on a CPU.
The equality tests run in float64, where the chunked forward and the per-token step agree to rounding
(observed <= 1e-15; asserted 1e-10), so their decisions agree too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import dla_fast
from dla_fast.layers import DLACache, DynamicLinearAttention, RMSNorm
from dla_fast.layers import dla as dla_module

BACKBONES = ["mamba2", "gated_deltanet"]
D = 32
TOL = 1e-10  # float64


def make_layer(backbone, seed=0, dtype=torch.float64, **options):
    torch.manual_seed(seed)
    defaults = dict(num_heads=2, head_dim=8, capacity=3, tau=0.4, layer_idx=0, backbone=backbone, chunk_size=8)
    return DynamicLinearAttention(D, **{**defaults, **options}).to(dtype)


def inputs(B, T, seed=1, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(device, dtype)


def assert_cache_equal(a: dict, b: dict, tol=TOL, rows=None):
    """Two layers' cache entries (optionally rows ``rows`` of ``a`` against all of ``b``)."""
    pick = (lambda x: x) if rows is None else (lambda x: x[rows])
    ra, rb = a["recurrent_state"], b["recurrent_state"]
    for name in ("counts", "size"):
        assert torch.equal(pick(getattr(ra, name)), getattr(rb, name)), name
    for name in ("states", "info"):
        torch.testing.assert_close(pick(getattr(ra, name)), getattr(rb, name), atol=tol, rtol=tol, msg=name)
    for x, y in zip(a["conv_state"], b["conv_state"]):
        torch.testing.assert_close(pick(x), y, atol=tol, rtol=tol)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradients_reach_every_parameter(backbone):
    """With a learned tau (the surrogate), a padding mask and a cache: every parameter gets a finite, non-zero
    gradient, the input too."""
    layer = make_layer(backbone, learn_tau=True, surrogate_temperature=0.5)
    x = inputs(3, 16).requires_grad_()
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, :5] = 0
    o, _, cache = layer(x, attention_mask=mask, use_cache=True)
    (o.square().sum() + cache[0]["recurrent_state"].states.square().sum()).backward()
    names = [name for name, _ in layer.named_parameters()]
    assert "tau" in names and ("b_proj.weight" in names) == (backbone == "gated_deltanet")
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all() and x.grad[1, 5:].abs().sum() > 0
    assert x.grad[1, :5].abs().sum() == 0, "padding receives no gradient"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_prefill_then_decode_equals_one_forward(backbone, monkeypatch):
    """Prefill T - 3 tokens with ``use_cache=True``, then 3 single tokens: ``dla_fast.step`` under no_grad (the
    decode path), ``dla_fast.forward`` with grad on; both equal one forward over T, and so do the caches."""
    layer, x = make_layer(backbone), inputs(2, 24)
    steps = []
    monkeypatch.setattr(dla_module, "dla_step", lambda *a, **k: steps.append(1) or dla_fast.step(*a, **k))
    with torch.no_grad():
        full, _, full_cache = layer(x, use_cache=True)
    assert int(full_cache[0]["recurrent_state"].size.min()) == 3, "the case should fill the cache (and merge)"
    assert torch.equal(full_cache[0]["recurrent_state"].counts.sum(-1), torch.full((2, 2), 24))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            o, _, cache = layer(x[:, :21], use_cache=True)
            outs = [o]
            for t in range(21, 24):
                o, _, cache = layer(x[:, t : t + 1], past_key_values=cache, use_cache=True)
                outs.append(o)
        assert len(steps) == (0 if grad else 3)
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=TOL, rtol=TOL)
        assert_cache_equal(cache[0], full_cache[0])
        assert cache.get_seq_length() == 24
        steps.clear()


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_the_sequences_alone(backbone, side):
    """A padded batch (garbage at the padding, an empty row) equals each row's tokens run alone: outputs, zeros at
    the padding, the cache rows; decoding on after the padded prefill (FLA's growing mask) too."""
    layer, lengths, T = make_layer(backbone), [12, 5, 0, 9], 12
    seqs = [inputs(1, n + 3, seed=10 + b) for b, n in enumerate(lengths)]  # n prompt tokens, then 3 to decode
    x, mask = inputs(4, T, seed=2), torch.zeros(4, T, dtype=torch.long)
    where = [slice(T - n, T) if side == "left" else slice(0, n) for n in lengths]
    for b, n in enumerate(lengths):
        x[b, where[b]], mask[b, where[b]] = seqs[b][0, :n], 1
    with torch.no_grad():
        o, _, cache = layer(x, attention_mask=mask, use_cache=True)
        decoded = []
        for t in range(3):
            mask = torch.cat([mask, torch.ones(4, 1, dtype=mask.dtype)], 1)
            token = torch.stack([s[0, n + t] for s, n in zip(seqs, lengths)]).unsqueeze(1)
            decoded.append(layer(token, attention_mask=mask, past_key_values=cache)[0])
        for b, n in enumerate(lengths):
            assert o[b][mask[b, :T] == 0].abs().sum() == 0, "padded positions get zeros"
            alone, _, alone_cache = layer(seqs[b], use_cache=True)
            torch.testing.assert_close(o[b, where[b]], alone[0, :n], atol=TOL, rtol=TOL)
            torch.testing.assert_close(torch.cat(decoded, 1)[b], alone[0, n:], atol=TOL, rtol=TOL)
            assert_cache_equal(cache[0], alone_cache[0], rows=slice(b, b + 1))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_options_and_packed_input(backbone):
    """Without convolutions and output gate, ``expand_v``, ``cu_seqlens`` (FLA's packed input) equals the
    sequences alone."""
    layer = make_layer(backbone, use_short_conv=False, use_output_gate=False, expand_v=0.5)
    assert layer.head_v_dim == 4 and not hasattr(layer, "q_conv1d") and layer.g_proj is None
    a, b = inputs(1, 7, seed=3), inputs(1, 10, seed=4)
    o, _, cache = layer(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 7, 17]), use_cache=True)
    for rows, seq, part in ((0, a, slice(0, 7)), (1, b, slice(7, 17))):
        alone, _, alone_cache = layer(seq, use_cache=True)
        torch.testing.assert_close(o[:, part], alone, atol=TOL, rtol=TOL)
        state, alone_state = cache[0]["recurrent_state"], alone_cache[0]["recurrent_state"]
        torch.testing.assert_close(state.states[rows], alone_state.states[0], atol=TOL, rtol=TOL)
    assert cache[0]["conv_state"] is None


class Block(nn.Module):
    """A pre-norm residual block around the layer."""

    def __init__(self, backbone):
        super().__init__()
        self.norm = RMSNorm(D)
        self.attn = make_layer(backbone, dtype=torch.float32)

    def forward(self, x, past_key_values=None, use_cache=False):
        o, _, past_key_values = self.attn(self.norm(x), past_key_values=past_key_values, use_cache=use_cache)
        return x + o, past_key_values


@pytest.mark.parametrize("backbone", BACKBONES)
def test_compiled_block_matches_eager(backbone):
    """``torch.compile(fullgraph=True)`` (aot_eager, as tests/test_compile.py) of a block with the layer: the
    output and every gradient match eager (float32, 1e-5); a compiled prefill + decode matches too; no graph
    break."""
    torch._dynamo.reset()
    counters.clear()
    block, x = Block(backbone), inputs(2, 20, dtype=torch.float32)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    results = []
    for run in (compiled, block):
        block.zero_grad()
        y, _ = run(x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in block.parameters()]))
    (y, grads), (y_eager, grads_eager) = results
    torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        o, cache = compiled(x[:, :18], use_cache=True)
        outs = [o] + [compiled(x[:, t : t + 1], past_key_values=cache)[0] for t in (18, 19)]
    torch.testing.assert_close(torch.cat(outs, 1), y_eager, atol=1e-5, rtol=1e-5)
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_cache_protocol():
    """FLA's protocol: ``update`` stores per-layer dicts (any layer order), ``len``/``[]``, tokens seen counted at
    layer 0, ``reorder_cache`` indexes every state along the batch."""
    cache = DLACache()
    recurrent = dla_fast.Cache.empty(3, 2, 4, 5, 6)
    recurrent.states += torch.arange(3.0).view(3, 1, 1, 1, 1)
    entry = cache.update(recurrent_state=recurrent, conv_state=(torch.arange(3.0).view(3, 1, 1),), layer_idx=2,
                         offset=7)
    assert len(cache) == 3 and cache[2] is entry and cache[0]["recurrent_state"] is None
    assert cache.get_seq_length() == 0
    cache.update(conv_state=(torch.zeros(3, 1, 1),), layer_idx=0, offset=7)
    assert cache.get_seq_length() == 7 and cache[0]["recurrent_state"] is None
    cache.reorder_cache(torch.tensor([2, 0]))
    assert cache[2]["recurrent_state"].states[:, 0, 0, 0, 0].tolist() == [2.0, 0.0]
    assert cache[2]["conv_state"][0].flatten().tolist() == [2.0, 0.0]
    assert len(DLACache.from_legacy_cache(cache.to_legacy_cache(), seen_tokens=7)) == 3
    with pytest.raises(ValueError, match="^layer_idx"):
        cache.update(layer_idx=-1)


@pytest.mark.parametrize(
    "options, name",
    [({"backbone": "gla"}, "backbone"), ({"capacity": 1}, "capacity"), ({"tau": float("nan")}, "tau"),
     ({"tau": "high"}, "tau"), ({"learn_tau": True}, "learn_tau"), ({"surrogate_temperature": 0.0},
                                                                       "surrogate_temperature"),
     ({"num_heads": 0}, "num_heads"), ({"head_dim": 0}, "head_dim"), ({"conv_size": 0}, "conv_size"),
     ({"layer_idx": -1}, "layer_idx"), ({"expand_v": 0.01}, "expand_v")],
)  # fmt: skip
def test_bad_constructor_arguments_are_named(options, name):
    with pytest.raises(ValueError, match="^" + name):
        make_layer(**{"backbone": "mamba2", **options})


def test_bad_forward_arguments_are_named():
    layer, x = make_layer("mamba2"), inputs(2, 5)
    with pytest.raises(ValueError, match="^hidden_states"):
        layer(x[..., :-1])
    with pytest.raises(ValueError, match="^attention_mask"):
        layer(x, attention_mask=torch.ones(2, 5, 5))
    with pytest.raises(ValueError, match="^attention_mask"):
        layer(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="^cu_seqlens"):
        layer(x, attention_mask=torch.tensor([[0, 1, 1, 1, 1]] * 2), cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="^layer_idx"):
        make_layer("mamba2", layer_idx=None)(x, use_cache=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backbone", BACKBONES)
def test_layer_on_cuda(backbone):
    """On CUDA, Dk = Dv = 64 (the Triton kernels for mamba2). bfloat16: forward with a padding mask and backward
    give finite, non-zero gradients everywhere, and prefill + decode (the Triton step) runs and keeps a valid cache.
    float32: prefill + decode equals one forward (1e-3; bfloat16 rounds q/k/v differently in the convolution's
    two paths, which can move a decision whose score is within rounding of tau, so it is not compared there)."""
    for dtype in (torch.bfloat16, torch.float32):
        layer = make_layer(backbone, dtype=dtype, head_dim=64, capacity=4, tau=0.3, chunk_size=64).cuda()
        x = inputs(2, 96, dtype=dtype, device="cuda").requires_grad_()
        mask = torch.ones(2, 96, dtype=torch.long, device="cuda")
        mask[1, :10] = 0
        o, _, _ = layer(x, attention_mask=mask)
        assert o.dtype == dtype and torch.isfinite(o).all()
        o.float().square().sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        with torch.no_grad():
            full, _, _ = layer(x)
            o, _, cache = layer(x[:, :90], use_cache=True)
            outs = [o] + [layer(x[:, t : t + 1], past_key_values=cache)[0] for t in range(90, 96)]
        state = cache[0]["recurrent_state"]
        assert torch.equal(state.counts.sum(-1), torch.full((2, 2), 96, device="cuda"))
        assert int(state.size.min()) == 4 and torch.isfinite(state.states).all()
        decoded = torch.cat(outs, 1)
        assert decoded.dtype == dtype and torch.isfinite(decoded).all()
        if dtype == torch.float32:
            torch.testing.assert_close(decoded, full, atol=1e-3, rtol=1e-3)
