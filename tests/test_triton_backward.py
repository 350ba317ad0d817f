"""The Triton backward against the torch backward in float64, with the Triton forward's partition.

Both backwards take the same fixed partition (the Triton forward's ``starts``/``merged``); the torch one
(``dla_fast.ops.scalar_decay.chunk_torch_bwd.scalar_decay_backward``,
 verified against autograd of an independent implementation in
``properties/test_gradients.py``) runs in float64 on the float32-rounded inputs. Tolerances: float32
arithmetic throughout under the interpreter (``ieee`` dots) and ``tf32x3`` on a GPU, whose relative error on
these sums of a few hundred terms is ~1e-6; the limit 2e-5 leaves 20x. bf16 inputs (GPU only) use 16-bit
operands in the products as the forward does: limit 2e-2 relative (bf16 rounding 4e-3 of each operand).
That limit is not derived for dg, a reverse cumulative sum whose terms cancel: the bf16 case (T = 300)
passed it on the H200, but at T = 4096 dg's error norm reached 4.4e-2 of dg's norm (benchmarks/gpu_bench.py);
the property suite bounds dg against the magnitudes of its terms instead (docs/precision.md section 8).

Runs in-process on a CUDA GPU or under ``TRITON_INTERPRET=1``; otherwise ``test_interpreter_run`` reruns this
file in a subprocess with the interpreter (as ``tests/test_triton_kernels.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import weakref

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from triton_here import CUDA, DEV, needs_kernels, runs_elsewhere  # noqa: E402

from dla_fast.ops.common.layout import rows  # noqa: E402
from dla_fast.ops.common.structure import Structure  # noqa: E402
from dla_fast.ops.scalar_decay.chunk_torch_bwd import scalar_decay_backward  # noqa: E402
from dla_fast.settings import DEFAULT_SETTINGS, TritonSettings  # noqa: E402


@runs_elsewhere
@pytest.mark.interpreter_rerun()
def test_interpreter_run(interpreter_rerun):
    """No GPU and no TRITON_INTERPRET: this file in a subprocess under the Triton interpreter (conftest.py)."""
    interpreter_rerun()


def _inputs(B, T, H, Dk, Dv, K, *, seed, regime_length, dtype=torch.float32, g_mean=-0.7):
    """Tokens around per-regime directions (so that slots open and merge), random g (mean ``g_mean``) and read
    weights."""
    gen = torch.Generator().manual_seed(seed)
    change = torch.rand(B, T, H, generator=gen) < 1.0 / regime_length
    idx = change.cumsum(1)
    nreg = int(idx.max()) + 1
    dirs_k = torch.nn.functional.normalize(torch.randn(B, nreg, H, Dk, generator=gen), dim=-1)
    dirs_v = torch.nn.functional.normalize(torch.randn(B, nreg, H, Dv, generator=gen), dim=-1)
    bi, hi = torch.arange(B).view(B, 1, 1), torch.arange(H).view(1, 1, H)
    k = dirs_k[bi, idx, hi] + 0.3 * torch.randn(B, T, H, Dk, generator=gen) / Dk ** 0.5
    v = dirs_v[bi, idx, hi] + 0.3 * torch.randn(B, T, H, Dv, generator=gen) / Dv ** 0.5
    q = torch.randn(B, T, H, Dk, generator=gen) / Dk ** 0.5
    g = (g_mean + 0.2 * torch.randn(B, T, H, generator=gen)).clamp(max=0.0)
    w = torch.rand(B, T, H, K, generator=gen)
    dO = torch.randn(B, T, H, Dv, generator=gen)
    dS = torch.randn(B * H, K, Dk, Dv, generator=gen)
    to = lambda x: x.to(dtype).to(DEV)  # noqa: E731
    return to(q), to(k), to(v), g.to(DEV), w.to(DEV), to(dO), dS.to(DEV)


def _rows(x):
    """``[B, T, H, ...]`` -> float64 ``[B * H, T, ...]`` on the CPU (the torch backward's layout)."""
    return rows(x.detach().cpu(), torch.float64)


def _case(B, T, H, Dk, Dv, K, *, seed, regime_length, dtype, with_cache, tau, expect_merges, g_mean=-0.7):
    """The Triton forward of a case, the arguments of its backward and the float64 torch backward (the reference,
    a dict of ``[B*H, T, ...]`` float64 CPU tensors): ``(backward's arguments, reference)``."""
    from dla_fast.ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton

    q, k, v, g, w, dO, dS = _inputs(B, T, H, Dk, Dv, K, seed=seed, regime_length=regime_length, dtype=dtype,
                                    g_mean=g_mean)
    cache = dict(states=None, counts=None, info=None, size=None)
    if with_cache:  # an initial cache: a first call's final cache
        qa, ka, va, ga, wa, _, _ = _inputs(B, 70, H, Dk, Dv, K, seed=seed + 1, regime_length=regime_length,
                                           dtype=dtype)
        _, (s, n, i, m), _, _ = forward_scalar_decay_triton(qa, ka, va, ga, wa, tau=tau)
        cache = dict(states=s, counts=n, info=i, size=m)
    _, (S_final, _, _, size_f), (_, starts, merged), kept = forward_scalar_decay_triton(q, k, v, g, w, tau=tau, **cache)
    R = B * H
    live = torch.arange(K, device=DEV).view(1, K) < size_f.reshape(R, 1)
    dS = dS * live.view(R, K, 1, 1)
    size0 = cache["size"].reshape(R) if with_cache else torch.zeros(R, dtype=torch.int64, device=DEV)
    init = cache["states"]

    structure = Structure(_rows(starts).bool(), _rows(merged).long(), size0.cpu(), K)
    init64 = (torch.zeros(R, K, Dk, Dv, dtype=torch.float64) if init is None
              else init.double().cpu().reshape(R, K, Dk, Dv))
    rq, rk, rv, rg, rlam, rinit = scalar_decay_backward(_rows(q), _rows(k), _rows(v), _rows(g), _rows(w), init64,
                                                        structure, _rows(dO), dS.double().cpu())
    ref = dict(q=rq, k=rk, v=rv, g=rg, lam=rlam)
    if with_cache:
        ref["init"] = rinit
    n_starts, n_merges = int(starts.sum()), int((merged >= 0).sum())
    assert n_starts > 2 * B * H and (n_merges > 0) == expect_merges, (n_starts, n_merges)
    return (q, k, v, g, w, init, size0, kept, dO, dS, S_final), ref


# The same case for a test's parametrizations that change only the backward's settings: its forward and reference
# run once (each takes as long as a backward under the interpreter).
_shared_case = functools.cache(_case)


def _grads(B, T, H, Dk, Dv, K, *, seed, regime_length=10.0, dtype=torch.float32, with_cache=False, tau=0.6,
           expect_merges=True, settings=DEFAULT_SETTINGS, shared=False, g_mean=-0.7):
    """``(triton grads, float64 torch grads)`` as dicts of ``[B*H, T, ...]`` float64 CPU tensors; ``shared``: the
    forward and the reference from :data:`_shared_case`."""
    from dla_fast.ops.scalar_decay.chunk_bwd import backward_scalar_decay_triton

    args, ref = (_shared_case if shared else _case)(B, T, H, Dk, Dv, K, seed=seed, regime_length=regime_length,
                                                    dtype=dtype, with_cache=with_cache, tau=tau,
                                                    expect_merges=expect_merges, g_mean=g_mean)
    dq, dk, dv, dg, dlam, dinit = backward_scalar_decay_triton(*args, settings=settings)
    fast = dict(q=_rows(dq), k=_rows(dk), v=_rows(dv), g=_rows(dg), lam=_rows(dlam))
    if with_cache:
        fast["init"] = dinit.double().cpu()
    return fast, ref


def _assert_close(fast, ref, tol):
    for name in ref:
        err = float((fast[name] - ref[name]).norm() / ref[name].norm().clamp(min=1e-30))
        assert err <= tol, f"d{name}: relative error {err:.2e} > {tol:.0e}"


@needs_kernels
@pytest.mark.parametrize("B,T,H,Dk,Dv,K,seed", [
    (1, 150, 2, 32, 32, 4, 0),     # three chunks, the last partial
    (2, 128, 1, 32, 64, 3, 1),     # Dk != Dv, chunk-aligned T
    (1, 70, 1, 64, 128, 5, 2),     # two Dv blocks
])
def test_backward_matches_float64_torch_backward(B, T, H, Dk, Dv, K, seed):
    fast, ref = _grads(B, T, H, Dk, Dv, K, seed=seed, regime_length=6.0)
    _assert_close(fast, ref, 2e-5)


# Launch options other than the measured ones (for float32, as these tests run) of every backward kernel and the
# start-state kernel it reruns.
_BACKWARD_LAUNCH_OVERRIDES = (("dla_bwd_q_kernel", "num_stages", 1), ("dla_bwd_db_kernel", "num_stages", 1),
                              ("dla_bwd_scan_kernel", "num_warps", 4), ("dla_bwd_kv_kernel", "num_warps", 4),
                              ("dla_bstate_kernel", "num_warps", 4))


@needs_kernels
@pytest.mark.parametrize("settings", [TritonSettings(bwd_stages=1), TritonSettings(bwd_warps=8),
                                      TritonSettings(launch_overrides=_BACKWARD_LAUNCH_OVERRIDES)],
                         ids=["stages1", "warps8", "launch_overrides"])
def test_backward_kernel_variants(settings):
    """The dq kernel's tuning knobs (software-pipelined old-start loop, warps) and the backward kernels' launch
    overrides give the same gradients."""
    fast, ref = _grads(1, 200, 1, 32, 32, 6, seed=4, regime_length=5.0, settings=settings, shared=True)
    _assert_close(fast, ref, 2e-5)


@needs_kernels
def test_every_kernel_named_in_launch_kernels_reads_the_overrides(monkeypatch):
    """The launches of a forward and a backward ask ``TritonSettings.launch`` for exactly the kernels of
    ``LAUNCH_KERNELS`` (what ``launch_overrides`` may name): a launch that stops reading its overrides, or a kernel
    renamed without the list, fails here."""
    from dla_fast import settings as settings_module

    asked, real = set(), settings_module.TritonSettings.launch
    monkeypatch.setattr(settings_module.TritonSettings, "launch",
                        lambda self, kernel, **kw: asked.add(kernel.__name__) or real(self, kernel, **kw))
    _grads(1, 150, 1, 32, 32, 4, seed=3, regime_length=5.0, with_cache=True)
    assert asked == set(settings_module.LAUNCH_KERNELS)


@functools.cache
def _one_range_grads():
    """The ranges test's case, backward in one range (shared by its parametrizations)."""
    return _grads(2, 300, 2, 32, 32, 4, seed=12, regime_length=6.0, with_cache=True,
                  settings=TritonSettings(bwd_start_ranges=1), shared=True)


@needs_kernels
@pytest.mark.parametrize("ranges", [2, 3, 50])
def test_backward_in_ranges_of_chunks_gives_the_same_gradients(ranges):
    """dB, the reverse scan and dk/dv a range of chunks at a time (``bwd_start_ranges``; 50: one chunk each, the
    count clamped to NC = 5): every gradient bit for bit the one-range backward's, with an initial cache (its pseudo
    starts in the first range) and a final-cache gradient (injected into each range's own dB)."""
    one, ref = _one_range_grads()
    split, _ = _grads(2, 300, 2, 32, 32, 4, seed=12, regime_length=6.0, with_cache=True,
                      settings=TritonSettings(bwd_start_ranges=ranges), shared=True)
    for name in ref:
        assert torch.equal(split[name], one[name]), f"d{name}"
    _assert_close(split, ref, 2e-5)


def test_start_range_count_splits_only_where_dk_dv_hold_the_peak():
    """The default: one range where dk and dv weigh at most twice the read scales and ranks (64 features in 16 bits:
    the dq stage holds the peak anyway, unless its reads were grouped), else as many as keep one range's 16-bit dB
    no larger than dHc, or half of it on rows of up to ``SHORT_ROW_CHUNKS`` chunks; a request is clamped to the
    chunk count; no surviving start, one range."""
    from dla_fast.ops.scalar_decay.chunk_bwd import SHORT_ROW_CHUNKS, start_range_count
    from dla_fast.ops.scalar_decay.chunk_fwd import launch_config

    def cfg(D, T=4096):
        return launch_config(torch.empty(2, T, 4, D), torch.empty(2, T, 4, D), torch.empty(2, T, 4, 30))

    narrow, wide, long = cfg(64), cfg(128), cfg(128, 4 * 4096)
    assert narrow.NC == wide.NC == SHORT_ROW_CHUNKS < long.NC
    assert start_range_count(narrow, 10 ** 6, 2, 2, None) == 1  # dk, dv 2 x 4 MiB against 2 x 5 MiB of scales
    assert wide.BH * (wide.NC + 1) == 520  # dHc: 520 float32 states, the bytes of 1040 16-bit ones; half: 520
    assert start_range_count(wide, 520, 2, 2, None) == 1
    assert start_range_count(wide, 521, 2, 2, None) == 2
    assert start_range_count(wide, 4 * 520, 2, 2, None) == 4
    assert long.BH * (long.NC + 1) == 2056  # longer rows: dB within the whole of dHc (4112 16-bit states)
    assert start_range_count(long, 4112, 2, 2, None) == 1
    assert start_range_count(long, 4113, 2, 2, None) == 2
    assert start_range_count(narrow, 4 * 260, 4, 4, None) == 4  # float32: dk, dv outweigh the scales at 64 too
    assert start_range_count(narrow, 10, 2, 2, 1000) == narrow.NC
    # after grouped reads the dq stage holds no start state: dB is split at 64 features too
    assert start_range_count(narrow, 4 * 520, 2, 2, None, grouped=True) == 4
    assert start_range_count(wide, 0, 2, 2, 7) == 1


# (shape, seed, regime length, initial cache): the grouped reads' cases; K = 30 at regime length 2 crowds the chunks.
GROUPED_BACKWARD_CASES = [((1, 200, 1, 32, 32, 6), 4, 5.0, False), ((2, 300, 2, 32, 32, 4), 12, 6.0, True),
                          ((1, 150, 2, 32, 32, 30), 3, 2.0, False)]


@needs_kernels
@pytest.mark.parametrize("shape,seed,regime_length,with_cache", GROUPED_BACKWARD_CASES)
def test_grouped_reads_backward_matches_float64_torch_backward(shape, seed, regime_length, with_cache):
    """``TritonSettings.grouped_reads``: the dq stage reads the old starts by chunk (``dla_bwd_q_grouped_kernel``,
    the initial slots' pseudo starts from their states) and the later stages take ranges of chunks: every gradient
    within the materialised reads' tolerance of the reference, and not bitwise the materialised reads' dq (another
    path was taken). A GPU takes the materialised reads below 64 features (a known fault: chunk_fwd.
    GROUPED_READS_MIN_GPU_DIM), so these 32-feature cases run under the interpreter only."""
    if CUDA:
        pytest.skip("a GPU takes the materialised reads below 64 features (GROUPED_READS_MIN_GPU_DIM)")
    kw = dict(seed=seed, regime_length=regime_length, with_cache=with_cache, shared=True)
    fast, ref = _grads(*shape, settings=TritonSettings(grouped_reads=True), **kw)
    _assert_close(fast, ref, 2e-5)
    materialised, _ = _grads(*shape, **kw)
    assert not torch.equal(fast["q"], materialised["q"])


@needs_kernels
def test_backward_with_more_than_128_slots():
    """K = 150 with the cache full and slow decay (g ~ -0.01 a token: the oldest starts still read): the pre-pass's
    ranks pass 127. They were int8 (found in run 38): the ranks past 127 lost their dlam terms. The grouped reads
    stop at 32 slots (``GROUPED_READS_MAX_KP``): forcing them here takes the materialised reads."""
    kw = dict(seed=3, regime_length=1.2, g_mean=-0.01, tau=0.3, shared=True)
    args, _ = _shared_case(1, 400, 1, 32, 32, 150, dtype=torch.float32, with_cache=False, expect_merges=True,
                           **{k: kw[k] for k in ("seed", "regime_length", "g_mean", "tau")})
    assert int(args[7].size.max()) > 128  # slots live at the end
    fast, ref = _grads(1, 400, 1, 32, 32, 150, **kw)
    _assert_close(fast, ref, 2e-5)
    # the read weights' gradients at ranks 128 and on, small beside the others', against their own norm
    _assert_close({"lam": fast["lam"][..., 128:]}, {"lam": ref["lam"][..., 128:]}, 2e-5)
    from dla_fast.ops.scalar_decay.chunk_fwd import launch_config, takes_grouped_reads

    cfg = launch_config(*(args[i] for i in (0, 2, 4)))
    assert not takes_grouped_reads(cfg, TritonSettings(grouped_reads=True), None)


def test_grouped_reads_taken_by_default_from_the_survivor_threshold(monkeypatch):
    """``takes_grouped_reads`` with ``grouped_reads=None``: 16-bit inputs from ``GROUPED_READS_SURVIVORS`` surviving
    starts per (row, chunk), never float32; before the count is known (None), whether they may be. On a GPU never
    below ``GROUPED_READS_MIN_GPU_DIM`` features, whatever the setting (a known fault); under the interpreter yes."""
    from dla_fast.ops.scalar_decay import chunk_fwd
    from dla_fast.ops.scalar_decay.chunk_fwd import GROUPED_READS_SURVIVORS, launch_config, takes_grouped_reads

    monkeypatch.setattr(chunk_fwd, "interpreting", lambda: False)  # as on a GPU

    fp32 = launch_config(torch.empty(2, 4096, 4, 64), torch.empty(2, 4096, 4, 64), torch.empty(2, 4096, 4, 30))
    bf16 = dataclasses.replace(fp32, lowp=True)  # 16-bit products: inputs on a GPU (launch_config)
    at = GROUPED_READS_SURVIVORS * bf16.BH * bf16.NC
    auto = TritonSettings()
    assert takes_grouped_reads(bf16, auto, at) and not takes_grouped_reads(bf16, auto, at - 1)
    assert takes_grouped_reads(bf16, auto, None) and not takes_grouped_reads(fp32, auto, None)
    assert not takes_grouped_reads(fp32, auto, 10 * at)
    assert takes_grouped_reads(fp32, TritonSettings(grouped_reads=True), 0)
    narrow = dataclasses.replace(bf16, Dk=32)
    assert not takes_grouped_reads(narrow, TritonSettings(grouped_reads=True), 10 * at)
    assert not takes_grouped_reads(narrow, auto, 10 * at)
    monkeypatch.setattr(chunk_fwd, "interpreting", lambda: True)
    assert takes_grouped_reads(narrow, auto, 10 * at)


@needs_kernels
def test_backward_without_merges():
    fast, ref = _grads(1, 100, 2, 32, 32, 30, seed=3, regime_length=6.0, expect_merges=False)
    _assert_close(fast, ref, 2e-5)


@needs_kernels
def test_backward_with_initial_cache():
    fast, ref = _grads(2, 150, 1, 32, 32, 4, seed=5, regime_length=8.0, with_cache=True)
    _assert_close(fast, ref, 2e-5)


@needs_kernels
@pytest.mark.skipif(not CUDA, reason="16-bit tensor-core products run on a GPU only")
def test_backward_bf16():
    fast, ref = _grads(2, 300, 2, 64, 64, 6, seed=7, dtype=torch.bfloat16, with_cache=True)
    _assert_close(fast, ref, 2e-2)


@needs_kernels
@pytest.mark.skipif(not CUDA, reason="16-bit tensor-core products run on a GPU only")
def test_dense_bf16_backward_takes_the_grouped_reads():
    """16-bit inputs whose surviving starts crowd their chunks take the grouped reads by default in the backward as
    in the forward: the same gradients as forced, as far from the float64 reference as the materialised reads'
    (bf16's own rounding dominates both; H200, run 38: equal to three digits, dg 3.25e-2 in both, dlam 1.38e-4
    against 1.54e-4) and within 2e-3 of theirs (measured at most 5.4e-4, dg; 1.5e-4 dq)."""
    from dla_fast.ops.scalar_decay.chunk_fwd import GROUPED_READS_SURVIVORS

    shape, kw = (2, 512, 2, 64, 64, 30), dict(seed=8, regime_length=1.5, dtype=torch.bfloat16, shared=True)
    args, _ = _shared_case(*shape, seed=8, regime_length=1.5, dtype=torch.bfloat16, with_cache=False, tau=0.6,
                           expect_merges=True)
    assert args[7].survivors.count >= GROUPED_READS_SURVIVORS * 2 * 2 * 8, "not dense enough"  # B H NC
    out = {mode: _grads(*shape, settings=TritonSettings(grouped_reads=mode), **kw) for mode in (None, True, False)}
    ref = out[True][1]
    for name in ref:
        assert torch.equal(out[None][0][name], out[True][0][name]), f"d{name}"
        err = {mode: float((out[mode][0][name] - ref[name]).norm() / ref[name].norm()) for mode in (True, False)}
        assert err[True] <= 1.1 * err[False], f"d{name}: {err}"  # dg: the paths differ by 1.7 % of its error
    _assert_close(out[True][0], out[False][0], 2e-3)


@needs_kernels
def test_public_api_runs_the_triton_backward_and_frees_its_graph(monkeypatch):
    """Through ``dla_fast.forward`` (Triton path: CUDA, or the interpreter with DLA_FAST_BACKEND=triton) the
    backward is the Triton one, its gradients match the torch backward's, and dropping the outputs frees the
    graph without the garbage collector (no reference cycle through the saved final states)."""
    import dla_fast

    monkeypatch.setenv("DLA_FAST_BACKEND", "triton")
    q, k, v, g, w, dO, _ = _inputs(1, 100, 2, 32, 32, 4, seed=9, regime_length=6.0)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, w)]
    o, cache, trace = dla_fast.forward(*leaves, tau=0.6, return_trace=True)
    assert o.grad_fn.record.structure.triton is not None, "the Triton forward should have run"
    got = torch.autograd.grad((o * dO).sum() + cache.states.square().sum(), leaves)
    monkeypatch.setenv("DLA_FAST_BACKEND", "torch")  # the chunked torch forward and backward
    leaves_t = [x.detach().clone().requires_grad_(True) for x in (q, k, v, g, w)]
    o_t, cache_t, _ = dla_fast.forward(*leaves_t, tau=0.6, boundaries=trace.starts)  # the same partition
    want = torch.autograd.grad((o_t * dO).sum() + cache_t.states.square().sum(), leaves_t)
    for name, a, b in zip("qkvgw", got, want):
        err = float((a - b).norm() / b.norm())
        assert err <= 1e-4, f"d{name}: {err:.2e}"
    ref = weakref.ref(cache.states)
    gc.disable()
    try:
        del o, cache, got
        assert ref() is None, "the outputs' graph outlived them (a reference cycle)"
    finally:
        gc.enable()


@needs_kernels
def test_triton_backward_with_the_final_cache_left_out_of_the_loss(monkeypatch):
    """A loss on ``o`` alone: the Triton backward gets no final-cache gradient (None, not zeros) and gives the
    gradients of the same loss plus zero times the final cache, bit for bit."""
    import dla_fast

    monkeypatch.setenv("DLA_FAST_BACKEND", "triton")
    q, k, v, g, w, dO, _ = _inputs(1, 100, 2, 32, 32, 4, seed=10, regime_length=6.0)

    def grads(with_zero_cache_term):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, w)]
        o, cache, _ = dla_fast.forward(*leaves, tau=0.6)
        assert o.grad_fn.record.structure.triton is not None, "the Triton forward should have run"
        loss = (o * dO).sum() + (0.0 * cache.states.sum() if with_zero_cache_term else 0.0)
        return torch.autograd.grad(loss, leaves)

    for name, a, b in zip("qkvgw", grads(False), grads(True)):
        assert torch.equal(a, b), f"d{name}"



@needs_kernels
def test_no_final_cache_asked_for_keeps_no_final_states(monkeypatch):
    """``output_final_cache=False`` with gradients: the Triton forward computes no final cache and the backward
    keeps none (the saved final states are None: ``K Dk Dv`` floats per row less through the backward), with the
    same gradients of a loss on ``o``, bit for bit, as a call that returns the cache."""
    import dla_fast

    monkeypatch.setenv("DLA_FAST_BACKEND", "triton")
    q, k, v, g, w, dO, _ = _inputs(1, 100, 2, 32, 32, 4, seed=11, regime_length=6.0)

    def grads(keep):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, w)]
        o, cache, _ = dla_fast.forward(*leaves, tau=0.6, output_final_cache=keep)
        assert (cache is not None) == keep
        assert o.grad_fn.record.structure.triton is not None, "the Triton forward should have run"
        assert (o.grad_fn.saved_tensors[-1] is None) == (not keep), "final states saved for the backward"
        return torch.autograd.grad((o * dO).sum(), leaves)

    for name, a, b in zip("qkvgw", grads(False), grads(True)):
        assert torch.equal(a, b), f"d{name}"

@needs_kernels
def test_surrogate_after_a_triton_forward_matches_the_torch_path(monkeypatch):
    """With ``surrogate_temperature`` the Triton backward gives the surrogate's eps (its dg with the shifted
    weights) and the torch backward the score part: the gradients, tau's included, match the torch path's."""
    import dla_fast

    q, k, v, g, w, dO, _ = _inputs(1, 90, 2, 32, 32, 4, seed=13, regime_length=6.0)
    grads = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("DLA_FAST_BACKEND", backend)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, w)]
        tau = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
        o, _, trace = dla_fast.forward(*leaves, tau=tau, surrogate_temperature=0.5, return_trace=True)
        assert (o.grad_fn.record.structure.triton is not None) == (backend == "triton")
        grads[backend] = (trace.starts.clone(), torch.autograd.grad((o * dO).sum(), leaves + [tau]))
    assert torch.equal(grads["triton"][0], grads["torch"][0]), "the two forwards should decide alike here"
    for name, a, b in zip(["q", "k", "v", "g", "w", "tau"], grads["triton"][1], grads["torch"][1]):
        err = float((a - b).norm() / b.norm())
        assert err <= 1e-4, f"d{name}: {err:.2e}"
