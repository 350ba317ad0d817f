"""Slot states of a partition, and how well they reproduce a target read.

Scalar-decay backbone: token ``s`` contributes ``X_s = k_s v_s^T`` and, at time ``t >= s``, weighs
``D(s, t) = exp(G_t - G_s)`` (``G`` the running sum of ``g``). A segment ``[a, b]`` of a partition holds the
slot state

    S_[a,b](t) = sum_{s=a..b} D(s, t) X_s = D(b, t) * (H_b - D(a - 1, b) * H_{a-1})

where ``H_s = sum_{r<=s} D(r, s) X_r`` is the single-state backbone's state after token ``s`` (the prefix
state). :func:`prefix_states` computes ``H`` once per stream; :func:`slot_states` then gives any partition's
slot states at any time from ``K`` rows of it. The difference loses about ``1e-16 * |H_b| / |S|`` relative
accuracy, negligible here (``|H| <= T``).

The same holds for any linear map of the states, e.g. a query's read ``q^T S`` (pass the contributions
``(q . k_s) v_s`` instead of ``k_s v_s^T``).

:func:`fit_error` is the study's error of a partition: the best least-squares combination of its slot states
against a target, relative to the target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["fit_error", "outer_products", "prefix_states", "slot_states", "stack_padded"]


def outer_products(k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``X_s = k_s v_s^T`` flattened: ``[T, Dk * Dv]``."""
    return (k[:, :, None] * v[:, None, :]).reshape(k.shape[0], -1)


def prefix_states(
    contributions: np.ndarray | Callable[[slice], np.ndarray],
    g: np.ndarray,
    keep: Sequence[int] | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """``H_s = exp(g_s) H_{s-1} + X_s`` (``H_{-1} = 0``) at every ``s``, or only at the indices ``keep``.

    ``contributions`` is ``X`` ``[T, D]`` or a function returning the rows ``X[sl]`` of a slice, so that a
    long stream with wide contributions never holds all of ``X`` (or ``H``) at once. Returns ``[T, D]`` or
    ``[len(keep), D]`` (rows in the order of ``keep``), float64.
    """
    T = len(g)
    rows = contributions if callable(contributions) else (lambda sl: contributions[sl])
    decay = np.exp(g)
    if keep is None:
        slot_of = np.arange(T)
        n_out = T
    else:
        keep = np.asarray(keep, dtype=np.int64)
        slot_of = np.full(T, -1, dtype=np.int64)
        slot_of[keep] = np.arange(len(keep))
        n_out = len(keep)
    out = None
    h = None
    for c0 in range(0, T, chunk):
        X = np.asarray(rows(slice(c0, min(c0 + chunk, T))), dtype=np.float64)
        if h is None:
            h = np.zeros(X.shape[1])
            out = np.empty((n_out, X.shape[1]))
        for i in range(X.shape[0]):
            h = decay[c0 + i] * h + X[i]
            if slot_of[c0 + i] >= 0:
                out[slot_of[c0 + i]] = h
    if keep is not None:
        # the same index may be kept twice; the scatter above wrote only one of its rows
        out = out[slot_of[keep]]
    return out


def slot_states(
    H: np.ndarray, G: np.ndarray, starts: np.ndarray, t: int, row_of=None, *, to_time: bool = True
) -> np.ndarray:
    """The slot states ``[m, D]`` at time ``t`` of the partition ``starts`` (see the module docstring).

    ``H`` holds prefix states; ``row_of`` maps a token index to its row of ``H`` (None: row ``s`` is token
    ``s``), for prefix states computed only at some indices. ``to_time=False`` leaves out each slot's common
    factor ``D(b, t)`` (the decay from the slot's last token to ``t``): the states at their own last token,
    which differ from the states at ``t`` by one positive factor per slot, so any fit with free slot weights
    is the same, and a slot decayed below the float64 range keeps its direction.
    """
    rows = (lambda s: s) if row_of is None else row_of
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.append(starts[1:] - 1, t)
    before = starts - 1
    has_before = before >= 0
    safe = np.where(has_before, before, 0)
    H_end = H[rows(ends)]
    H_before = np.where(has_before[:, None], H[rows(safe)], 0.0)
    inner = np.where(has_before, np.exp(G[ends] - G[safe]), 0.0)  # D(a - 1, b)
    states = H_end - inner[:, None] * H_before
    return np.exp(G[t] - G[ends])[:, None] * states if to_time else states


def stack_padded(bases: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Stack ``[m_i, D]`` arrays into ``[E, M, D]``, padding with zero rows (a zero row changes no fit)."""
    M = max(b.shape[0] for b in bases) if width is None else width
    out = np.zeros((len(bases), M, bases[0].shape[1]))
    for e, b in enumerate(bases):
        out[e, : b.shape[0]] = b
    return out


def fit_error(basis: np.ndarray, targets: np.ndarray, rcond: float = 1e-12) -> np.ndarray:
    """``min_lambda |y - sum_i lambda_i b_i|^2 / |y|^2`` for every target ``y``; batched.

    ``basis`` ``[E, M, D]`` (``M`` vectors per problem, zero rows allowed), ``targets`` ``[E, n, D]`` (non-zero);
    returns ``[E, n]``. The vectors are scaled to unit norm first (this leaves the minimum unchanged but
    keeps a tiny, long-decayed slot from being taken for zero), then the target is projected on the span of
    the singular vectors whose singular value exceeds ``rcond`` times the largest. The error is the
    squared norm of the residual, so it lies in ``[0, 1]`` up to rounding: 0 when the target lies in the
    span, 1 when it is orthogonal to it.
    """
    norms = np.linalg.norm(basis, axis=-1, keepdims=True)
    unit = np.divide(basis, norms, out=np.zeros_like(basis), where=norms > 0)
    if unit.shape[-2] > unit.shape[-1]:
        # More vectors than dimensions: unit = Q R, and R [E, D, D] has the same row space and the same
        # singular values, at a fraction of the cost of an SVD of the wide matrix.
        unit = np.linalg.qr(unit, mode="r")
    U, s, _ = np.linalg.svd(np.swapaxes(unit, -1, -2), full_matrices=False)  # U [E, D, min(M, D)]
    keep = s > rcond * np.maximum(s.max(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
    U = U * keep[:, None, :]
    coef = np.einsum("edm,end->enm", U, targets)
    residual = targets - np.einsum("edm,enm->end", U, coef)
    return (residual**2).sum(-1) / (targets**2).sum(-1)
