"""Kernel A of the delta rule's GPU backward (``ops/delta_rule/chunk_bwd_chain.py``, docs/delta-rule-chunked.md
section 6.1): the chain of slot-state adjoints over chunks, in reverse, inside real forwards (ragged T, an initial
cache, float32 and bfloat16 inputs, rows that end early, with and without merges). Its start adjoint of chunk 0
against the torch backward's ``dinit`` (``delta_rule_backward`` in float64 on the forward's trace: an independent
formulation, from the compact structure through ``DevicePartition``), and every stored chunk-end adjoint against a
float64 loop over the same maps. Runs where the kernels run (CUDA or ``TRITON_INTERPRET=1``); elsewhere it reruns
itself under the interpreter.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from triton_here import CUDA, DEV, after_prefix, needs_kernels, runs_elsewhere

from dla_ref.synthetic import jittered_regimes as regimes

F64 = torch.float64
# The comparisons' bound, relative to the reference's largest entry: float32 rounding (see the first test).
BOUND = 2e-6
TF32_BOUND = 4 * 2.0**-11  # four tf32 unit roundoffs: paths with products in one tf32 pass (16-bit inputs)


@runs_elsewhere
@pytest.mark.interpreter_rerun()
def test_interpreter_run(interpreter_rerun):
    """No GPU and no TRITON_INTERPRET: this file in a subprocess under the Triton interpreter (conftest.py)."""
    interpreter_rerun()


# (B, T, H, D, K, dtype, tau, initial cache, row lengths or None, merges, chunks per launch)
CASES = [
    (1, 63, 2, 16, 4, torch.float32, 0.5, True, None, True, 1),  # one ragged chunk, a full cache
    (2, 130, 1, 16, 3, torch.bfloat16, 0.5, True, (130, 77), True, 2),  # 3 chunks in 2 launches, rows end early
    (1, 130, 1, 24, 5, torch.float32, 0.5, True, None, True, 3),  # Dk below its block, 3 Dv blocks
    # No merge, slots opening (16 slots, 1-4 live): the identity gather, the slots not listed zeroed.
    (1, 130, 2, 16, 16, torch.bfloat16, 0.8, True, (75,), False, 1),
]


def _inputs(B, T, H, D, K, dtype, seed):
    """Regimes with unit keys, betas in [0.2, 1], a mild decay; q, k, v, beta, the read weights in ``dtype``."""
    q, k, v, g, w = regimes(B, T, H, D, D, K, seed=seed, decay=0.97, regime_length=5.0, jitter=0.8)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    beta = np.random.default_rng(seed).uniform(0.2, 1.0, (B, T, H))
    return [torch.tensor(a, dtype=dtype if i != 3 else torch.float32, device=DEV)
            for i, a in enumerate((q, k, v, g, w, beta))]


def _forward(x, cache, tau, lengths, monkeypatch):
    """The device forward; returns its trace ``(starts, merged)``, stage 3's arguments (the decided structure
    ``s``, ``size0``, the row lengths) and the slot states before the call (float32 ``[R, K, Dk, Dv]``)."""
    from dla_fast.ops.delta_rule import chunk_fwd

    real, seen = chunk_fwd._states_and_outputs, {}

    def keep(q, k, v, g, beta, lam, s, size0, row_lengths, slots, *rest):
        seen.update(s=s, size0=size0.clone(), row_lengths=row_lengths, init=slots.clone())
        return real(q, k, v, g, beta, lam, s, size0, row_lengths, slots, *rest)

    monkeypatch.setattr(chunk_fwd, "_states_and_outputs", keep)
    _, _, starts, merged = chunk_fwd.forward_delta_rule_triton(*x, None, *cache, tau=tau, lengths=lengths)
    monkeypatch.setattr(chunk_fwd, "_states_and_outputs", real)
    return starts, merged, seen


def _case(B, T, H, D, K, dtype, tau, with_cache, lengths):
    """A forward (after one of 40 tokens that fills the cache, where asked; rows zero past their lengths as the API
    pads them) and the maps and tables the chain reads, with a drawn ``dO`` (nonzero past the rows' lengths too:
    the read weights are zero there) and ``dS_final`` (zero on the slots not live at the end, as the API's). A copy
    of the case built once: several tests read the same cases, and building one (the forward) is the slow part
    under the interpreter."""
    return copy.deepcopy(_built_case(B, T, H, D, K, dtype, tau, with_cache, lengths))


@functools.cache
def _built_case(B, T, H, D, K, dtype, tau, with_cache, lengths):
    from dla_fast.ops.delta_rule.chunk_fwd_partition import partition_and_intra
    from dla_fast.ops.delta_rule.wy_tables_triton import output_tables_rows

    prefix = 40 if with_cache else 0
    x_all = _inputs(B, prefix + T, H, D, K, dtype, seed=T + K)
    i64 = dict(device=DEV, dtype=torch.int64)
    cache = (torch.zeros(B, H, K, D, D, device=DEV), torch.zeros(B, H, K, **i64),
             torch.zeros(B, H, K, device=DEV, dtype=F64), torch.zeros(B, H, **i64))
    with pytest.MonkeyPatch.context() as monkeypatch:
        if with_cache:
            _forward([a[:, :prefix] for a in x_all], cache, tau, None, monkeypatch)
        x, n = after_prefix(x_all, prefix, lengths)
        starts, merged, seen = _forward(x, cache, tau, n, monkeypatch)
    q, k, v, g, lam, beta = x
    nC, R = -(-T // 64), B * H
    tab = output_tables_rows(q, k, g, beta, 0, nC, dtype=torch.float32)
    scratch = torch.zeros(B, T, H, D, device=DEV)
    coef, dest_f, _ = partition_and_intra(seen["s"], seen["size0"], seen["row_lengths"], tab["attn"], v, beta, lam, 0,
                                          scratch)
    rng = np.random.default_rng(T)
    dO = torch.tensor(rng.standard_normal((B, T, H, D)), dtype=dtype, device=DEV)
    live = torch.arange(K, device=DEV) < seen["s"].size.view(R, 1)
    dS_final = torch.tensor(rng.standard_normal((R, K, D, D)), dtype=torch.float32, device=DEV)
    dS_final *= live.view(R, K, 1, 1)
    return dict(x=x, starts=starts, merged=merged, size0=seen["size0"], init=seen["init"], tab=tab, coef=coef,
                dest_f=dest_f, dO=dO, dS_final=dS_final, s=seen["s"])


def _kernel_chain(c, per_launch: int, dest_f=None, coef=None):
    """The kernel over launches of ``per_launch`` chunks, last first, chained on one ``dS``: ``(dS at chunk 0's
    start, dS at every chunk end [nC, R, K, Dk, Dv])``. ``dest_f``, ``coef``: replace the case's (mutations)."""
    from dla_fast.ops.delta_rule.chunk_bwd_chain import slot_adjoints

    dest_f = c["dest_f"] if dest_f is None else dest_f
    coef = c["coef"] if coef is None else coef
    nC = dest_f.shape[0]
    dS = c["dS_final"].clone()
    ends = torch.empty(nC, *dS.shape, device=DEV)
    for b1 in range(nC, 0, -per_launch):
        b0 = max(0, b1 - per_launch)
        tab = {n: c["tab"][n][b0:b1] for n in ("Phi", "qt")}
        slot_adjoints(dS, tab["Phi"], tab["qt"], c["dO"], coef[b0:b1], dest_f[b0:b1], b0, dS_end=ends[b0:b1])
    return dS, ends


def _chain_float64(c):
    """The chain from the same maps and tables, float64, by gathers and einsums: per chunk, last first,
    ``dF_i = Phi^T dS[dest_f[i]] + sum_t coef[t, i] qt_t dO_t^T``."""
    from dla_fast.ops.common.layout import chunks, rows

    Phi, qt, coef, dest_f = (c["tab"]["Phi"].to(F64), c["tab"]["qt"].to(F64), c["coef"].to(F64), c["dest_f"].long())
    nC, R, C, _ = qt.shape
    dO = chunks(rows(c["dO"], F64), C, nC)
    dS, ends = c["dS_final"].to(F64), []
    for ch in range(nC - 1, -1, -1):
        ends.append(dS)
        idx = dest_f[ch].clamp(min=0).view(R, -1, 1, 1).expand(dS.shape)
        G = dS.gather(1, idx) * (dest_f[ch] >= 0).view(R, -1, 1, 1)
        dS = torch.einsum("rab,riae->ribe", Phi[ch], G) + torch.einsum("rti,rtd,rte->ride", coef[ch], qt[ch], dO[ch])
    return dS, torch.stack(ends[::-1])


def _torch_dinit(c):
    """``dinit`` of the torch backward (float64, no scores) on the forward's trace, ``[R, K, Dk, Dv]``."""
    from dla_fast.autograd import partition_structure
    from dla_fast.ops.common.layout import rows
    from dla_fast.ops.delta_rule.chunk_torch_bwd import delta_rule_backward

    q, k, v, g, lam, beta = (rows(a, F64) for a in c["x"])
    K = lam.shape[-1]
    structure = partition_structure(c["starts"], c["merged"], c["size0"], K)
    return delta_rule_backward(q, k, v, g, beta, lam, c["init"].to(F64), structure, rows(c["dO"], F64),
                               c["dS_final"].to(F64))[6]


def _rel(a, ref):
    """Max error relative to the reference's largest entry."""
    return float((a.to(F64) - ref).abs().max() / ref.abs().max())


@needs_kernels
@pytest.mark.parametrize("B,T,H,D,K,dtype,tau,with_cache,lengths,merges,per_launch", CASES)
def test_chain_matches_the_torch_backward_and_a_float64_loop(B, T, H, D, K, dtype, tau, with_cache, lengths, merges,
                                                             per_launch):
    """The start adjoint of chunk 0 equals the torch backward's ``dinit`` and every stored chunk-end adjoint the
    float64 loop's, to float32 rounding. The kernel's products are float32-accurate to ~2^-21 = 4.8e-7 of their
    terms (the split's dropped remainder product, float32 sums), two per chunk on the way to a start adjoint; the
    torch backward's tables are float64 where the kernel's are rounded to float32. Measured (interpreter, these
    cases), relative to the largest entry: start adjoints within 4.7e-7 of the float64 loop and 4.8e-7 of the torch
    backward, chunk-end ones within 1.8e-7 of the loop; ``BOUND`` (2e-6) is four of the products' errors."""
    D = max(D, 32) if CUDA else D  # the GPU routes heads below 32 to torch (docs/triton.md)
    c = _case(B, T, H, D, K, dtype, tau, with_cache, lengths)
    identity = torch.arange(K, device=DEV)
    gathers = ((c["dest_f"] >= 0) & (c["dest_f"] != identity)).any(-1).any()
    assert bool(gathers) == merges  # the case takes the path it is there for
    dS0, ends = _kernel_chain(c, per_launch)
    ref0, ref_ends = _chain_float64(c)
    dinit = _torch_dinit(c)
    assert _rel(ends, ref_ends) < BOUND and _rel(dS0, ref0) < BOUND
    assert _rel(dS0, dinit) < BOUND
    assert bool(torch.equal(ends[-1], c["dS_final"]))


@needs_kernels
def test_a_wrong_gather_or_a_missing_read_is_caught():
    """The comparison with the torch backward catches a wrong merge transpose (each start slot reading the end slot
    left of its own), the reads' adjoint left out and the slots not listed left unmasked in a chunk without merges
    (they would take the adjoint of the end slot of their index, a slot that opened in the chunk): each moves the
    start adjoint by over 1000 times the bound. Measured: 6.6e-3, 1.0 and 5.5e-3 of the largest entry (this case's
    rows hold 1-4 slots, so a shift or a leak touches a few of them)."""
    c = _case(*CASES[3][:9])
    dinit = _torch_dinit(c)
    assert _rel(_kernel_chain(c, 3)[0], dinit) < BOUND
    dest_f, slot = c["dest_f"], torch.arange(c["dest_f"].shape[-1], device=DEV, dtype=c["dest_f"].dtype)
    for mutation in (dict(dest_f=torch.where(dest_f > 0, dest_f - 1, dest_f)), dict(coef=torch.zeros_like(c["coef"])),
                     dict(dest_f=torch.where(dest_f < 0, slot, dest_f))):
        assert _rel(_kernel_chain(c, 3, **mutation)[0], dinit) > 1000 * BOUND, list(mutation)


def _backward(c, dtype, kernels: bool, every=None, v_exact=None, keys_bf16=False):
    """``delta_rule_backward`` on the case's trace in ``dtype`` (no score): all seven gradients. ``v_exact``,
    ``keys_bf16``: as the API passes them (True: 16-bit, bf16 inputs upcast)."""
    from dla_fast.autograd import partition_structure
    from dla_fast.ops.common.layout import rows
    from dla_fast.ops.delta_rule.chunk_torch_bwd import delta_rule_backward

    q, k, v, g, lam, beta = (rows(a, dtype) for a in c["x"])
    structure = partition_structure(c["starts"], c["merged"], c["size0"], lam.shape[-1])
    return delta_rule_backward(q, k, v, g, beta, lam, c["init"].to(dtype), structure, rows(c["dO"], dtype),
                               c["dS_final"].to(dtype), kernels=kernels, checkpoint_every=every, v_exact=v_exact,
                               keys_bf16=keys_bf16)


@needs_kernels
@pytest.mark.parametrize("case", [CASES[1], CASES[2]])
def test_backward_on_kernels_matches_the_float64_torch_backward(case, monkeypatch):
    """The backward with its reverse pass on kernels (``chunk_bwd.reverse_pass_kernels``: the states rerun by the
    forward's kernel, the chain, the cotangents batched per segment), float32, against the torch backward in
    float64: every gradient within ``BOUND`` of the largest entry, with the default segments, one chunk per segment,
    the cotangents batched a chunk at a time and the cotangents by their kernels, the tables computed once per unit of
    segments (one unit, or one a segment). Measured (interpreter): 1.1e-7 to 5.0e-7, as the float32 torch backward's
    (the same tables in both)."""
    from dla_fast.ops.delta_rule import chunk_bwd, chunk_torch_bwd
    from dla_fast.ops.delta_rule.chunk_bwd_chain import slot_adjoints

    D = max(case[3], 32) if CUDA else case[3]
    c = _case(*case[:3], D, *case[4:9])
    ran = []
    monkeypatch.setattr(chunk_bwd, "slot_adjoints", lambda *a, **kw: ran.append(1) or slot_adjoints(*a, **kw))
    ref = _backward(c, F64, False)
    monkeypatch.setattr(chunk_bwd, "_PAIRS", False)  # a chunk a step (the pairs: the next test)
    full, block = chunk_bwd._BATCH_BYTES, chunk_torch_bwd._BLOCK_ELEMENTS
    # (chunks per segment, cotangents' batch, their path, table blocks (1: a unit per segment))
    for every, batch_bytes, cotangents, block_elements in (
            (None, full, "torch", block), (1, full, "torch", block), (None, 1, "torch", block),
            (None, full, "triton", block), (None, full, "triton", 1), (1, full, "triton", 1)):
        monkeypatch.setattr(chunk_bwd, "_BATCH_BYTES", batch_bytes)  # 1: the cotangents a chunk at a time
        monkeypatch.setattr(chunk_bwd, "_COTANGENTS", cotangents)
        monkeypatch.setattr(chunk_torch_bwd, "_BLOCK_ELEMENTS", block_elements)
        got = _backward(c, torch.float32, True, every)
        for name, x, want in zip(("dq", "dk", "dv", "dg", "dbeta", "dlam", "dinit"), got, ref):
            assert _rel(x, want) < BOUND, (name, every, batch_bytes, cotangents, block_elements, _rel(x, want))
    assert ran  # the kernels ran


@needs_kernels
@pytest.mark.parametrize("case", [CASES[1], CASES[2], (1, 290, 2, 16, 6, torch.float32, 0.6, True, None, True, 1)])
def test_backward_two_chunks_a_step_matches_the_float64_torch_backward(case, monkeypatch):
    """The reverse pass on pairs of chunks (``chunk_bwd_pairs``: the rerun, kernel A and kernel B two chunks a step,
    the composition's adjoint after), float32, against the torch backward in float64, within ``BOUND`` of each
    gradient's largest entry: segments of two chunks (the last one alone), of four (two pairs in a step's launch),
    and of three (odd: a chunk a step, the path the pairs fall back to). Exactly the segments with an even start and
    length go by pairs. Measured (interpreter, the three cases): 1.4e-7 to 5.7e-7 (dinit the largest)."""
    from dla_fast.ops.delta_rule import chunk_bwd, chunk_bwd_pairs

    D = max(case[3], 32) if CUDA else case[3]
    c = _case(*case[:3], D, *case[4:9])
    ran = []
    monkeypatch.setattr(chunk_bwd, "pair_segment",
                        lambda *a, **kw: ran.append((a[5], a[6])) or chunk_bwd_pairs.pair_segment(*a, **kw))
    monkeypatch.setattr(chunk_bwd, "_PAIRS", True)
    ref = _backward(c, F64, False)
    # The segments by pairs, by chunk count and segment length (3 chunks: T = 130; 5: T = 290).
    by_pairs = {3: {2: [(0, 2)], 4: [], 3: []}, 5: {2: [(0, 2), (2, 4)], 4: [(0, 4)], 3: []}}[-(-case[1] // 64)]
    for every in (2, 4, 3):
        ran.clear()
        got = _backward(c, torch.float32, True, every)
        for name, x, want in zip(("dq", "dk", "dv", "dg", "dbeta", "dlam", "dinit"), got, ref):
            assert _rel(x, want) < BOUND, (name, every, _rel(x, want))
        assert sorted(ran) == by_pairs[every], (every, ran)


@needs_kernels
def test_one_tf32_pass_in_the_chains_for_16_bit_inputs(monkeypatch):
    """``chunk_torch_bwd.ONE_PASS_CHAINS_16BIT`` (on since run 77): the reruns', kernel A's and kernel B's products in
    one tf32 pass for 16-bit inputs (``v_exact``), a chunk a step and by pairs, against the torch backward in float64:
    within ``TF32_BOUND`` of each gradient's largest entry, and farther than ``BOUND`` from it in some gradient (the
    one pass ran). Measured (interpreter; tf32 rounding explicit, so as on a GPU): 7.2e-5 to 7.3e-4, ``dinit`` the
    largest, against the bound 2e-3 (the split path: 1.4e-7 to 5.7e-7); with the pairs' adjoint in one pass too
    (``chunk_bwd_pairs.ONE_PASS_ADJOINT``, on since run 79) dq 1.6e-4 -> 2.2e-4, dg 1.6e-4 -> 2.8e-4, dlam 7.2e-5 ->
    1.3e-4."""
    from dla_fast.ops.delta_rule import chunk_bwd_pairs, chunk_torch_bwd

    case = CASES[1]  # bf16 values; three chunks: by pairs and a chunk a step (every 2), a chunk a step (every 3)
    D = max(case[3], 32) if CUDA else case[3]
    c = _case(*case[:3], D, *case[4:9])
    ref = _backward(c, F64, False)
    monkeypatch.setattr(chunk_torch_bwd, "ONE_PASS_CHAINS_16BIT", True)
    for every, adjoint in ((2, False), (3, False), (2, True)):
        monkeypatch.setattr(chunk_bwd_pairs, "ONE_PASS_ADJOINT", adjoint)
        got = _backward(c, torch.float32, True, every, v_exact=True)
        errors = [_rel(x, want) for x, want in zip(got, ref)]
        assert max(errors) < TF32_BOUND, (every, errors)
        assert max(errors) > BOUND, (every, errors)


@needs_kernels
def test_the_reverse_pass_at_other_launches_gives_the_default_launch_s_gradients(monkeypatch):
    """``chunk_bwd``'s launch settings (``RERUN_LAUNCH``, ``CHAIN_LAUNCH``, ``START_BLOCK``, for sweeps through the
    API): the rerun and kernel A on Dv blocks half the default's on 8 warps, the start slots' kernel on blocks of 16
    (its default below 32 features), by pairs and a chunk a step, give the default launch's gradients to float32
    rounding: a block's columns are independent, so only the products' summation order may change. Measured
    (interpreter): bitwise equal; with every Dv block given the first one's columns (a mutant of ``slot_tile``), dq
    1.58 off."""
    from dla_fast.ops.delta_rule import chunk_bwd
    from dla_fast.ops.delta_rule.chunk_fwd_states import launch_shape

    case = CASES[1]  # bf16 values, the 16-bit inputs' one-pass products; three chunks
    D = max(case[3], 32) if CUDA else case[3]
    c = _case(*case[:3], D, *case[4:9])
    half = (launch_shape(D, D, case[4], None)[1] // 2, 8, 1)
    for every in (2, 3):
        want = _backward(c, torch.float32, True, every, v_exact=True)
        with monkeypatch.context() as m:
            m.setattr(chunk_bwd, "RERUN_LAUNCH", half)
            m.setattr(chunk_bwd, "CHAIN_LAUNCH", half)
            m.setattr(chunk_bwd, "START_BLOCK", 16)
            got = _backward(c, torch.float32, True, every, v_exact=True)
        for name, x, ref in zip(("dq", "dk", "dv", "dg", "dbeta", "dlam", "dinit"), got, want):
            assert _rel(x, ref.to(F64)) < 1e-6, (name, every, _rel(x, ref.to(F64)))


@needs_kernels
def test_float32_saved_tables_for_16_bit_inputs(monkeypatch):
    """``chunk_torch_bwd.FLOAT32_SAVED_TABLES_16BIT`` (on since run 77): the backward's tables by the float32 table
    kernel with its scratch saved in float32, read by the tables' adjoint in tf32 (the 16-bit inputs' default
    operands; the interpreter, which the library keeps on float64 there, stands in for a GPU), against the torch
    backward in float64 within ``TF32_BOUND`` (tf32's four unit roundoffs: what a GPU's products allow; measured under
    the interpreter, whose tf32 products are float32 ones: 8.9e-8 to 4.8e-7)."""
    from dla_fast.ops.delta_rule import chunk_torch_bwd

    # A GPU runs 32 features (run 77: there the keys' gradient was 1.04 off, with the adjoint's 16-column wgmma launch
    # since refused; run 79: within the bound); the interpreter a narrower head, for time.
    D = 32 if CUDA else 16
    c = _case(*CASES[1][:3], D, *CASES[1][4:9])
    ref = _backward(c, F64, False)
    monkeypatch.setattr(chunk_torch_bwd, "interpreting", lambda: False)
    monkeypatch.setattr(chunk_torch_bwd, "FLOAT32_SAVED_TABLES_16BIT", True)
    monkeypatch.setattr(chunk_torch_bwd, "ONE_PASS_CHAINS_16BIT", False)  # this switch's error alone
    saved = []
    real = chunk_torch_bwd.output_tables_rows_f32
    monkeypatch.setattr(chunk_torch_bwd, "output_tables_rows_f32", lambda *a, **kw: saved.append(kw) or real(*a, **kw))
    got = _backward(c, torch.float32, True, 2, v_exact=True)
    errors = [_rel(x, want) for x, want in zip(got, ref)]
    assert saved and all(kw.get("save") for kw in saved)
    # The interpreter's tf32 products are float32 ones: there float32 rounding's bound holds (measured 4.8e-7).
    assert max(errors) < (TF32_BOUND if CUDA else BOUND), errors


@needs_kernels
def test_float32_saved_tables_with_exact_bf16_key_products(monkeypatch):
    """``chunk_torch_bwd.BF16_KEY_TABLES`` (on since run 79): the backward's float32 tables with the rows of bf16 keys
    and queries taken as bf16 in exact products (``output_tables_rows_f32(split16=True, bf16_numbers=True)``), against
    the torch backward in float64 within ``TF32_BOUND`` (the tf32 adjoint's bound, as the float32 tables' own test).
    Measured (interpreter, with the root conftest's bf16 ``tl.dot``): 8.9e-8 to 5.7e-7 (without the switch 6.6e-8 to
    1.8e-7 from these: float32 rounding)."""
    from dla_fast.ops.delta_rule import chunk_torch_bwd

    D = 64 if CUDA else 16
    c = _case(*CASES[1][:3], D, *CASES[1][4:9])  # bf16 inputs
    ref = _backward(c, F64, False)
    monkeypatch.setattr(chunk_torch_bwd, "interpreting", lambda: False)
    monkeypatch.setattr(chunk_torch_bwd, "ONE_PASS_CHAINS_16BIT", False)  # this switch's error alone
    monkeypatch.setattr(chunk_torch_bwd, "BF16_KEY_TABLES", True)
    launches = []
    real = chunk_torch_bwd.output_tables_rows_f32
    monkeypatch.setattr(chunk_torch_bwd, "output_tables_rows_f32",
                        lambda *a, **kw: launches.append(kw) or real(*a, **kw))
    got = _backward(c, torch.float32, True, 2, v_exact=True, keys_bf16=True)
    assert launches and all(kw["split16"] and kw["bf16_numbers"] and kw["save"] for kw in launches), launches
    errors = [_rel(x, want) for x, want in zip(got, ref)]
    assert max(errors) < (TF32_BOUND if CUDA else BOUND), errors


@needs_kernels
def test_a_misaligned_segment_is_caught(monkeypatch):
    """The comparison catches the cotangents (either path) fed the chunk-end adjoints of the wrong chunks (rolled by
    one inside each segment) and the start states left out (zero): dq, dk or the read weights move by far more than
    the bound."""
    from dla_fast.ops.delta_rule import chunk_bwd

    c = _case(*CASES[1][:9])
    ref = _backward(c, F64, False)
    monkeypatch.setattr(chunk_bwd, "_PAIRS", False)  # (the paths of a chunk a step)
    for path, name in (("torch", "_segment_cotangents"), ("triton", "_segment_cotangents_triton")):
        monkeypatch.setattr(chunk_bwd, "_COTANGENTS", path)
        real = getattr(chunk_bwd, name)
        for mutate in (lambda F, E: (F, E.roll(1, 0)), lambda F, E: (torch.zeros_like(F), E)):
            monkeypatch.setattr(chunk_bwd, name,
                                lambda a, F, E, *rest, m=mutate, f=real, **kw: f(a, *m(F, E), *rest, **kw))
            got = _backward(c, torch.float32, True)
            assert max(_rel(x, r) for x, r in zip(got[:6], ref[:6])) > 1000 * BOUND, (path, name)


@needs_kernels
def test_the_api_backward_takes_the_kernels(monkeypatch):
    """``dla_fast.forward(..., beta=...)`` in float32 where the kernels run, then ``backward()``: its reverse pass
    takes the kernels, and its gradients match the float64 call's (the torch backward) on the same decisions (the
    float64 call's boundaries imposed) within ``BOUND``."""
    import dla_fast
    from dla_fast.ops.delta_rule import chunk_bwd

    if not CUDA:
        monkeypatch.setenv("DLA_FAST_BACKEND", "triton")  # the interpreter runs the kernels on CPU tensors
    D = 32 if CUDA else 16
    ran = []
    real = chunk_bwd.slot_adjoints
    monkeypatch.setattr(chunk_bwd, "slot_adjoints", lambda *a, **kw: ran.append(1) or real(*a, **kw))
    x32 = [a.float().requires_grad_() for a in _inputs(1, 130, 2, D, 4, torch.float32, seed=5)]
    x64 = [a.detach().cpu().to(F64).requires_grad_() for a in x32]
    dO = torch.randn(1, 130, 2, D, generator=torch.Generator().manual_seed(1), dtype=F64)

    def grads(x, **kw):
        q, k, v, g, w, beta = x
        o, _, trace = dla_fast.forward(q, k, v, g, w, beta=beta, tau=0.5, return_trace=True, **kw)
        (o * dO.to(o.device, o.dtype)).sum().backward()
        return trace, [a.grad for a in x]

    trace, want = grads(x64)
    _, got = grads(x32, boundaries=trace.starts.to(DEV))
    assert ran
    for name, a, b in zip(("q", "k", "v", "g", "slot_weights", "beta"), got, want):
        assert _rel(a.cpu(), b) < BOUND, (name, _rel(a.cpu(), b))


@needs_kernels
@pytest.mark.parametrize("n,R,K,Dk,Dv", [(2, 3, 5, 16, 16), (1, 2, 4, 24, 40), (2, 2, 3, 16, 80), (1, 2, 3, 32, 80),
                                         (1, 2, 30, 64, 64)])
def test_table_cotangent_kernels_match_a_float64_einsum(n, R, K, Dk, Dv):
    """Kernel B (``chunk_bwd_cotangents.table_cotangents``) on drawn slot states, adjoints and maps (slots not
    listed, padding tokens; ragged key widths, several Dv blocks) against the same sums by float64 gathers and
    einsums, entry by entry relative to the sum of its terms' magnitudes (the same einsums of the operands'
    absolute values): a float32 sum of products errs in proportion to that, where an error relative to the largest
    entry grows with the sums' length (``dPhi`` sums ``K Dv`` products: 2.2e-6 of the largest entry at K Dv = 240 on
    an H200, run 25, 2.4e-7 at 80 under the interpreter). Measured this way: at most 2.6e-7 (interpreter) and 2.3e-7
    (H200); ``BOUND`` is four times ``dot_f32``'s error per product. The case at K = 30, 64 features caught a carried
    tensor-core accumulator on the GPU (``dPhi`` at 2.2e-6)."""
    from dla_fast.ops.delta_rule.chunk_bwd_cotangents import table_cotangents

    C = 64
    gen = torch.Generator().manual_seed(n * 100 + Dv)
    rand = lambda *s: torch.randn(*s, generator=gen).to(DEV)  # noqa: E731
    F, E = rand(n, R, K, Dk, Dv), rand(n, R, K, Dk, Dv)
    dest_f = torch.randint(-1, K, (n, R, K), generator=gen).to(DEV)
    dest = torch.randint(-1, K, (n, R, C), generator=gen).to(DEV)
    coef, qt, dO, khd, bv = rand(n, R, C, K), rand(n, R, C, Dk), rand(n, R, C, Dv), rand(n, R, C, Dk), rand(n, R, C, Dv)
    got = table_cotangents(F, E, dest_f, dest, coef, qt, dO, khd, bv)

    def sums(f):
        """The five cotangents by float64 gathers and einsums of ``f`` of each operand."""
        F64_, E64 = f(F.to(F64)), f(E.to(F64))
        G = E64.gather(2, dest_f.clamp(min=0).view(n, R, K, 1, 1).expand_as(E64)) * (dest_f >= 0).view(n, R, K, 1, 1)
        Et = (E64.gather(2, dest.clamp(min=0).view(n, R, C, 1, 1).expand(n, R, C, Dk, Dv))
              * (dest >= 0).view(n, R, C, 1, 1))
        Zr = torch.einsum("nridv,nrtv->nrtid", F64_, f(dO.to(F64)))
        return (torch.einsum("nridv,nriev->nrde", G, F64_), torch.einsum("nrsdv,nrsv->nrsd", Et, f(bv.to(F64))),
                torch.einsum("nrsdv,nrsd->nrsv", Et, f(khd.to(F64))),
                torch.einsum("nrti,nrtid->nrtd", f(coef.to(F64)), Zr),
                torch.einsum("nrtd,nrtid->nrti", f(qt.to(F64)), Zr))

    for name, a, b, scale in zip(("dPhi", "dkhd", "dbv", "dqt", "dcoef"), got, sums(lambda x: x), sums(torch.abs)):
        err = float(((a.to(F64) - b).abs() / scale.clamp(min=1e-300)).max())
        assert err < BOUND, (name, err)


def _cotangent_operands(n, R, K, Dk, Dv, seed, C=64):
    """``table_cotangents``' operands drawn: ``(F, E, (dest_f, dest), (coef, qt, dO, khd, bv), generator)``, the
    generator left for further draws."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen).to(DEV)  # noqa: E731
    F, E = rand(n, R, K, Dk, Dv), rand(n, R, K, Dk, Dv)
    maps = tuple(torch.randint(-1, K, (n, R, m), generator=gen).to(DEV) for m in (K, C))
    rest = (rand(n, R, C, K), rand(n, R, C, Dk), rand(n, R, C, Dv), rand(n, R, C, Dk), rand(n, R, C, Dv))
    return F, E, maps, rest, gen


@needs_kernels
def test_table_cotangents_write_into_out_and_refuse_a_wrong_one():
    """``table_cotangents(out=)`` (the backward's units pass their cotangent tensors): ``dPhi``, ``dkhd``, ``dqt``
    written into ``out``'s tensors, bit for bit what it returns without ``out``; an ``out`` tensor of another shape
    or dtype is refused with its name, before any kernel writes past it."""
    from dla_fast.ops.delta_rule.chunk_bwd_cotangents import table_cotangents

    n, R, K, Dk, Dv, C = 1, 2, 4, 16, 16, 64
    F, E, maps, rest, _ = _cotangent_operands(n, R, K, Dk, Dv, seed=7)
    fresh = table_cotangents(F, E, *maps, *rest)
    out = {"Phi": torch.zeros(n, R, Dk, Dk, device=DEV), "khd": torch.zeros(n, R, C, Dk, device=DEV),
           "qt": torch.zeros(n, R, C, Dk, device=DEV)}
    into = table_cotangents(F, E, *maps, *rest, out=out)
    for a, b in zip(fresh, into):
        assert torch.equal(a, b)
    assert into[0] is out["Phi"] and into[1] is out["khd"] and into[3] is out["qt"]
    for wrong in (torch.zeros(n, R, Dk, Dk + 1, device=DEV), torch.zeros(n, R, Dk, Dk, device=DEV, dtype=F64)):
        with pytest.raises(ValueError, match="out\\['Phi'\\]"):
            table_cotangents(F, E, *maps, *rest, out={**out, "Phi": wrong})


@needs_kernels
def test_table_cotangents_add_the_read_weights_and_values_gradients_in_place():
    """``table_cotangents(read_weights=(JF, dlam), dbv_into=)`` (the backward's segments): the start slots' kernel
    adds ``dcoef`` into ``dlam`` by each token's recency of each start slot, as the torch scatter it replaces
    (``dlam[t, JF[t, i]] += dcoef[t, i]``, unlisted slots skipped), into a chunk view of rows: float32 sums of up to
    K + 1 = 7 terms in another order, so at most 6 roundings of 2^-24 of each entry's sum of magnitudes (3.6e-7; the
    bound 4e-7; measured 1.9e-7 at most over 20 draws, interpreter), and the token kernel adds ``d(b v)``
    into ``dbv_into`` (one addition each: bit for bit). A ``dlam`` or ``dbv_into`` of another layout is refused."""
    from dla_fast.ops.common.layout import chunks
    from dla_fast.ops.delta_rule.chunk_bwd_cotangents import table_cotangents

    n, R, K, Dk, Dv, C = 2, 3, 6, 16, 24, 64
    F, E, maps, rest, gen = _cotangent_operands(n, R, K, Dk, Dv, seed=8)
    JF = torch.randint(-1, K, (n, R, C, K), generator=gen).to(DEV)
    dcoef = table_cotangents(F, E, *maps, *rest)[4]
    base = chunks(torch.randn(R, n * C, K, generator=gen).to(DEV), C, n)
    want = base.clone().scatter_add_(-1, JF.clamp(min=0), dcoef * (JF >= 0))
    scale = base.abs().scatter_add(-1, JF.clamp(min=0), dcoef.abs() * (JF >= 0))
    acc = torch.randn(n, R, C, Dv, generator=gen).to(DEV)
    want_dbv = acc + table_cotangents(F, E, *maps, *rest)[2]
    got = table_cotangents(F, E, *maps, *rest, read_weights=(JF, base), dbv_into=acc)
    assert got[4] is None
    assert float(((base - want).abs() / scale).max()) < 4e-7
    assert got[2] is acc and torch.equal(acc, want_dbv)  # d(b v) added in place: one float32 addition each
    with pytest.raises(ValueError, match="dlam"):
        table_cotangents(F, E, *maps, *rest, read_weights=(JF, base.double()))
    with pytest.raises(ValueError, match="dbv_into"):
        table_cotangents(F, E, *maps, *rest, dbv_into=acc.transpose(0, 1))


def test_values_from_16_bit_inputs_are_found_exact_in_tf32():
    """The backward's walks take the values as exact in tf32 (one product fewer) only when they are: bfloat16 and
    float16 inputs upcast, not float32 ones, nor a float32 value one bit below tf32's last (the Triton
    interpreter's products do not round to tf32, so a wrong answer here shows only on a GPU)."""
    from dla_fast.ops.delta_rule.chunk_bwd import exact_in_tf32

    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    assert exact_in_tf32(x.to(torch.bfloat16).float()) and exact_in_tf32(x.to(torch.float16).float())
    assert not exact_in_tf32(x)
    one_bit = torch.ones(3)
    one_bit.view(torch.int32)[1] |= 1 << 12  # tf32 keeps 10 of float32's 23 mantissa bits
    assert not exact_in_tf32(one_bit) and exact_in_tf32(torch.ones(3))


@needs_kernels
def test_the_api_backward_takes_16_bit_values_as_exact_without_scanning_them(monkeypatch):
    """``dla_fast.forward``'s backward passes its values' dtype down: the kernels' walks take bf16 values as exact in
    tf32 (one product fewer) and float32 ones as not, without scanning ``v`` (``exact_in_tf32``: a host
    synchronisation, the last one in the delta backward's kernel path)."""
    import dla_fast
    from dla_fast.ops.delta_rule import chunk_bwd

    if not CUDA:
        monkeypatch.setenv("DLA_FAST_BACKEND", "triton")
    monkeypatch.setattr(chunk_bwd, "exact_in_tf32", lambda x: pytest.fail("the values scanned"))
    taken = []
    real = chunk_bwd.slot_states_and_reads

    def walk(*args, **kwargs):
        taken.append(kwargs["v_exact"])
        return real(*args, **kwargs)

    monkeypatch.setattr(chunk_bwd, "slot_states_and_reads", walk)
    D = 32 if CUDA else 16  # (the kernels take 32 to 128 features on a GPU)
    for dtype, exact in ((torch.bfloat16, True), (torch.float32, False)):
        leaves = [x.to(dtype).requires_grad_() for x in _inputs(1, 130, 2, D, 4, torch.float32, seed=3)]
        o, _, _ = dla_fast.forward(*leaves[:5], tau=0.5, beta=leaves[5])
        o.float().sum().backward()
        assert all(x.grad is not None and bool(torch.isfinite(x.grad).all()) for x in leaves)
        assert taken and set(taken) == {exact}, dtype
        taken.clear()


@needs_kernels
def test_the_backward_starts_from_the_forward_s_slot_checkpoints(monkeypatch):
    """A kernel forward with gradients asked for keeps the slot states at the backward's checkpoints
    (``Structure.slot_checkpoints``: chunks 0 and 2 of 4 here) and its live starts, and the backward starts its
    segments from those states instead of walking there and builds its partition from those live starts (no
    rebuild from the trace): its gradients equal the walking, rebuilding backward's within ``BOUND`` (the two walks
    read tables computed differently: float32 rounding), and move when the kept states are swapped."""
    import dla_fast
    from dla_fast.ops.common import live_starts as live_starts_module
    from dla_fast.ops.common.structure import SlotCheckpoints

    if not CUDA:
        monkeypatch.setenv("DLA_FAST_BACKEND", "triton")
    B, T, H, D, K = 1, 200, 2, 32 if CUDA else 16, 4
    leaves = [x.requires_grad_() for x in _inputs(B, T, H, D, K, torch.float32, seed=5)]
    q, k, v, g, w, beta = leaves
    o, _, _ = dla_fast.forward(q, k, v, g, w, tau=0.5, beta=beta)
    structure = o.grad_fn.record.structure
    kept = structure.slot_checkpoints
    assert kept is not None and (kept.chunk, kept.every) == (64, 2)
    assert kept.states.shape == (2, B * H, K, D, D) and not kept.states.requires_grad
    dO = torch.randn(o.shape, generator=torch.Generator().manual_seed(0)).to(DEV)

    def grads():
        return torch.autograd.grad((o * dO).sum(), leaves, retain_graph=True)

    real = live_starts_module.live_starts
    monkeypatch.setattr(live_starts_module, "live_starts", lambda *a, **kw: pytest.fail("live starts rebuilt"))
    before = kept.states.clone()
    from_kept = grads()  # the partition from the live starts the forward handed over too
    assert torch.equal(kept.states, before)  # the segments read the kept states, for every backward of the graph
    monkeypatch.setattr(live_starts_module, "live_starts", real)
    structure.slot_checkpoints = None
    walked = grads()
    for name, a, b in zip(("q", "k", "v", "g", "w", "beta"), from_kept, walked):
        assert _rel(a, b) < BOUND, (name, _rel(a, b))
    structure.slot_checkpoints = SlotCheckpoints(kept.chunk, kept.every, kept.states.flip(0), kept.decided)
    swapped = grads()
    assert max(_rel(a, b) for a, b in zip(swapped, walked)) > 1e-3


@needs_kernels
@pytest.mark.parametrize("case", CASES)
def test_the_partition_from_the_forward_s_live_starts_equals_the_rebuilt_one(case):
    """``DevicePartition`` from the live starts a kernel forward hands over (``live_starts_from_lists`` of its merge
    kernel's lists, every row the call's length) and ``KernelPartition`` (the maps by the partition kernel from the
    forward's decided structure) equal, bit for bit, the partition rebuilt from the trace by ``live_starts``' scans:
    ``JF``, ``destF``, ``dest`` (and ``m_start``) and every chunk's recency; on a full initial cache, rows that end
    early, slots opening without merges."""
    from dla_fast.autograd import partition_structure
    from dla_fast.ops.common.live_starts import DevicePartition, live_starts_from_lists
    from dla_fast.ops.delta_rule.chunk_bwd import KernelPartition

    c = _case(*case[:3], max(case[3], 32) if CUDA else case[3], *case[4:9])
    B, T, H, D = c["x"][0].shape
    K, R, s, size0 = c["x"][4].shape[-1], B * H, c["s"], c["size0"]
    nC = -(-T // 64)
    structure = partition_structure(c["starts"], c["merged"], size0, K)
    tables = (torch.ones(nC, R, 64, device=DEV), torch.zeros(nC, R, D, D, device=DEV),
              torch.zeros(nC, R, 64, D, device=DEV), torch.zeros(nC, R, 64, D, device=DEV))
    live = live_starts_from_lists(s.masks, s.death, s.death0, s.live, s.livem, s.fpos, s.size, size0,
                                  torch.full_like(size0, T), K, 64)
    handed = DevicePartition(structure, R, T, 64, K, *tables, live=live)
    rebuilt = DevicePartition(structure, R, T, 64, K, *tables)
    lamc = torch.randn(nC, R, 64, K, generator=torch.Generator().manual_seed(1)).to(DEV)
    by_kernel = KernelPartition((s, size0), T, K, lamc)
    assert torch.equal(handed.m_start, rebuilt.m_start)
    for name in ("JF", "destF", "dest"):
        assert torch.equal(getattr(handed, name), getattr(rebuilt, name)), name
        assert getattr(by_kernel, name).dtype == torch.int32, name  # the kernels' type
        assert torch.equal(getattr(by_kernel, name).long(), getattr(rebuilt, name)), name
    # Each token's read weight of each start slot, written with JF: the gather it replaces, bit for bit.
    assert torch.equal(by_kernel.coef, torch.gather(lamc, -1, rebuilt.JF.clamp(min=0)) * (rebuilt.JF >= 0))
    for c0 in range(nC):
        want = rebuilt.recency(c0, c0 + 1)
        assert torch.equal(handed.recency(c0, c0 + 1), want), c0
        assert torch.equal(by_kernel.recency(c0, c0 + 1).long(), want), c0  # int32 for the kernel
    assert torch.equal(by_kernel.recency(0, nC).long(), rebuilt.recency(0, nC))  # several chunks in one launch


@needs_kernels
@pytest.mark.parametrize("split", [True, False])
def test_the_pair_adjoint_kernel_matches_its_float64_torch_form(split, monkeypatch):
    """``chunk_bwd_pairs.pair_adjoint`` (the kernel the pairs' reverse pass runs) against ``PairTables.adjoint`` (the
    same adjoint in float64 torch) on every pair segment of a real backward: each cotangent and gradient it writes
    within ``BOUND`` of the reference's largest entry with split products (measured, interpreter: 2.2e-7 to 4.4e-7),
    within ``TF32_BOUND`` in one tf32 pass (``split=False``; 16-bit inputs with ``ONE_PASS_ADJOINT``), and farther
    than ``BOUND`` in some (the one pass ran; measured: 4.6e-4)."""
    from dla_fast.ops.delta_rule import chunk_bwd, chunk_bwd_pairs

    case = (1, 290, 2, 16, 6, torch.float32, 0.6, True, None, True, 1)
    D = 32 if CUDA else 16
    c = _case(*case[:3], D, *case[4:9])
    checked = []
    kernel = chunk_bwd_pairs.pair_adjoint

    def both(tables, part, x, coef, lo, a, b, dPhi2, dkhd2, dqt2, cot, grads, **_):
        ref_cot = {n: t.clone() for n, t in cot.items()}
        ref_grads = {n: t.clone() for n, t in grads.items()}
        chunk_bwd_pairs.PairTables(tables, part, x, coef, lo, a, b).adjoint(dPhi2, dkhd2, dqt2, ref_cot, lo,
                                                                            ref_grads, a)
        kernel(tables, part, x, coef, lo, a, b, dPhi2, dkhd2, dqt2, cot, grads, split=split)
        errors = [_rel(cot[n][lo:lo + b - a], ref_cot[n][lo:lo + b - a]) for n in cot]
        errors += [_rel(grads[n][a:b], ref_grads[n][a:b]) for n in grads]
        assert max(errors) < (BOUND if split else TF32_BOUND), (a, b, errors)
        checked.append(max(errors))

    monkeypatch.setattr(chunk_bwd_pairs, "pair_adjoint", both)
    monkeypatch.setattr(chunk_bwd, "_PAIRS", True)
    _backward(c, torch.float32, True, 4)
    assert checked
    assert split or max(checked) > BOUND, checked
