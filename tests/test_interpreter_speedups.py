"""The root conftest's speed-ups of Triton's interpreter change no result: its folds of a kernel's own combine
functions (``tl.associative_scan``, ``tl.reduce``), a slice at a time, give bit for bit the interpreter's own
element-at-a-time results, on both axes, reversed or not, float32 and float64, 1-D and 2-D, with and without
``keep_dims``. Runs under the interpreter only (on a GPU there is nothing to compare)."""

from __future__ import annotations

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
