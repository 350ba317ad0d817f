"""The delta rule's reverse pass two chunks a step (issue #12, run 75): a segment's rerun, its chain of slot
adjoints (kernel A) and its cotangents (kernel B) on pairs of chunks composed as the forward's walk composes them
(``chunk_fwd_steps``), so that the two walks take half as many steps and store half as many states (``F`` at each
pair's start, ``E`` at its end); then the composition's adjoint hands each chunk's tables their cotangents.

Over chunks ``a`` then ``b`` (``Mf`` the merge maps on the slot axis, ``Phi`` on the key axis; they commute)::

    S_end = (Phi_b Phi_a) S (Mf_a Mf_b) + (khd_a Phi_b^T)^T (bv_a Mf_b) + khd_b^T bv_b

and ``b``'s tokens read the pair's start slots through ``qt_b Phi_a`` with ``coef_b`` gathered back through ``a``'s
merges, plus the cross term that no state carries, ``b``'s tokens reading ``a``'s through the slots they share::

    o_t += sum_{s in a} (qt_b,t . khd_a,s) coef_b[t, dest_a[s]] bv_s        (t in b)

So the composed tables are ``Phi2 = Phi_b Phi_a``, ``khd2 = [khd_a Phi_b^T; khd_b]``, ``qt2 = [qt_a; qt_b Phi_a]``,
``coef2 = [coef_a; coef_b[:, dest_f_a]]`` (and the recencies ``JF`` alike, so that kernel B's scatter into the read
weights' gradient holds for pairs), and their adjoint, from kernel B's cotangents of the composed tables::

    dPhi_a = Phi_b^T dPhi2 + qt_b^T dqt2_b        dPhi_b = dPhi2 Phi_a^T + dkhd2_a^T khd_a
    dkhd_a = dkhd2_a Phi_b                        dqt_b = dqt2_b Phi_a^T          (the halves of a and b)

with the cross term's adjoint added to ``dqt_b``, ``dkhd_a``, ``d(b v)_a`` and the read weights of ``b``'s tokens.
The composition and its adjoint are float64 torch products rounded once (a few ``[C, Dk] x [Dk, Dk]`` products a pair:
~2 % of kernel A's work); the walks, kernel A and kernel B are the chunk kernels with two chunks a step.
"""

from __future__ import annotations

import torch

from .chunk_bwd_chain import slot_adjoints
from .chunk_bwd_cotangents import table_cotangents
from .chunk_fwd_states import slot_states_and_reads

F64 = torch.float64


def paired(x: torch.Tensor) -> torch.Tensor:
    """``[2m, R, C, ...]`` chunk-major -> ``[m, R, 2C, ...]``: each pair's tokens in one step (a copy)."""
    n, R, C, *rest = x.shape
    return x.reshape(n // 2, 2, R, C, *rest).transpose(1, 2).reshape(n // 2, R, 2 * C, *rest)


def unpaired(y: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`paired`: ``[m, R, 2C, ...]`` -> ``[2m, R, C, ...]``."""
    m, R, C2, *rest = y.shape
    return y.reshape(m, R, 2, C2 // 2, *rest).transpose(1, 2).reshape(2 * m, R, C2 // 2, *rest)


def _halves(x: torch.Tensor):
    """``[2m, ...]`` chunk-major -> the pairs' first and second chunks, ``[m, ...]`` each (views)."""
    y = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
    return y[:, 0], y[:, 1]


def _gathered(src: torch.Tensor, index: torch.Tensor, fill) -> torch.Tensor:
    """``src[..., index]`` along the last axis, ``fill`` where ``index < 0``. An index without ``src``'s token axis
    (one row a pair and row, ``[m, R, n]``) serves every token of ``src`` (``[m, R, C, K]``)."""
    if index.dim() < src.dim():
        index = index.unsqueeze(-2).expand(*src.shape[:-1], index.shape[-1])
    taken = src.gather(-1, index.long().clamp(min=0))
    return torch.where(index >= 0, taken, torch.full_like(taken, fill))


class PairTables:
    """The composed tables of chunks ``a .. b - 1`` (``b - a`` even), as the chunk kernels read a step's, from the
    unit's float32 tables ``tables`` (chunk ``a`` at index ``lo``), the partition ``part`` and the walks' ``coef``."""

    def __init__(self, tables: dict, part, x, coef: torch.Tensor, lo: int, a: int, b: int):
        hi = lo + b - a
        self.Pa, self.Pb = (t.to(F64) for t in _halves(tables["Phi"][lo:hi]))
        self.khd_a, khd_b = _halves(tables["khd"][lo:hi])
        qt_a, self.qt_b = _halves(tables["qt"][lo:hi])
        self.Phi = (self.Pb @ self.Pa).float()
        self.khd = torch.cat([(self.khd_a.to(F64) @ self.Pb.transpose(-1, -2)).float(), khd_b], 2)
        self.qt = torch.cat([qt_a, (self.qt_b.to(F64) @ self.Pa).float()], 2)
        self.kb = self.khd * paired(x.bc[a:b]).to(self.khd.dtype).unsqueeze(-1)
        dfa, dfb = _halves(part.destF[a:b])
        self.dest_a, dest_b = _halves(part.dest[a:b])
        self.dest_f = _gathered(dfb, dfa, -1).to(torch.int32)
        self.dest = torch.cat([_gathered(dfb, self.dest_a, -1), dest_b], 2).to(torch.int32)
        coef_a, self.coef_b = _halves(coef)
        self.coef = torch.cat([coef_a, _gathered(self.coef_b, dfa, 0.0)], 2)
        JF_a, self.JF_b = _halves(part.JF[a:b])
        self.JF = torch.cat([JF_a, _gathered(self.JF_b, dfa, -1)], 2)
        self.bv_a, bv_b = _halves(x.bv[a:b])
        self.dO_b = _halves(x.dOc[a:b])[1]
        self.bv, self.dO = paired(x.bv[a:b]), paired(x.dOc[a:b])

    def cross_adjoint(self, dqt_b, dkhd_a, dbv_a, dlam_b) -> None:
        """The cross term's adjoint added (float64, rounded once) into ``dqt_b``, ``dkhd_a`` (float64 ``[m, R, C,
        Dk]``), ``dbv_a`` and ``dlam_b`` (float32 views of the gradients of the pairs' chunks)."""
        qt_b, khd_a, dO_b = self.qt_b.to(F64), self.khd_a.to(F64), self.dO_b.to(F64)
        reach = qt_b @ khd_a.transpose(-1, -2)  # [m, R, C (t in b), C (s in a)]
        W = _gathered(self.coef_b, self.dest_a, 0.0).to(F64)  # coef_b[t, dest_a[s]]
        dP = dO_b @ self.bv_a.to(F64).transpose(-1, -2)
        dbv_a += ((reach * W).transpose(-1, -2) @ dO_b).to(dbv_a.dtype)
        dreach = dP * W
        dqt_b += dreach @ khd_a
        dkhd_a += dreach.transpose(-1, -2) @ qt_b
        # The weights' gradient by the slot each of a's tokens sits in at b's start, then by b's recency of it (one
        # add an entry: a token reads each slot at one recency).
        K = self.coef_b.shape[-1]
        slots = torch.nn.functional.one_hot(self.dest_a.long().clamp(min=0), K).to(F64)
        slots *= (self.dest_a >= 0).unsqueeze(-1)
        dcoef_b = ((dP * reach) @ slots).to(dlam_b.dtype)  # [m, R, C, K]
        dlam_b.scatter_add_(-1, self.JF_b.long().clamp(min=0), dcoef_b * (self.JF_b >= 0))

    def adjoint(self, dPhi2, dkhd2, dqt2, cot: dict, lo: int, grads: dict, a: int) -> None:
        """The chunks' cotangents ``cot`` (``Phi``, ``khd``, ``qt``, chunk ``a`` at ``lo``) from the composed tables'
        (float32, ``[m, R, ...]``), with the cross term's; ``grads`` (``bv``, ``lam``) added to."""
        n, C = 2 * self.Phi.shape[0], self.qt_b.shape[2]
        hi = lo + n
        dPhi2, dkhd2, dqt2 = dPhi2.to(F64), dkhd2.to(F64), dqt2.to(F64)
        dkhd2_a, dqt2_b = dkhd2[:, :, :C], dqt2[:, :, C:]
        dqt_b = dqt2_b @ self.Pa.transpose(-1, -2)
        dkhd_a = dkhd2_a @ self.Pb
        self.cross_adjoint(dqt_b, dkhd_a, _halves(grads["bv"][a:a + n])[0], _halves(grads["lam"][a:a + n])[1])
        Phi_a, Phi_b = _halves(cot["Phi"][lo:hi])
        Phi_a.copy_(self.Pb.transpose(-1, -2) @ dPhi2 + self.qt_b.to(F64).transpose(-1, -2) @ dqt2_b)
        Phi_b.copy_(dPhi2 @ self.Pa.transpose(-1, -2) + dkhd2_a.transpose(-1, -2) @ self.khd_a.to(F64))
        khd_a, khd_b = _halves(cot["khd"][lo:hi])
        khd_a.copy_(dkhd_a)
        khd_b.copy_(dkhd2[:, :, C:])
        qt_a, qt_b = _halves(cot["qt"][lo:hi])
        qt_a.copy_(dqt2[:, :, :C])
        qt_b.copy_(dqt_b)


def pair_segment(walks, dS, tables, cot, u0: int, a: int, b: int, S, F, E, grads) -> None:
    """``chunk_bwd._Walks.segment`` two chunks a step (``a`` and ``b - a`` even): the segment's pairs composed, its
    rerun storing each pair's start states into ``F``, ``dS`` carried to its start with each pair's end adjoint into
    ``E``, kernel B on the pairs and the composition's adjoint into ``cot`` and ``grads``."""
    x, part = walks.x, walks.part
    m, C = (b - a) // 2, x.C
    P = PairTables(tables, part, x, walks.coef[a:b], a - u0, a, b)
    slot_states_and_reads(S, P.Phi, P.kb, None, walks.v_rows, None, P.dest_f, P.dest, None, a, read_f32=True,
                          v_exact=walks.v_exact, starts=F[:m], store_end=False, chunk=C)
    slot_adjoints(dS, P.Phi, P.qt, walks.dO_rows, P.coef, P.dest_f, a, dS_end=E[:m], chunk=C)
    R, K, Dk, Dv = dS.shape
    dPhi2, dkhd2, dqt2 = (torch.empty_like(t) for t in (P.Phi, P.khd, P.qt))
    dlam2 = torch.zeros(m, R, 2 * C, K, device=dS.device, dtype=torch.float32)
    dbv2 = torch.zeros(m, R, 2 * C, Dv, device=dS.device, dtype=torch.float32)
    table_cotangents(F[:m], E[:m], P.dest_f, P.dest, P.coef, P.qt, P.dO, P.khd, P.bv,
                     out={"Phi": dPhi2, "khd": dkhd2, "qt": dqt2}, read_weights=(P.JF, dlam2), dbv_into=dbv2, chunk=C)
    grads["lam"][a:b] += unpaired(dlam2)
    grads["bv"][a:b] += unpaired(dbv2)
    P.adjoint(dPhi2, dkhd2, dqt2, cot, a - u0, grads, a)
