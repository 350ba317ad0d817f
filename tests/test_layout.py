"""The layouts (``dla_fast/ops/common/layout.py``): the one-copy chunk-major form equals the three-step one."""

from __future__ import annotations

import pytest
import torch

from dla_fast.ops.common.layout import chunk_major, chunks, rows, unchunk, unrows


@pytest.mark.parametrize("shape", [(2, 130, 3, 5), (2, 128, 3), (1, 0, 2, 4), (2, 10, 2, 4, 3), (1, 64, 1)])
@pytest.mark.parametrize("dtype", [None, torch.float64, torch.int8])
def test_chunk_major_is_rows_then_chunks_in_one_copy(shape, dtype):
    """``chunk_major`` equals ``chunks(rows(x, dtype), C, nC)`` made contiguous, bit for bit, with whole chunks, a
    partial last chunk (zero padded), no tokens and extra feature dims; and ``unchunk``/``unrows`` give x back."""
    C = 64
    nC = -(-shape[1] // C)
    x = (torch.randn(shape) * 4).to(torch.bfloat16)
    got = chunk_major(x, C, nC, dtype)
    want = chunks(rows(x, dtype), C, nC).contiguous()
    assert got.is_contiguous() and got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(unrows(unchunk(got, shape[1]), shape[0], shape[2]), x.to(got.dtype))
