"""The DLA reference: float64 NumPy, plain loops, one function per rule of ``docs/semantics.md``.

Read this beside ``docs/semantics.md`` (and ``docs/algorithm.md``): every function below
implements one numbered rule of "One token, four rules", and :func:`step` applies them in order.
Every (batch, head) pair is independent, so :func:`forward` simply loops over them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cache import Cache, Trace
from .validation import (
    Dims,
    cache_value_checks,
    check_cache_shapes,
    check_scalars,
    check_shapes,
    raise_first,
    value_checks,
)


@dataclass
class Slot:
    """One slot of the cache: its state ``S`` [Dk, Dv], token count ``n`` and information sum ``Ibar``."""

    state: np.ndarray
    count: int
    info: float


# ---------------------------------------------------------------------------------------------
# The backbone: a token's contribution s_t and the transition A_t (shared by every slot)
# ---------------------------------------------------------------------------------------------


def contribution(k: np.ndarray, v: np.ndarray, beta: float | None) -> np.ndarray:
    """``s_t = k_t v_t^T`` (scalar decay) or ``s_t = beta_t k_t v_t^T`` (delta rule)."""
    s = np.outer(k, v)
    return s if beta is None else beta * s


def transition(X: np.ndarray, a: float, k: np.ndarray, beta: float | None) -> np.ndarray:
    """``A_t(X) = a_t X`` (scalar decay) or ``A_t(X) = a_t (X - beta_t k_t (k_t^T X))`` (delta rule)."""
    if beta is None:
        return a * X
    return a * (X - beta * np.outer(k, k @ X))


# ---------------------------------------------------------------------------------------------
# Rule 1: the state information score
# ---------------------------------------------------------------------------------------------


def rms_normalize(X: np.ndarray, norm_eps: float) -> np.ndarray:
    """``N(X) = X / sqrt(mean(X * X) + norm_eps)``, the mean over all Dk*Dv entries."""
    return X / np.sqrt(np.mean(X * X) + norm_eps)


def information_score(P: np.ndarray, P_next: np.ndarray, eps: float, norm_eps: float) -> float:
    """``I_t = ||N(P') - N(P)||_F / (||N(P)||_F + eps)``: how much the token would change the open slot."""
    N_P = rms_normalize(P, norm_eps)
    N_P_next = rms_normalize(P_next, norm_eps)
    return float(np.linalg.norm(N_P_next - N_P) / (np.linalg.norm(N_P) + eps))


# ---------------------------------------------------------------------------------------------
# Rule 3: the capacity-bounded merge
# ---------------------------------------------------------------------------------------------


def pair_density(left: Slot, right: Slot) -> float:
    """The information density of an adjacent pair: ``(Ibar_i + Ibar_{i+1}) / (n_i + n_{i+1})``."""
    return (left.info + right.info) / (left.count + right.count)


def merge_lowest_density_pair(slots: list[Slot]) -> int:
    """Merge, in place, the adjacent pair with the lowest density; ties go to the oldest pair.

    The merged slot holds ``S_i + S_{i+1}``, ``n_i + n_{i+1}``, ``Ibar_i + Ibar_{i+1}`` in place of
    the two. Returns the index i of the merged pair (i, i+1).
    """
    densities = [pair_density(slots[i], slots[i + 1]) for i in range(len(slots) - 1)]
    i = min(range(len(densities)), key=lambda j: (densities[j], j))  # strict minimum, then oldest
    left, right = slots[i], slots[i + 1]
    slots[i : i + 2] = [Slot(left.state + right.state, left.count + right.count, left.info + right.info)]
    return i


# ---------------------------------------------------------------------------------------------
# Rule 4: the read
# ---------------------------------------------------------------------------------------------


def read(q: np.ndarray, slots: list[Slot], slot_weights: np.ndarray) -> np.ndarray:
    """``o_t = sum_j lambda_t[j] q_t^T S_{m-1-j}``: ``lambda_t[0]`` weighs the open (newest) slot."""
    m = len(slots)
    o = np.zeros(slots[0].state.shape[1])
    for j in range(m):
        o += slot_weights[j] * (q @ slots[m - 1 - j].state)
    return o


# ---------------------------------------------------------------------------------------------
# One step, token t: rules 1-4 in order
# ---------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    output: np.ndarray  # o_t, [Dv]
    score: float  # I_t
    started: bool  # the token opened a new slot
    merged: int  # index i of the merged pair (i, i+1), or -1


def step(
    slots: list[Slot],
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    a: float,
    slot_weights: np.ndarray,
    *,
    capacity: int,
    tau: float,
    beta: float | None = None,
    boundary: bool | None = None,
    eps: float = 1e-6,
    norm_eps: float = 1e-6,
) -> StepResult:
    """Advance one (batch, head) cache by one token, in place. ``a = exp(g_t)``.

    ``boundary`` (when not None) overrides the decision ``I_t >= tau``; the score is still computed.
    """
    s = contribution(k, v, beta)

    # 1. Score, and the boundary decision.
    if not slots:
        score, starts_slot = 0.0, True  # the first token of an empty cache always opens a slot
    else:
        P = slots[-1].state
        P_next = transition(P, a, k, beta) + s
        score = information_score(P, P_next, eps, norm_eps)
        starts_slot = (score >= tau) if boundary is None else bool(boundary)

    # 2. Transition: every slot's state becomes A_t(S_i).
    for slot in slots:
        slot.state = transition(slot.state, a, k, beta)

    # 3. Update: extend the open slot, or append a new one (merging first if the cache is full).
    merged = -1
    if not starts_slot:
        open_slot = slots[-1]
        open_slot.state = open_slot.state + s
        open_slot.count += 1
        open_slot.info += score
    else:
        if len(slots) == capacity:
            merged = merge_lowest_density_pair(slots)
        slots.append(Slot(s, 1, score))

    # 4. Read, after the update: the output at t includes token t itself.
    return StepResult(read(q, slots, slot_weights), score, starts_slot, merged)


# ---------------------------------------------------------------------------------------------
# The whole call
# ---------------------------------------------------------------------------------------------


def forward(
    q,
    k,
    v,
    g,
    slot_weights,
    *,
    tau: float = 0.6,
    beta=None,
    boundaries=None,
    initial_cache: Cache | None = None,
    eps: float = 1e-6,
    norm_eps: float = 1e-6,
) -> tuple[np.ndarray, Cache, Trace]:
    """Dynamic Linear Attention, reference semantics, float64.

    Args:
        q, k: ``[B, T, H, Dk]`` queries and keys, used as given.
        v: ``[B, T, H, Dv]`` values.
        g: ``[B, T, H]`` log decays, ``g <= 0``; the step's decay is ``exp(g)``.
        slot_weights: ``[B, T, H, K]`` the read weights lambda; ``K`` is the cache capacity (>= 2).
            ``slot_weights[..., 0]`` weighs the open (newest) slot, ``[..., 1]`` the one before it, ...
        tau: boundary threshold: a token opens a new slot iff its score ``>= tau``.
        beta: ``[B, T, H]`` in ``[0, 1]`` for the gated delta-rule backbone; None for scalar decay.
        boundaries: bool ``[B, T, H]`` overriding the decisions (scores are still computed).
        initial_cache: a :class:`Cache` to continue from (streaming / decoding); None starts empty.
        eps, norm_eps: the score's denominator guard and the RMS-norm guard.

    Returns:
        ``(o, cache, trace)``: ``o`` ``[B, T, H, Dv]`` float64, the final :class:`Cache`, and the
        :class:`Trace` (scores, starts, merged) of every token.
    """
    q, k, v, g, slot_weights, beta, boundaries, tau, dims = _validated(
        q, k, v, g, slot_weights, beta, boundaries, tau, eps, norm_eps
    )
    B, T, H, Dk, Dv, K = dims.B, dims.T, dims.H, dims.Dk, dims.Dv, dims.K
    cache = Cache.empty(B, H, K, Dk, Dv) if initial_cache is None else _validated_cache(initial_cache, dims)

    o = np.zeros((B, T, H, Dv))
    trace = Trace(
        scores=np.zeros((B, T, H)),
        starts=np.zeros((B, T, H), dtype=bool),
        merged=np.full((B, T, H), -1, dtype=np.int64),
    )
    final = cache.copy()
    decay = np.exp(g)
    for b in range(B):
        for h in range(H):
            slots = _slots_of(cache, b, h)
            for t in range(T):
                result = step(
                    slots,
                    q[b, t, h],
                    k[b, t, h],
                    v[b, t, h],
                    decay[b, t, h],
                    slot_weights[b, t, h],
                    capacity=K,
                    tau=tau,
                    beta=None if beta is None else beta[b, t, h],
                    boundary=None if boundaries is None else boundaries[b, t, h],
                    eps=eps,
                    norm_eps=norm_eps,
                )
                o[b, t, h] = result.output
                trace.scores[b, t, h] = result.score
                trace.starts[b, t, h] = result.started
                trace.merged[b, t, h] = result.merged
            _store_slots(final, b, h, slots)
    return o, final, trace


def _slots_of(cache: Cache, b: int, h: int) -> list[Slot]:
    return [
        Slot(cache.states[b, h, i].copy(), int(cache.counts[b, h, i]), float(cache.info[b, h, i]))
        for i in range(int(cache.size[b, h]))
    ]


def _store_slots(cache: Cache, b: int, h: int, slots: list[Slot]) -> None:
    cache.states[b, h] = 0.0
    cache.counts[b, h] = 0
    cache.info[b, h] = 0.0
    cache.size[b, h] = len(slots)
    for i, slot in enumerate(slots):
        cache.states[b, h, i] = slot.state
        cache.counts[b, h, i] = slot.count
        cache.info[b, h, i] = slot.info


def _validated(q, k, v, g, slot_weights, beta, boundaries, tau, eps, norm_eps):
    as64 = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    q, k, v, g, slot_weights = map(as64, (q, k, v, g, slot_weights))
    beta = None if beta is None else as64(beta)
    boundaries = None if boundaries is None else np.asarray(boundaries)
    dims = check_shapes(q, k, v, g, slot_weights, beta, boundaries, is_bool=lambda x: x.dtype == np.bool_)
    tau = check_scalars(tau, eps, norm_eps)  # a Python float: the decision is taken in float64
    raise_first(value_checks(q, k, v, g, slot_weights, beta, isfinite=np.isfinite))
    return q, k, v, g, slot_weights, beta, boundaries, tau, dims


def _validated_cache(cache: Cache, dims: Dims) -> Cache:
    if not isinstance(cache, Cache):
        raise ValueError(f"initial_cache: expected a dla_ref.Cache or None, got {type(cache).__name__}")
    states, counts, info, size = (np.asarray(x) for x in (cache.states, cache.counts, cache.info, cache.size))
    check_cache_shapes(states, counts, info, size, dims)
    raise_first(cache_value_checks(states, counts, info, size, dims.K, isfinite=np.isfinite, arange=np.arange))
    return Cache(states.astype(np.float64), counts.astype(np.int64), info.astype(np.float64), size.astype(np.int64))
