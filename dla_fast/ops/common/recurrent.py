"""The per-token recurrence in torch, vectorised over (batch, head) rows: decoding and the delta rule.

One function, :func:`recurrent_step_`, advances every row's cache by one token in place (rules 1-4 of the
contract), with gathers and scatters instead of a Python loop over rows and without a host sync on an
accelerator. It serves

- ``dla_fast.step`` (decoding, one token per sequence),
- ``dla_fast.forward`` with the delta-rule backbone (:func:`recurrent_forward`, a loop over tokens), and
- the straightforward per-token baseline of the benchmarks (:func:`recurrent_forward` with scalar decay),
  an implementation independent of the chunked algorithm.

Row layout: ``R = B * H`` rows; states ``[R, K, Dk, Dv]`` oldest slot first (the cache's own layout).
"""

from __future__ import annotations

import torch

from .score import information_score_torch


def _merge_where_full_(states, counts, info, size, start) -> torch.Tensor:
    """Rows whose new slot meets a full cache merge their lowest-density adjacent pair (ties: the oldest), in
    place. Returns the merged pair's index per row (-1: none)."""
    R, K, Dk, Dv = states.shape
    rows = torch.arange(R, device=states.device)
    slots = torch.arange(K, device=states.device)
    need_merge = start & (size == K)
    merged = torch.full_like(size, -1)
    if states.device.type == "cpu" and not bool(need_merge.any()):  # on the host the test costs nothing
        return merged
    density = (info[:, :-1] + info[:, 1:]).to(torch.float64) / (counts[:, :-1] + counts[:, 1:])
    i = density.argmin(1)  # the first minimum: the oldest pair
    right = (i + 1).clamp(max=K - 1)
    src = torch.where(need_merge.unsqueeze(1) & (slots > i.unsqueeze(1)), slots + 1, slots).clamp(max=K - 1)
    left_state = states[rows, i] + states[rows, right]
    left_count = counts[rows, i] + counts[rows, right]
    left_info = info[rows, i] + info[rows, right]
    flat_src = (rows * K).unsqueeze(1) + src  # whole-slot row copies, not an element-wise gather
    states.copy_(states.view(R * K, Dk * Dv).index_select(0, flat_src.view(-1)).view(R, K, Dk, Dv))
    counts.copy_(counts.gather(1, src))
    info.copy_(info.gather(1, src))
    states[rows, i] = torch.where(need_merge.view(R, 1, 1), left_state, states[rows, i])
    counts[rows, i] = torch.where(need_merge, left_count, counts[rows, i])
    info[rows, i] = torch.where(need_merge, left_info, info[rows, i])
    size.sub_(need_merge.to(size.dtype))
    return torch.where(need_merge, i, merged)


def _open_slot_score(P, k, v, g64, beta, eps, norm_eps):
    """``(score [R] float64, bk)``: the score of each row's token against its open slot ``P`` ``[R, Dk, Dv]``,
    and ``bk`` (``beta k``, or ``k``, in the states' dtype), the key part of the token's increment ``u = bk w^T``.

    The three scalars are formed in float64 from the stored (float32) operands. With the delta rule the
    increment's value ``w = v - a P^T k`` cancels when the open slot already holds ``v`` along ``k``: in float32
    its relative error is ``u |v| / |w|``, which reached 2e-2 on the score (docs/delta-rule-chunked.md,
    "Precision"); in float64 the stored state's own rounding (``~1e-7`` relative) is what is left. ``a`` is
    ``exp(g)`` in float64 here, as in the score's formula: a float32 ``a`` in ``w`` alone is an inconsistency of
    ``2^-24`` between the scalars that ``D2``'s cancellation (a score made of guard effects) turns into ``2e-4``.
    """
    f64 = torch.float64
    P64, k64 = P.to(f64), k.to(f64)
    kP = torch.bmm(k64.unsqueeze(1), P64).squeeze(1)  # k^T P, [R, Dv]
    if beta is None:
        bk64, w = k64, v.to(f64)  # u = k v^T
    else:
        bk64 = beta.to(P.dtype).to(f64).unsqueeze(1) * k64
        w = v.to(f64) - torch.exp(g64).unsqueeze(1) * kP  # u = beta k (v - a P^T k)^T, a in float64 as the score's
    x = (bk64 * torch.bmm(P64, w.unsqueeze(2)).squeeze(2)).sum(1)  # <P, u> = (beta k)^T P w
    ss = bk64.square().sum(1) * w.square().sum(1)
    nP = P64.square().sum((1, 2))
    return information_score_torch(nP, x, ss, g64, P.shape[1] * P.shape[2], eps, norm_eps), bk64.to(P.dtype)


def recurrent_step_(
    states: torch.Tensor,
    counts: torch.Tensor,
    info: torch.Tensor,
    size: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    slot_weights: torch.Tensor,
    beta: torch.Tensor | None = None,
    boundary: torch.Tensor | None = None,
    active: torch.Tensor | None = None,
    *,
    tau: float,
    eps: float,
    norm_eps: float,
):
    """Advance every row's cache by one token, in place.

    Args:
        states: ``[R, K, Dk, Dv]`` float32/float64 (the compute dtype ``cd``); counts ``[R, K]`` int64;
            info ``[R, K]`` float; size ``[R]`` int64 — the cache, updated in place.
        q, k: ``[R, Dk]`` and v ``[R, Dv]`` in ``cd``; g ``[R]`` (any float dtype); slot_weights ``[R, K]`` in ``cd``.
        beta: ``[R]`` (delta rule) or None (scalar decay).
        boundary: ``[R]`` bool overriding the decisions, or None.
        active: ``[R]`` bool or None (all): rows past the end of their sequence (variable-length batches) take
            no decision and count no token; their inputs must be zero with ``g = 0`` so the states stay.

    Returns:
        ``(o [R, Dv] cd, score [R] float64, start [R] bool, merged [R] int64)``.
    """
    R, K, Dk, Dv = states.shape
    cd = states.dtype
    rows = torch.arange(R, device=states.device)
    slots = torch.arange(K, device=states.device)
    g64 = g.to(torch.float64)
    a = torch.exp(g64)
    a_cd = a.to(cd)

    # 1. Score, from the open slot P (before the step) and the token's increment u = P' - a P.
    has_slot = size > 0
    open_idx = (size - 1).clamp(min=0)
    score, bk = _open_slot_score(states[rows, open_idx], k, v, g64, beta, eps, norm_eps)
    score = torch.where(has_slot, score, torch.zeros_like(score))
    decided = score >= tau if boundary is None else boundary
    start = ~has_slot | decided
    if active is not None:
        start = start & active

    # 2. Transition: every slot becomes A_t(S_i).
    if beta is not None:
        kS = torch.einsum("rd,rkde->rke", k, states)  # k^T S_i
        states.view(R * K, Dk, Dv).baddbmm_(
            bk.unsqueeze(1).expand(R, K, Dk).reshape(R * K, Dk, 1), kS.reshape(R * K, 1, Dv), alpha=-1.0
        )
    states.mul_(a_cd.view(R, 1, 1, 1))

    # 3a. A new slot in a full cache first merges the lowest-density adjacent pair (ties: the oldest).
    merged = _merge_where_full_(states, counts, info, size, start)
    # 3b. Update: extend the open slot, or append the token's own slot.
    target = torch.where(start, size, open_idx)
    s = bk.unsqueeze(2) * v.unsqueeze(1)  # s_t = (beta) k v^T
    current = states[rows, target]
    states[rows, target] = torch.where(start.view(R, 1, 1), s, current + s)
    step = torch.ones_like(target) if active is None else active.to(target.dtype)
    counts[rows, target] = torch.where(start, torch.ones_like(target), counts[rows, target] + step)
    score_info = score.to(info.dtype)
    info[rows, target] = torch.where(start, score_info, info[rows, target] + score_info)
    size.add_(start.to(size.dtype))

    # 4. Read: o = sum_j lambda[j] q^T S_{m-1-j}, as one product over (slot, Dk).
    recency = size.unsqueeze(1) - 1 - slots
    coef = torch.where(recency >= 0, slot_weights.gather(1, recency.clamp(min=0)), torch.zeros_like(slot_weights))
    o = torch.bmm((coef.unsqueeze(2) * q.unsqueeze(1)).view(R, 1, K * Dk), states.view(R, K * Dk, Dv)).squeeze(1)
    return o, score, start, merged


def recurrent_forward(
    q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, *, tau: float, eps: float, norm_eps: float,
    lengths: torch.Tensor | None = None,
):
    """Run :func:`recurrent_step_` over the tokens of rows-first tensors.

    Args:
        q, k ``[R, T, Dk]``, v ``[R, T, Dv]``, slot_weights ``[R, T, K]`` in the states' dtype; g ``[R, T]``;
        beta ``[R, T]`` or None; boundaries ``[R, T]`` bool or None; the cache tensors as in
        :func:`recurrent_step_` (updated in place; use a float64 ``info`` for float64 merge densities).
        lengths: ``[R]`` int64 or None: row r's tokens are ``0 .. lengths[r] - 1`` (zero padding after them).

    Returns:
        ``(o [R, T, Dv], scores [R, T] float64, starts [R, T] bool, merged [R, T] int64)``.
    """
    R, T = g.shape
    o = q.new_empty((R, T, v.shape[-1]))
    scores = torch.empty((R, T), dtype=torch.float64, device=q.device)
    starts = torch.empty((R, T), dtype=torch.bool, device=q.device)
    merged = torch.empty((R, T), dtype=torch.int64, device=q.device)
    for t in range(T):
        o[:, t], scores[:, t], starts[:, t], merged[:, t] = recurrent_step_(
            states, counts, info, size, q[:, t], k[:, t], v[:, t], g[:, t], slot_weights[:, t],
            None if beta is None else beta[:, t], None if boundaries is None else boundaries[:, t],
            None if lengths is None else lengths > t, tau=tau, eps=eps, norm_eps=norm_eps,
        )
    return o, scores, starts, merged
