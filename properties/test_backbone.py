"""The outputs: the read, and the special cases the contract solves in closed form."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

from dla_fast.testing.strategies import DELTA_BETA_ONE, DELTA_BETA_ZERO, Spec, build, cases
from properties import independent as ind
from properties.layout import stepwise
from properties.registry import prop

RTOL = 1e-10  # float64 against float64, relative to a no-cancellation bound on |o| (independent.output_scale)

DECAYED_SLOTS = build(Spec(seed=11, T=12, K=4, Dk=2, Dv=3, data="piecewise", decay="strong", weights="ones",
                           tau_mode="observed", tau_quantile=0.6))
ONE_SLOT_PER_TOKEN = build(Spec(seed=12, T=8, K=8, Dk=2, Dv=2, data="random", decay="mild", tau_mode="zero"))
ZERO_KEYS_AT_ZERO_TAU = build(Spec(seed=13, T=6, K=6, data="zero_keys", zero_frac=0.5, tau_mode="zero"))
SEVERAL_SLOTS = build(Spec(seed=14, T=10, K=4, data="random", decay="mild", tau_mode="observed", tau_quantile=0.3))
# the delta rule with beta exactly 0 / exactly 1 (keys of norm up to sqrt 2), read with lambda = 1
DELTA_BETA_ZERO_ONES = build(dataclasses.replace(DELTA_BETA_ZERO.spec, weights="ones"))
DELTA_BETA_ONE_ONES = build(dataclasses.replace(DELTA_BETA_ONE.spec, weights="ones"))
# every token its own slot on the delta rule with beta exactly 0 (K >= T, empty cache)
DELTA_BETA_ZERO_PER_TOKEN = build(Spec(seed=17, T=6, K=6, Dk=2, Dv=2, backbone="delta", beta_mode="zero",
                                       key_norm="scaled", decay="mild", tau_mode="zero"))


@prop(cases(), examples=[SEVERAL_SLOTS, DECAYED_SLOTS, DELTA_BETA_ZERO, DELTA_BETA_ONE])
def test_output_reads_every_slot_in_recency_order(impl, case):
    """``o_t = sum_j lambda_t[j] q_t^T S_{m-1-j}`` over the implementation's own cache after token t:
    the read comes after the update, includes the open slot, and weighs it with ``lambda_t[0]``."""
    sw = stepwise(impl, case)
    scale = ind.output_scale(case)
    for t, cache in enumerate(sw.caches):
        for b in range(case.B):
            for h in range(case.H):
                m = int(cache.size[b, h])
                lam, q = case.slot_weights[b, t, h], case.q[b, t, h]
                expected = sum(lam[j] * (q @ cache.states[b, h, m - 1 - j]) for j in range(m))
                ind.assert_close(sw.outputs[b, t, h], expected, scale[b, t, h], rtol=RTOL, atol=1e-300,
                                 what=f"(b={b}, h={h}, t={t}) output vs the read of the cache after the step")


@prop(cases(weights="ones"), examples=[DECAYED_SLOTS, DELTA_BETA_ZERO_ONES, DELTA_BETA_ONE_ONES])
def test_all_ones_weights_equal_the_single_state_backbone(impl, case):
    """With lambda all ones, o is plain decayed linear attention / the gated delta rule, whatever tau, K.

    Both backbones are written out here, one state per (b, h), starting from the initial slots' sum."""
    o, _, _ = case.run(impl)
    expected = np.zeros_like(o)
    a = np.exp(case.g)
    S = np.zeros((case.B, case.H, case.Dk, case.Dv))
    if case.initial_cache is not None:
        S = case.initial_cache.states.sum(2)
    for t in range(case.T):
        q, k, v = case.q[:, t], case.k[:, t], case.v[:, t]  # [B, H, D]
        if case.beta is None:  # decayed linear attention: S_t = a_t S_{t-1} + k_t v_t^T
            S = a[:, t, :, None, None] * S + k[..., :, None] * v[..., None, :]
        else:  # gated delta rule: S_t = a_t (S_{t-1} - beta_t k_t (k_t^T S_{t-1})) + beta_t k_t v_t^T
            beta = case.beta[:, t, :, None, None]
            kS = np.einsum("bhd,bhde->bhe", k, S)
            S = a[:, t, :, None, None] * (S - beta * k[..., :, None] * kS[..., None, :]) \
                + beta * k[..., :, None] * v[..., None, :]
        expected[:, t] = np.einsum("bhd,bhde->bhe", q, S)
    ind.assert_close(o, expected, ind.output_scale(case)[..., None], rtol=RTOL, atol=1e-300,
                     what="o with lambda = 1 vs the single-state backbone")


@prop(cases(tau_mode="inf", boundaries="none", prefix=0), examples=[build(Spec(seed=15, T=7, tau_mode="inf"))])
def test_infinite_tau_keeps_one_slot(impl, case):
    """``tau = +inf``: one slot, and ``o_t = lambda_t[0] q_t^T S_t`` of the single-state backbone."""
    o, cache, trace = case.run(impl)
    if case.T == 0:
        return
    assert (cache.size == 1).all(), f"tau=inf: sizes {cache.size.tolist()}, expected 1"
    assert (trace.starts[:, 0]).all() and not trace.starts[:, 1:].any(), "tau=inf: only the first token starts a slot"
    expected = ind.single_state_outputs(case) * case.slot_weights[..., :1]
    ind.assert_close(o, expected, ind.output_scale(case)[..., None], rtol=RTOL, atol=1e-300,
                     what="o at tau=inf vs lambda_t[0] * single-state backbone")


@prop(
    cases(tau_mode=st.sampled_from(("zero", "negative")), boundaries="none", prefix=0).map(
        lambda c: c if c.K >= c.T else c.replace(f"K={max(2, c.T)}", slot_weights=_widen(c.slot_weights, max(2, c.T)))
    ),
    examples=[ONE_SLOT_PER_TOKEN, ZERO_KEYS_AT_ZERO_TAU, DELTA_BETA_ZERO_PER_TOKEN],
)
def test_nonpositive_tau_with_room_gives_one_slot_per_token(impl, case):
    """``tau <= 0`` and ``K >= T``: every token is its own slot, and
    ``o_t = sum_{s<=t} lambda_t[t-s] q_t^T C_t(s)`` with ``C_t(s)`` token s carried to t (scalar decay:
    ``(a_{s+1}...a_t) (q_t.k_s) v_s``; delta rule: through the delta transitions)."""
    o, cache, trace = case.run(impl)
    assert trace.starts.all(), f"tau={case.tau}: every token opens a slot; starts {trace.starts.tolist()}"
    assert (trace.merged == -1).all(), "K >= T: no merge"
    assert (cache.size == case.T).all() and (cache.counts[..., : case.T] == 1).all()
    expected = np.zeros_like(o)
    for b in range(case.B):
        for h in range(case.H):
            carried = ind.propagated(case, b, h)
            for t in range(case.T):
                lam, q = case.slot_weights[b, t, h], case.q[b, t, h]
                expected[b, t, h] = sum(lam[t - s] * (q @ carried[t][s]) for s in range(t + 1))
    if case.beta is None:  # the contract's formula, literally
        a = np.exp(case.g)
        literal = np.zeros_like(o)
        for t in range(case.T):
            for s in range(t + 1):
                decay = np.prod(a[:, s + 1 : t + 1], axis=1)  # a_{s+1} ... a_t, [B, H]
                lam = case.slot_weights[:, t, :, t - s]
                qk = np.einsum("bhd,bhd->bh", case.q[:, t], case.k[:, s])
                literal[:, t] += (lam * decay * qk)[..., None] * case.v[:, s]
        ind.assert_close(expected, literal, ind.output_scale(case)[..., None], rtol=RTOL, atol=1e-300,
                         what="(self-check) closed form vs propagated contributions")
    ind.assert_close(o, expected, ind.output_scale(case)[..., None], rtol=RTOL, atol=1e-300,
                     what=f"o at tau={case.tau}, K={case.K} >= T={case.T} vs the closed form")


def _widen(w: np.ndarray, K: int) -> np.ndarray:
    """Slot weights with capacity K (extra columns drawn deterministically from the existing ones)."""
    reps = -(-K // w.shape[-1])
    return np.concatenate([w] * reps, axis=-1)[..., :K] * np.linspace(1.0, 0.5, K)
