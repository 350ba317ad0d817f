"""dla_fast (torch, CPU) passes the equivalence harness: forward and the decoding step, at every input dtype.

The adapters (``dla_fast.testing.numpy_adapter``) take the harness's float64 NumPy inputs, run dla_fast in
the given dtype, and hand back NumPy. ``forward`` is drawn with several chunk sizes, including ones that
do not divide T; ``step`` feeds the tokens one at a time through the decoding step. The exact ties
(``dla_fast.testing.strategies.TIE_CASES``) run as examples at float64 and float32: there a flip is held
against dla_fast unless its own scores or densities differ from the reference's.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from dla_fast.testing import check_equivalent, in_pieces, numpy_adapter
from dla_fast.testing.strategies import DELTA_BETA_ONE, DELTA_BETA_ZERO, TIE_CASES, Spec, build, cases

# float16 is left out: o comes back in the input dtype, and float16 outputs under/overflow (tiny outputs
# become subnormal, e.g. |o| ~ 7e-7 rounds by 3e-8) beyond the harness's relative output tolerance.
# tests/test_fast_forward.py checks float16 inputs on data of ordinary magnitude.
DTYPES = ("float64", "float32", "bfloat16")
CHUNKS = (1, 3, 16, 64)


def with_examples(arg_sets):
    """``@example(**args)`` for each mapping in ``arg_sets``."""

    def deco(test):
        for args in reversed(arg_sets):
            test = example(**args)(test)
        return test

    return deco


# The exact ties and the delta rule's beta = 0 / 1 cases, at float64 and float32.
EXAMPLES = [dict(case=case, dtype=dtype) for case in (*TIE_CASES, DELTA_BETA_ZERO, DELTA_BETA_ONE)
            for dtype in ("float64", "float32")]


@with_examples([dict(ex, chunk_size=(3, 16)[i % 2]) for i, ex in enumerate(EXAMPLES)])
@given(case=cases(), dtype=st.sampled_from(DTYPES), chunk_size=st.sampled_from(CHUNKS))
def test_dla_fast_forward_is_equivalent_to_the_reference(case, dtype, chunk_size):
    report = check_equivalent(numpy_adapter(dtype, chunk_size=chunk_size), case, dtype=dtype)
    assert all(d.explained for d in report.divergences), report


@with_examples(EXAMPLES)
@given(case=cases(), dtype=st.sampled_from(DTYPES))
def test_dla_fast_step_is_equivalent_to_the_reference(case, dtype):
    report = check_equivalent(numpy_adapter(dtype, via="step"), case, dtype=dtype)
    assert all(d.explained for d in report.divergences), report


# A stream: dla_fast.forward in pieces at the drawn split points (repeats and empty pieces allowed), each piece
# continuing from the last one's cache, against one reference call. Both backbones; the example splits a
# delta-rule stream inside chunks of 3, with merges and an initial cache.
DELTA_SPLIT_AT_MERGES = build(Spec(seed=41, T=17, K=3, Dk=3, Dv=2, backbone="delta", data="piecewise", decay="mild",
                                   tau_mode="zero", prefix=4, splits=(2, 7, 7, 13)))


@with_examples([dict(case=DELTA_SPLIT_AT_MERGES, dtype=dtype, chunk_size=3) for dtype in ("float64", "float32")])
@given(case=cases(), dtype=st.sampled_from(DTYPES), chunk_size=st.sampled_from(CHUNKS))
def test_dla_fast_in_pieces_is_equivalent_to_the_reference(case, dtype, chunk_size):
    adapter = in_pieces(numpy_adapter(dtype, chunk_size=chunk_size), list(case.spec.splits))
    report = check_equivalent(adapter, case, dtype=dtype)
    assert all(d.explained for d in report.divergences), report


# On a GPU: the same harness through the public API on CUDA tensors, which runs the Triton kernels for the
# scalar-decay backbone (float32 and bfloat16 inputs), the Triton step for the delta rule too, and the torch
# forward for the delta rule.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_DTYPES = ("float32", "bfloat16")
# Head sizes the Triton kernels take (32 and up: dla_fast.backend.uses_triton); smaller ones run the torch path.
gpu_cases = cases(Dk=st.sampled_from([32, 64]), Dv=st.sampled_from([32, 64]))


@pytest.mark.gpu
@needs_cuda
@given(case=gpu_cases, dtype=st.sampled_from(GPU_DTYPES))
def test_dla_fast_forward_on_the_gpu_is_equivalent_to_the_reference(case, dtype):
    report = check_equivalent(numpy_adapter(dtype, device="cuda"), case, dtype=dtype)
    assert all(d.explained for d in report.divergences), report


@pytest.mark.gpu
@needs_cuda
@given(case=gpu_cases, dtype=st.sampled_from(GPU_DTYPES))
def test_dla_fast_step_on_the_gpu_is_equivalent_to_the_reference(case, dtype):
    report = check_equivalent(numpy_adapter(dtype, via="step", device="cuda"), case, dtype=dtype)
    assert all(d.explained for d in report.divergences), report
