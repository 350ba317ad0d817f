"""``chunk_bwd_intra.intra_adjoint`` (the delta backward's intra-chunk attention adjoint in one launch) against the
torch lines it replaces in ``chunk_torch_bwd._block_adjoint``, under the interpreter or on a GPU."""

import pytest
import torch

from dla_fast.backend import interpreting
from dla_fast.ops.delta_rule.chunk_bwd_intra import intra_adjoint

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEV == "cpu" and not interpreting(), reason="needs a CUDA GPU or TRITON_INTERPRET=1")


def _case(n=2, R=3, C=64, Dv=40, K=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(C)
    J = torch.randint(0, K, (n, R, C, C), generator=g)
    J = torch.where(t[None, None, None, :] <= t[None, None, :, None], J, -1)
    J[1, 2, 40:] = -1  # a row's end inside the chunk: its padding tokens read nothing
    J[0] = torch.where(J[0] >= 0, J[0] % 3, -1)  # chunks with few boundaries: the kernel skips recencies past 2
    lam = torch.randn(R, n * C, K, generator=g).view(R, n, C, K).transpose(0, 1)  # chunk views of rows, as lamc
    attn, bv, dO = (torch.randn(*shape, generator=g) for shape in ((n, R, C, C), (n, R, C, Dv), (n, R, C, Dv)))
    dbv = torch.randn(n, R, C, Dv, generator=g)
    dlam = torch.randn(R, n * C, K, generator=g).view(R, n, C, K).transpose(0, 1)
    return [x.to(DEV) for x in (J, lam, attn, bv, dO, dbv, dlam)]


def _torch_lines(J, lam, attn, bv, dO, dbv, dlam):
    valid = J >= 0
    Jc = J.clamp(min=0)
    Wl = torch.gather(lam, -1, Jc) * valid
    dP = dO @ bv.transpose(-1, -2)
    dbv += (attn * Wl).transpose(-1, -2) @ dO
    dlam.scatter_add_(-1, Jc, dP * attn * valid)
    return dP * Wl


def test_the_intra_chunk_adjoint_kernel_matches_the_torch_lines():
    J, lam, attn, bv, dO, dbv, dlam = _case()
    dbv_ref, dlam_ref = dbv.clone(), dlam.clone()  # (clones keep the row-major strides of the chunk views)
    cattn_ref = _torch_lines(J, lam, attn, bv, dO, dbv_ref, dlam_ref)
    cattn = intra_adjoint(J, lam, attn, bv, dO, dbv, dlam)
    for name, a, b in (("cattn", cattn, cattn_ref), ("dbv", dbv, dbv_ref), ("dlam", dlam, dlam_ref)):
        # float32 products and sums in another order (tf32x3 on a GPU): float32 rounding of the largest entry
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6 * float(b.abs().max()), msg=name)


def test_the_intra_chunk_adjoint_kernel_reads_each_tokens_recency():
    """A mutant check: the slot weights shifted by one recency step change the outputs."""
    J, lam, attn, bv, dO, dbv, dlam = _case(seed=1)
    base = intra_adjoint(J, lam, attn, bv, dO, dbv.clone(), dlam.clone())
    shifted = intra_adjoint(J, lam.roll(1, -1), attn, bv, dO, dbv.clone(), dlam.clone())
    assert not torch.allclose(base, shifted)
