"""The root conftest's speed-ups of Triton's interpreter change no result: its folds of a kernel's own combine
functions (``tl.associative_scan``, ``tl.reduce``), a slice at a time, give bit for bit the interpreter's own
element-at-a-time results, on both axes, reversed or not, float32 and float64, 1-D and 2-D, with and without
``keep_dims``; its memoised NumPy dtypes are the interpreter's own; its launches on threads of their own compute
and raise as in their caller's; its one fix, bf16 ``tl.dot``, multiplies values. Runs under the interpreter only (on
a GPU there is nothing to compare)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton_here import INTERPRET, runs_elsewhere


@runs_elsewhere
@pytest.mark.interpreter_rerun()
def test_interpreter_run(interpreter_rerun):
    """No GPU and no TRITON_INTERPRET: this file in a subprocess under the Triton interpreter (conftest.py)."""
    interpreter_rerun()


@triton.jit
def _linear_step(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _weighted(a, b):
    return a * 0.5 + b * 1.5


@triton.jit
def _folds_kernel(a_ptr, b_ptr, scan_a, scan_b, rows, flat, flat_kept, line, R: tl.constexpr, N: tl.constexpr,
                  AXIS: tl.constexpr, REVERSE: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    n = tl.arange(0, N)[None, :]
    a = tl.load(a_ptr + r * N + n)
    b = tl.load(b_ptr + r * N + n)
    sa, sb = tl.associative_scan((a, b), AXIS, _linear_step, reverse=REVERSE)
    tl.store(scan_a + r * N + n, sa)
    tl.store(scan_b + r * N + n, sb)
    tl.store(rows + tl.arange(0, R if AXIS == 1 else N), tl.reduce(a, AXIS, _weighted))
    tl.store(flat, tl.reduce(a, None, _weighted))
    tl.store(flat_kept + r * 0 + n * 0, tl.reduce(a, None, _weighted, keep_dims=True))
    tl.store(line + tl.arange(0, N), tl.associative_scan(tl.load(a_ptr + tl.arange(0, N)), 0, _weighted))


@pytest.mark.skipif(not INTERPRET, reason="compares the interpreter's folds (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("axis,reverse", [(0, False), (1, False), (1, True)])
def test_vectorised_folds_equal_the_interpreter_s_own(dtype, axis, reverse):
    from triton.runtime import interpreter

    import conftest

    rng = np.random.default_rng(axis + 2 * reverse)
    a = torch.tensor(rng.uniform(0.5, 1.0, (8, 16)), dtype=dtype)
    b = torch.tensor(rng.normal(size=(8, 16)), dtype=dtype)
    installed = interpreter.ScanOps.generic_scan, interpreter.ReduceOps.generic_reduce
    assert installed[0].__module__ == conftest.__name__  # the speed-up is what the suite runs on
    outs = []
    for scan, reduce in (conftest.INTERPRETER_FOLDS, installed):
        interpreter.ScanOps.generic_scan, interpreter.ReduceOps.generic_reduce = scan, reduce
        try:
            out = [torch.zeros_like(a), torch.zeros_like(a), torch.zeros(16, dtype=dtype), torch.zeros(1, dtype=dtype),
                   torch.zeros(1, dtype=dtype), torch.zeros(16, dtype=dtype)]
            _folds_kernel[(1,)](a, b, *out, R=8, N=16, AXIS=axis, REVERSE=reverse)
        finally:
            interpreter.ScanOps.generic_scan, interpreter.ReduceOps.generic_reduce = installed
        outs.append(out)
    for own, fast in zip(*outs):
        assert torch.equal(own, fast)
    assert not torch.equal(outs[0][0], torch.zeros_like(a))


@pytest.mark.skipif(not INTERPRET, reason="compares the interpreter's own lookup (TRITON_INTERPRET=1)")
def test_memoised_numpy_dtypes_equal_the_interpreter_s_own():
    """Every scalar type, pointers to them and blocks of either (looked up twice: the second answer memoised) map to
    the interpreter's own NumPy dtype."""
    from triton.runtime import interpreter

    import conftest

    assert interpreter._get_np_dtype.__module__ == conftest.__name__  # the speed-up is what the suite runs on
    scalars = [tl.int1, tl.int8, tl.uint8, tl.int16, tl.uint16, tl.int32, tl.uint32, tl.int64, tl.uint64, tl.float16,
               tl.bfloat16, tl.float32, tl.float64, tl.float8e5, tl.float8e4nv]
    types = scalars + [tl.pointer_type(t) for t in scalars]
    types += [tl.block_type(t, shape) for t in types for shape in ([16], [4, 8])]
    for t in types + types:
        assert interpreter._get_np_dtype(t) == conftest.INTERPRETER_NP_DTYPE(t), t


@triton.jit
def _double_kernel(x_ptr, y_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(y_ptr + i, 2 * tl.load(x_ptr + i))


@pytest.mark.skipif(not INTERPRET, reason="the interpreter's launches (TRITON_INTERPRET=1)")
def test_launches_run_on_threads_of_their_own_and_raise_in_their_caller(monkeypatch):
    """A launch runs on another thread than its caller's, writes the caller's tensors, and an error inside it (here
    a missing argument, found when the interpreter binds them) is raised in the caller."""
    from triton.runtime import interpreter

    import conftest

    assert interpreter.GridExecutor.__call__.__module__ == conftest.__name__  # the speed-up is what the suite runs on
    threads, patch_lang = [], interpreter._patch_lang  # called by every launch, on the thread that runs it
    monkeypatch.setattr(interpreter, "_patch_lang", lambda fn: threads.append(threading.current_thread()) or
                        patch_lang(fn))
    x, y = torch.arange(16, dtype=torch.float32), torch.zeros(16)
    _double_kernel[(1,)](x, y, N=16)
    assert torch.equal(y, 2 * x)
    assert threads and threading.current_thread() not in threads
    with pytest.raises(TypeError, match="y_ptr"):
        _double_kernel[(1,)](x, N=16)
    assert len(threads) == 2  # raised inside the launch


@triton.jit
def _bf16_dot_kernel(a_ptr, b_ptr, ab_ptr, af_ptr, M: tl.constexpr):
    i = tl.arange(0, M)
    a = tl.load(a_ptr + i[:, None] * M + i[None, :])
    b = tl.load(b_ptr + i[:, None] * M + i[None, :])
    tl.store(ab_ptr + i[:, None] * M + i[None, :], tl.dot(a, tl.trans(b)))  # bf16 x bf16
    tl.store(af_ptr + i[:, None] * M + i[None, :], tl.dot(b, a, acc=tl.zeros([M, M], tl.float32) + 1.0))


@pytest.mark.skipif(not INTERPRET, reason="checks the interpreter's bf16 products (TRITON_INTERPRET=1)")
def test_bf16_dots_multiply_values():
    """``tl.dot`` of bf16 operands under the patched interpreter: the products of the values in float32 (exact: 8 x 8
    significant bits), where the interpreter's own multiplied their ``uint16`` bits (off by ~1e11 here)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(16, 16, generator=gen).bfloat16() for _ in range(2))
    ab, af = torch.empty(16, 16), torch.empty(16, 16)
    _bf16_dot_kernel[(1,)](a, b, ab, af, M=16)
    want = a.double() @ b.double().T
    assert float((ab.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())
    want = b.double() @ a.double() + 1.0
    assert float((af.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())


@triton.jit
def _reach_kernel(x_ptr, y_ptr, n_ptr, LOAD_PAST: tl.constexpr, STORE_PAST: tl.constexpr, ADD_PAST: tl.constexpr):
    i = tl.arange(0, 16)
    x = tl.load(x_ptr + i + LOAD_PAST, mask=i < 10, other=0.0)
    tl.store(y_ptr + i + STORE_PAST, x, mask=i < 10)
    tl.atomic_add(n_ptr + ADD_PAST, 1)


@pytest.mark.skipif(not INTERPRET, reason="checks the interpreter's memory checker (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("past", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)],
                         ids=["inside", "load", "store", "atomic"])
def test_the_memory_checker_refuses_each_access_past_its_arguments(past):
    """``checked_memory`` (the root conftest checks every interpreted test with it) refuses a masked load, a masked
    store and an atomic one element past their arguments (40 and 4 bytes), before they are made, and lets the same
    kernel run within them."""
    from triton.runtime.interpreter import InterpreterError

    from dla_fast.testing.interpreter_bounds import checked_memory

    x, y, n = torch.arange(10, dtype=torch.float32), torch.zeros(10), torch.zeros(1, dtype=torch.int32)
    op = {(1, 0, 0): "load", (0, 1, 0): "store", (0, 0, 1): "atomic"}.get(past)
    with checked_memory() as log:
        if op is None:
            _reach_kernel[(1,)](x, y, n, *past)
        else:
            size = 4 if op == "atomic" else 40
            with pytest.raises(InterpreterError, match=rf"_reach_kernel: {op} of 1 lanes outside its arguments "
                                                       rf"\(\+{size} bytes from a {size}-byte argument's start\)"):
                _reach_kernel[(1,)](x, y, n, *past)
    assert log.launches == 1
    # the refused access and every one after it not made
    assert torch.equal(y, x if op in (None, "atomic") else torch.zeros(10)) and int(n) == (op is None)


def test_the_memory_checker_by_views_holds_each_argument_to_its_own_elements():
    """``checked_memory(views=True)`` (the root conftest's) allows an argument's bytes from its first element to its
    last as its sizes and strides reach them, not its whole storage: a 10-element view of a 12-element tensor, a
    strided one, an empty one; without ``views``, the storage's 48 bytes."""
    from dla_fast.testing.interpreter_bounds import byte_range

    base = torch.arange(12, dtype=torch.float32)
    start = base.data_ptr()
    assert byte_range(base[:10], views=True) == (start, start + 40)
    assert byte_range(base[2:11:3], views=True) == (start + 8, start + 8 + (2 * 3 + 1) * 4)  # elements 2, 5, 8
    assert byte_range(base.view(3, 4)[:, 1:3], views=True) == (start + 4, start + 4 + (2 * 4 + 1 + 1) * 4)
    empty = byte_range(base[5:5], views=True)
    assert empty[0] == empty[1]  # no byte (torch gives an empty view's address as 0)
    assert byte_range(base[:10], views=False) == (start, start + 48)
    assert byte_range(3, views=True) is None
