"""The score's backends agree: numba and torch (float64) to rounding, Triton (float32) within its error bound.

One formula (``dla_fast/ops/common/score.py``), three implementations. The inputs are the three scalars
``(||P||^2, <P, u>, ||u||^2)`` and ``g``, formed in float64 from actual states and increments (so that they
are consistent), over near-zero, ordinary, huge and cancelling states, plus inconsistent scalars that
only the guards keep finite (``||P'||^2 < 0`` from rounding elsewhere): every backend must floor them alike.

The tolerance is docs/precision.md section 3's for one evaluation from exact scalars: with ``g = 8 u``
(a handful of float32 operations) and ``E`` the summed sizes of the score's terms,
``4 g E + 4 min(sqrt(g) E, g E^2 / I) + 16 u`` (the sqrt(u) floor where the terms cancel).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from triton_here import needs_kernels, runs_elsewhere

from dla_fast.ops.common.score import information_score_numba, information_score_torch

EPS, NORM_EPS = 1e-6, 1e-6
DK, DV = 4, 3
N = DK * DV


def _consistent_cases(seed=0):
    """``(nP, x, ss, g)`` float64 arrays from states P and increments u = k v^T of chosen sizes."""
    rng = np.random.default_rng(seed)
    rows = []
    for p_scale in (0.0, 1e-9, 1e-3, 1.0, 1e3, 1e12):
        for u_scale in (1e-9, 1e-3, 1.0, 1e3):
            for g in (0.0, -1e-7, -0.05, -0.7, -5.0, -30.0):
                P = p_scale * rng.standard_normal((DK, DV))
                u = u_scale * np.outer(rng.standard_normal(DK), rng.standard_normal(DV))
                rows.append((P, u, g))
                # cancelling: the token keeps the open state's direction, P' = a P + u ~ P (score ~ 0)
                rows.append((P, (1.0 - math.exp(g)) * P + 1e-7 * u, g))
    nP = np.array([float((P * P).sum()) for P, _, _ in rows])
    x = np.array([float((P * u).sum()) for P, u, _ in rows])
    ss = np.array([float((u * u).sum()) for _, u, _ in rows])
    g = np.array([g for _, _, g in rows])
    return nP, x, ss, g


def _inconsistent_cases():
    """Scalars no state has (``a^2 nP + 2 a x + ss < 0``): the r'^2 floor decides."""
    nP = np.array([1.0, 1.0, 4.0, 1e-12])
    x = np.array([-1.0, -0.75, -3.0, -1e-6])
    ss = np.array([0.0, 0.25, 1.0, 0.0])
    g = np.array([0.0, 0.0, -0.1, 0.0])
    return nP, x, ss, g


def _numba(nP, x, ss, g):
    return np.array([information_score_numba(*a, float(N), EPS, NORM_EPS) for a in zip(nP, x, ss, g)])


def _torch(nP, x, ss, g):
    t = [torch.as_tensor(a, dtype=torch.float64) for a in (nP, x, ss, g)]
    return information_score_torch(*t, N, EPS, NORM_EPS).numpy()


def _term_size(nP, x, ss, g):
    """``E``: the sizes of the score's terms ``|c| ||P|| + ||u|| / r'`` over its denominator (float64)."""
    a = np.exp(g)
    r = np.sqrt(nP / N + NORM_EPS)
    rp = np.sqrt(np.maximum((a * a * nP + 2 * a * x + ss) / N + NORM_EPS, NORM_EPS))
    c = a / rp - 1.0 / r
    return (np.abs(c) * np.sqrt(nP) + np.sqrt(ss) / rp) / (np.sqrt(nP) / r + EPS)


def _worst(got, want, scalars, u):
    """The largest ``|got - want|`` over docs/precision.md's bound for one evaluation with unit roundoff u."""
    gam = 8 * u
    E = _term_size(*scalars)
    tol = 4 * gam * E + 4 * np.minimum(np.sqrt(gam) * E, gam * E**2 / np.maximum(want, 1e-300)) + 16 * u
    return float(np.max(np.abs(got - want) / tol))


def test_numba_and_torch_agree_to_float64_rounding():
    """Same operations in the same order; libm's exp/expm1 may differ in the last bit, which the cancelling
    cases amplify to the sqrt(u) floor of float64 (a relative difference near 1e-8 on scores near 1e-14)."""
    for scalars in (_consistent_cases(), _inconsistent_cases()):
        a, b = _numba(*scalars), _torch(*scalars)
        assert np.isfinite(a).all() and np.isfinite(b).all()
        assert _worst(a, b, scalars, 2.0**-53) <= 1.0


def test_the_guards_keep_inconsistent_scalars_finite_and_floored_alike():
    nP, x, ss, g = _inconsistent_cases()
    scores = _numba(nP, x, ss, g)
    # r'^2 = norm_eps exactly: the score is what the floor gives, not NaN or inf.
    a = np.exp(g)
    r = np.sqrt(nP / N + NORM_EPS)
    rp = math.sqrt(NORM_EPS)
    c = a / rp - 1.0 / r
    d2 = np.maximum(c * c * nP + 2 * c * x / rp + ss / rp**2, 0.0)
    np.testing.assert_allclose(scores, np.sqrt(d2) / (np.sqrt(nP) / r + EPS), rtol=1e-12)


@runs_elsewhere
@pytest.mark.interpreter_rerun()
def test_interpreter_run(interpreter_rerun):
    """No GPU and no TRITON_INTERPRET: this file in a subprocess under the Triton interpreter (conftest.py)."""
    interpreter_rerun()


@needs_kernels
@pytest.mark.parametrize("table", [False, True], ids=["shared", "table"])
@pytest.mark.parametrize("cases", [_consistent_cases, _inconsistent_cases], ids=["consistent", "inconsistent"])
def test_triton_float32_within_its_error_bound(cases, table):
    """Both float32 forms: the shared one (carry scan, step, delta rule) and the pair tables' (reciprocal square
    roots)."""
    from triton_here import DEV

    from dla_fast.ops.common.score import information_score_triton_elementwise

    nP, x, ss, g = cases()
    # The float32 kernel takes the scalars rounded to float32; the bound is judged on the rounded inputs.
    r32 = [np.asarray(a, dtype=np.float32).astype(np.float64) for a in (nP, x, ss, g)]
    want = _numba(*r32)
    got = information_score_triton_elementwise(*(torch.as_tensor(a, device=DEV) for a in r32), N, EPS, NORM_EPS,
                                               table=table)
    got = got.cpu().double().numpy()
    assert np.isfinite(got).all()
    worst = _worst(got, want, r32, 2.0**-24)
    assert worst <= 1.0, f"worst error / tolerance {worst:.2f}"
