"""Gradients through ``dla_fast.forward`` with the partition held fixed (docs/training.md).

The forward's discrete decisions (which tokens open a slot, which pair merges) are recorded and treated
as constants for the step, as with argmax routing. Given them, the output is linear in ``v``, bilinear in
``q`` and ``k``, linear in ``slot_weights`` and in the initial states, and depends on ``g`` through the
decays. This module holds

- the **structure** rebuilt from the compact per-token record (``starts``, ``merged``, the initial cache
  size): per-chunk read and update tables (numba, scalar work, no ``Dk x Dv`` data);
- :func:`scalar_decay_backward`: the explicit chunked backward of the scalar-decay backbone — the
  intra-chunk masked attention backward, batched over chunks, plus a reverse pass over chunks carrying
  ``dS`` (the gradient w.r.t. every slot state at the chunk end) through the state update; the chunk-start
  states are recomputed from square-root checkpoints; ``dg`` from the reverse-cumsum identity;
- :func:`delta_rule_backward`: the explicit backward of the gated delta-rule recurrence (per-token adjoint
  steps vectorised over rows, states recomputed per segment from square-root checkpoints);
- :class:`DLAFunction`, the ``torch.autograd.Function`` that wires a forward result to these backwards
  (a forward that ran the Triton kernels gets ``dla_fast.triton_backward``), and the straight-through surrogate for
  ``tau`` (``surrogate_temperature``): its ``dL/dI_t`` goes to ``tau`` and, through the score's adjoint
  (``_score_adjoint`` for scalar decay, a term of the delta rule's step), into the inputs.

Row layout inside: ``R = B * H`` rows, time second (``[R, T, ...]``); chunk-major ``[nC, R, C, ...]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ._kernels import njit
from .recurrent import information_score

# ---------------------------------------------------------------------------------------------
# The structure, rebuilt from starts / merged / the initial size (numba, scalar work)
# ---------------------------------------------------------------------------------------------


@njit
def _open_slot(pos, m, merged_index, t):
    """Token ``t`` opens a slot: the live slot starts ``pos[:m]`` lose the right start of the merged pair
    (``merged_index``, -1 if none: slots (i, i + 1) became one) and gain ``t``. Returns the new ``m``."""
    if merged_index >= 0:
        for j in range(merged_index + 1, m - 1):
            pos[j] = pos[j + 1]
        m -= 1
    pos[m] = t
    return m + 1


@njit
def _chunk_tables(starts, merged, size0, C, JF, destF, dest, m_start, pos_start):
    """Per-chunk tables of the fixed partition, every chunk (``O(T K)`` integers per row).

    Args:
        starts: ``[R, T]`` bool; merged: ``[R, T]`` int64 (-1: none); size0: ``[R]`` int64 initial sizes.
        C: chunk length.

    Outputs (written; -1 marks unused entries):
        JF: ``[nC, R, C, K]`` recency at token t of the slot holding start slot i (the i-th slot live at
            the chunk start, oldest first).
        destF: ``[nC, R, K]`` end slot (index in the cache at the chunk end) of start slot i.
        dest: ``[nC, R, C]`` end slot of the chunk's token s.
        m_start: ``[nC + 1, R]`` live slots at each chunk start (the last entry: at the end of the call).
        pos_start: ``[nC, R, K]`` first token of every live slot at the chunk start (initial slots < 0).
    """
    R, T = starts.shape
    K = JF.shape[3]
    nC = m_start.shape[0] - 1
    pos = np.empty(K, dtype=np.int64)
    sp = np.empty(K, dtype=np.int64)
    for r in range(R):
        m = size0[r]
        for i in range(m):
            pos[i] = i - m
        for c in range(nC):
            c0 = c * C
            n = min(C, T - c0)
            m0 = m
            m_start[c, r] = m0
            for i in range(m0):
                sp[i] = pos[i]
                pos_start[c, r, i] = pos[i]
            for t in range(n):
                if starts[r, c0 + t]:
                    m = _open_slot(pos, m, merged[r, c0 + t], c0 + t)
                j = m - 1
                for i in range(m0 - 1, -1, -1):
                    while pos[j] > sp[i]:
                        j -= 1
                    JF[c, r, t, i] = m - 1 - j
            j = m - 1
            for i in range(m0 - 1, -1, -1):
                while pos[j] > sp[i]:
                    j -= 1
                destF[c, r, i] = j
            j = m - 1
            for s in range(n - 1, -1, -1):
                while pos[j] > c0 + s:
                    j -= 1
                dest[c, r, s] = j
        m_start[nC, r] = m


@njit
def _recency(starts, merged, C, m_start, pos_start, c_lo, J):
    """``J[c - c_lo, r, t, s]``: recency at token t of the slot holding token s (``s <= t``, same chunk); -1 else."""
    R, T = starts.shape
    nb_, _, _, _ = J.shape
    K = pos_start.shape[2]
    pos = np.empty(K, dtype=np.int64)
    for r in range(R):
        for cc in range(nb_):
            c = c_lo + cc
            c0 = c * C
            n = min(C, T - c0)
            m = m_start[c, r]
            for i in range(m):
                pos[i] = pos_start[c, r, i]
            for t in range(C):
                for s in range(C):
                    J[cc, r, t, s] = -1
            for t in range(n):
                if starts[r, c0 + t]:
                    m = _open_slot(pos, m, merged[r, c0 + t], c0 + t)
                j = m - 1
                for s in range(t, -1, -1):
                    while pos[j] > c0 + s:
                        j -= 1
                    J[cc, r, t, s] = m - 1 - j


@dataclass
class Structure:
    """The partition a forward decided, in compact per-token form (what :class:`DLAFunction` saves).

    Attributes:
        starts: ``[R, T]`` bool, token t opened a slot.
        merged: ``[R, T]`` integer (int8 when K <= 128), the merged pair index at t, or -1.
        size0: ``[R]`` int64, the initial cache's size.
        K: capacity.
    """

    starts: torch.Tensor
    merged: torch.Tensor
    size0: torch.Tensor
    K: int
    triton: Optional[dict] = None  # the Triton forward's own structure tensors, when it ran (its backward's input)

    def numpy(self):
        return (self.starts.cpu().numpy().astype(np.bool_), self.merged.cpu().numpy().astype(np.int64),
                self.size0.cpu().numpy().astype(np.int64))

    def sizes_before(self) -> torch.Tensor:
        """``[R, T]`` int64: live slots before each token."""
        delta = self.starts.to(torch.int64) - (self.merged >= 0).to(torch.int64)
        after = self.size0.unsqueeze(1) + delta.cumsum(1)
        return after - delta


# ---------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------


def _chunks(x: torch.Tensor, C: int, nC: int) -> torch.Tensor:
    """``[R, T, *F]`` -> zero-padded ``[nC, R, C, *F]``."""
    R, T = x.shape[:2]
    pad = nC * C - T
    if pad:
        x = torch.cat([x, x.new_zeros((R, pad, *x.shape[2:]))], 1)
    return x.view(R, nC, C, *x.shape[2:]).transpose(0, 1)


def _unchunk(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[nC, R, C, *F]`` -> ``[R, T, *F]``."""
    nC, R, C = x.shape[:3]
    return x.transpose(0, 1).reshape(R, nC * C, *x.shape[3:])[:, :T]


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    return x.flip(1).cumsum(1).flip(1)


def _onehot(index: torch.Tensor, K: int, dtype) -> torch.Tensor:
    """``index [R, N]`` (-1: none) -> ``[R, K, N]`` with ``out[r, j, n] = (index[r, n] == j)``."""
    return (index.unsqueeze(1) == torch.arange(K, device=index.device).view(1, K, 1)).to(dtype)


# Elements of one [block, R, C, C] tensor in the intra-chunk backward.
_BLOCK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Scalar decay: the chunked backward
# ---------------------------------------------------------------------------------------------


def scalar_decay_backward(q, k, v, g, lam, init, structure: Structure, dO, dS_final, *, chunk_size: int = 64,
                          checkpoint_every: Optional[int] = None, dscores: Optional[torch.Tensor] = None,
                          eps: float = 1e-6, norm_eps: float = 1e-6):
    """Gradients of ``<dO, o> + <dS_final, S_final> (+ <dscores, I>)`` for the scalar-decay backbone, partition fixed.

    ``dscores`` ``[R, T]`` float64 (zero on tokens the score did not decide): a gradient w.r.t. the scores
    ``I_t`` (the surrogate's), propagated into k, v, g and the initial open state (docs/training.md).

    Args:
        q, k ``[R, T, Dk]``; v, dO ``[R, T, Dv]``; g ``[R, T]``; lam ``[R, T, K]``; init ``[R, K, Dk, Dv]``
        (the initial slot states, zero beyond the initial size) — all in the compute dtype ``cd``.
        dS_final: ``[R, K, Dk, Dv]`` or None: the gradient w.r.t. the final cache's states.
        chunk_size: ``C``. checkpoint_every: chunks between stored states in the recomputation (default
        ``ceil(sqrt(nC))``: ``O(sqrt(T / C) K Dk Dv)`` extra memory per row, two state passes).

    Returns:
        ``(dq, dk, dv, dg, dlam, dinit)`` in the layouts of the inputs.
    """
    R, T, Dk = q.shape
    Dv, K = v.shape[-1], lam.shape[-1]
    cd, device = q.dtype, q.device
    C = chunk_size
    nC = max(1, -(-T // C))
    if T == 0:  # nothing happened: the final states are the initial ones
        dinit = torch.zeros_like(init) if dS_final is None else dS_final.clone()
        zeros = lambda x: torch.zeros_like(x)  # noqa: E731
        return zeros(q), zeros(k), zeros(v), zeros(g), zeros(lam), dinit
    starts_np, merged_np, size0_np = structure.numpy()

    JF_np = np.full((nC, R, C, K), -1, dtype=np.int64)
    destF_np = np.full((nC, R, K), -1, dtype=np.int64)
    dest_np = np.full((nC, R, C), -1, dtype=np.int64)
    m_start = np.zeros((nC + 1, R), dtype=np.int64)
    pos_start = np.zeros((nC, R, K), dtype=np.int64)
    if T:
        _chunk_tables(starts_np, merged_np, size0_np, C, JF_np, destF_np, dest_np, m_start, pos_start)
    else:
        m_start[:] = size0_np
    as_t = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
    JF, destF, dest = as_t(JF_np), as_t(destF_np), as_t(dest_np)

    qc, kc, vc, dOc, lamc = (_chunks(x, C, nC) for x in (q, k, v, dO, lam))
    Gc = _chunks(g.to(torch.float64), C, nC).cumsum(-1)  # [nC, R, C] (padding: g = 0, flat)
    decay_in = torch.exp(Gc).to(cd)  # chunk-start states through token t
    end_decay = torch.exp(Gc[..., -1]).to(cd)  # ... through the chunk end, [nC, R]
    tok_decay = torch.exp(Gc[..., -1:] - Gc).to(cd)  # token s through the chunk end

    dq = torch.zeros_like(qc)
    dk = torch.zeros_like(kc)
    dv = torch.zeros_like(vc)
    dlam = torch.zeros_like(lamc)

    # 2. The slot states at every chunk start, recomputed from checkpoints; reverse pass carrying dS.
    # Per chunk: mF = the most slots live at its start in any row (the reads touch only those), and the end
    # slots receiving its tokens, a suffix first_r .. first_r + Rt - 1 of each row's cache (the tokens are
    # the newest); everything below is a 3-D bmm over rows of (slot, feature).
    mF = m_start[:nC].max(1)
    first_np = np.maximum(dest_np[:, :, 0], 0)  # [nC, R]
    Rt_np = np.maximum((dest_np.max(2) - first_np).max(1) + 1, 1)  # [nC]
    tables_cache: dict = {}

    def tables(c):
        """``(Mf [R, K, K], idx [R, Rt], Md [R, Rt, C])``: start slot i -> end slot j, the token slots, and
        ``Md[r, j, s] = exp(GL - Gc[s])`` iff token s lands in end slot ``first_r + j``."""
        if c not in tables_cache:
            Rt = int(Rt_np[c])
            first = torch.as_tensor(first_np[c], device=device)
            idx = (first.unsqueeze(1) + torch.arange(Rt, device=device)).clamp(max=K - 1)
            rel = torch.where(dest[c] >= 0, dest[c] - first.unsqueeze(1), torch.full_like(dest[c], -1))
            tables_cache[c] = (_onehot(destF[c], K, cd), idx, _onehot(rel, Rt, cd) * tok_decay[c].unsqueeze(1))
        return tables_cache[c]

    def advance(F, c):
        """The slot states at the end of chunk c from those at its start."""
        Mf, idx, Md = tables(c)
        Rt = idx.shape[1]
        S = torch.bmm(Mf, F.reshape(R, K, Dk * Dv)) * end_decay[c].view(R, 1, 1)
        # sum_s Md[j, s] k_s v_s^T for the Rt token slots: [R, Rt * Dk, C] @ [R, C, Dv]
        wk = (Md.unsqueeze(2) * kc[c].transpose(1, 2).unsqueeze(1)).reshape(R, Rt * Dk, C)
        U = torch.bmm(wk, vc[c]).view(R, Rt, Dk * Dv)
        return S.scatter_add_(1, idx.unsqueeze(-1).expand(R, Rt, Dk * Dv), U).view(R, K, Dk, Dv)

    rows_i = torch.arange(R, device=device)
    score_path = dscores is not None
    if score_path:
        # The open slot before token t began at p_t (the last start before t; -1: before the call). Its
        # state is e^{Gc[t-1]} P_c (if p_t < c0, P_c = the open slot at the chunk start) plus the chunk's
        # tokens max(p_t, c0) .. t-1. x_t = k_t^T P v_t enters the score and, through ||P||^2, later scores.
        t_idx = torch.arange(T, device=device)
        last = torch.where(structure.starts, t_idx, torch.full_like(t_idx, -1)).cummax(1).values
        p_open = torch.nn.functional.pad(last[:, :-1], (1, 0), value=-1)
        c0_of = (t_idx // C) * C
        carried = (p_open < c0_of) & (structure.sizes_before() > 0)
        carried_c = _chunks(carried.to(cd), C, nC)
        lo_c = _chunks(torch.maximum(p_open, c0_of) - c0_of, C, nC)  # chunk-local first token of the run
        open_at = torch.as_tensor(np.maximum(m_start[:nC] - 1, 0), device=device)  # [nC, R]
        Gp = torch.nn.functional.pad(Gc[..., :-1], (1, 0))  # Gc[t - 1]
        carry_decay = torch.exp(Gp).to(cd)
        carry_x = torch.zeros((nC, R, C), dtype=cd, device=device)

    every = checkpoint_every or max(1, math.isqrt(nC - 1) + 1 if nC > 1 else 1)
    checkpoints = []
    F = init
    for c in range(nC):
        if c % every == 0:
            checkpoints.append(F)
        if score_path:
            P = F[rows_i, open_at[c]]
            carry_x[c] = (torch.bmm(kc[c], P) * vc[c]).sum(-1) * carry_decay[c] * carried_c[c]
        F = advance(F, c)
    S_final = F

    if score_path:
        dk_reader = torch.zeros_like(kc)  # k_t as the reader of x_t: not a key, kept out of the dg identity
        x_c = carry_x.clone()
        for b0 in range(0, nC, max(1, _BLOCK_ELEMENTS // max(1, R * C * C))):
            b1 = min(nC, b0 + max(1, _BLOCK_ELEMENTS // max(1, R * C * C)))
            Mx = _run_mask(lo_c[b0:b1], C)
            Dp = torch.exp((Gp[b0:b1].unsqueeze(-1) - Gc[b0:b1].unsqueeze(-2)).masked_fill(~Mx, -math.inf)).to(cd)
            kb, vb = kc[b0:b1], vc[b0:b1]
            x_c[b0:b1] += (Dp * (kb @ kb.transpose(-1, -2)) * (vb @ vb.transpose(-1, -2))).sum(-1)
        x = _unchunk(x_c, T).to(torch.float64)
        ss = (k * k).sum(-1).to(torch.float64) * (v * v).sum(-1).to(torch.float64)
        size0 = structure.size0
        P0 = init[rows_i, (size0 - 1).clamp(min=0)]  # the initial open slot
        nP0 = torch.where(size0 > 0, P0.to(torch.float64).square().sum((1, 2)), torch.zeros_like(ss[:, 0]))
        dx, dss, dg_direct, lam0 = _score_adjoint(structure.starts, x, ss, g.to(torch.float64), nP0, dscores,
                                                  float(Dk * Dv), eps, norm_eps)
        dx_c = _chunks(dx.to(cd), C, nC)
        dk_reader += _chunks((2.0 * dss * (v * v).sum(-1).to(torch.float64)).to(cd).unsqueeze(-1) * k, C, nC)
        dv += _chunks((2.0 * dss * (k * k).sum(-1).to(torch.float64)).to(cd).unsqueeze(-1) * v, C, nC)
        dG_reader = torch.nn.functional.pad((dx * x)[:, 1:], (0, 1))  # every term of x_t decays from t - 1

    # 1. Intra-chunk masked attention, batched over blocks of chunks.
    block = max(1, _BLOCK_ELEMENTS // max(1, R * C * C))
    causal = torch.ones((C, C), dtype=torch.bool, device=device).tril()
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        J_np = np.empty((b1 - b0, R, C, C), dtype=np.int64)
        if T:
            _recency(starts_np, merged_np, C, m_start, pos_start, b0, J_np)
        else:
            J_np.fill(-1)
        J = as_t(J_np)
        valid = J >= 0
        Jc = J.clamp(min=0)
        lamb = lamc[b0:b1]
        Wl = torch.gather(lamb, -1, Jc) * valid  # lam_t[J[t, s]]
        Gb = Gc[b0:b1]
        decay = torch.exp((Gb.unsqueeze(-1) - Gb.unsqueeze(-2)).masked_fill(~causal, -math.inf)).to(cd)
        qb, kb, vb, dOb = qc[b0:b1], kc[b0:b1], vc[b0:b1], dOc[b0:b1]
        A = (qb @ kb.transpose(-1, -2)) * decay  # (q_t . k_s) exp(Gc[t] - Gc[s])
        dP = dOb @ vb.transpose(-1, -2)  # dO_t . v_s
        dv[b0:b1] += (A * Wl).transpose(-1, -2) @ dOb
        dM = dP * Wl * decay
        dq[b0:b1] += dM @ kb
        dk[b0:b1] += dM.transpose(-1, -2) @ qb
        dlam[b0:b1].scatter_add_(-1, Jc, dP * A * valid)

        if score_path:  # x_t's intra-chunk part: sum_{s in run, s < t} e^{Gc[t-1]-Gc[s]} (k_t.k_s)(v_t.v_s)
            Mx = _run_mask(lo_c[b0:b1], C)
            Dp = torch.exp((Gp[b0:b1].unsqueeze(-1) - Gb.unsqueeze(-2)).masked_fill(~Mx, -math.inf)).to(cd)
            E = dx_c[b0:b1].unsqueeze(-1) * Dp
            EV = E * (vb @ vb.transpose(-1, -2))
            EK = E * (kb @ kb.transpose(-1, -2))
            dk_reader[b0:b1] += EV @ kb
            dk[b0:b1] += EV.transpose(-1, -2) @ kb
            dv[b0:b1] += EK @ vb + EK.transpose(-1, -2) @ vb


    dS = torch.zeros_like(init) if dS_final is None else dS_final.clone()
    for seg in range(len(checkpoints) - 1, -1, -1):
        c_a, c_b = seg * every, min(nC, (seg + 1) * every)
        Fs = [checkpoints[seg]]
        for c in range(c_a, c_b - 1):
            Fs.append(advance(Fs[-1], c))
        for c in range(c_b - 1, c_a - 1, -1):
            F = Fs[c - c_a]
            Mf, idx, Md = tables(c)
            Rt = idx.shape[1]
            qb, kb, vb, dOb = qc[c], kc[c], vc[c], dOc[c]
            # The state update S_end[j] = e^{GL} sum_{destF[i] = j} F_i + sum_{dest[s] = j} e^{GL - Gc[s]} k_s v_s^T.
            dF = torch.bmm(Mf.transpose(1, 2), dS.reshape(R, K, Dk * Dv)) * end_decay[c].view(R, 1, 1)
            dS_t = dS.reshape(R, K, Dk * Dv).gather(1, idx.unsqueeze(-1).expand(R, Rt, Dk * Dv)).view(R, Rt, Dk, Dv)
            dSv = torch.bmm(dS_t.reshape(R, Rt * Dk, Dv), vb.transpose(1, 2)).view(R, Rt, Dk, C)  # dS_j v_s
            dk[c] += (Md.unsqueeze(2) * dSv).sum(1).transpose(1, 2)
            dSk = torch.bmm(kb, dS_t.transpose(1, 2).reshape(R, Dk, Rt * Dv)).view(R, C, Rt, Dv)  # k_s^T dS_j
            dv[c] += (Md.transpose(1, 2).unsqueeze(-1) * dSk).sum(2)
            # Reads of the start slots: o_t += sum_i coefF[t, i] q_t^T F_i (the first m slots are live).
            m = int(mF[c])
            if m:
                JFc = JF[c, :, :, :m]
                validF = JFc >= 0
                coefF = torch.gather(lamc[c], -1, JFc.clamp(min=0)) * validF * decay_in[c].unsqueeze(-1)  # [R, C, m]
                Z = torch.bmm(dOb, F[:, :m].reshape(R, m * Dk, Dv).transpose(1, 2)).view(R, C, m, Dk)  # (F_i dO_t)^T
                dq[c] += (coefF.unsqueeze(-1) * Z).sum(2)
                dcoef = (Z * qb.unsqueeze(2)).sum(-1)
                dlam[c].scatter_add_(-1, JFc.clamp(min=0), dcoef * validF * decay_in[c].unsqueeze(-1))
                X = (coefF.unsqueeze(-1) * qb.unsqueeze(2)).reshape(R, C, m * Dk)
                dF[:, :m] += torch.bmm(X.transpose(1, 2), dOb).view(R, m, Dk * Dv)
            if score_path:  # x_t's carried part e^{Gc[t-1]} k_t^T P_c v_t (P_c: the open slot at the chunk start)
                w = (dx_c[c] * carried_c[c] * carry_decay[c]).unsqueeze(-1)  # [R, C, 1]
                P = F[rows_i, open_at[c]]
                dk_reader[c] += w * (vb @ P.transpose(1, 2))
                dv[c] += w * (kb @ P)
                dF.view(R, K, Dk, Dv)[rows_i, open_at[c]] += (w * kb).transpose(1, 2) @ vb
            dS = dF.view(R, K, Dk, Dv)
    dinit = dS
    if score_path:  # ||P||^2 of the initial open slot starts the recursion of the open norms
        has = (structure.size0 > 0).to(cd).view(R, 1, 1)
        dinit = dinit.clone()
        dinit[rows_i, (structure.size0 - 1).clamp(min=0)] += 2.0 * lam0.to(cd).view(R, 1, 1) * P0 * has

    dq, dk, dv, dlam = (_unchunk(x, T) for x in (dq, dk, dv, dlam))
    # Every term depends on g only through exp(G[t] - G[s]) (G the cumulative log decay): dL/dG[t] =
    # q_t . dq_t - k_t . dk_t, plus <S_final, dS_final> at the last token; dg is its reverse cumsum.
    dG = (q * dq).sum(-1) - (k * dk).sum(-1)
    dG = dG.to(torch.float64)
    if score_path:
        dG = dG + dG_reader
        dk = dk + _unchunk(dk_reader, T)
    dg = _reverse_cumsum(dG)
    if dS_final is not None and T:
        dg = dg + (S_final * dS_final).sum((1, 2, 3)).to(torch.float64).unsqueeze(1)
    if score_path:
        dg = dg + dg_direct
    return dq, dk, dv, dg.to(cd), dlam, dinit


def _run_mask(lo: torch.Tensor, C: int) -> torch.Tensor:
    """``[..., C, C]``: ``lo[t] <= s < t`` (token s is in the open run before token t, same chunk)."""
    s = torch.arange(C, device=lo.device)
    return (s.view(1, C) >= lo.unsqueeze(-1)) & (s.view(1, C) < s.view(C, 1))


@njit
def _open_norms(starts, x, ss, g, nP0, nP):
    """``nP[r, t] = ||P||^2`` of the open slot before token t, by the recursion of the forward's scan."""
    R, T = x.shape
    for r in range(R):
        n = nP0[r]
        for t in range(T):
            nP[r, t] = n
            if starts[r, t]:
                n = ss[r, t]
            else:
                a = np.exp(g[r, t])
                n = max(a * a * n + 2.0 * a * x[r, t] + ss[r, t], 0.0)


@njit
def _open_norms_adjoint(starts, x, g, nP, f_nP, f_x, f_ss, f_g, dx, dss, dg, lam0):
    """Reverse of :func:`_open_norms`: the gradients of x, ss, g and ``nP0`` given those of every ``nP``."""
    R, T = x.shape
    for r in range(R):
        L = 0.0  # dL/d nP[t + 1]
        for t in range(T - 1, -1, -1):
            dx[r, t] = f_x[r, t]
            dss[r, t] = f_ss[r, t] + L
            dg[r, t] = f_g[r, t]
            if starts[r, t]:
                L = f_nP[r, t]
            else:
                a = np.exp(g[r, t])
                dx[r, t] += 2.0 * a * L
                dg[r, t] += L * (2.0 * a * a * nP[r, t] + 2.0 * a * x[r, t])
                L = f_nP[r, t] + a * a * L
        lam0[r] = L


def _score_partials(nP, x, ss, g, dscores, numel, eps, norm_eps):
    """``dscores * (dI/dnP, dI/dx, dI/dss, dI/dg)`` (float64 ``[R, T]``), zero where ``dscores`` is 0."""
    decided = dscores != 0
    safe = lambda t, fill: torch.where(decided, t, torch.full_like(t, fill))  # noqa: E731
    leaves = [safe(nP, 1.0).requires_grad_(), safe(x, 0.0).requires_grad_(), safe(ss, 1.0).requires_grad_(),
              safe(g, 0.0).requires_grad_()]
    with torch.enable_grad():  # the forward's own formula (recurrent.information_score), elementwise
        I = information_score(*leaves, numel, eps, norm_eps)
        f = torch.autograd.grad(I, leaves, grad_outputs=torch.where(decided, dscores, torch.zeros_like(dscores)))
    # Where the score's norms are 0 (a zero open state, or N(P) unchanged: score 0) they are not
    # differentiable and sqrt's derivative is infinite: we take gradient 0 there.
    return [torch.where(decided & torch.isfinite(t), t, torch.zeros_like(t)) for t in f]


def _score_adjoint(starts, x, ss, g, nP0, dscores, numel, eps, norm_eps):
    """``(dx, dss, dg, dnP0)`` of ``<dscores, I>`` through the score formula and the open-norm recursion."""
    st = starts.cpu().numpy()
    x_np, ss_np, g_np = (t.detach().cpu().numpy() for t in (x, ss, g))
    nP = np.empty_like(x_np)
    _open_norms(st, x_np, ss_np, g_np, nP0.cpu().numpy(), nP)
    f = [t.cpu().numpy() for t in _score_partials(torch.as_tensor(nP, device=x.device), x, ss, g, dscores, numel,
                                                  eps, norm_eps)]
    dx, dss, dg = (np.zeros_like(x_np) for _ in range(3))
    lam0 = np.zeros(x_np.shape[0])
    _open_norms_adjoint(st, x_np, g_np, nP, *f, dx, dss, dg, lam0)
    return tuple(torch.as_tensor(t, device=x.device) for t in (dx, dss, dg, lam0))


# ---------------------------------------------------------------------------------------------
# Delta rule: the explicit backward of the recurrence
# ---------------------------------------------------------------------------------------------


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


def delta_rule_backward(q, k, v, g, beta, lam, init, structure: Structure, dO, dS_final, *,
                        checkpoint_every: Optional[int] = None, dscores: Optional[torch.Tensor] = None,
                        eps: float = 1e-6, norm_eps: float = 1e-6, **_):
    """Gradients of ``<dO, o> + <dS_final, S_final> (+ <dscores, I>)`` for the gated delta rule, partition fixed.

    ``dscores``: as in :func:`scalar_decay_backward`. The score of token t reads the open slot ``P`` before
    it: ``nP = ||P||^2``, ``y = P^T k``, ``w = v - a y``, ``x = beta y.w``, ``ss = beta^2 ||k||^2 ||w||^2``;
    its adjoint is one more explicit term of the per-token step (``P`` is at hand there).

    Per-token adjoint steps, each vectorised over rows and slots (no autograd). The states before each
    token are recomputed segment by segment from checkpoints every ``checkpoint_every`` tokens (default
    ``ceil(sqrt(T))``): ``O(sqrt(T) K Dk Dv)`` memory per row, two forward passes of recomputation.

    Returns ``(dq, dk, dv, dg, dbeta, dlam, dinit)``.
    """
    R, T, Dk = q.shape
    K = lam.shape[-1]
    device = q.device
    rows = torch.arange(R, device=device)
    slots = torch.arange(K, device=device)
    sizes = structure.sizes_before()  # [R, T]
    starts, merged = structure.starts, structure.merged.to(torch.int64)
    every = checkpoint_every or max(1, math.isqrt(max(T - 1, 0)) + 1)

    score_path = dscores is not None
    open_idx = (sizes - 1).clamp(min=0)
    if score_path:
        nP, xs, ss = (torch.zeros((R, T), dtype=torch.float64, device=device) for _ in range(3))
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
            nP[:, t] = P.square().sum((1, 2))
            xs[:, t] = b64 * (y * w).sum(1)
            ss[:, t] = b64 * b64 * k[:, t].to(torch.float64).square().sum(1) * w.square().sum(1)
        X = _delta_step(X, sizes[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], starts[:, t], merged[:, t])[2]
    S_final = X
    if score_path:
        f_nP, f_x, f_ss, f_g = (t.to(q.dtype) for t in _score_partials(nP, xs, ss, g.to(torch.float64), dscores,
                                                                       float(Dk * v.shape[-1]), eps, norm_eps))

    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dg, dbeta, dlam = torch.zeros_like(g), torch.zeros_like(beta), torch.zeros_like(lam)
    dX = torch.zeros_like(init) if dS_final is None else dS_final.clone()
    for seg in range(len(checkpoints) - 1, -1, -1):
        t_a, t_b = seg * every, min(T, (seg + 1) * every)
        Xs = [checkpoints[seg]]
        for t in range(t_a, t_b - 1):
            Xs.append(_delta_step(Xs[-1], sizes[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], starts[:, t],
                                  merged[:, t])[2])
        for t in range(t_b - 1, t_a - 1, -1):
            S = Xs[t - t_a]
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
            st = starts[:, t]
            dX[rows, target] = torch.where(st.view(R, 1, 1), torch.zeros_like(ds), ds)
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
            dX = a * (dY - bt.view(R, 1, 1, 1) * kt.view(R, 1, -1, 1) * w.unsqueeze(2))
            if score_path:  # the score of token t read the open slot P = S[open] before the step
                P = S[rows, open_idx[:, t]]
                a1 = a.view(R, 1)
                fx, fss, fnP = f_x[:, t].unsqueeze(1), f_ss[:, t].unsqueeze(1), f_nP[:, t].view(R, 1, 1)
                b1 = bt.view(R, 1)
                y = (P.transpose(1, 2) @ kt.unsqueeze(-1)).squeeze(-1)  # P^T k
                ws = vt - a1 * y
                kk = kt.square().sum(1, keepdim=True)
                dw = fss * 2.0 * b1 * b1 * kk * ws  # from ss = beta^2 |k|^2 |w|^2
                dy = fx * b1 * (vt - 2.0 * a1 * y) - a1 * dw  # x = beta (y.v - a y.y); w = v - a y
                dbeta[:, t] += (fx * (y * ws).sum(1, keepdim=True) + fss * 2.0 * b1 * kk * ws.square().sum(1,
                                keepdim=True)).squeeze(1)
                dv[:, t] += fx * b1 * y + dw
                dk[:, t] += fss * 2.0 * b1 * b1 * ws.square().sum(1, keepdim=True) * kt \
                    + (P @ dy.unsqueeze(-1)).squeeze(-1)
                da = -fx * b1 * y.square().sum(1, keepdim=True) - (y * dw).sum(1, keepdim=True)
                dg[:, t] += (a1 * da).squeeze(1) + f_g[:, t]
                dX[rows, open_idx[:, t]] += 2.0 * fnP * P + kt.unsqueeze(-1) * dy.unsqueeze(1)
    return dq, dk, dv, dg, dbeta, dlam, dX, S_final


# ---------------------------------------------------------------------------------------------
# The autograd.Function and the surrogate
# ---------------------------------------------------------------------------------------------


def torch_backward(q, k, v, g, beta, lam, init, structure, dO, dS_final, *, chunk_size, dscores=None, eps=1e-6,
                   norm_eps=1e-6):
    """The torch backward (any device): ``(dq, dk, dv, dg, dbeta, dlam, dinit)`` in row layout.

    ``beta`` None: scalar decay. ``dscores`` ``[R, T]`` float64 or None: a gradient w.r.t. the scores (the
    surrogate's), propagated into the inputs (docs/training.md).
    """
    if beta is None:
        dq, dk, dv, dg, dlam, dinit = scalar_decay_backward(q, k, v, g, lam, init, structure, dO, dS_final,
                                                            chunk_size=chunk_size, dscores=dscores, eps=eps,
                                                            norm_eps=norm_eps)
        return dq, dk, dv, dg, None, dlam, dinit
    dq, dk, dv, dg, dbeta, dlam, dinit, _ = delta_rule_backward(q, k, v, g, beta, lam, init, structure, dO,
                                                                dS_final, dscores=dscores, eps=eps,
                                                                norm_eps=norm_eps)
    return dq, dk, dv, dg, dbeta, dlam, dinit


def shifted_weights(lam: torch.Tensor) -> torch.Tensor:
    """``lam'_t[j] = lam_t[j + 1] - lam_t[j]`` with ``lam_t[K] = 0``: the read weight change when one more
    slot boundary separates a token from the reader (the surrogate's slope)."""
    return torch.cat([lam[..., 1:], torch.zeros_like(lam[..., :1])], -1) - lam


def _rows(x: Optional[torch.Tensor], dtype) -> Optional[torch.Tensor]:
    """``[B, T, H, *F]`` -> ``[B * H, T, *F]``."""
    if x is None:
        return None
    B, T, H = x.shape[:3]
    return x.to(dtype).movedim(2, 1).reshape(B * H, T, *x.shape[3:])


def _unrows(x: Optional[torch.Tensor], B: int, H: int) -> Optional[torch.Tensor]:
    if x is None:
        return None
    T = x.shape[1]
    return x.reshape(B, H, T, *x.shape[2:]).movedim(1, 2)


@dataclass
class _Record:
    """What the forward hands to :class:`DLAFunction` (not autograd inputs)."""

    o: torch.Tensor  # [B, T, H, Dv], computed without grad
    final_states: torch.Tensor  # [B, H, K, Dk, Dv]
    structure: Structure
    scores: Optional[torch.Tensor]  # [R, T] float64, for the surrogate
    decided: Optional[torch.Tensor]  # [R, T] bool: the score took the decision
    chunk_size: int
    temperature: Optional[float]
    tau: float = 0.6
    eps: float = 1e-6
    norm_eps: float = 1e-6


class DLAFunction(torch.autograd.Function):
    """``(o, final_states) = DLA(q, k, v, g, slot_weights, beta, initial_states, tau)`` with the partition the
    forward recorded held fixed.

    The forward result is computed by ``dla_fast.forward`` (without grad) and passed in through
    :class:`_Record`; ``forward`` only saves. Saved: the inputs themselves (references), the initial
    states ``[B, H, K, Dk, Dv]`` and the compact structure (``starts`` bool and ``merged`` int per token, the
    initial size per row) — ``O(T (Dk + Dv + K))`` inputs plus ``O(T)`` structure plus ``O(K Dk Dv)`` per
    row, independent of the boundary rate; no slot state of any chunk or token is stored.
    """

    @staticmethod
    def forward(ctx, q, k, v, g, slot_weights, beta, init_states, tau, record: _Record):
        # The outputs are handed back, not kept: the context holds the structure and the scalars only.
        ctx.record = dataclasses.replace(record, o=None, final_states=None)
        # The Triton backward needs the final states for dg (the torch one recomputes them): an output, so
        # saved through save_for_backward, the documented way to keep an output for the backward.
        final = record.final_states if record.structure.triton is not None else None
        ctx.save_for_backward(q, k, v, g, slot_weights, beta, init_states, tau, final)
        return record.o, record.final_states

    @staticmethod
    @once_differentiable
    def backward(ctx, dO, dS_final):
        q, k, v, g, lam, beta, init, tau, S_final = ctx.saved_tensors
        rec: _Record = ctx.record
        B, T, H, Dk = q.shape
        Dv, K = v.shape[-1], lam.shape[-1]
        R = B * H
        cd = torch.float64 if q.dtype == torch.float64 else torch.float32
        dSf = None
        if dS_final is not None:
            live = torch.arange(K, device=q.device).view(1, K) < _final_size(rec.structure).view(R, 1)
            dSf = dS_final.to(cd).reshape(R, K, Dk, Dv) * live.view(R, K, 1, 1)
        # The Triton backward serves a Triton forward (scalar decay, its structure kept), in the inputs' own
        # layout and dtype; everything else (and the score part of the surrogate) runs torch_backward on rows.
        fast = rec.structure.triton is not None and beta is None

        def torch_rows(lam_rows):
            init_r = (torch.zeros((R, K, Dk, Dv), dtype=cd, device=q.device) if init is None
                      else init.detach().to(cd).reshape(R, K, Dk, Dv))
            dO_r = torch.zeros((R, T, Dv), dtype=cd, device=q.device) if dO is None else _rows(dO, cd)
            return (*(_rows(x, cd) for x in (q, k, v, g)), _rows(beta, cd), lam_rows, init_r, rec.structure, dO_r)

        with torch.no_grad():
            dtau = None if tau is None else torch.zeros((), dtype=torch.float64, device=q.device)
            dI = None
            if rec.temperature is not None and rec.decided is not None and bool(rec.decided.any()):
                # The surrogate: eps_r = dL/dh_r is the "dg" of the same backward with the shifted weights;
                # dL/dI_r = eps_r h_r (1 - h_r) / T on decided tokens, dL/dtau = -sum_r dL/dI_r.
                if fast:
                    eps_r = _rows(_triton_grads(q, k, v, g, shifted_weights(lam), init, rec, dO, None)[3],
                                  torch.float64)
                else:
                    eps_r = torch_backward(*torch_rows(shifted_weights(_rows(lam, cd))), None,
                                           chunk_size=rec.chunk_size)[3]
                h_slope = _sigmoid_slope(rec.scores, rec.tau, rec.temperature) * rec.decided
                dI = eps_r.to(torch.float64) * h_slope
                if dtau is not None:
                    dtau = -dI.sum()
            if fast and dI is None:
                dq, dk, dv, dg, dlam, dinit = _triton_grads(q, k, v, g, lam, init, rec, dO, dSf, S_final)
                dbeta = None
            else:
                dq, dk, dv, dg, dbeta, dlam, dinit = torch_backward(
                    *torch_rows(_rows(lam, cd)), dSf, chunk_size=rec.chunk_size, dscores=dI, eps=rec.eps,
                    norm_eps=rec.norm_eps)
                dq, dk, dv, dg, dbeta, dlam = (_unrows(x, B, H) for x in (dq, dk, dv, dg, dbeta, dlam))
        back = lambda x, like: None if x is None else x.to(like.dtype)  # noqa: E731
        grads = [back(dq, q), back(dk, k), back(dv, v), back(dg, g), back(dlam, lam), back(dbeta, beta) if
                 beta is not None else None]
        dinit_out = None if init is None else dinit.reshape(B, H, K, Dk, Dv).to(init.dtype)
        dtau_out = None if (tau is None or dtau is None) else dtau.to(tau.dtype).reshape(tau.shape)
        needs = ctx.needs_input_grad
        out = grads + [dinit_out, dtau_out, None]
        return tuple(x if (i < len(needs) and needs[i]) else None for i, x in enumerate(out))


def _triton_grads(q, k, v, g, lam, init, rec: _Record, dO, dS_final, S_final=None):
    """The Triton backward (``dla_fast.triton_backward``) in the API's layout: ``(dq, dk, dv, dg, dlam, dinit)``
    as ``[B, T, H, ...]`` (``dinit`` ``[B * H, K, Dk, Dv]`` or None)."""
    from .triton_backward import backward_scalar_decay_triton

    B, T, H, Dk = q.shape
    if dO is None:
        dO = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype, device=q.device)
    kept = rec.structure.triton
    return backward_scalar_decay_triton(q.detach(), k.detach().to(q.dtype), v.detach().to(q.dtype), g.detach(),
                                        lam.detach(), None if init is None else init.detach(), rec.structure.size0,
                                        kept, dO, None if dS_final is None else dS_final.float().contiguous(),
                                        S_final)


def _final_size(structure: Structure) -> torch.Tensor:
    delta = structure.starts.to(torch.int64) - (structure.merged >= 0).to(torch.int64)
    return structure.size0 + delta.sum(1)


def _sigmoid_slope(scores: torch.Tensor, tau: float, temperature: float) -> torch.Tensor:
    """``d sigmoid((I - tau) / T) / dI``; scores ``[R, T]`` float64 (infinite tau: slope 0)."""
    h = torch.sigmoid((scores.to(torch.float64) - tau) / temperature)
    return h * (1.0 - h) / temperature


def check_temperature(surrogate_temperature) -> None:
    """``surrogate_temperature`` must be None (off) or a positive finite number."""
    if surrogate_temperature is not None:
        if not (isinstance(surrogate_temperature, (int, float)) and not isinstance(surrogate_temperature, bool)
                and math.isfinite(surrogate_temperature) and surrogate_temperature > 0):
            raise ValueError(f"surrogate_temperature: expected a positive finite number or None, "
                             f"got {surrogate_temperature!r}")


def needs_grad(*tensors) -> bool:
    """Whether ``forward`` must build a differentiable result."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def differentiable_forward(forward: Callable, q, k, v, g, slot_weights, *, tau=0.6, beta=None, boundaries=None,
                           initial_cache=None, output_final_cache: bool = True, return_trace: bool = False,
                           chunk_size: int = 64, eps: float = 1e-6, norm_eps: float = 1e-6,
                           surrogate_temperature: Optional[float] = None):
    """``dla_fast.forward`` with gradients: runs ``forward`` without grad, then attaches :class:`DLAFunction`.

    ``o`` and the final cache's ``states`` are differentiable w.r.t. q, k, v, g, slot_weights, beta (delta
    rule), ``initial_cache.states`` (a torch cache) and, with ``surrogate_temperature``, ``tau`` (a 0-d
    tensor). The cache's counts, info and size and the trace are not differentiable.
    """
    check_temperature(surrogate_temperature)
    tau_t = tau if isinstance(tau, torch.Tensor) else None
    tau_value = float(tau.detach()) if tau_t is not None else tau
    with torch.no_grad():
        keep: dict = {}
        o, final, trace = forward(q, k, v, g, slot_weights, tau=tau_value, beta=beta, boundaries=boundaries,
                                  initial_cache=initial_cache, output_final_cache=True, return_trace=True,
                                  chunk_size=chunk_size, eps=eps, norm_eps=norm_eps, keep=keep)
    B, T, H = o.shape[:3]
    K = slot_weights.shape[-1]
    R = B * H
    init_states, size0 = None, torch.zeros(R, dtype=torch.int64, device=o.device)
    if initial_cache is not None:
        size0 = torch.as_tensor(np.asarray(initial_cache.size) if not isinstance(initial_cache.size, torch.Tensor)
                                else initial_cache.size).to(o.device, torch.int64).reshape(R)
        if isinstance(initial_cache.states, torch.Tensor):
            init_states = initial_cache.states
        else:
            init_states = torch.as_tensor(np.asarray(initial_cache.states), device=o.device).to(final.states.dtype)
    small = torch.int8 if K <= 128 else torch.int16 if K <= 32768 else torch.int64  # merged < K - 1
    structure = Structure(_rows(trace.starts, torch.bool), _rows(trace.merged, small).contiguous(), size0, K,
                          triton=keep or None)
    decided = None
    if surrogate_temperature is not None and boundaries is None:
        before = structure.sizes_before()
        decided = before > 0  # the score took the decision (not an empty cache, no override)
    scores = None if decided is None else _rows(trace.scores, torch.float64)  # only the surrogate reads them
    record = _Record(o, final.states, structure, scores, decided, chunk_size,
                     None if surrogate_temperature is None else float(surrogate_temperature), float(tau_value),
                     eps, norm_eps)
    as_t = lambda x: x if (x is None or isinstance(x, torch.Tensor)) else torch.as_tensor(np.asarray(x))  # noqa: E731
    o, states = DLAFunction.apply(as_t(q), as_t(k), as_t(v), as_t(g), as_t(slot_weights), as_t(beta), init_states,
                                  tau_t, record)
    final.states = states
    return o, (final if output_final_cache else None), (trace if return_trace else None)
