"""The partition a forward decided, as per-chunk tables for the chunked torch backwards (both backbones).

Given the decisions (which tokens opened a slot, which pairs merged; ``structure.Structure``), every slot state
at a chunk end is a fixed sum: the chunk's transition applied to the start slots that end in it, plus the
chunk's tokens that land in it. :class:`Partition` rebuilds, from the compact per-token record (numba on the host,
scalar work, no ``Dk x Dv`` data), which slot each start slot and token belongs to at every chunk end and the
recency of every read, and applies that update (``advance``). The transition is a scalar per row (scalar decay) or
a ``[Dk, Dk]`` matrix per row (the delta rule's chunk operator ``Phi``). ``live_starts.DevicePartition`` builds the
same tables in torch on the slot states' device (no numba, no loop over tokens): the delta rule's backward uses it
(on every device), the scalar decay's torch backward this numba one.

The score's open-norm recursion ``nP <- a^2 nP + 2 a x + ss`` (a join) or ``nP <- fresh`` (a new slot) and its
adjoint are here too, numba on the host for both backbones (``score_adjoint``: only when the surrogate's ``dL/dI``
reaches the scores): both backwards differentiate the score through it (docs/training.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .layout import chunks
from .numba import njit
from .score import score_partials
from .structure import Structure


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



def onehot(index: torch.Tensor, K: int, dtype) -> torch.Tensor:
    """``index [R, N]`` (-1: none) -> ``[R, K, N]`` with ``out[r, j, n] = (index[r, n] == j)``."""
    return (index.unsqueeze(1) == torch.arange(K, device=index.device).view(1, K, 1)).to(dtype)


class Partition:
    """The fixed partition as per-chunk tables, and the slot-state update it implies.

    ``end_transition``: ``[nC, R]`` (each row's decay over the chunk) or ``[nC, R, Dk, Dk]`` (the delta rule's
    chunk operator); ``tok_decay [nC, R, C]`` scales token s's key ``kc [nC, R, C, Dk]`` on its way to the chunk
    end; ``vc [nC, R, C, Dv]`` the values the tokens write.

    Per chunk: ``JF`` (recency at token t of the slot holding start slot i), ``destF`` (the end slot of start
    slot i), ``dest`` (the end slot of the chunk's token s), the live slots at every chunk start. The end
    slots receiving a chunk's tokens are a suffix ``first_r .. first_r + Rt - 1`` of each row's cache (the
    tokens are the newest): the update is a 3-D bmm over rows of (slot, feature).

    The tables come from :meth:`_chunk_tables` and :meth:`recency` (numba here; torch in
    ``live_starts.DevicePartition``); the rest reads them alone. The per-chunk widths ``mF`` and ``Rt`` (tensor
    shapes) are host arrays: from tables built on a device, one synchronisation in the constructor.
    """

    def __init__(self, structure: Structure, R: int, T: int, C: int, K: int, tok_decay, end_transition, kc, vc):
        self.structure, self.R, self.T, self.C, self.K = structure, R, T, C, K
        self.nC = nC = max(1, -(-T // C))
        self.tok_decay, self.end_transition, self.kc, self.vc = tok_decay, end_transition, kc, vc
        JF, destF, dest, m_start = (torch.as_tensor(x) for x in self._chunk_tables())  # on the host or the device
        first = dest[:, :, 0].clamp(min=0)  # [nC, R]
        # The reads' width (the most slots live at a chunk start in any row) and the token slots' count per chunk
        # set the tensors' shapes: on the host, both in one transfer (from a device: one synchronisation).
        width = torch.stack([m_start[:nC].amax(1), ((dest.amax(2) - first).amax(1) + 1).clamp(min=1)])
        self.mF, self.Rt = width.cpu().numpy()  # [nC] each
        self.JF, self.destF, self.dest, self.m_start, self.first = (x.to(kc.device)
                                                                    for x in (JF, destF, dest, m_start, first))
        self._tables: dict = {}

    def _chunk_tables(self):
        """``(JF, destF, dest, m_start)`` (:func:`_chunk_tables`' outputs) by numba, from the host's copy of the
        structure; keeps what :meth:`recency` reads."""
        nC, R, C, K = self.nC, self.R, self.C, self.K
        self.starts_np, self.merged_np, size0_np = self.structure.numpy()
        JF = np.full((nC, R, C, K), -1, dtype=np.int64)
        destF = np.full((nC, R, K), -1, dtype=np.int64)
        dest = np.full((nC, R, C), -1, dtype=np.int64)
        self.m_start_np = np.zeros((nC + 1, R), dtype=np.int64)
        self.pos_start = np.zeros((nC, R, K), dtype=np.int64)
        _chunk_tables(self.starts_np, self.merged_np, size0_np, C, JF, destF, dest, self.m_start_np, self.pos_start)
        return JF, destF, dest, self.m_start_np

    def tables(self, c: int):
        """``(Mf [R, K, K], idx [R, Rt], Md [R, Rt, C])``: start slot i -> end slot j, the token slots, and
        ``Md[r, j, s] = exp(GL - Gc[s])`` iff token s lands in end slot ``first_r + j``."""
        if c not in self._tables:
            K, cd, device = self.K, self.kc.dtype, self.kc.device
            Rt = int(self.Rt[c])
            first = self.first[c]
            idx = (first.unsqueeze(1) + torch.arange(Rt, device=device)).clamp(max=K - 1)
            dest = self.dest[c]
            rel = torch.where(dest >= 0, dest - first.unsqueeze(1), torch.full_like(dest, -1))
            self._tables[c] = (onehot(self.destF[c], K, cd), idx,
                               onehot(rel, Rt, cd) * self.tok_decay[c].unsqueeze(1))
        return self._tables[c]

    def advance(self, F: torch.Tensor, c: int) -> torch.Tensor:
        """The slot states at the end of chunk c from those at its start."""
        R, K = self.R, self.K
        Dk, Dv = F.shape[2:]
        Mf, idx, Md = self.tables(c)
        Rt = idx.shape[1]
        S = self.transition(c, torch.bmm(Mf, F.reshape(R, K, Dk * Dv)).view(R, K, Dk, Dv)).reshape(R, K, Dk * Dv)
        # sum_s Md[j, s] k_s v_s^T for the Rt token slots: [R, Rt * Dk, C] @ [R, C, Dv]
        wk = (Md.unsqueeze(2) * self.kc[c].transpose(1, 2).unsqueeze(1)).reshape(R, Rt * Dk, self.C)
        U = torch.bmm(wk, self.vc[c]).view(R, Rt, Dk * Dv)
        return S.scatter_add_(1, idx.unsqueeze(-1).expand(R, Rt, Dk * Dv), U).view(R, K, Dk, Dv)

    def checkpoints(self, init: torch.Tensor, every: int, record=None):
        """One forward pass over the chunks: the slot states at every ``every``-th chunk start and the final
        states. ``record(c, F, rows)``, if given, sees the states ``F`` at each chunk start (the score path)."""
        rows = torch.arange(self.R, device=init.device)
        checkpoints = []
        F = init
        for c in range(self.nC):
            if c % every == 0:
                checkpoints.append(F)
            if record is not None:
                record(c, F, rows)
            F = self.advance(F, c)
        return checkpoints, F

    def transition(self, c: int, X: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Chunk c's transition (or its transpose) applied to every slot of ``X [R, K, Dk, Dv]``."""
        A = self.end_transition[c]
        if A.dim() == 1:
            return X * A.view(-1, 1, 1, 1)
        return (A.transpose(1, 2) if transpose else A).unsqueeze(1) @ X

    def recency(self, b0: int, b1: int) -> torch.Tensor:
        """``J [b1 - b0, R, C, C]``: recency at token t of the slot holding token s (same chunk, s <= t); -1 else."""
        J = np.empty((b1 - b0, self.R, self.C, self.C), dtype=np.int64)
        _recency(self.starts_np, self.merged_np, self.C, self.m_start_np, self.pos_start, b0, J)
        return torch.as_tensor(J, device=self.kc.device)


def run_mask(lo: torch.Tensor, C: int) -> torch.Tensor:
    """``[..., C, C]``: ``lo[t] <= s < t`` (token s is in the open run before token t, same chunk)."""
    s = torch.arange(C, device=lo.device)
    return (s.view(1, C) >= lo.unsqueeze(-1)) & (s.view(1, C) < s.view(C, 1))


@njit
def _open_norms(starts, x, ss, fresh, g, nP0, nP):
    """``nP[r, t] = ||P||^2`` of the open slot before token t, by the recursion of the forward's scan (a new slot
    holds ``fresh``)."""
    R, T = x.shape
    for r in range(R):
        n = nP0[r]
        for t in range(T):
            nP[r, t] = n
            if starts[r, t]:
                n = fresh[r, t]
            else:
                a = np.exp(g[r, t])
                n = max(a * a * n + 2.0 * a * x[r, t] + ss[r, t], 0.0)


@njit
def _open_norms_adjoint(starts, x, g, nP, f_nP, f_x, f_ss, f_g, dx, dss, dfresh, dg, lam0):
    """Reverse of :func:`_open_norms`: the gradients of x, ss, fresh, g and ``nP0`` given those of every ``nP``."""
    R, T = x.shape
    for r in range(R):
        L = 0.0  # dL/d nP[t + 1]
        for t in range(T - 1, -1, -1):
            dx[r, t] = f_x[r, t]
            dss[r, t] = f_ss[r, t]
            dfresh[r, t] = 0.0
            dg[r, t] = f_g[r, t]
            if starts[r, t]:
                dfresh[r, t] = L
                L = f_nP[r, t]
            else:
                dss[r, t] += L
                a = np.exp(g[r, t])
                dx[r, t] += 2.0 * a * L
                dg[r, t] += L * (2.0 * a * a * nP[r, t] + 2.0 * a * x[r, t])
                L = f_nP[r, t] + a * a * L
        lam0[r] = L


def score_adjoint(starts, x, ss, fresh, g, nP0, dscores, numel, eps, norm_eps):
    """``(dx, dss, dfresh, dg, dnP0)`` of ``<dscores, I>`` through the score formula and the open-norm recursion.

    ``starts [R, T]`` bool; ``x``, ``ss``, ``fresh`` (the norm of a token's new slot), ``g``, ``dscores``
    ``[R, T]`` float64; ``nP0 [R]`` the initial open slot's squared norm. Returns float64 ``[R, T]`` (``[R]``).
    """
    st = starts.cpu().numpy()
    x_np, ss_np, fresh_np, g_np = (t.detach().cpu().numpy() for t in (x, ss, fresh, g))
    nP = np.empty_like(x_np)
    _open_norms(st, x_np, ss_np, fresh_np, g_np, nP0.cpu().numpy(), nP)
    f = [t.cpu().numpy() for t in score_partials(torch.as_tensor(nP, device=x.device), x, ss, g, dscores, numel,
                                                  eps, norm_eps)]
    dx, dss, dfresh, dg = (np.zeros_like(x_np) for _ in range(4))
    lam0 = np.zeros(x_np.shape[0])
    _open_norms_adjoint(st, x_np, g_np, nP, *f, dx, dss, dfresh, dg, lam0)
    return tuple(torch.as_tensor(t, device=x.device) for t in (dx, dss, dfresh, dg, lam0))


def open_runs(structure: Structure, C: int, nC: int):
    """Where each token's open slot began, chunk by chunk: ``(carried [nC, R, C] bool, lo [nC, R, C] int64)``.

    ``carried``: the open slot before token t began before t's chunk (and the cache is not empty); ``lo``: the
    chunk-local first token of the open slot's run inside the chunk (0 when carried).
    """
    T = structure.starts.shape[1]
    t_idx = torch.arange(T, device=structure.starts.device)
    last = torch.where(structure.starts, t_idx, torch.full_like(t_idx, -1)).cummax(1).values
    p_open = torch.nn.functional.pad(last[:, :-1], (1, 0), value=-1)  # the open slot's first token (-1: before)
    c0_of = (t_idx // C) * C
    carried = (p_open < c0_of) & (structure.sizes_before() > 0)
    return chunks(carried, C, nC), chunks(torch.maximum(p_open, c0_of) - c0_of, C, nC)
