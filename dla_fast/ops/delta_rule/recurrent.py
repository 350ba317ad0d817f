"""The gated delta-rule backbone, per token: the forward over the shared torch recurrence, and its backward.

All slots share the transition ``A_t(X) = a_t (X - beta_t k_t k_t^T X)``. ``dla_fast.forward`` runs the chunked
form (``chunk_torch.py``, docs/delta-rule-chunked.md); :func:`forward_delta_rule` runs
:func:`~dla_fast.ops.common.recurrent.recurrent_step_` token by token (vectorised over rows) and stays as the
per-token baseline. The backward (any forward: it takes the partition only) still takes explicit per-token
adjoint steps.
"""

from __future__ import annotations

import math

import torch

from ..common.layout import rows, unrows
from ..common.recurrent import recurrent_forward
from ..common.score import score_partials
from ..common.structure import Structure


def forward_delta_rule(q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, *, tau, eps, norm_eps,
                       lengths=None):
    """The delta-rule forward over ``[B, T, H, ...]`` inputs, the cache (``[B, H, ...]``) updated in place;
    ``lengths`` ``[B]`` or None as in ``scalar_decay.chunk_torch.forward_scalar_decay``.

    Returns ``(o [B, T, H, Dv], scores, starts, merged [B, T, H])`` in the states' dtype / float64 / bool / int64.
    """
    B, T, H, _ = q.shape
    K, Dk, Dv = states.shape[2:]
    cd = states.dtype
    R = B * H
    o, scores, starts, merged = recurrent_forward(
        rows(q, cd), rows(k, cd), rows(v, cd), rows(g, torch.float64), rows(slot_weights, cd),
        rows(beta, cd), rows(boundaries, torch.bool), states.view(R, K, Dk, Dv), counts.view(R, K), info.view(R, K),
        size.view(R), tau=tau, eps=eps, norm_eps=norm_eps,
        lengths=None if lengths is None else lengths.to(q.device).repeat_interleave(H),
    )
    return unrows(o, B, H), unrows(scores, B, H), unrows(starts, B, H), unrows(merged, B, H)


def _delta_step(X, size, k, v, g, beta, start, merged):
    """One token of the delta-rule recurrence with the decisions given (rows vectorised).

    Returns ``(u, Y, Xpost, size_post, target)``: ``u_j = X_j^T k``, ``Y`` the transitioned slots (before the
    merge), ``Xpost`` the slots after the update, ``target`` the slot receiving the token.
    """
    R, K = X.shape[:2]
    rows = torch.arange(R, device=X.device)
    slots = torch.arange(K, device=X.device)
    a = torch.exp(g).view(R, 1, 1, 1)
    b = beta.view(R, 1, 1, 1)
    u = torch.einsum("rd,rjde->rje", k, X)  # k^T X_j
    Y = a * (X - b * k.view(R, 1, -1, 1) * u.unsqueeze(2))
    i = torch.where(merged >= 0, merged, torch.full_like(merged, K))
    src = (slots.unsqueeze(0) + (slots.unsqueeze(0) > i.unsqueeze(1)).to(torch.int64)).clamp(max=K - 1)
    Ym = Y.gather(1, src.view(R, K, 1, 1).expand_as(Y))
    has = merged >= 0
    ic = i.clamp(max=K - 2)
    Ym[rows, ic] = torch.where(has.view(R, 1, 1), Ym[rows, ic] + Y[rows, ic + 1], Ym[rows, ic])
    Ym[rows, K - 1] = torch.where(has.view(R, 1, 1), torch.zeros_like(Ym[rows, K - 1]), Ym[rows, K - 1])
    size_m = size - has.to(size.dtype)
    target = torch.where(start, size_m, size_m - 1)
    s = beta.view(R, 1, 1) * k.unsqueeze(2) * v.unsqueeze(1)
    Xp = Ym.clone()
    Xp[rows, target] = torch.where(start.view(R, 1, 1), s, Ym[rows, target] + s)
    return u, Y, Xp, size_m + start.to(size.dtype), target


def _checkpointed_states(init, sizes, k, v, g, beta, starts, merged, open_idx, every: int, score_path: bool):
    """The slot states before every ``every``-th token, the final states and, for the surrogate, the score's
    scalars ``(nP, x, ss)`` of every token (float64 ``[R, T]``) or None."""
    R, T = g.shape
    rows = torch.arange(R, device=g.device)
    scalars = [torch.zeros((R, T), dtype=torch.float64, device=g.device) for _ in range(3)] if score_path else None
    checkpoints = []
    X = init
    for t in range(T):
        if t % every == 0:
            checkpoints.append(X)
        if score_path:
            P = X[rows, open_idx[:, t]].to(torch.float64)
            y = (P.transpose(1, 2) @ k[:, t].to(torch.float64).unsqueeze(-1)).squeeze(-1)
            w = v[:, t].to(torch.float64) - torch.exp(g[:, t].to(torch.float64)).unsqueeze(1) * y
            b64 = beta[:, t].to(torch.float64)
            scalars[0][:, t] = P.square().sum((1, 2))
            scalars[1][:, t] = b64 * (y * w).sum(1)
            scalars[2][:, t] = b64 * b64 * k[:, t].to(torch.float64).square().sum(1) * w.square().sum(1)
        X = _delta_step(X, sizes[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], starts[:, t], merged[:, t])[2]
    return checkpoints, X, scalars


def _token_adjoint(t, S, dX, q, k, v, g, beta, lam, dO, sizes, starts, merged, grads):
    """The adjoint of token t's step (read, update, merge, transition) given the states S before it:
    accumulates into ``grads`` and returns dL/dS."""
    R, K = S.shape[:2]
    rows = torch.arange(R, device=S.device)
    slots = torch.arange(K, device=S.device)
    dq, dk, dv, dg, dbeta, dlam = (grads[n] for n in ("dq", "dk", "dv", "dg", "dbeta", "dlam"))
    kt, vt, qt, bt, dOt = k[:, t], v[:, t], q[:, t], beta[:, t], dO[:, t]
    u, Y, Xp, m, target = _delta_step(S, sizes[:, t], kt, vt, g[:, t], bt, starts[:, t], merged[:, t])
    # 4. Read: o = sum_j coef_j q^T Xp_j, coef_j = lam[m - 1 - j] for j < m.
    rec = m.unsqueeze(1) - 1 - slots.unsqueeze(0)
    live = rec >= 0
    coef = torch.gather(lam[:, t], 1, rec.clamp(min=0)) * live
    XdO = Xp @ dOt.view(R, 1, -1, 1)  # Xp_j dO: [R, K, Dk, 1]
    dq[:, t] = (coef.view(R, K, 1) * XdO.squeeze(-1)).sum(1)
    dlam[:, t].scatter_add_(1, rec.clamp(min=0), (XdO.squeeze(-1) * qt.unsqueeze(1)).sum(-1) * live)
    dX = dX + coef.view(R, K, 1, 1) * qt.view(R, 1, -1, 1) * dOt.view(R, 1, 1, -1)
    # 3. Update: s = beta k v^T into slot `target` (a new slot, or added to the open one).
    ds = dX[rows, target]
    dbeta[:, t] = torch.einsum("rd,rde,re->r", kt, ds, vt)
    dk[:, t] = bt.unsqueeze(1) * (ds @ vt.unsqueeze(-1)).squeeze(-1)
    dv[:, t] = bt.unsqueeze(1) * (ds.transpose(1, 2) @ kt.unsqueeze(-1)).squeeze(-1)
    dX[rows, target] = torch.where(starts[:, t].view(R, 1, 1), torch.zeros_like(ds), ds)
    # Merge: pre-merge slots i and i + 1 both receive the merged slot's gradient.
    i = torch.where(merged[:, t] >= 0, merged[:, t], torch.full_like(merged[:, t], K))
    src = slots.unsqueeze(0) - (slots.unsqueeze(0) > i.unsqueeze(1)).to(torch.int64)
    dY = dX.gather(1, src.view(R, K, 1, 1).expand_as(dX))
    # 2. Transition: Y_j = a (S_j - beta k (k^T S_j)).
    a = torch.exp(g[:, t]).view(R, 1, 1, 1)
    w = torch.einsum("rd,rjde->rje", kt, dY)  # k^T dY_j
    dg[:, t] = (dY * Y).sum((1, 2, 3))
    dbeta[:, t] -= a.view(R) * (w * u).sum((1, 2))
    dk[:, t] -= (a * bt.view(R, 1, 1, 1)).view(R, 1) * (
        torch.einsum("rjde,rje->rd", dY, u) + torch.einsum("rjde,rje->rd", S, w))
    return a * (dY - bt.view(R, 1, 1, 1) * kt.view(R, 1, -1, 1) * w.unsqueeze(2))


def _score_adjoint(t, S, dX, k, v, g, beta, open_idx, partials, grads):
    """The score of token t read the open slot ``P = S[open]`` before the step: its adjoint (the surrogate's
    ``dL/dI_t`` through ``nP``, ``x``, ``ss`` and ``g``), accumulated into ``grads`` and ``dX``."""
    R = S.shape[0]
    rows = torch.arange(R, device=S.device)
    f_nP, f_x, f_ss, f_g = partials
    kt, vt, bt = k[:, t], v[:, t], beta[:, t]
    P = S[rows, open_idx[:, t]]
    a1 = torch.exp(g[:, t]).view(R, 1)
    fx, fss, fnP = f_x[:, t].unsqueeze(1), f_ss[:, t].unsqueeze(1), f_nP[:, t].view(R, 1, 1)
    b1 = bt.view(R, 1)
    y = (P.transpose(1, 2) @ kt.unsqueeze(-1)).squeeze(-1)  # P^T k
    ws = vt - a1 * y
    kk = kt.square().sum(1, keepdim=True)
    dw = fss * 2.0 * b1 * b1 * kk * ws  # from ss = beta^2 |k|^2 |w|^2
    dy = fx * b1 * (vt - 2.0 * a1 * y) - a1 * dw  # x = beta (y.v - a y.y); w = v - a y
    grads["dbeta"][:, t] += (fx * (y * ws).sum(1, keepdim=True) + fss * 2.0 * b1 * kk * ws.square().sum(1,
                             keepdim=True)).squeeze(1)
    grads["dv"][:, t] += fx * b1 * y + dw
    grads["dk"][:, t] += (fss * 2.0 * b1 * b1 * ws.square().sum(1, keepdim=True) * kt
                          + (P @ dy.unsqueeze(-1)).squeeze(-1))
    da = -fx * b1 * y.square().sum(1, keepdim=True) - (y * dw).sum(1, keepdim=True)
    grads["dg"][:, t] += (a1 * da).squeeze(1) + f_g[:, t]
    dX[rows, open_idx[:, t]] += 2.0 * fnP * P + kt.unsqueeze(-1) * dy.unsqueeze(1)


def delta_rule_backward(q, k, v, g, beta, lam, init, structure: Structure, dO, dS_final, *,
                        checkpoint_every: int | None = None, dscores: torch.Tensor | None = None,
                        eps: float = 1e-6, norm_eps: float = 1e-6, **_):
    """Gradients of ``<dO, o> + <dS_final, S_final> (+ <dscores, I>)`` for the gated delta rule, partition fixed.

    ``dscores``: as in ``chunk_torch_bwd.scalar_decay_backward``. The score of token t reads the open slot ``P``
    before it: ``nP = ||P||^2``, ``y = P^T k``, ``w = v - a y``, ``x = beta y.w``, ``ss = beta^2 ||k||^2 ||w||^2``;
    its adjoint is one more explicit term of the per-token step (``P`` is at hand there).

    Per-token adjoint steps, each vectorised over rows and slots (no autograd). The states before each
    token are recomputed segment by segment from checkpoints every ``checkpoint_every`` tokens (default
    ``ceil(sqrt(T))``): ``O(sqrt(T) K Dk Dv)`` memory per row, two forward passes of recomputation.

    Returns ``(dq, dk, dv, dg, dbeta, dlam, dinit, S_final)``.
    """
    R, T, Dk = q.shape
    sizes = structure.sizes_before()  # [R, T]
    starts, merged = structure.starts, structure.merged.to(torch.int64)
    open_idx = (sizes - 1).clamp(min=0)
    every = checkpoint_every or max(1, math.isqrt(max(T - 1, 0)) + 1)
    checkpoints, S_final, scalars = _checkpointed_states(init, sizes, k, v, g, beta, starts, merged, open_idx, every,
                                                         dscores is not None)
    partials = None
    if dscores is not None:
        partials = [t.to(q.dtype) for t in score_partials(*scalars, g.to(torch.float64), dscores,
                                                          float(Dk * v.shape[-1]), eps, norm_eps)]
    grads = dict(dq=torch.zeros_like(q), dk=torch.zeros_like(k), dv=torch.zeros_like(v), dg=torch.zeros_like(g),
                 dbeta=torch.zeros_like(beta), dlam=torch.zeros_like(lam))
    dX = torch.zeros_like(init) if dS_final is None else dS_final.clone()
    for seg in range(len(checkpoints) - 1, -1, -1):
        t_a, t_b = seg * every, min(T, (seg + 1) * every)
        Xs = [checkpoints[seg]]
        for t in range(t_a, t_b - 1):
            Xs.append(_delta_step(Xs[-1], sizes[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], starts[:, t],
                                  merged[:, t])[2])
        for t in range(t_b - 1, t_a - 1, -1):
            S = Xs[t - t_a]
            dX = _token_adjoint(t, S, dX, q, k, v, g, beta, lam, dO, sizes, starts, merged, grads)
            if partials is not None:
                _score_adjoint(t, S, dX, k, v, g, beta, open_idx, partials, grads)
    return (*(grads[n] for n in ("dq", "dk", "dv", "dg", "dbeta", "dlam")), dX, S_final)
