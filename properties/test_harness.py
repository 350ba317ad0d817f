"""The equivalence harness, tested: it passes what it must, explains what it may, rejects the rest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dla_ref
from dla_fast.testing import Policy, check_equivalent, reference_adapter, round_to, rounded_inputs
from dla_fast.testing.strategies import (
    SCORE_AT_TAU,
    SCORE_AT_TAU_DELTA,
    TIE_CASES,
    TIED_DENSITIES,
    ZERO_SCORE_TIES,
    Spec,
    build,
    cases,
)
from dla_ref import reference as R
from properties import float32_model
from properties.mutation import FAST_MUTANTS, mutant_forward, patched

DTYPES = ("float64", "float32", "bfloat16", "float16")


@given(case=cases(), dtype=st.sampled_from(DTYPES))
def test_the_reference_adapter_is_equivalent_to_itself(case, dtype):
    assume(not (dtype == "float16" and case.spec.data == "large"))  # 1e6 overflows float16
    report = check_equivalent(reference_adapter, case, dtype=dtype)
    assert report.ok and not report.divergences
    assert all(r == 0.0 for r, _ in report.worst.values()), report


@settings(max_examples=max(10, settings().max_examples // 2))
@given(case=cases(), dtype=st.sampled_from(DTYPES[1:]))
def test_a_float32_fast_path_passes(case, dtype):
    """The float32 model (states, scores, densities in float32) passes at every input dtype; its decision
    and merge flips near ties are explained by the reference's margins."""
    assume(not (dtype == "float16" and case.spec.data == "large"))
    report = check_equivalent(float32_model.forward, case, dtype=dtype)
    assert all(d.explained for d in report.divergences)


def scores_times(factor):
    """A "fast path": the reference whose every score is ``I * factor`` (rounded), decided on that score."""
    score = R.information_score

    def fast(*args, **kwargs):
        with patched({"information_score": lambda *a: score(*a) * factor}):
            return dla_ref.forward(*args, **kwargs)

    return fast


@pytest.mark.parametrize("case", [SCORE_AT_TAU, SCORE_AT_TAU_DELTA], ids=["scalar decay", "delta rule"])
def test_a_flip_at_an_exact_tie_is_explained_when_the_fast_score_differs(case):
    """tau equals a score bit for bit. A fast path whose score there is one rounding lower (its own
    arithmetic) legitimately opens no slot: explained by the margin 0, then rerun with forced decisions."""
    report = check_equivalent(scores_times(1 - 2.0**-52), case, dtype="float64")
    assert report.forced_rerun, report
    flips = [d for d in report.divergences if d.kind == "decision"]
    assert flips and all(d.explained and d.margin == 0.0 for d in flips), report


@pytest.mark.parametrize("case", [SCORE_AT_TAU, SCORE_AT_TAU_DELTA], ids=["scalar decay", "delta rule"])
def test_a_flip_at_an_exact_tie_with_the_same_score_fails(case):
    """The same flip from a fast path that computed the reference's own score (here: one that compares
    with a tau nudged upwards, i.e. ``>``): the tie rule ``>=`` decides, so the flip is not explained."""

    def nudged(q, k, v, g, w, *, tau, **kw):
        return dla_ref.forward(q, k, v, g, w, tau=np.nextafter(tau, np.inf), **kw)

    with pytest.raises(AssertionError, match="an exact tie, and the fast path computed the same value"):
        check_equivalent(nudged, case, dtype="float64")
    report = check_equivalent(mutant_forward("fast_threshold_gt"), case, dtype="float64", raise_on_failure=False)
    flips = [d for d in report.divergences if d.kind == "decision"]
    assert not report.ok and flips and flips[0].same_values_at_a_tie and not flips[0].explained, report


def repeated_tokens_after_a_tied_slot() -> dict:
    """Identical tokens (no decay, tau = 0) after an initial slot holding one such token with ``Ibar`` = the
    score every call token gets: all three slots have the same information when the first merge comes, so
    the reference's pairs tie exactly, with densities computed from the scores (a float64 case: float32
    would round the initial ``Ibar``)."""
    base = build(Spec(seed=2, T=6, K=3, Dk=2, Dv=2, data="repeated", regime_len=6, decay="none", tau_mode="zero"))
    k, v = base.k[0, 0, 0], base.v[0, 0, 0]
    assert (base.k == k).all() and (base.v == v).all()
    cache = dla_ref.Cache.empty(1, 1, 3, 2, 2)
    cache.states[0, 0, 0], cache.counts[0, 0, 0], cache.size[0, 0] = np.outer(k, v), 1, 1
    _, _, pilot = dla_ref.forward(*base.arrays(), tau=0.0, initial_cache=cache)
    cache.info[0, 0, 0] = pilot.scores[0, 0, 0]
    assert (pilot.scores == pilot.scores[0, 0, 0]).all()
    return dict(q=base.q, k=base.k, v=base.v, g=base.g, slot_weights=base.slot_weights, tau=0.0, initial_cache=cache)


@pytest.mark.parametrize("case, dtype", [
    (ZERO_SCORE_TIES, "float64"), (ZERO_SCORE_TIES, "float32"), (TIED_DENSITIES, "float64"),
    (TIED_DENSITIES, "float32"), ("repeated tokens", "float64")],
    ids=["zero scores-float64", "zero scores-float32", "tied initial cache-float64", "tied initial cache-float32",
         "repeated tokens-float64"])
def test_a_merge_flip_at_an_exact_density_tie_with_the_same_densities_fails(case, dtype):
    """Ties to the newest pair where both paths computed the tied densities bit for bit: not explained."""
    case = repeated_tokens_after_a_tied_slot() if case == "repeated tokens" else case
    report = check_equivalent(mutant_forward("fast_merge_argmin_le"), case, dtype=dtype, raise_on_failure=False)
    merges = [d for d in report.divergences if d.kind == "merge"]
    assert not report.ok and merges and merges[0].margin == 0.0 and merges[0].same_values_at_a_tie, report
    assert "the oldest of the tied pairs merges" in str(report)


def test_a_merge_flip_at_an_exact_density_tie_is_explained_when_the_fast_densities_differ():
    """The same reference tie. A fast path (with the right tie rule) whose scores are a few roundings lower
    has, for itself, a strictly lowest newer pair and merges it: explained by the margin 0, and the
    structures part from there on."""
    report = check_equivalent(scores_times(1 - 2.0**-48), repeated_tokens_after_a_tied_slot(), dtype="float64")
    merges = [d for d in report.divergences if d.kind == "merge"]
    assert merges and all(d.explained and d.margin == 0.0 and not d.same_values_at_a_tie for d in merges), report
    assert report.truncated, report


@pytest.mark.parametrize("mutant", list(FAST_MUTANTS))
def test_the_tie_cases_kill_the_fast_path_mutants(mutant):
    """Each tie-rule mutant fails the harness at float64 on at least one of the named tie cases."""
    failed = [case for case in TIE_CASES
              if not check_equivalent(mutant_forward(mutant), case, dtype="float64", raise_on_failure=False).ok]
    assert failed, f"{mutant} passed every tie case"


def test_an_unexplained_decision_flip_fails_with_a_report():
    case = build(Spec(seed=41, T=16, K=4, data="piecewise", tau_mode="observed", tau_quantile=0.5))

    def wrong_tau(q, k, v, g, w, *, tau, **kw):
        return dla_ref.forward(q, k, v, g, w, tau=tau * 2 + 0.5, **kw)

    with pytest.raises(AssertionError, match="NOT EXPLAINED"):
        check_equivalent(wrong_tau, case, dtype="float32")


def test_a_wrong_output_fails():
    case = build(Spec(seed=42, T=10, K=3, data="random", tau_mode="observed"))

    def off(*a, **kw):
        o, c, t = dla_ref.forward(*a, **kw)
        return o * (1 + 1e-3), c, t

    with pytest.raises(AssertionError, match="output at"):
        check_equivalent(off, case, dtype="float32")


def test_a_wrong_final_cache_fails():
    case = build(Spec(seed=43, T=10, K=3, data="random", tau_mode="observed"))

    def off(*a, **kw):
        o, c, t = dla_ref.forward(*a, **kw)
        c.info = c.info * (1 + 1e-3)
        return o, c, t

    with pytest.raises(AssertionError, match="final Ibar"):
        check_equivalent(off, case, dtype="float32")


def test_a_wrong_score_fails():
    case = build(Spec(seed=44, T=10, K=3, data="random", tau_mode="inf"))

    def off(*a, **kw):
        o, c, t = dla_ref.forward(*a, **kw)
        t.scores = t.scores * (1 + 1e-3)
        return o, c, t

    with pytest.raises(AssertionError, match="score at"):
        check_equivalent(off, case, dtype="float32")


def test_ignoring_a_boundary_override_fails():
    case = build(Spec(seed=45, T=10, K=3, data="random", boundaries="random", tau_mode="value"))

    def ignores(*a, boundaries=None, **kw):
        return dla_ref.forward(*a, **kw)

    with pytest.raises(AssertionError, match="NOT EXPLAINED"):
        check_equivalent(ignores, case, dtype="float32")


def test_the_docs_score_formula_is_flagged_under_strong_decay():
    """Finding (docs/precision.md): docs/chunked-algorithm.md's score forms ``am1 - delta`` from two numbers
    near -1 when the decay is strong; the harness rejects the resulting 1e-4 relative score error."""
    case = build(Spec(seed=37, B=2, T=37, H=1, Dk=2, Dv=1, K=2, decay="strong", data="repeated", regime_len=1,
                      noise=0.1, tau_mode="value", tau_value=0.05))

    def docs_formula(*a, **kw):
        return float32_model.forward(*a, score_formula=float32_model._score_scalar_docs, **kw)

    with pytest.raises(AssertionError, match="score at"):
        check_equivalent(docs_formula, case, dtype="float32")
    check_equivalent(float32_model.forward, case, dtype="float32")  # the stable variant passes


def test_inputs_are_rounded_before_both_runs():
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal(20000) * np.exp(rng.uniform(-20, 10, 20000))  # inside float16's range
    x = np.concatenate([x, [1 + 2.0**-8, 1 + 3 * 2.0**-9, 1 + 2.0**-9 + 2.0**-40, 0.0, -1e-3]])
    for name in ("bfloat16", "float16", "float32"):
        expected = torch.tensor(x).to(getattr(torch, name)).to(torch.float64).numpy()
        assert (round_to(x, name) == expected).all(), name
    case = build(Spec(seed=46, T=6, data="random", prefix=3))
    r = rounded_inputs(case, "bfloat16")
    assert (r["q"] == round_to(case.q, "bfloat16")).all()
    assert (r["initial_cache"].states == case.initial_cache.states.astype(np.float32)).all()


def test_the_policy_tightens_with_the_arithmetic():
    assert Policy.for_dtype("float64").u == 2.0**-53
    assert Policy.for_dtype("bfloat16").u == 2.0**-24 and Policy.for_dtype("bfloat16").u_in == 2.0**-8
    assert Policy.for_dtype("float32").u_in == 0.0


def test_a_mapping_case_is_accepted():
    case = build(Spec(seed=47, T=5, data="random"))
    report = check_equivalent(reference_adapter, dict(q=case.q, k=case.k, v=case.v, g=case.g,
                                                      slot_weights=case.slot_weights, tau=case.tau))
    assert report.ok
