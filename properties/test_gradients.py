"""Gradients of ``dla_fast.forward`` with the partition held fixed (docs/training.md).

The oracle is :func:`properties.gradient_oracle.straightforward`: the contract's per-token recurrence
written with Python lists of torch tensors (one list of slot states per (b, h)), with the decisions
``starts`` / ``merged`` forced from the trace of the call under test, differentiated by torch autograd. It
shares no code with ``dla_fast.autograd`` (neither the chunked tables nor the masked-attention form nor the
``dg`` identity).

Tolerance: float64 against float64, relative error ``<= 1e-6`` per gradient tensor, measured against the
largest entry of the oracle's gradient (what the issue asks; observed errors are ~1e-15).

The surrogate for tau is checked three ways: the forward bit for bit, ``d/dtau`` against the oracle and
against finite differences of the documented surrogate function, and the part it adds to the input
gradients (through the scores) against autograd of the contract's score formula.

These properties exercise ``dla_fast`` itself (torch, float64, CPU): they do not take the ``impl`` fixture.
Examples per property: a quarter of the profile's (the oracle's per-token loops are the slow part).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import dla_fast
from dla_fast.autograd import shifted_weights
from dla_fast.backend import uses_delta_kernels, uses_triton
from dla_fast.testing.strategies import DELTA_BETA_ONE, DELTA_BETA_ZERO, Spec, build, specs
from properties.gradient_oracle import (
    RTOL,
    assert_rel_close,
    run_fast,
    run_oracle,
    straightforward,  # noqa: F401 - the oracle, also reachable from here
    straightforward_scores,
    tensors,
)

EXAMPLES = max(8, settings.default.max_examples // 2)
CHUNKS = st.sampled_from((1, 2, 3, 5, 64))
# gradcheck's fast mode (random projections of the Jacobian) in the ci profile; the full Jacobian otherwise.
FAST_GRADCHECK = settings.default.max_examples <= 100


def grad_cases(**fixed):
    """Small cases (B, H <= 2, T <= 24): every regime of the strategies, both backbones, initial caches."""
    return specs(**fixed).map(build)


# ---------------------------------------------------------------------------------------------
# The properties
# ---------------------------------------------------------------------------------------------

SEVERAL_CHUNKS_WITH_MERGES = build(Spec(seed=31, B=2, T=17, H=2, Dk=3, Dv=2, K=3, data="piecewise", decay="mild",
                                        tau_mode="observed", tau_quantile=0.3, prefix=5))
DELTA_WITH_MERGES = build(Spec(seed=32, B=1, T=15, H=2, Dk=3, Dv=3, K=2, backbone="delta", data="random",
                               decay="strong", tau_mode="zero", prefix=3))


# Biased towards merges: T >= 6, small capacities, taus at observed scores or at zero (every token opens a slot).
MERGY = dict(min_T=6, K=st.integers(2, 3),
             tau_mode=st.sampled_from(("observed", "observed", "zero", "negative", "value", "exact", "inf")))


@settings(max_examples=EXAMPLES)
@given(case=grad_cases(**MERGY), chunk_size=CHUNKS, seed=st.integers(0, 2**16))
def test_gradients_equal_autograd_through_the_straightforward_recurrence(case, chunk_size, seed):
    """Every gradient (q, k, v, g, slot_weights, beta, initial states) of ``<dO, o> + <dS, final states>``
    equals torch autograd through :func:`straightforward` with the same decisions, to 1e-6 relative."""
    trace = check_gradients(case, chunk_size, seed)
    event(f"backbone={case.spec.backbone}, {'initial cache' if case.initial_cache is not None else 'empty cache'}")
    event(f"chunks: {'several' if chunk_size < case.T else 'one'}; merges: {int((trace.merged >= 0).sum()) > 0}")


def check_gradients(case, chunk_size, seed):
    x, cache = tensors(case)
    o, final, trace = run_fast(case, x, cache, chunk_size)
    rng = np.random.default_rng(seed)
    dO = torch.tensor(rng.standard_normal(tuple(o.shape)))
    dS = torch.tensor(rng.standard_normal(tuple(final.states.shape)))
    names = [n for n in ("q", "k", "v", "g", "slot_weights", "beta") if x[n] is not None]
    leaves = [x[n] for n in names] + ([cache.states] if cache is not None else [])
    names += ["initial_cache.states"] if cache is not None else []
    o_ref, S_ref = run_oracle(x, cache, trace)
    assert_rel_close(o, o_ref, "o (forward, vs the oracle with the same decisions)", rtol=1e-9)
    zero = lambda: sum(0.0 * leaf.sum() for leaf in leaves)  # noqa: E731  (a graph even at T = 0)
    got = torch.autograd.grad((o * dO).sum() + (final.states * dS).sum() + zero(), leaves, allow_unused=True)
    want = torch.autograd.grad((o_ref * dO).sum() + (S_ref * dS).sum() + zero(), leaves, allow_unused=True)
    want = dict(zip(names, [torch.zeros_like(leaf) if w is None else w for w, leaf in zip(want, leaves)]))
    # dg is a sum over token pairs that cancels exactly in places (one token: no decay acts on anything):
    # its scale also counts the magnitudes of the terms (|q . dq| + |k . dk| summed from t on, |<S, dS>|).
    terms = ((x["q"] * want["q"]).sum(-1).abs() + (x["k"] * want["k"]).sum(-1).abs()).detach()
    g_floor = float(terms.flip(1).cumsum(1).max()) if case.T else 0.0
    g_floor += float((S_ref * dS).sum((2, 3, 4)).abs().max().detach()) if case.T else 0.0
    for name, a, leaf in zip(names, got, leaves):
        a = torch.zeros_like(leaf) if a is None else a
        assert_rel_close(a, want[name], f"d/d{name} (chunk_size={chunk_size})", floor=g_floor if name == "g" else 0.0)
    return trace


@settings(max_examples=max(4, EXAMPLES // 6))
@given(case=grad_cases(max_T=8, min_T=1, B=1, H=st.integers(1, 2), Dk=st.integers(1, 3), Dv=st.integers(1, 3),
                       decay=st.sampled_from(("mild", "strong")), data=st.sampled_from(("random", "piecewise")),
                       tau_mode=st.sampled_from(("value", "zero", "observed"))),
       chunk_size=CHUNKS)
def test_gradcheck_passes_with_the_decisions_forced(case, chunk_size):
    """``torch.autograd.gradcheck`` (finite differences) on small float64 cases, the call's own decisions
    forced with ``boundaries`` so that the perturbed inputs keep the partition."""
    x, cache = tensors(case)
    _, _, trace = run_fast(case, x, cache, chunk_size)
    forced = case.replace("boundaries=own decisions", boundaries=trace.starts.numpy())
    names = [n for n in ("q", "k", "v", "g", "slot_weights", "beta") if x[n] is not None]
    init = None if cache is None else cache.states

    def fn(*leaves):
        y = dict(zip(names, leaves[: len(names)]), beta=x["beta"])
        y.update(zip(names, leaves[: len(names)]))
        c = None
        if cache is not None:  # only the live slots are inputs (unused slots are zero by the contract)
            live = torch.arange(case.K).view(1, 1, -1) < cache.size.unsqueeze(-1)
            c = dla_fast.Cache(leaves[-1] * live[..., None, None], cache.counts, cache.info, cache.size)
        o, final, tr = run_fast(forced, y, c, chunk_size)
        assert torch.equal(tr.merged, trace.merged), "a perturbation changed a merge (density gap too small)"
        return o, final.states

    leaves = [x[n] for n in names] + ([init] if init is not None else [])
    # g stays <= 0 and beta inside [0, 1] under the perturbation (the validation would reject the rest)
    if case.g.size and case.g.max() > -1e-3:
        return
    if case.beta is not None and case.beta.size and (case.beta.min() < 1e-3 or case.beta.max() > 1 - 1e-3):
        leaves = [l for n, l in zip(names + ["init"], leaves) if n != "beta"]
        names = [n for n in names if n != "beta"]
    with torch.random.fork_rng():  # fast mode's random projections: the same whatever ran before
        torch.manual_seed(case.spec.seed)
        assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=FAST_GRADCHECK)


@settings(max_examples=max(4, EXAMPLES // 3))
@given(case=grad_cases(min_T=1, boundaries="none", tau_mode=st.sampled_from(("value", "observed", "exact", "zero"))),
       chunk_size=CHUNKS, temperature=st.sampled_from((0.05, 0.3, 2.0)), seed=st.integers(0, 2**16))
def test_surrogate_leaves_the_forward_bit_for_bit_and_its_tau_gradient_is_the_documented_one(
        case, chunk_size, temperature, seed):
    """With ``surrogate_temperature`` the outputs, final cache and trace are bit for bit those without it,
    and ``d/dtau`` equals (a) ``-sum_r slope_r eps_r`` with ``eps_r`` from autograd of the oracle with the
    shifted weights, to 1e-6, and (b) central finite differences of the documented surrogate function
    ``<dO, o + O'(g + delta(tau)) - O'(g)>`` (``O'``: the oracle with weights ``lam'``), to 1e-4."""
    x, cache = tensors(case)
    tau = torch.tensor(case.tau, dtype=torch.float64, requires_grad=True)
    o, final, trace = run_fast(case, x, cache, chunk_size, tau=tau, surrogate_temperature=temperature)
    with torch.no_grad():
        o0, final0, trace0 = run_fast(case, {n: None if t is None else t.detach() for n, t in x.items()},
                                      None if cache is None else cache.to(dtype=torch.float64), chunk_size)
    assert torch.equal(o.detach(), o0) and torch.equal(final.states.detach(), final0.states), "surrogate changed o"
    for f in ("scores", "starts", "merged"):
        assert torch.equal(trace[f], trace0[f]), f"surrogate changed trace.{f}"
    rng = np.random.default_rng(seed)
    dO = torch.tensor(rng.standard_normal(tuple(o.shape)))
    (dtau,) = torch.autograd.grad((o * dO).sum(), [tau])

    # (a) eps_r = d<dO, O'>/dg_r through the oracle; slope_r = sigmoid'((I_r - tau) / T) / T on decided tokens.
    lam1 = shifted_weights(x["slot_weights"].detach())
    g = x["g"].detach().clone().requires_grad_(True)
    detached = {n: None if t is None else t.detach() for n, t in x.items()}
    qk = [detached[n].clone().requires_grad_(True) for n in ("q", "k")]
    cache_d = None if cache is None else dla_fast.Cache(cache.states.detach(), cache.counts, cache.info, cache.size)
    o1, _ = run_oracle(dict(detached, q=qk[0], k=qk[1]), cache_d, trace, lam=lam1, g=g)
    eps_r, dq1, dk1 = torch.autograd.grad((o1 * dO).sum() + 0.0 * g.sum() + 0.0 * sum(t.sum() for t in qk),
                                          [g, *qk])
    # eps_r is a sum over token pairs (s < r <= t) that may cancel: its rounding scales with the terms'
    # magnitudes, |q_t||dq_t| + |k_t||dk_t| summed from r on (the backward forms it by that identity).
    terms = detached["q"].norm(dim=-1) * dq1.norm(dim=-1) + detached["k"].norm(dim=-1) * dk1.norm(dim=-1)
    eps_mag = eps_r.abs() + terms.flip(1).cumsum(1).flip(1)
    size0 = torch.zeros(case.B, case.H, dtype=torch.int64) if cache is None else cache.size
    delta = trace.starts.long() - (trace.merged >= 0).long()
    decided = (size0.unsqueeze(1) + delta.cumsum(1) - delta) > 0
    h = torch.sigmoid((trace.scores - case.tau) / temperature)
    slope = h * (1 - h) / temperature * decided
    expected = -(slope * eps_r).sum()
    scale = float((slope * eps_mag).sum())
    assert abs(float(dtau) - float(expected)) <= RTOL * scale + 1e-300, \
        f"d/dtau {float(dtau)!r} vs -sum slope * eps {float(expected)!r} (scale {scale:.3e})"

    # (b) finite differences of the surrogate function itself.
    def surrogate(t):
        h_at = lambda tau: torch.sigmoid((trace.scores - tau) / temperature)  # noqa: E731
        shift = h_at(t) - h_at(case.tau)
        shifted, _ = run_oracle(detached, cache_d, trace, lam=lam1, g=detached["g"] + shift * decided)
        base, _ = run_oracle(detached, cache_d, trace, lam=lam1)
        return float(((shifted - base) * dO).sum())

    if np.isfinite(case.tau):
        step = 1e-4 * temperature
        fd = (surrogate(case.tau + step) - surrogate(case.tau - step)) / (2 * step)
        base, _ = run_oracle(detached, cache_d, trace, lam=lam1)
        # the differences' own rounding: of O', and of the sigmoid differences (weighted by |eps_r|)
        rounding = 1e-13 * (float((base.abs() * dO.abs()).sum()) + float((eps_r.abs() * decided).sum())) / step
        assert abs(float(dtau) - fd) <= 1e-4 * scale + rounding + 1e-300, \
            f"d/dtau {float(dtau)!r} vs finite differences {fd!r}"


def test_examples_with_several_chunks_merges_and_initial_caches():
    """The deliberately built cases above and the delta rule's beta = 0 and beta = 1 cases, at chunk sizes 1,
    4 and 64 (runs whatever the profile)."""
    for case in (SEVERAL_CHUNKS_WITH_MERGES, DELTA_WITH_MERGES):
        assert case.initial_cache is not None
        for chunk_size in (1, 4, 64):
            trace = check_gradients(case, chunk_size, 7)
            assert (trace.merged >= 0).any()
    for case in (DELTA_BETA_ZERO, DELTA_BETA_ONE):  # beta exactly 0 / exactly 1, keys of norm up to sqrt 2
        for chunk_size in (1, 4, 64):
            check_gradients(case, chunk_size, 7)


@settings(max_examples=max(4, EXAMPLES // 3))
@given(case=grad_cases(min_T=2, max_T=16, boundaries="none",
                       data=st.sampled_from(("random", "piecewise", "large")),
                       tau_mode=st.sampled_from(("observed", "value", "zero")), K=st.integers(2, 4)),
       chunk_size=CHUNKS, temperature=st.sampled_from((0.1, 1.0)), seed=st.integers(0, 2**16))
def test_surrogate_gradient_reaches_the_inputs_through_the_scores(case, chunk_size, temperature, seed):
    """The surrogate adds to every input's gradient exactly autograd's gradient of
    ``sum_r sigmoid((I_r - tau) / T) eps_r`` (``eps_r`` held constant) with ``I_r`` from the contract's
    formula on the oracle's open slot (1e-5 of that term, or 1e-8 of the whole gradient); both backbones."""
    x, cache = tensors(case)
    rng = np.random.default_rng(seed)
    o, final, trace = run_fast(case, x, cache, chunk_size)
    dO = torch.tensor(rng.standard_normal(tuple(o.shape)))
    names = [n for n in ("q", "k", "v", "g", "slot_weights", "beta") if x[n] is not None]
    leaves = [x[n] for n in names] + ([cache.states] if cache is not None else [])
    names += ["initial_cache.states"] if cache is not None else []
    zero = lambda: sum(0.0 * leaf.sum() for leaf in leaves)  # noqa: E731
    off = torch.autograd.grad((o * dO).sum() + zero(), leaves)
    o_on, _, _ = run_fast(case, x, cache, chunk_size, surrogate_temperature=temperature)
    on = torch.autograd.grad((o_on * dO).sum() + zero(), leaves)
    detached = {n: None if t is None else t.detach() for n, t in x.items()}
    cache_d = None if cache is None else dla_fast.Cache(cache.states.detach(), cache.counts, cache.info, cache.size)
    g = detached["g"].clone().requires_grad_(True)
    o1, _ = run_oracle(detached, cache_d, trace, lam=shifted_weights(detached["slot_weights"]), g=g)
    (eps_r,) = torch.autograd.grad((o1 * dO).sum() + 0.0 * g.sum(), [g])
    scores = straightforward_scores(x["k"], x["v"], x["g"], x["beta"], None if cache is None else cache.states,
                                    None if cache is None else cache.size, trace.starts, trace.merged,
                                    case.eps, case.norm_eps)
    if not scores:
        return
    if min(float(I.detach()) for I in scores.values()) < 1e-4:
        # A score near 0: the open state hardly changed direction. The norm in the score is not
        # differentiable at 0 (the fast path takes gradient 0 there), and near it the oracle's N(P') - N(P)
        # cancels: its gradient loses the digits this comparison needs. (Repeated tokens live there.)
        event("a score near the norm's kink: skipped")
        return
    surrogate = sum(torch.sigmoid((I - case.tau) / temperature) * eps_r[key] for key, I in scores.items())
    want = torch.autograd.grad(surrogate + zero(), leaves, allow_unused=True)
    share = max(float(w.abs().max()) / max(float(b.abs().max()), 1e-300) for w, b in zip(want, off) if w is not None)
    event(f"surrogate part / whole gradient: {'> 1e-3' if share > 1e-3 else '<= 1e-3'}")
    for name, a, b, w, leaf in zip(names, on, off, want, leaves):
        w = torch.zeros_like(leaf) if w is None else w
        # 1e-5: the oracle's score subtracts N(P') - N(P) and loses digits when the score is small (the fast
        # path differentiates the stable form of docs/chunked-algorithm.md); observed up to ~1e-6.
        assert_rel_close(a - b, w, f"surrogate part of d/d{name} (chunk_size={chunk_size})", rtol=1e-5,
                         floor=1e-3 * float(b.abs().max()))


# ---------------------------------------------------------------------------------------------
# The Triton forward and backward through the public API: on a GPU, and in CI through the interpreter
# ---------------------------------------------------------------------------------------------

# Tolerances of the Triton gradients against the float64 oracle on the same rounded inputs and the kernels'
# own decisions, relative to the largest entry of each oracle gradient (dg: with the floor above). float32
# inputs: tf32x3 (GPU) or ieee (interpreter) products, float32 sums of at most a few hundred terms.
# bfloat16 inputs (GPU only): 16-bit operands in every product (dO, the recomputed prefix states, the
# attention weights and the state gradients rounded to bf16, 2^-9 relative each, as FLA's kernels do), plus
# the gradients' own bf16 rounding. Observed maxima: docs/training.md.
TRITON_GRAD_RTOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1" and os.environ.get("DLA_FAST_BACKEND") == "triton"
TRITON_DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu" if INTERPRETED else None
TRITON_DTYPES = (torch.float32, torch.bfloat16) if TRITON_DEVICE == "cuda" else (torch.float32,)


@pytest.mark.skipif(TRITON_DEVICE is not None or importlib.util.find_spec("triton") is None,
                    reason="the Triton property runs in this process")
@pytest.mark.interpreter_rerun("-k", "test_triton_gradients_equal", env={"DLA_FAST_BACKEND": "triton"},
                               forwarded=("hypothesis_profile", "dla_examples", "dla_max_t"))
def test_triton_gradients_under_the_interpreter(interpreter_rerun):
    """No GPU: run the Triton gradient properties below in a subprocess under Triton's interpreter (Triton
    reads TRITON_INTERPRET when the kernels are defined; conftest.py), through the public API
    (DLA_FAST_BACKEND=triton), with this run's profile options."""
    interpreter_rerun()


@pytest.mark.gpu
@pytest.mark.skipif(TRITON_DEVICE is None, reason="needs a CUDA GPU, or TRITON_INTERPRET=1 DLA_FAST_BACKEND=triton")
@settings(max_examples=max(4, EXAMPLES // (2 if TRITON_DEVICE == "cuda" else 5)), deadline=None)
@given(case=grad_cases(backbone="scalar", Dk=32, Dv=32, max_T=150, **dict(MERGY, K=3)),
       dtype=st.sampled_from(TRITON_DTYPES), seed=st.integers(0, 2**16))
def test_triton_gradients_equal_autograd_through_the_straightforward_recurrence(case, dtype, seed):
    """The Triton forward and backward (public API; float32 / bfloat16 inputs on a GPU) against the oracle
    in float64 on the CPU, with the kernels' decisions forced.

    One head size and capacity: every new one compiles the eleven kernels again (~20 s on a GPU); other
    sizes are in ``tests/test_triton_backward.py`` and ``benchmarks/gpu_bench.py``."""
    _kernel_gradients_match_the_oracle(case, dtype, seed)


@pytest.mark.gpu
@pytest.mark.skipif(TRITON_DEVICE is None, reason="needs a CUDA GPU, or TRITON_INTERPRET=1 DLA_FAST_BACKEND=triton")
@settings(max_examples=max(4, EXAMPLES // (2 if TRITON_DEVICE == "cuda" else 10)), deadline=None)
@given(case=grad_cases(backbone="delta", Dk=32, Dv=32, max_T=150, **dict(MERGY, K=3)),
       dtype=st.sampled_from(TRITON_DTYPES), seed=st.integers(0, 2**16))
def test_triton_gradients_equal_autograd_for_the_delta_rule_too(case, dtype, seed):
    """The delta rule's device forward and its backward, whose reverse pass over chunks runs on the slot-state and
    chain kernels (``ops/delta_rule/chunk_bwd.py``), through the public API against the same oracle, with the
    kernels' decisions forced."""
    _kernel_gradients_match_the_oracle(case, dtype, seed)


def _kernel_gradients_match_the_oracle(case, dtype, seed):
    """Gradients of ``<dO, o> + <dS, final states>`` into every input (and the initial states) where the kernels run,
    against autograd through the float64 oracle on the same rounded inputs and decisions."""
    dev = TRITON_DEVICE
    leaf = lambda x, dt: torch.tensor(x, dtype=dt, device=dev).requires_grad_(True)  # noqa: E731
    x = dict(q=leaf(case.q, dtype), k=leaf(case.k, dtype), v=leaf(case.v, dtype), g=leaf(case.g, torch.float32),
             slot_weights=leaf(case.slot_weights, torch.float32),
             beta=None if case.beta is None else leaf(case.beta, torch.float32))
    cache = None
    if case.initial_cache is not None:
        cache = dla_fast.Cache.from_ref(case.initial_cache, dtype=torch.float32, device=dev)
        cache.states.requires_grad_(True)
    K = case.slot_weights.shape[-1]
    assert (uses_triton(x["q"], case.spec.Dk, case.spec.Dv) if case.beta is None
            else uses_delta_kernels(x["q"], case.spec.Dk, case.spec.Dv, K))
    o, final, trace = run_fast(case, x, cache, 64)
    rng = np.random.default_rng(seed)
    dO = torch.tensor(rng.standard_normal(tuple(o.shape)), device=dev).to(o.dtype)
    dS = torch.tensor(rng.standard_normal(tuple(final.states.shape)), device=dev).float()
    inputs = [n for n in ("q", "k", "v", "g", "slot_weights", "beta") if x[n] is not None]
    names = inputs + (["initial_cache.states"] if cache is not None else [])
    leaves = [x[n] for n in inputs] + ([cache.states] if cache is not None else [])
    zero = lambda ls: sum(0.0 * leaf.sum() for leaf in ls)  # noqa: E731
    got = torch.autograd.grad((o.float() * dO.float()).sum() + (final.states * dS).sum() + zero(leaves), leaves,
                              allow_unused=True)
    # The oracle: float64 on the CPU, on the rounded inputs, with the kernels' decisions.
    x64 = {n: None if x[n] is None else x[n].detach().double().cpu().requires_grad_(True) for n in x}
    cache64 = None
    if cache is not None:
        cache64 = dla_fast.Cache.from_ref(case.initial_cache, dtype=torch.float64)
        cache64.states = cache.states.detach().double().cpu().requires_grad_(True)
    trace64 = dla_fast.Trace(trace.scores.cpu(), trace.starts.cpu(), trace.merged.cpu())
    o_ref, S_ref = run_oracle(x64, cache64, trace64)
    leaves64 = [x64[n] for n in inputs] + ([cache64.states] if cache64 is not None else [])
    dO64, dS64 = dO.double().cpu(), dS.double().cpu()
    want = torch.autograd.grad((o_ref * dO64).sum() + (S_ref * dS64).sum() + zero(leaves64), leaves64,
                               allow_unused=True)
    want = dict(zip(names, [torch.zeros_like(leaf) if w is None else w for w, leaf in zip(want, leaves64)]))
    terms = ((x64["q"] * want["q"]).sum(-1).abs() + (x64["k"] * want["k"]).sum(-1).abs()).detach()
    g_floor = float(terms.flip(1).cumsum(1).max()) if case.T else 0.0
    g_floor += float((S_ref * dS64).sum((2, 3, 4)).abs().max().detach()) if case.T else 0.0
    for name, a, leaf in zip(names, got, leaves64):
        a = torch.zeros_like(leaf) if a is None else a.double().cpu()
        assert_rel_close(a, want[name], f"d/d{name} ({dtype}, {dev})", rtol=TRITON_GRAD_RTOL[dtype],
                         floor=g_floor if name == "g" else 0.0)
    event(f"{dtype}; merges: {int((trace.merged >= 0).sum()) > 0}; chunks: {(case.T + 63) // 64}")
