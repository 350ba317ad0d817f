"""``wy_tables_f32_triton.output_tables_rows_f32`` (issue #12, run 44: the delta rule's output tables computed in
float32; the forward's up to 64 features since run 45) against torch's float64 ``wy_tables`` (not the float64
kernel, which shares its block solve ``gs_times_inverse``): ragged T, several heads, 16 to 128 features, float32 and
bfloat16 inputs, fast and slow decays, betas up to 1. Runs where the kernels run (CUDA or
``TRITON_INTERPRET=1``); elsewhere it reruns itself under the interpreter.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from triton_here import DEV, needs_kernels, runs_elsewhere  # noqa: E402

# Each table's largest error over its scale: its largest entry, and for Phi = e^GL (I - K^T Z) the chunk's e^GL (the
# scale of the two terms it is the difference of: where the keys erase most of the space, Phi is small and its
# float32 error is one of those terms'). Measured under the interpreter (float32 products) against torch float64,
# 2026-12-04: at most 3.3e-7 (attn, the first case); the CPU study (benchmarks/delta_output_tables_f32_study.py) found
# <= 2.8e-7 on the benchmark workloads with float64 decays. On a GPU the products are tf32x3 (~2^-22 relative each):
# this test passed on an H200 (run 45), and the tables of every chunk of (2, 16384, 16, 64) moderate came within 4.8e-7
# of the float64 kernel's (8, 4096, 16, 128): 2.9e-7 (benchmarks/delta_table_kernel.py).
TOL = 2e-6


@runs_elsewhere
@pytest.mark.interpreter_rerun()
def test_interpreter_run(interpreter_rerun):
    """No GPU and no TRITON_INTERPRET: this file in a subprocess under the Triton interpreter (conftest.py)."""
    interpreter_rerun()


def _inputs(B, T, H, D, dtype, decay, seed):
    """Unit keys, queries of norm ~sqrt(D), log decays jittered around log(decay), betas in [0.2, 1] with some 1."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=gen)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1)
    g = math.log(decay) * (1 + 0.2 * torch.rand(B, T, H, generator=gen))
    beta = torch.where(torch.rand(B, T, H, generator=gen) < 0.1, 1.0, 0.2 + 0.8 * torch.rand(B, T, H, generator=gen))
    return [x.to(dtype if i != 2 else torch.float32).to(DEV) for i, x in enumerate((q, k, g, beta))]


@needs_kernels
@pytest.mark.parametrize("B,T,H,D,dtype,decay,split16", [
    (1, 130, 2, 32, torch.float32, 0.5, False), (2, 64, 1, 64, torch.bfloat16, 0.97, False),
    (2, 64, 1, 64, torch.bfloat16, 0.97, True), (1, 63, 1, 16, torch.float32, 0.9, False),
    (1, 64, 1, 128, torch.bfloat16, 0.9, False), (1, 100, 2, 128, torch.bfloat16, 0.9, True)])
def test_float32_output_tables_match_the_float64_kernels(B, T, H, D, dtype, decay, split16):
    """``split16``: the key and query operands in exact bf16 products (the forward's default for bf16 inputs on a GPU;
    under the interpreter with the root conftest's bf16 ``tl.dot``). Launched as the forward launches them
    (``chunk_fwd.output_tables``: wider heads on more warps)."""
    from dla_fast.ops.delta_rule.chunk_fwd import FLOAT32_TABLES_WIDTH, WIDE_FLOAT32_TABLE_WARPS
    from dla_fast.ops.delta_rule.wy_tables import wy_tables
    from dla_fast.ops.delta_rule.wy_tables_f32_triton import OUTPUT_TABLE_F32_WARPS, output_tables_rows_f32

    q, k, g, beta = _inputs(B, T, H, D, dtype, decay, seed=B * T + D)
    nb = triton.cdiv(T, 64)
    warps = WIDE_FLOAT32_TABLE_WARPS if D > FLOAT32_TABLES_WIDTH else OUTPUT_TABLE_F32_WARPS
    got = output_tables_rows_f32(q, k, g, beta, 0, nb, split16=split16, num_warps=warps)

    def chunk_major(x):  # [B, T, H, *F] -> float64 [nb, B H, 64, *F], zero past T (as the kernel reads it)
        x = torch.nn.functional.pad(x.double(), (0, 0) * (x.dim() - 3) + (0, 0, 0, 64 * nb - T))
        return x.view(B, nb, 64, H, *x.shape[3:]).movedim(3, 2).movedim(1, 0).reshape(nb, B * H, 64, *x.shape[3:])

    qc, kc, gc, bc = (chunk_major(x) for x in (q, k, g, beta))
    want, _ = wy_tables(qc, kc, gc, bc, scores=False)
    want["kb"] = bc[..., None] * want["khd"]
    scale = dict(Phi=gc.sum(-1).exp()[..., None, None].to(DEV))  # e^GL per chunk
    for name in ("attn", "qt", "kb", "Phi"):
        assert got[name].dtype == torch.float32 and got[name].shape == want[name].shape
        err = (got[name].double() - want[name].to(DEV)).abs()
        err = float((err / scale[name]).max() if name in scale else err.max() / want[name].abs().max())
        assert err <= TOL, (name, err)


def test_exact_bf16_products_refuse_other_dtypes():
    """``split16=True`` with float32 keys is refused by name before any launch (the products would take them as
    bf16); the partition kernel's ``v`` the same way."""
    from dla_fast.ops.common.triton_utils import bf16_exact_products
    from dla_fast.ops.delta_rule.wy_tables_f32_triton import output_tables_rows_f32

    q, k, g, beta = _inputs(1, 64, 1, 16, torch.float32, 0.9, seed=0)
    with pytest.raises(ValueError, match=r"split16=True needs bf16 q, k, got torch.float32, torch.float32"):
        output_tables_rows_f32(q, k, g, beta, 0, 1, split16=True)
    with pytest.raises(ValueError, match=r"needs bf16 v, got torch.float16"):
        bf16_exact_products(True, v=torch.zeros(1, dtype=torch.float16))
    assert not bf16_exact_products(None, v=torch.zeros(1, dtype=torch.float16))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("gpu", [False, True])
def test_wide_heads_take_float32_tables_where_their_products_are_exact(dtype, gpu, monkeypatch):
    """``chunk_fwd.output_tables`` above 64 features: the float32 kernel with exact bf16 key products on
    ``WIDE_FLOAT32_TABLE_WARPS`` where ``bf16_exact_products`` allows them (bf16 ``q`` and ``k`` on a GPU: ``gpu``
    stands in for one under the interpreter), else the float64 kernel's tables rounded to float32 (run 56: on the H100
    2.56 ms against 5.23 at (8, 4096, 16, 128))."""
    from dla_fast.ops.common import triton_utils
    from dla_fast.ops.delta_rule import chunk_fwd
    from dla_fast.ops.delta_rule.wy_tables_f32_triton import output_tables_rows_f32
    from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_rows

    monkeypatch.setattr(triton_utils, "interpreting", lambda: not gpu)
    q, k, g, beta = _inputs(1, 64, 1, 128, dtype, 0.9, seed=2)
    got = chunk_fwd.output_tables(q, k, g, beta, 0, 1)
    if gpu and dtype == torch.bfloat16:
        want = output_tables_rows_f32(q, k, g, beta, 0, 1, num_warps=chunk_fwd.WIDE_FLOAT32_TABLE_WARPS, split16=True)
    else:
        want = output_tables_rows(q, k, g, beta, 0, 1, dtype=torch.float32)
    for name in want:
        assert got[name].dtype == torch.float32 and torch.equal(got[name], want[name]), name


@needs_kernels
@pytest.mark.parametrize("B,T,H,D", [(1, 130, 2, 32), (2, 64, 1, 64)])
def test_saved_float32_tables_match_the_float64_kernel_s(B, T, H, D):
    """``save=True`` (the backward's tables for its float32 adjoint): ``khd`` in place of ``kb`` and the scratch the
    adjoint reads (keys and queries, ``b``, ``A``, ``Z``, ``causal(Q K^T)``) against the float64 kernel's
    ``output_tables_saved_rows``, each within ``TOL`` of its largest entry (``Phi`` of the chunk's ``e^GL``); the
    tables equal those of ``save=False`` but for ``khd = kb / b``."""
    from dla_fast.ops.delta_rule.wy_tables_f32_triton import output_tables_rows_f32
    from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_saved_rows

    q, k, g, beta = _inputs(B, T, H, D, torch.float32, 0.9, seed=T + D)
    nb = triton.cdiv(T, 64)
    got, got_saved = output_tables_rows_f32(q, k, g, beta, 0, nb, save=True)
    want, want_saved = output_tables_saved_rows(q, k, g, beta, 0, nb, dtype=torch.float64)
    plain = output_tables_rows_f32(q, k, g, beta, 0, nb)
    for name in ("attn", "qt", "Phi"):
        assert torch.equal(got[name], plain[name]), name
    torch.testing.assert_close(got["khd"] * got_saved["b"][..., None], plain["kb"], rtol=2**-23, atol=0)
    scale = dict(Phi=want["Phi"].abs().amax((-1, -2), keepdim=True).clamp(min=1e-30))
    for name, x, ref in [(n, got[n], want[n]) for n in ("attn", "qt", "khd", "Phi")] + [
            (n, got_saved[n], want_saved[n]) for n in ("x", "b", "A", "Z", "Mq")]:
        assert x.dtype == torch.float32 and x.shape == ref.shape, name
        err = (x.double() - ref).abs()
        err = float((err / scale[name]).max() if name in scale else err.max() / ref.abs().max())
        assert err <= TOL, (name, err)


@needs_kernels
@pytest.mark.parametrize("D", [32, 64])
def test_saved_tables_of_bf16_numbers_in_float32_are_the_bf16_inputs_tables(D):
    """``bf16_numbers=True`` (the backward's rows of bf16 inputs, ``chunk_torch_bwd.BF16_KEY_TABLES``): float32 copies
    of bf16 keys and queries, taken as bf16 in the exact key products (``split16=True``), give the tables and scratch
    of the bf16 inputs themselves, bit for bit, and those are within ``TOL`` of the float64 kernel's; float32 keys
    without it are still refused. Under the interpreter with the root conftest's bf16 ``tl.dot``."""
    from dla_fast.ops.delta_rule.wy_tables_f32_triton import output_tables_rows_f32
    from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_saved_rows

    q, k, g, beta = _inputs(1, 130, 2, D, torch.bfloat16, 0.9, seed=D)
    nb = triton.cdiv(130, 64)
    want, want_saved = output_tables_rows_f32(q, k, g, beta, 0, nb, save=True, split16=True)
    got, got_saved = output_tables_rows_f32(q.float(), k.float(), g, beta, 0, nb, save=True, split16=True,
                                            bf16_numbers=True)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    for name in want_saved:
        assert torch.equal(got_saved[name], want_saved[name]), name
    ref, ref_saved = output_tables_saved_rows(q, k, g, beta, 0, nb, dtype=torch.float64)
    scale = dict(Phi=ref["Phi"].abs().amax((-1, -2), keepdim=True).clamp(min=1e-30))
    for name, x, r in [(n, got[n], ref[n]) for n in ("attn", "qt", "khd", "Phi")] + [
            (n, got_saved[n], ref_saved[n]) for n in ("x", "b", "A", "Z", "Mq")]:
        err = (x.double() - r).abs()
        err = float((err / scale[name]).max() if name in scale else err.max() / r.abs().max())
        assert err <= TOL, (name, err)
    with pytest.raises(ValueError, match=r"split16=True needs bf16 q, k"):
        output_tables_rows_f32(q.float(), k.float(), g, beta, 0, nb, save=True, split16=True)
