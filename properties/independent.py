"""The contract's formulas written again, independently of ``dla_ref.reference``, for the properties.

Nothing here imports the reference's per-rule functions: a mutant of the reference must not be able to
change what a property expects.
"""

from __future__ import annotations

import numpy as np

from dla_ref import Cache


def transition(X: np.ndarray, a: float, k: np.ndarray, beta) -> np.ndarray:
    """``A_t(X)``: ``a X`` (scalar decay) or ``a (X - beta k (k^T X))`` (delta rule)."""
    return a * X if beta is None else a * (X - beta * np.outer(k, k @ X))


def contribution(k: np.ndarray, v: np.ndarray, beta) -> np.ndarray:
    """``s_t``: ``k v^T`` or ``beta k v^T``."""
    return np.outer(k, v) * (1.0 if beta is None else beta)


def token(case, b: int, t: int, h: int):
    """``(q, k, v, a, beta)`` of token t of (b, h); ``beta`` None for scalar decay."""
    beta = None if case.beta is None else float(case.beta[b, t, h])
    return case.q[b, t, h], case.k[b, t, h], case.v[b, t, h], float(np.exp(case.g[b, t, h])), beta


def score(P: np.ndarray, P_next: np.ndarray, eps: float, norm_eps: float) -> float:
    """``I = ||N(P') - N(P)||_F / (||N(P)||_F + eps)``, ``N(X) = X / sqrt(mean(X^2) + norm_eps)``."""
    nP = P / np.sqrt(np.sum(P * P) / P.size + norm_eps)
    nPn = P_next / np.sqrt(np.sum(P_next * P_next) / P_next.size + norm_eps)
    return float(np.sqrt(np.sum((nPn - nP) ** 2)) / (np.sqrt(np.sum(nP * nP)) + eps))


def propagated(case, b: int, h: int) -> list:
    """``C[t][s]``: token s's contribution carried through the transitions up to token t (s <= t).

    Also ``C[t]["init", i]``: initial-cache slot i's state carried to t. Every slot's state is the sum of
    these over the tokens (and initial slots) it holds, because the transition is linear and shared.
    """
    out = []
    current: dict = {}
    if case.initial_cache is not None:
        for i in range(int(case.initial_cache.size[b, h])):
            current[("init", i)] = case.initial_cache.states[b, h, i].copy()
    for t in range(case.T):
        _, k, v, a, beta = token(case, b, t, h)
        current = {key: transition(X, a, k, beta) for key, X in current.items()}
        current[t] = contribution(k, v, beta)
        out.append(dict(current))
    return out


def slot_state(carried: dict, start: int, stop: int, initial_counts) -> np.ndarray:
    """The state of the slot holding tokens ``[start, stop)`` (negative: initial-cache tokens)."""
    total = None
    # initial-cache slots are whole units; map their token ranges back to slot indices
    first = -int(sum(initial_counts))
    edges = np.concatenate([[first], first + np.cumsum(initial_counts)]) if len(initial_counts) else [first]
    for i in range(len(initial_counts)):
        if start <= edges[i] and edges[i + 1] <= stop:
            total = carried[("init", i)] if total is None else total + carried[("init", i)]
    for s in range(max(start, 0), stop):
        total = carried[s] if total is None else total + carried[s]
    return total


def single_state_outputs(case) -> np.ndarray:
    """The single-state backbone: ``S_t = A_t(S_{t-1}) + s_t``, ``o_t = q_t^T S_t``; ``S_{-1}`` = the sum of
    the initial cache's slots."""
    o = np.zeros((case.B, case.T, case.H, case.Dv))
    for b in range(case.B):
        for h in range(case.H):
            S = np.zeros((case.Dk, case.Dv))
            if case.initial_cache is not None:
                S = case.initial_cache.states[b, h].sum(0)
            for t in range(case.T):
                q, k, v, a, beta = token(case, b, t, h)
                S = transition(S, a, k, beta) + contribution(k, v, beta)
                o[b, t, h] = q @ S
    return o


def magnitude(case) -> np.ndarray:
    """``[B, T, H]``: a bound on ``|| sum of every live state ||_F`` after token t (no cancellation).

    ``c_t = a_t c_{t-1} + b_t ||k_t|| ||v_t||``, ``c_{-1}`` = the initial states' norms. Valid for the
    delta rule when ``beta ||k||^2 <= 2`` (the strategies use unit keys).
    """
    c = np.zeros((case.B, case.H))
    if case.initial_cache is not None:
        c = np.linalg.norm(case.initial_cache.states, axis=(-2, -1)).sum(-1)
    out = np.zeros((case.B, case.T, case.H))
    b_t = np.ones((case.B, case.T, case.H)) if case.beta is None else case.beta
    size = np.linalg.norm(case.k, axis=-1) * np.linalg.norm(case.v, axis=-1) * b_t
    a = np.exp(case.g)
    for t in range(case.T):
        c = a[:, t] * c + size[:, t]
        out[:, t] = c
    return out


def output_scale(case) -> np.ndarray:
    """``[B, T, H]``: a bound on ``|o_t|`` summed without cancellation (``|q| * K max|lambda| * c_t``)."""
    lam = np.abs(case.slot_weights).max(-1) * case.K
    return np.linalg.norm(case.q, axis=-1) * lam * magnitude(case)


def assert_close(actual, expected, scale, *, rtol: float, what: str, atol: float = 0.0) -> None:
    """``|actual - expected| <= rtol * scale + atol`` elementwise (scale broadcast), with a readable report."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    if actual.size == 0:
        return
    bound = rtol * np.broadcast_to(np.asarray(scale, dtype=np.float64), actual.shape) + atol
    err = np.abs(actual - expected)
    bad = ~(err <= bound)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {actual.size} entries differ; first at {idx}: "
            f"got {actual[idx]!r}, expected {expected[idx]!r} (|diff| {err[idx]:.3e} > bound {bound[idx]:.3e})"
        )


def empty_like(case) -> Cache:
    return Cache.empty(case.B, case.H, case.K, case.Dk, case.Dv)
