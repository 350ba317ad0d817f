"""The delta rule's per-chunk UT tables (docs/delta-rule-chunked.md section 1) against explicit products of the
transitions ``A_t(X) = a_t (X - beta_t k_t k_t^T X)`` in float64: one triangular inverse serves every start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dla_fast.ops.delta_rule.chunk_torch import ut_tables


def _transition(lo: int, hi: int, k, a, b) -> np.ndarray:
    """``A_hi ... A_lo`` applied to the identity (the identity when ``hi < lo``)."""
    X = np.eye(k.shape[1])
    for t in range(lo, hi + 1):
        X = a[t] * (X - b[t] * np.outer(k[t], k[t] @ X))
    return X


@pytest.mark.parametrize("seed", range(3))
def test_ut_tables_equal_the_explicit_transitions(seed):
    rng = np.random.default_rng(seed)
    C, Dk = 7, 4
    k = rng.standard_normal((C, Dk))
    k *= rng.uniform(0.1, np.sqrt(2.0), (C, 1)) / np.linalg.norm(k, axis=1, keepdims=True)  # beta ||k||^2 <= 2
    b = rng.uniform(0.0, 1.0, C)
    g = -rng.uniform(0.0, 1.0, C)
    a = np.exp(g)
    as_t = lambda x: torch.as_tensor(x).view(1, 1, *x.shape)  # noqa: E731  [nb, R, ...]
    tab = {n: x[0, 0].numpy() for n, x in ut_tables(as_t(k), as_t(g), as_t(b), torch.float64).items()}
    gamma = np.exp(np.cumsum(g))
    akap = np.array([[k[t] @ _transition(s + 1, t - 1, k, a, b) @ k[s] if s < t else 0.0 for s in range(C)]
                     for t in range(C)])
    kt = np.array([_transition(0, t - 1, k, a, b).T @ k[t] for t in range(C)])
    kh = np.array([_transition(s + 1, C - 1, k, a, b) @ k[s] * gamma[s] / gamma[-1] for s in range(C)])
    np.testing.assert_allclose(tab["akap"], akap, atol=1e-14)
    np.testing.assert_allclose(tab["kt"], kt, atol=1e-14)
    np.testing.assert_allclose(tab["kh"], kh, atol=1e-14)
    np.testing.assert_allclose(tab["Phi"], _transition(0, C - 1, k, a, b), atol=1e-14)
