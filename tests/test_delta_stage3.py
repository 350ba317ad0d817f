"""Stage 3 of the delta rule's device forward (``ops/delta_rule/chunk_fwd.py``, issue #12): the kernels that read
the inputs in place (``wy_tables_triton.output_tables_rows``, ``chunk_fwd_partition``, the slot-state kernel)
against the torch stage they replaced (``chunk_fwd_stage_torch``), piece by piece and as a whole, inside real
forwards: ragged T, an initial cache, float32 and bfloat16 inputs (16-bit betas and read weights too), rows that
end early. Runs where the kernels run (CUDA or ``TRITON_INTERPRET=1``); elsewhere it reruns itself under the
interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from delta_cases import delta_inputs, empty_cache  # noqa: E402
from triton_here import CUDA, DEV, after_prefix, needs_kernels, runs_elsewhere  # noqa: E402

import dla_ref  # noqa: E402


@runs_elsewhere
@pytest.mark.interpreter_rerun()
def test_interpreter_run(interpreter_rerun):
    """No GPU and no TRITON_INTERPRET: this file in a subprocess under the Triton interpreter (conftest.py)."""
    interpreter_rerun()


ONE_PASS_BOUND = 4 * 2.0**-11  # four tf32 unit roundoffs of the largest entry (the forward walk's one pass)

# (B, T, H, D, K, dtype, initial cache, row lengths or None)
CASES = [
    (1, 63, 2, 16, 4, torch.float32, False, None),  # one ragged chunk, an empty cache
    (2, 130, 1, 16, 3, torch.bfloat16, True, (130, 77)),  # three chunks, a cache, a row that ends early
    (1, 130, 2, 32, 5, torch.float32, True, None),
    (2, 63, 1, 32, 4, torch.bfloat16, False, (20, 63)),
]


def _check_pieces(q, k, v, g, beta, lam, s, size0, row_lengths):
    """The tables, the partition's maps and the intra-chunk output of every chunk (one block) against the torch
    stage's: the tables are the same float64 arithmetic on the same values (equal; ``b khd`` rounded once instead
    of twice, within 2 float32 ulps), the maps equal, the intra output within float32 rounding of its 64-term
    sums (the product's order differs)."""
    from dla_fast.ops.common.layout import chunks, rows
    from dla_fast.ops.delta_rule.chunk_fwd_partition import partition_and_intra
    from dla_fast.ops.delta_rule.chunk_fwd_stage_torch import FixedPartition
    from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_rows, output_tables_triton

    B, T, H, Dk = q.shape
    K, C, nC = lam.shape[-1], 64, -(-T // 64)
    new = output_tables_rows(q, k, g, beta, 0, nC, dtype=torch.float32)
    qc, kc, gc, bc = (chunks(rows(x, torch.float64), C, nC) for x in (q, k, g, beta))
    old = output_tables_triton(qc, kc, gc, bc, dtype=torch.float32)
    for name in ("attn", "qt", "Phi"):
        assert torch.equal(new[name], old[name]), name
    torch.testing.assert_close(new["kb"], bc.float().unsqueeze(-1) * old["khd"], rtol=2.4e-7, atol=0)
    lamc, vc = (chunks(rows(x, torch.float32), C, nC) for x in (lam, v))
    W, coef_t, dest_f_t, dest_t = FixedPartition(s, size0, row_lengths, K).block(0, nC, lamc)
    intra = ((old["attn"] * W) @ (bc.float().unsqueeze(-1) * vc)).transpose(0, 1).reshape(B, H, nC * C, -1)
    # bf16 values: also as a GPU multiplies them, exact in bf16 products (the root conftest's bf16 tl.dot)
    for split16 in (False, True) if v.dtype == torch.bfloat16 else (False,):
        o = torch.zeros(B, T, H, v.shape[-1], device=DEV)
        coef, dest_f, dest = partition_and_intra(s, size0, row_lengths, new["attn"], v, beta, lam, 0, o,
                                                 split16=split16)
        assert torch.equal(coef, coef_t) and torch.equal(dest_f.long(), dest_f_t) and torch.equal(dest.long(), dest_t)
        torch.testing.assert_close(o, intra[:, :, :T].transpose(1, 2), rtol=1e-5, atol=1e-6)


def _read_error_bound(dtype, steps: int, o_ref) -> float:
    """The absolute error allowed in stage 3's output beside float32 rounding (1e-6). On a GPU the slot walk reads
    the slots of 16-bit inputs in single-pass tf32 (``chunk_fwd_states``: each operand to 10 mantissa bits, 2**-9
    relative a product at worst), in the forward and in the oracle alike (the torch stage runs the forward's walk,
    one chunk a step): a walk of composed steps (``steps`` > 1) reads other operands than the oracle's, so both
    reads' rounding shows. Bound: 2**-9 of the largest output. Measured (run 51; decay 0.99, K = 8, 32 features): on
    the H200 0.98 x 2**-11 of it at two and four chunks a step; under the interpreter with the tensor cores'
    truncation emulated, against exact reads, 0.95 / 0.71 / 0.66 x 2**-11 at one / two / four. At one chunk a step
    the two walks are the same kernel, and the interpreter's products are float32: 1e-6 there."""
    if CUDA and steps > 1 and dtype in (torch.bfloat16, torch.float16):
        return 2.0**-9 * o_ref.abs().max().item()
    return 1e-6


def _forward_checked(x, cache, tau, lengths, monkeypatch, walk_steps=1, keep_checkpoints=False, pieces=True,
                     walk_launch=None):
    """The device forward (its slot walk ``walk_steps`` chunks a step at ``walk_launch``, split at the backward's
    checkpoints with ``keep_checkpoints``) with every stage-3 call checked against the torch stage (its pieces too with
    ``pieces``); returns its ``(o, cache, trace)``. Stage 3 takes the float64 tables and the split walk here, as the
    torch stage computes, so that the comparison is of its kernels alone: the float32 tables the forward takes at up
    to 64 features (``chunk_fwd.output_tables``) have their own test against float64 ones
    (test_delta_output_tables_f32.py), the one-pass walk of 16-bit inputs (``ONE_PASS_WALK_16BIT``) its own against
    the split walk (below), and both meet dla_ref's bounds in the forward tests (test_triton_kernels.py, the
    harness)."""
    from dla_fast.ops.delta_rule import chunk_fwd
    from dla_fast.ops.delta_rule.chunk_fwd_stage_torch import states_and_outputs_torch
    from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_rows

    monkeypatch.setattr(chunk_fwd, "ONE_PASS_WALK_16BIT", False)
    monkeypatch.setattr(chunk_fwd, "output_tables",
                        lambda q, k, g, beta, b0, nb: output_tables_rows(q, k, g, beta, b0, nb, dtype=torch.float32))
    real, calls = chunk_fwd._states_and_outputs, []

    def both(q, k, v, g, beta, lam, s, size0, row_lengths, slots, kept=None, steps=1, launch=None):
        assert (steps, launch) == (walk_steps, walk_launch)
        if pieces:
            _check_pieces(q, k, v, g, beta, lam, s, size0, row_lengths)
        old_slots = slots.clone()
        o = real(q, k, v, g, beta, lam, s, size0, row_lengths, slots, kept, steps, launch)
        o_old = states_and_outputs_torch(q, k, v, g, beta, lam, s, size0, row_lengths, old_slots)
        torch.testing.assert_close(o, o_old, rtol=1e-5, atol=_read_error_bound(q.dtype, steps, o_old))
        torch.testing.assert_close(slots, old_slots, rtol=1e-5, atol=1e-6)
        calls.append(1)
        return o

    monkeypatch.setattr(chunk_fwd, "_states_and_outputs", both)
    cache = tuple(c.clone() for c in cache)
    o, *trace = chunk_fwd.forward_delta_rule_triton(*x, None, *cache, tau=tau, lengths=lengths, walk_steps=walk_steps,
                                                    walk_launch=walk_launch, keep_checkpoints=keep_checkpoints)
    monkeypatch.setattr(chunk_fwd, "_states_and_outputs", real)  # (a next call wraps the stage once, not twice)
    assert calls
    return o, cache, trace


@needs_kernels
@pytest.mark.parametrize("B,T,H,D,K,dtype,with_cache,lengths", CASES)
def test_stage3_kernels_match_the_torch_stage(B, T, H, D, K, dtype, with_cache, lengths, monkeypatch):
    """Each forward's stage 3 (a first call of 40 tokens that fills the cache, where asked, then the call itself,
    its rows zero past their lengths as the API pads them) equals the torch stage's to float32 rounding; the
    float32 calls without row lengths also match dla_ref on all their tokens (the forward tests' tolerances)."""
    tau, prefix = 0.5, 40 if with_cache else 0
    D = max(D, 32) if CUDA else D  # the GPU routes heads below 32 to torch (docs/triton.md)
    x_all = delta_inputs(B, prefix + T, H, D, K, dtype, seed=T + K)
    cache, outs, starts = empty_cache(B, H, K, D), [], []
    if with_cache:
        o, cache, trace = _forward_checked([a[:, :prefix] for a in x_all], cache, tau, None, monkeypatch)
        outs, starts = [o], [trace[1]]
    x, n = after_prefix(x_all, prefix, lengths)
    o, final, trace = _forward_checked(x, cache, tau, n, monkeypatch)
    assert o.shape == (B, T, H, D) and o.dtype == torch.float32
    if dtype == torch.float32 and lengths is None:
        o_r, c_r, tr_r = dla_ref.forward(*(a.double().cpu().numpy() for a in x_all[:5]), tau=tau,
                                         beta=x_all[5].double().cpu().numpy())
        assert (torch.cat(starts + [trace[1]], 1).cpu().numpy() == tr_r.starts).all()
        o_all = torch.cat(outs + [o], 1).cpu().numpy()
        assert np.linalg.norm(o_all - o_r) <= 1e-5 * np.linalg.norm(o_r)
        assert np.linalg.norm(final[0].cpu().numpy() - c_r.states) <= 1e-5 * np.linalg.norm(c_r.states)


# (B, T, H, D, K, dtype, row lengths or None, the walk's variant, checkpoints kept): the variant is the chunks a step,
# "e" for its early loads, "@BVxWARPSxSTAGES" a launch of its own (two Dv blocks a row here). 5 and 4 chunks (steps of 2
# with one chunk left over, of 4 with none; with checkpoints at every third chunk, walks of 3 and 2 chunks), a few
# merges a chunk (K = 8: a step's second chunk moves slots that hold the first one's start slots) or merges in every
# chunk (K = 4: the older slots soon merged into one), rows that end inside a step. Four cases, for CI's time: each runs
# the interpreter's forward twice.
SEVERAL_CHUNKS = [
    (1, 260, 2, 16, 8, torch.float32, None, "2e", True),
    (2, 256, 1, 16, 8, torch.bfloat16, (256, 200), "4e", False),
    (2, 260, 1, 16, 4, torch.bfloat16, (260, 140), "1", True),
    (1, 260, 2, 16, 8, torch.float32, None, "2e@8x4x1", True),
]


@needs_kernels
@pytest.mark.parametrize("B,T,H,D,K,dtype,lengths,variant,kept", SEVERAL_CHUNKS)
def test_stage3_walk_variants(B, T, H, D, K, dtype, lengths, variant, kept, monkeypatch):
    """The slot walk on composed tables (``walk_steps`` 2 and 4, ``chunk_fwd_steps``) and on single chunks, with its
    small loads issued early (``EARLY_LOADS``, "e") or not, at its default launch or another, after a first call that
    fills the cache: its outputs and final slot states equal the torch stage's to float32 rounding (the bounds of the
    one-chunk walk above)."""
    from dla_fast.ops.delta_rule import chunk_fwd

    steps, _, launch = variant.partition("@")
    monkeypatch.setattr(chunk_fwd, "EARLY_LOADS", "e" in steps)
    steps = int(steps.strip("e"))
    tau, prefix = 0.5, 40
    D = max(D, 32) if CUDA else D
    x_all = delta_inputs(B, prefix + T, H, D, K, dtype, seed=T + K + steps, decay=0.99)  # (old slots weigh in)
    walk = dict(walk_steps=steps, pieces=False,  # (the tables and maps: the test above)
                walk_launch=tuple(int(f) for f in launch.split("x")) if launch else None)
    _, cache, _ = _forward_checked([a[:, :prefix] for a in x_all], empty_cache(B, H, K, D), tau, None,
                                   monkeypatch, **walk)
    x, n = after_prefix(x_all, prefix, lengths)
    o, _, _ = _forward_checked(x, cache, tau, n, monkeypatch, keep_checkpoints=kept, **walk)
    assert o.shape == (B, T, H, D) and torch.isfinite(o).all()


@needs_kernels
def test_one_tf32_pass_in_the_forward_walk_for_16_bit_inputs(monkeypatch):
    """``chunk_fwd.ONE_PASS_WALK_16BIT`` (on since run 79): the walk's state products in one tf32 pass for bf16 inputs
    (three chunks after a call that fills the cache: a step of two composed chunks, then one): the outputs and final
    slot states within ``ONE_PASS_BOUND`` of the split walk's (relative to the largest entry) and not equal to them (the
    one pass ran); float32 inputs' forward unchanged (bitwise). Measured (interpreter; the tf32 rounding explicit, so
    as on a GPU): o 7.2e-5, the slot states 3.9e-4, against the bound 2e-3 (states are the backward's checkpoints and
    the cache: one tf32 rounding a step, damped by the decays)."""
    from dla_fast.ops.delta_rule import chunk_fwd

    B, T, H, K, prefix, steps = 1, 130, 2, 8, 40, 2
    D = 32 if CUDA else 16

    def forward(dtype, one_pass):
        monkeypatch.setattr(chunk_fwd, "ONE_PASS_WALK_16BIT", one_pass)
        x = delta_inputs(B, prefix + T, H, D, K, dtype, seed=7, decay=0.99)
        cache = empty_cache(B, H, K, D)
        for part in ([a[:, :prefix] for a in x], [a[:, prefix:] for a in x]):
            o = chunk_fwd.forward_delta_rule_triton(*part, None, *cache, tau=0.5, walk_steps=steps)[0]
        return o, cache[0]

    split, one = forward(torch.bfloat16, False), forward(torch.bfloat16, True)
    errors = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(one, split)]
    assert max(errors) < ONE_PASS_BOUND, errors
    assert min(errors) > 0, errors
    for a, b in zip(forward(torch.float32, True), forward(torch.float32, False)):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="the interpreter's launches are 16 features wide: this width on a GPU only")
def test_stage3_composed_walk_at_128_features(monkeypatch):
    """Two chunks a step at 128 key features (the pair kernel's ``[Dk, Dk]`` products in 64-wide blocks, launched on
    one stage: Triton's default three asked 320 KB of shared memory on the H200 in run 51 and the launch failed),
    after a call that fills the cache: equal to the torch stage, as above."""
    B, T, H, D, K, prefix = 1, 256, 2, 128, 8, 40
    x_all = delta_inputs(B, prefix + T, H, D, K, torch.bfloat16, seed=5, decay=0.99)
    walk = dict(walk_steps=2, pieces=False)
    _, cache, _ = _forward_checked([a[:, :prefix] for a in x_all], empty_cache(B, H, K, D), 0.5, None, monkeypatch,
                                   **walk)
    o, _, _ = _forward_checked([a[:, prefix:] for a in x_all], cache, 0.5, None, monkeypatch, **walk)
    assert torch.isfinite(o).all()


@needs_kernels
@pytest.mark.parametrize("steps", [0, 3, 8, None])
def test_the_forward_refuses_other_walk_steps_by_name(steps):
    from dla_fast.ops.delta_rule import chunk_fwd

    D = 32 if CUDA else 16
    x = delta_inputs(1, 8, 1, D, 2, torch.float32, seed=1)
    with pytest.raises(ValueError, match=r"walk_steps: expected 1, 2 or 4 chunks per step of the slot walk, got"):
        chunk_fwd.forward_delta_rule_triton(*x, None, *empty_cache(1, 1, 2, D), tau=0.5, walk_steps=steps)


def test_a_slot_walk_launch_shape_keeps_the_padded_slot_count():
    """``launch=(BV, warps, stages)`` replaces those three of ``state_block``'s five, not the padded widths (until run
    66 it dropped ``KP``, and every ``delta_chain_kernel.py --launch`` sweep failed to unpack)."""
    from dla_fast.ops.delta_rule.chunk_fwd_states import launch_shape, state_block

    assert launch_shape(64, 64, 30, None) == state_block(64, 64, 30) == (64, 4, 32, 4, 1)
    assert launch_shape(64, 64, 30, (2, 8, 1)) == (64, 2, 32, 8, 1)
