"""``triton_utils.cached``: Triton launches that bind and specialise their arguments once per key.

A cached launch reuses a compiled kernel for a later launch only when that launch would have compiled to the same
kernel: its key (the constexprs' types and values, each runtime argument's specialisation, the launch options, the
device) must be at least as fine as Triton's own. The CPU tests drive the launcher with the JIT and the direct
launch replaced by recorders; the GPU test runs the scalar-decay forward, whose kernels launch through it, on aligned
and on misaligned inputs (a kernel specialised for 16-byte aligned pointers must not run on the others).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from triton_here import CUDA, INTERPRET  # noqa: E402

from dla_fast.ops.common import triton_utils  # noqa: E402


@triton.jit(do_not_specialize=["n"])
def _scale_kernel(x_ptr, y_ptr, n, factor, BLOCK: tl.constexpr, FLIP: tl.constexpr = False):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n)
    tl.store(y_ptr + i, -x * factor if FLIP else x * factor, mask=i < n)


@pytest.fixture
def recorded(monkeypatch):
    """The launcher of ``_scale_kernel`` with the JIT and the direct launch recorded instead of run."""
    if INTERPRET:
        pytest.skip("under the interpreter cached() is the kernel itself (checked below)")
    calls = []
    compiled = object()

    def jit(kernel, grid, *args, **kwargs):
        calls.append(("jit", grid, args, kwargs))
        return compiled

    def direct(kernel, grid, stream, *values):
        assert kernel is compiled
        calls.append(("direct", grid, stream, values))

    monkeypatch.setattr(triton_utils, "launch_jit", jit)
    monkeypatch.setattr(triton_utils, "launch_compiled", direct)
    monkeypatch.setattr(triton_utils, "stream_getter", lambda: lambda device: 7)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(triton_utils, "_LAUNCHERS", {})
    return triton_utils.cached(_scale_kernel), calls


def test_a_key_launches_through_the_jit_once_then_directly_with_every_parameter_in_order(recorded):
    launch, calls = recorded
    x, y = torch.zeros(64), torch.zeros(64)
    launch[(2,)](x, y, 64, 0.5, BLOCK=32, num_warps=1)
    launch[(2,)](x, y, 64, 2.0, BLOCK=32, num_warps=1)  # another float: the same kernel
    assert [c[0] for c in calls] == ["jit", "direct"]
    kind, grid, stream, values = calls[1]
    assert grid == (2, 1, 1) and stream == 7
    assert values[:4] == (x, y, 64, 2.0) and values[4:] == (32, False)  # the constexprs, FLIP by its default


@pytest.mark.parametrize("change", ["misaligned", "dtype", "one", "multiple_of_16", "constexpr", "constexpr_type",
                                    "default_constexpr", "num_warps", "unknown_type"])
def test_whatever_triton_specialises_on_takes_the_jit_again(recorded, change):
    """Each change below can select another compiled kernel in Triton (or, for an argument type the key does not
    know, might): the launch after it must go through the JIT, not reuse the first launch's kernel."""
    launch, calls = recorded
    buf, y = torch.zeros(80), torch.zeros(64)
    n = 17 if change == "one" else 64  # 17 and 1: neither a multiple of 16, so only "is 1" tells them apart
    args, kwargs = [buf[:64], y, n, 0.5], dict(BLOCK=32, num_warps=1)
    if change == "constexpr_type":
        kwargs["FLIP"] = True  # then 1: equal in Python, another constexpr for Triton
    launch[(2,)](*args, **kwargs)
    if change == "misaligned":
        args[0] = buf[1:65]  # 4 bytes past a 16-byte boundary
        assert args[0].data_ptr() % 16 != 0
    elif change == "dtype":
        args[0] = args[0].double()
    elif change == "one":
        args[2] = 1
    elif change == "multiple_of_16":
        args[2] = 63
    elif change == "constexpr":
        kwargs["BLOCK"] = 64
    elif change == "constexpr_type":
        kwargs["FLIP"] = 1
    elif change == "default_constexpr":
        kwargs["FLIP"] = True
    elif change == "num_warps":
        kwargs["num_warps"] = 2
    elif change == "unknown_type":
        args[2] = np.int64(64)
    launch[(2,)](*args, **kwargs)
    assert [c[0] for c in calls] == ["jit", "jit"]
    launch[(2,)](*args, **kwargs)  # now known, unless the key cannot say what Triton would do
    assert calls[-1][0] == ("jit" if change == "unknown_type" else "direct")


def test_under_the_interpreter_a_cached_kernel_is_the_kernel():
    """The interpreter's kernels (``triton.jit`` under ``TRITON_INTERPRET=1`` makes no ``JITFunction``) launch as they
    are: they are not compiled. A JIT kernel gets the launcher."""
    from triton.runtime.interpreter import InterpretedFunction

    interpreted = InterpretedFunction(_scale_kernel.fn)
    assert triton_utils.cached(interpreted) is interpreted
    assert (triton_utils.cached(_scale_kernel) is _scale_kernel) == INTERPRET


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="the direct launches run on a GPU")
def test_the_forward_on_misaligned_inputs_after_aligned_ones_is_unchanged():
    """The forward's kernels launch through ``cached``: a repeated call (its launches direct) gives the same results
    bit for bit, and the same inputs at a misaligned address (2 bytes past a 16-byte boundary) after aligned calls,
    whose kernels are specialised for aligned pointers, the same decisions, outputs and cache (a key without the
    alignment launches the aligned kernels on them: CUDA's misaligned address error on the H200, run 35)."""
    import dla_fast

    torch.manual_seed(0)
    B, T, H, D, K = 1, 200, 2, 32, 4
    q, k, v = (torch.randn(B, T, H, D, device="cuda").bfloat16() for _ in range(3))
    g = -torch.rand(B, T, H, device="cuda") * 0.2
    w = torch.softmax(torch.randn(B, T, H, K, device="cuda"), -1)

    def misaligned(x):
        buf = torch.empty(x.numel() + 1, device="cuda", dtype=x.dtype)
        out = buf[1:].view(x.shape)
        out.copy_(x)
        assert out.data_ptr() % 16 != 0 and out.is_contiguous()
        return out

    def run(*x):
        o, cache, trace = dla_fast.forward(*x, g, w, tau=0.6, return_trace=True)
        fields = {f"{type(c).__name__}.{f.name}": getattr(c, f.name) for c in (cache, trace)
                  for f in dataclasses.fields(c)}
        return dict(o=o, **{name: x for name, x in fields.items() if isinstance(x, torch.Tensor)})

    first = run(q, k, v)
    assert first["Trace.starts"].any() and len(first) == 8  # o, the cache's 4 tensors, the trace's 3
    again = run(q, k, v)  # every launch direct
    assert all(torch.equal(again[name], x) for name, x in first.items())
    # Triton compiles other code for unaligned pointers: on the H200 (run 35) one trace score moved by 2.4e-7 (a
    # float32 rounding; the same before cached launches), everything else bit for bit
    shifted = run(misaligned(q), misaligned(k), misaligned(v))
    assert all(torch.equal(shifted[name], x) for name, x in first.items() if name != "Trace.scores")
    torch.testing.assert_close(shifted["Trace.scores"], first["Trace.scores"], rtol=1e-6, atol=1e-6)


def test_a_stream_besides_the_current_one_is_never_the_current_one(monkeypatch):
    """``stream_besides_current``: torch's pool hands out its streams in turn, so a caller running on a pool stream
    gets its own stream back in one draw of 32; the helper draws again until the stream differs (pool streams
    compare by handle), and passes the priority on. Driven with a recorded pool on the CPU."""
    pool = iter([7, 7, 7, 9, 7])  # handles in the order the pool hands them out; 7 is the caller's
    drawn = []

    class Stream(int):
        def __new__(cls, device=None, priority=0):
            drawn.append(priority)
            return super().__new__(cls, next(pool))

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: 7)
    assert triton_utils.stream_besides_current("cuda", priority=-1) == 9
    assert drawn == [-1, -1, -1, -1]


def test_zeroed_buffers_are_zero_distinct_and_16_byte_aligned():
    """``triton_utils.zeroed``: each view has its shape and dtype, holds zeros, starts on a 16-byte boundary (as a
    separate allocation would for Triton's address specialisation) and shares no byte with the others."""
    specs = [((3,), torch.int32), ((2, 5), torch.float64), ((7,), torch.int64), ((1, 3, 3), torch.float32)]
    views = triton_utils.zeroed("cpu", *specs)
    for view, (shape, dtype) in zip(views, specs):
        assert view.shape == shape and view.dtype == dtype and view.data_ptr() % 16 == 0
        assert not view.any()
    for i, view in enumerate(views):
        view.fill_(1)
        assert all(not other.any() for other in views[i + 1:])
