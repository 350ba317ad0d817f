"""``chunk_bwd_values.value_grads`` (the delta backward's values' and betas' gradients from ``d(b v)`` in one pass)
against the torch lines it replaces in ``chunk_torch_bwd.delta_rule_backward``, under the interpreter or on a GPU."""

import pytest
import torch

from dla_fast.backend import interpreting
from dla_fast.ops.common.layout import chunks
from dla_fast.ops.delta_rule.chunk_bwd_values import value_grads

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEV == "cpu" and not interpreting(), reason="needs a CUDA GPU or TRITON_INTERPRET=1")


def _case(R=3, T=150, Dv=40, seed=0):
    """Chunk views of rows, as ``_Inputs`` holds them (T not a multiple of the chunk: a padded last chunk)."""
    g = torch.Generator().manual_seed(seed)
    nC = -(-T // 64)
    v = chunks(torch.randn(R, T, Dv, generator=g), 64, nC)
    b = chunks(torch.rand(R, T, generator=g).to(torch.float64), 64, nC)
    dbv = torch.randn(nC, R, 64, Dv, generator=g)
    db = chunks(torch.randn(R, T, generator=g, dtype=torch.float64), 64, nC)
    return [x.to(DEV) for x in (v, dbv, b, db)]


@pytest.mark.parametrize("Dv", [40, 64, 128])
def test_the_value_grads_kernel_matches_the_torch_lines(Dv):
    v, dbv, b, db = _case(Dv=Dv)
    want_dv = b.to(torch.float32).unsqueeze(-1) * dbv
    want_db = db + (v.to(torch.float64) * dbv.to(torch.float64)).sum(-1)
    dv = value_grads(v, dbv, b, db)
    assert torch.equal(dv, want_dv)  # one float32 product each
    assert dv.transpose(0, 1).is_contiguous()  # the chunk view of rows: unchunked without a copy
    # Float32 products are exact in float64; the sums of Dv of them differ by their order only.
    torch.testing.assert_close(db, want_db, rtol=1e-14, atol=1e-14 * float(want_db.abs().max()))


def test_the_value_grads_kernel_reads_each_token_s_value():
    """A mutant check: the values of the next token read in place of each token's change the betas' gradient."""
    v, dbv, b, db = _case(seed=1)
    base = db.clone()
    value_grads(v, dbv, b, base)
    shifted = db.clone()
    value_grads(v.roll(1, 2), dbv, b, shifted)
    assert not torch.allclose(base, shifted)


def test_value_grads_refuses_wrong_dtypes():
    v, dbv, b, db = _case()
    with pytest.raises(ValueError, match="float64"):
        value_grads(v, dbv, b.to(torch.float32), db)
    with pytest.raises(ValueError, match="dbv"):
        value_grads(v, dbv.transpose(0, 1), b, db)
