"""The torch backward of the scalar-decay backbone with the partition held fixed (docs/training.md).

Given the decisions (which tokens opened a slot, which pairs merged), the output is linear in ``v``,
bilinear in ``q`` and ``k``, linear in ``slot_weights`` and in the initial states, and depends on ``g``
through the decays. The backward is chunked like the forward (``chunk_torch``):

- the **partition tables** are rebuilt from the compact per-token record on the inputs' device
  (``common.live_starts.DevicePartition``: torch, no loop over tokens, no ``Dk x Dv`` data, one host
  synchronisation; equal bit for bit to numba's ``Partition``): which slot each start slot and token belongs to at
  every chunk end, and the recency of every read;
- the slot states at every chunk start are **recomputed** from square-root checkpoints;
- the **intra-chunk** masked attention's backward runs batched over blocks of chunks;
- a **reverse pass** over chunks carries ``dS`` (the gradient w.r.t. every slot state at the chunk end)
  through the state update and the reads of the start slots;
- ``dg`` follows from the reverse-cumsum identity, and the straight-through surrogate's ``dL/dI_t`` (when
  given) through the score's adjoint (``common.partition.score_adjoint``).

Row layout: ``R = B * H`` rows, time second (``[R, T, ...]``); chunk-major ``[nC, R, C, ...]`` inside.
"""

from __future__ import annotations

import math

import torch

from ..common.layout import chunks, unchunk
from ..common.live_starts import DevicePartition
from ..common.partition import Partition, open_runs, run_mask, score_adjoint
from ..common.structure import Structure, checkpoint_interval

# Elements of one [block, R, C, C] tensor in the intra-chunk backward.
_BLOCK_ELEMENTS = 1 << 22



class _ScorePath:
    """The surrogate's score terms: ``x_t = <P, k_t v_t^T>`` read by each decided token's score.

    The open slot before token t began at p_t (the last start before t; -1: before the call). Its state is
    ``e^{Gc[t-1]} P_c`` (if p_t < c0, P_c = the open slot at the chunk start) plus the chunk's tokens
    ``max(p_t, c0) .. t-1``. ``x_t`` enters the score and, through ``||P||^2``, later scores.
    """

    def __init__(self, part: Partition, Gc, cd):
        C, nC = part.C, part.nC
        device = Gc.device
        carried, self.lo = open_runs(part.structure, C, nC)  # lo: chunk-local first token of the run
        self.carried = carried.to(cd)
        self.open_at = (part.m_start[:nC] - 1).clamp(min=0)  # [nC, R]
        self.Gp = torch.nn.functional.pad(Gc[..., :-1], (1, 0))  # Gc[t - 1]
        self.carry_decay = torch.exp(self.Gp).to(cd)
        self.carry_x = torch.zeros((nC, part.R, C), dtype=cd, device=device)
        self.C, self.Gc, self.kc, self.vc = C, Gc, part.kc, part.vc

    def record_carry(self, c: int, F, rows):
        """``x``'s carried part of chunk c from the slot states ``F`` at its start."""
        P = F[rows, self.open_at[c]]
        self.carry_x[c] = (torch.bmm(self.kc[c], P) * self.vc[c]).sum(-1) * self.carry_decay[c] * self.carried[c]

    def run_decay(self, b0: int, b1: int, cd):
        """``e^{Gc[t-1] - Gc[s]}`` for s in the open run before t (same chunk), else 0: ``[nb, R, C, C]``."""
        Mx = run_mask(self.lo[b0:b1], self.C)
        exponent = (self.Gp[b0:b1].unsqueeze(-1) - self.Gc[b0:b1].unsqueeze(-2)).masked_fill(~Mx, -math.inf)
        return torch.exp(exponent).to(cd)


def _score_terms(score: _ScorePath, part: Partition, q, k, v, g, init, dscores, grads, eps, norm_eps):
    """The score's adjoint: ``dx`` per token (chunked), its direct terms into ``dk_reader`` and ``dv``, and
    ``(dG_reader, dg_direct, lam0, P0)`` for the dg identity and the initial open slot."""
    R, T, Dk = k.shape
    C, nC, cd = part.C, part.nC, k.dtype
    kc, vc = part.kc, part.vc
    x_c = score.carry_x.clone()
    block = max(1, _BLOCK_ELEMENTS // max(1, R * C * C))
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        kb, vb = kc[b0:b1], vc[b0:b1]
        x_c[b0:b1] += (score.run_decay(b0, b1, cd) * (kb @ kb.transpose(-1, -2)) * (vb @ vb.transpose(-1, -2))).sum(-1)
    x = unchunk(x_c, T).to(torch.float64)
    ss = (k * k).sum(-1).to(torch.float64) * (v * v).sum(-1).to(torch.float64)
    size0 = part.structure.size0
    rows = torch.arange(R, device=k.device)
    P0 = init[rows, (size0 - 1).clamp(min=0)]  # the initial open slot
    nP0 = torch.where(size0 > 0, P0.to(torch.float64).square().sum((1, 2)), torch.zeros_like(ss[:, 0]))
    dx, dss, dfresh, dg_direct, lam0 = score_adjoint(part.structure.starts, x, ss, ss, g.to(torch.float64), nP0,
                                                     dscores, float(Dk * v.shape[-1]), eps, norm_eps)
    dss = dss + dfresh  # a new slot holds k v^T, of squared norm ss
    grads["dk_reader"] += chunks((2.0 * dss * (v * v).sum(-1).to(torch.float64)).to(cd).unsqueeze(-1) * k, C, nC)
    grads["dv"] += chunks((2.0 * dss * (k * k).sum(-1).to(torch.float64)).to(cd).unsqueeze(-1) * v, C, nC)
    dG_reader = torch.nn.functional.pad((dx * x)[:, 1:], (0, 1))  # every term of x_t decays from t - 1
    return chunks(dx.to(cd), C, nC), dG_reader, dg_direct, lam0, P0


def _intra_backward(part: Partition, qc, dOc, lamc, Gc, grads, score: _ScorePath | None, dx_c):
    """The intra-chunk masked attention's backward, batched over blocks of chunks (and the score's
    intra-chunk part of ``x_t``: sum over the open run of e^{Gc[t-1]-Gc[s]} (k_t.k_s)(v_t.v_s))."""
    R, C, nC = part.R, part.C, part.nC
    kc, vc, cd = part.kc, part.vc, part.kc.dtype
    block = max(1, _BLOCK_ELEMENTS // max(1, R * C * C))
    causal = torch.ones((C, C), dtype=torch.bool, device=kc.device).tril()
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        J = part.recency(b0, b1)
        valid = J >= 0
        Jc = J.clamp(min=0)
        Wl = torch.gather(lamc[b0:b1], -1, Jc) * valid  # lam_t[J[t, s]]
        Gb = Gc[b0:b1]
        decay = torch.exp((Gb.unsqueeze(-1) - Gb.unsqueeze(-2)).masked_fill(~causal, -math.inf)).to(cd)
        qb, kb, vb, dOb = qc[b0:b1], kc[b0:b1], vc[b0:b1], dOc[b0:b1]
        A = (qb @ kb.transpose(-1, -2)) * decay  # (q_t . k_s) exp(Gc[t] - Gc[s])
        dP = dOb @ vb.transpose(-1, -2)  # dO_t . v_s
        grads["dv"][b0:b1] += (A * Wl).transpose(-1, -2) @ dOb
        dM = dP * Wl * decay
        grads["dq"][b0:b1] += dM @ kb
        grads["dk"][b0:b1] += dM.transpose(-1, -2) @ qb
        grads["dlam"][b0:b1].scatter_add_(-1, Jc, dP * A * valid)
        if score is not None:
            E = dx_c[b0:b1].unsqueeze(-1) * score.run_decay(b0, b1, cd)
            EV = E * (vb @ vb.transpose(-1, -2))
            EK = E * (kb @ kb.transpose(-1, -2))
            grads["dk_reader"][b0:b1] += EV @ kb
            grads["dk"][b0:b1] += EV.transpose(-1, -2) @ kb
            grads["dv"][b0:b1] += EK @ vb + EK.transpose(-1, -2) @ vb


def _chunk_adjoint(part: Partition, c: int, F, dS, qc, dOc, lamc, decay_in, grads, score, dx_c):
    """The adjoint of chunk c's state update and reads of its start slots: dS at its end -> dS at its start."""
    R, K, C = part.R, part.K, part.C
    Dk, Dv = F.shape[2:]
    Mf, idx, Md = part.tables(c)
    Rt = idx.shape[1]
    qb, kb, vb, dOb = qc[c], part.kc[c], part.vc[c], dOc[c]
    dq, dk, dv, dlam = grads["dq"], grads["dk"], grads["dv"], grads["dlam"]
    # The state update S_end[j] = e^{GL} sum_{destF[i] = j} F_i + sum_{dest[s] = j} e^{GL - Gc[s]} k_s v_s^T.
    dF = torch.bmm(Mf.transpose(1, 2), dS.reshape(R, K, Dk * Dv)) * part.end_transition[c].view(R, 1, 1)
    dS_t = dS.reshape(R, K, Dk * Dv).gather(1, idx.unsqueeze(-1).expand(R, Rt, Dk * Dv)).view(R, Rt, Dk, Dv)
    dSv = torch.bmm(dS_t.reshape(R, Rt * Dk, Dv), vb.transpose(1, 2)).view(R, Rt, Dk, C)  # dS_j v_s
    dk[c] += (Md.unsqueeze(2) * dSv).sum(1).transpose(1, 2)
    dSk = torch.bmm(kb, dS_t.transpose(1, 2).reshape(R, Dk, Rt * Dv)).view(R, C, Rt, Dv)  # k_s^T dS_j
    dv[c] += (Md.transpose(1, 2).unsqueeze(-1) * dSk).sum(2)
    # Reads of the start slots: o_t += sum_i coefF[t, i] q_t^T F_i (the first m slots are live).
    m = int(part.mF[c])
    if m:
        JFc = part.JF[c, :, :, :m]
        validF = JFc >= 0
        coefF = torch.gather(lamc[c], -1, JFc.clamp(min=0)) * validF * decay_in[c].unsqueeze(-1)  # [R, C, m]
        Z = torch.bmm(dOb, F[:, :m].reshape(R, m * Dk, Dv).transpose(1, 2)).view(R, C, m, Dk)  # (F_i dO_t)^T
        dq[c] += (coefF.unsqueeze(-1) * Z).sum(2)
        dcoef = (Z * qb.unsqueeze(2)).sum(-1)
        dlam[c].scatter_add_(-1, JFc.clamp(min=0), dcoef * validF * decay_in[c].unsqueeze(-1))
        X = (coefF.unsqueeze(-1) * qb.unsqueeze(2)).reshape(R, C, m * Dk)
        dF[:, :m] += torch.bmm(X.transpose(1, 2), dOb).view(R, m, Dk * Dv)
    if score is not None:  # x_t's carried part e^{Gc[t-1]} k_t^T P_c v_t (P_c: the open slot at the chunk start)
        rows = torch.arange(R, device=F.device)
        w = (dx_c[c] * score.carried[c] * score.carry_decay[c]).unsqueeze(-1)  # [R, C, 1]
        P = F[rows, score.open_at[c]]
        grads["dk_reader"][c] += w * (vb @ P.transpose(1, 2))
        dv[c] += w * (kb @ P)
        dF.view(R, K, Dk, Dv)[rows, score.open_at[c]] += (w * kb).transpose(1, 2) @ vb
    return dF.view(R, K, Dk, Dv)


def _reverse_pass(part: Partition, checkpoints, every: int, dS, qc, dOc, lamc, decay_in, grads, score, dx_c):
    """Chunks in reverse, each segment's start states recomputed from its checkpoint: dS -> dS at the start."""
    nC = part.nC
    for seg in range(len(checkpoints) - 1, -1, -1):
        c_a, c_b = seg * every, min(nC, (seg + 1) * every)
        Fs = [checkpoints[seg]]
        for c in range(c_a, c_b - 1):
            Fs.append(part.advance(Fs[-1], c))
        for c in range(c_b - 1, c_a - 1, -1):
            dS = _chunk_adjoint(part, c, Fs[c - c_a], dS, qc, dOc, lamc, decay_in, grads, score, dx_c)
    return dS


def scalar_decay_backward(q, k, v, g, lam, init, structure: Structure, dO, dS_final, *, chunk_size: int = 64,
                          checkpoint_every: int | None = None, dscores: torch.Tensor | None = None,
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
    K, cd, C = lam.shape[-1], q.dtype, chunk_size
    if T == 0:  # nothing happened: the final states are the initial ones
        dinit = torch.zeros_like(init) if dS_final is None else dS_final.clone()
        return (*(torch.zeros_like(x) for x in (q, k, v, g, lam)), dinit)
    nC = max(1, -(-T // C))
    qc, kc, vc, dOc, lamc = (chunks(x, C, nC) for x in (q, k, v, dO, lam))
    Gc = chunks(g.to(torch.float64), C, nC).cumsum(-1)  # [nC, R, C] (padding: g = 0, flat)
    decay_in = torch.exp(Gc).to(cd)  # chunk-start states through token t
    part = DevicePartition(structure, R, T, C, K, torch.exp(Gc[..., -1:] - Gc).to(cd), torch.exp(Gc[..., -1]).to(cd),
                           kc, vc)
    grads = {name: torch.zeros_like(x) for name, x in (("dq", qc), ("dk", kc), ("dv", vc), ("dlam", lamc))}
    score = _ScorePath(part, Gc, cd) if dscores is not None else None
    every = checkpoint_every or checkpoint_interval(nC)
    checkpoints, S_final = part.checkpoints(init, every, None if score is None else score.record_carry)
    dx_c = None
    if score is not None:
        grads["dk_reader"] = torch.zeros_like(kc)  # k_t as the reader of x_t: not a key, kept out of the dg identity
        dx_c, dG_reader, dg_direct, lam0, P0 = _score_terms(score, part, q, k, v, g, init, dscores, grads, eps,
                                                            norm_eps)
    _intra_backward(part, qc, dOc, lamc, Gc, grads, score, dx_c)
    dS = torch.zeros_like(init) if dS_final is None else dS_final.clone()
    dinit = _reverse_pass(part, checkpoints, every, dS, qc, dOc, lamc, decay_in, grads, score, dx_c)
    if score is not None:  # ||P||^2 of the initial open slot starts the recursion of the open norms
        rows = torch.arange(R, device=q.device)
        has = (structure.size0 > 0).to(cd).view(R, 1, 1)
        dinit = dinit.clone()
        dinit[rows, (structure.size0 - 1).clamp(min=0)] += 2.0 * lam0.to(cd).view(R, 1, 1) * P0 * has

    dq, dk, dv, dlam = (unchunk(grads[n], T) for n in ("dq", "dk", "dv", "dlam"))
    # Every term depends on g only through exp(G[t] - G[s]) (G the cumulative log decay): dL/dG[t] =
    # q_t . dq_t - k_t . dk_t, plus <S_final, dS_final> at the last token; dg is its reverse cumsum.
    dG = ((q * dq).sum(-1) - (k * dk).sum(-1)).to(torch.float64)
    if score is not None:
        dG = dG + dG_reader
        dk = dk + unchunk(grads["dk_reader"], T)
    dg = dG.flip(1).cumsum(1).flip(1)
    if dS_final is not None:
        dg = dg + (S_final * dS_final).sum((1, 2, 3)).to(torch.float64).unsqueeze(1)
    if score is not None:
        dg = dg + dg_direct
    return dq, dk, dv, dg.to(cd), dlam, dinit


