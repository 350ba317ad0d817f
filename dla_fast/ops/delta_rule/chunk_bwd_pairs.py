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
The composition is the forward's pair kernel without its cross term; the adjoint is one kernel a pair (its float64
torch form, :class:`PairTables`, is the tests' reference); the walks, kernel A and kernel B are the chunk kernels with
two chunks a step. Segments that start at an odd chunk or span an odd number stay a chunk a step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import next_pow2
from .chunk_bwd_chain import slot_adjoints
from .chunk_bwd_cotangents import table_cotangents
from .chunk_fwd_states import dot_f32_or_tf32, slot_states_and_reads
from .chunk_fwd_steps import pair_steps

F64 = torch.float64
# The composition's adjoint in one tf32 pass where the chains take one (16-bit inputs: ``chunk_torch_bwd.
# ONE_PASS_CHAINS_16BIT``), as kernel B does (run 78): sm_90 at 64 features on 4 warps (Triton 3.6) 1,272 -> 824 B of
# stack and 160 -> 96 KB of shared memory, so two programs an SM instead of one. H100, run 79: the kernel 1.76 -> 0.95
# ms at (8, 4096, 16, 64) moderate, 1.89 -> 0.97 at (2, 16384); the step at (8, 4096) 38.58 -> 37.74 ms (-2.2 %).
# Interpreter: its cotangents 4.6e-4 of their largest from the float64 adjoint's (4 tf32 roundoffs: 2e-3);
# a backward's gradients from 16-bit inputs stay within the one-pass chains' distance from float64 (dinit 7.2e-4 of its
# largest; dg 1.6e-4 -> 2.8e-4, the most moved).
ONE_PASS_ADJOINT = True


def paired(x: torch.Tensor) -> torch.Tensor:
    """``[2m, R, C, ...]`` chunk-major -> ``[m, R, 2C, ...]``: each pair's tokens in one step (a copy)."""
    n, R, C, *rest = x.shape
    return x.reshape(n // 2, 2, R, C, *rest).transpose(1, 2).reshape(n // 2, R, 2 * C, *rest)


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
    """What the composition's adjoint reads of chunks ``a .. b - 1`` (``b - a`` even), from the unit's float32 tables
    ``tables`` (chunk ``a`` at index ``lo``), the partition ``part`` and the chunks' read weights ``coef``, and the
    adjoint itself in float64 torch (:meth:`adjoint`): the reference of :func:`pair_adjoint`'s kernel."""

    def __init__(self, tables: dict, part, x, coef: torch.Tensor, lo: int, a: int, b: int):
        hi = lo + b - a
        self.Pa, self.Pb = (t.to(F64) for t in _halves(tables["Phi"][lo:hi]))
        self.khd_a = _halves(tables["khd"][lo:hi])[0]
        self.qt_b = _halves(tables["qt"][lo:hi])[1]
        self.dest_a = _halves(part.dest[a:b])[0]
        self.coef_b = _halves(coef)[1]
        self.JF_b = _halves(part.JF[a:b])[1]
        self.bv_a = _halves(x.bv[a:b])[0]
        self.dO_b = _halves(x.dOc[a:b])[1]

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
        (float32, ``[m, R, ...]``), with the cross term's; ``grads`` (``bv``, ``lam``) added to. In float64 torch: the
        reference of :func:`pair_adjoint`'s kernel, which the reverse pass runs."""
        n, C = 2 * self.Pa.shape[0], self.qt_b.shape[2]
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
    """``chunk_bwd._Walks.segment`` two chunks a step (``a`` and ``b - a`` even): the segment's pairs composed (the
    forward's ``pair_steps`` without its cross term), its rerun storing each pair's start states into ``F``, ``dS``
    carried to its start with each pair's end adjoint into ``E``, kernel B on the pairs and the composition's adjoint
    into ``cot`` and ``grads``."""
    x, part = walks.x, walks.part
    lo, hi, m, C = a - u0, b - u0, (b - a) // 2, x.C
    Phi, khd, qt, coef, dest_f, dest = pair_steps(
        tables["Phi"][lo:hi], tables["khd"][lo:hi], tables["qt"][lo:hi], walks.coef[a:b], part.destF[a:b],
        part.dest[a:b], walks.v_rows, None, a, chunk=C, v_exact=walks.v_exact, cross=False)
    kb = khd * paired(x.bc[a:b]).to(khd.dtype).unsqueeze(-1)
    slot_states_and_reads(S, Phi, kb, None, walks.v_rows, None, dest_f, dest, None, a, read_f32=True,
                          v_exact=walks.v_exact, starts=F[:m], store_end=False, chunk=C, split=walks.split,
                          launch=walks.rerun_launch)
    slot_adjoints(dS, Phi, qt, walks.dO_rows, coef, dest_f, a, dS_end=E[:m], chunk=C, split=walks.split,
                  launch=walks.chain_launch)
    JF_a, JF_b = _halves(part.JF[a:b])
    JF = torch.cat([JF_a, _gathered(JF_b, _halves(part.destF[a:b])[0], -1)], 2)
    # (kernel B reads dO and b v and adds into the read weights' and d(b v)'s gradients chunk-major, in place)
    cot2 = {"Phi": torch.empty_like(Phi), "khd": torch.empty_like(khd), "qt": torch.empty_like(qt)}
    table_cotangents(F[:m], E[:m], dest_f, dest, coef, qt, x.dOc[a:b], khd, x.bv[a:b], out=cot2,
                     read_weights=(JF, grads["lam"][a:b]), dbv_into=grads["bv"][a:b], chunk=C, split=walks.split,
                     start_block=walks.start_block)
    pair_adjoint(tables, part, x, walks.coef[a:b], lo, a, b, cot2["Phi"], cot2["khd"], cot2["qt"], cot, grads,
                 split=walks.split or not ONE_PASS_ADJOINT)


@triton.jit
def _dot(a, b, acc, SPLIT: tl.constexpr):
    """``acc + a @ b``, float32-accurate where ``SPLIT``, else one tf32 pass (``dot_f32_or_tf32``)."""
    return dot_f32_or_tf32(a, b, acc, False, SPLIT)


# Long: one pair's key-axis adjoints, its cross term's and its read weights' by slot in one program.
@triton.jit
def dla_delta_pair_adjoint_kernel(
    phi_ptr, khd_ptr, qt_ptr, coef_ptr, jf_ptr, dest_ptr, bv_ptr, do_ptr, dphi2_ptr, dkhd2_ptr, dqt2_ptr,
    cphi_ptr, ckhd_ptr, cqt_ptr, dbv_ptr, dlam_ptr, R, dlam_sc, dlam_sr, dlam_st,
    K: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    KP: tl.constexpr, SPLIT: tl.constexpr,
):
    """Program (row r, pair p): :meth:`PairTables.adjoint` for chunks ``a = 2p``, ``b = 2p + 1`` of a segment. In
    (float32, contiguous, chunk-major ``[2m, R, ...]`` unless said): the chunks' ``phi [Dk, Dk]``, ``khd, qt [C,
    Dk]``, ``coef [C, K]``, ``jf [C, K]`` and ``dest [C]`` (int32, -1: none), ``bv, do [C, Dv]``; the composed
    tables' cotangents (``[m, R, ...]``) ``dphi2 [Dk, Dk]``, ``dkhd2, dqt2 [2C, Dk]``. Out: the chunks' cotangents
    ``cphi``, ``ckhd``, ``cqt``; added to: ``dbv [C, Dv]`` and, by its strides (chunk, row, token), ``dlam [C, K]``
    (the program owns its pair's rows). ``SPLIT``: the products float32-accurate (split tf32), else one tf32 pass (the
    16-bit inputs' precision, as the chains')."""
    r = tl.program_id(0)
    p = tl.program_id(1)
    a = 2 * p * R + r  # block indices of the pair's chunks and of the pair
    b = a + R
    pr = p * R + r
    dk = tl.arange(0, BK)
    t = tl.arange(0, C)
    slot = tl.arange(0, KP)
    km = dk < Dk
    square, sq_mask = dk[:, None] * Dk + dk[None, :], km[:, None] & km[None, :]
    rows = t[:, None] * Dk + dk[None, :]  # a [C, Dk] table's offsets
    Pa = tl.load(phi_ptr + a * Dk * Dk + square, mask=sq_mask, other=0.0)
    Pb = tl.load(phi_ptr + b * Dk * Dk + square, mask=sq_mask, other=0.0)
    dPhi2 = tl.load(dphi2_ptr + pr * Dk * Dk + square, mask=sq_mask, other=0.0)
    khd_a = tl.load(khd_ptr + a * C * Dk + rows, mask=km[None, :], other=0.0)
    qt_b = tl.load(qt_ptr + b * C * Dk + rows, mask=km[None, :], other=0.0)
    dkhd2_a = tl.load(dkhd2_ptr + pr * 2 * C * Dk + rows, mask=km[None, :], other=0.0)
    dqt2_b = tl.load(dqt2_ptr + (pr * 2 * C + C) * Dk + rows, mask=km[None, :], other=0.0)
    # Phi2 = Phi_b Phi_a, qt2_b = qt_b Phi_a, khd2_a = khd_a Phi_b^T.
    cphi_a = _dot(tl.trans(qt_b), dqt2_b, _dot(tl.trans(Pb), dPhi2, None, SPLIT), SPLIT)
    tl.store(cphi_ptr + a * Dk * Dk + square, cphi_a, mask=sq_mask)
    cphi_b = _dot(tl.trans(dkhd2_a), khd_a, _dot(dPhi2, tl.trans(Pa), None, SPLIT), SPLIT)
    tl.store(cphi_ptr + b * Dk * Dk + square, cphi_b, mask=sq_mask)
    # The cross term o_b += (reach o W) bv_a, reach = qt_b khd_a^T, W[t, s] = coef_b[t, dest_a[s]].
    reach = _dot(qt_b, tl.trans(khd_a), None, SPLIT)
    dest_a = tl.load(dest_ptr + a * C + t)
    W = tl.load(coef_ptr + (b * C + t)[:, None] * K + dest_a[None, :], mask=(dest_a >= 0)[None, :], other=0.0)
    dP = tl.zeros([C, C], dtype=tl.float32)
    for v0 in range(0, Dv, BV):
        dv = v0 + tl.arange(0, BV)
        vm = (dv < Dv)[None, :]
        dO_b = tl.load(do_ptr + (b * C + t)[:, None] * Dv + dv[None, :], mask=vm, other=0.0)
        bv_a = tl.load(bv_ptr + (a * C + t)[:, None] * Dv + dv[None, :], mask=vm, other=0.0)
        dP = _dot(dO_b, tl.trans(bv_a), dP, SPLIT)
        dbv_at = dbv_ptr + (a * C + t)[:, None] * Dv + dv[None, :]
        tl.store(dbv_at, _dot(tl.trans(reach * W), dO_b, tl.load(dbv_at, mask=vm, other=0.0), SPLIT), mask=vm)
    dreach = dP * W
    tl.store(cqt_ptr + b * C * Dk + rows, _dot(dreach, khd_a, _dot(dqt2_b, tl.trans(Pa), None, SPLIT), SPLIT),
             mask=km[None, :])
    tl.store(ckhd_ptr + a * C * Dk + rows,
             _dot(tl.trans(dreach), qt_b, _dot(dkhd2_a, Pb, None, SPLIT), SPLIT), mask=km[None, :])
    # The halves that pass through: khd2_b = khd_b, qt2_a = qt_a.
    tl.store(ckhd_ptr + b * C * Dk + rows, tl.load(dkhd2_ptr + (pr * 2 * C + C) * Dk + rows, mask=km[None, :]),
             mask=km[None, :])
    tl.store(cqt_ptr + a * C * Dk + rows, tl.load(dqt2_ptr + pr * 2 * C * Dk + rows, mask=km[None, :]),
             mask=km[None, :])
    # b's read weights: dcoef_b[t, i] = sum_s dW[t, s] [dest_a[s] = i] (one product with the 0/1 map of a's tokens
    # to their slots, exact in tf32), added at b's recency of slot i.
    dcoef = dot_f32_or_tf32(dP * reach, (dest_a[:, None] == slot[None, :]).to(tl.float32), None, True, SPLIT)  # [C, KP]
    dlam = tl.zeros([C, KP], dtype=tl.float32)
    for i in range(K):
        column = tl.sum(tl.where(slot[None, :] == i, dcoef, 0.0), 1)
        recency = tl.load(jf_ptr + (b * C + t) * K + i).to(tl.int32)
        dlam += tl.where(slot[None, :] == recency[:, None], column[:, None], 0.0)
    dlam_at = dlam_ptr + (2 * p + 1) * dlam_sc + r * dlam_sr + t[:, None] * dlam_st + slot[None, :]
    inside = slot[None, :] < K
    tl.store(dlam_at, tl.load(dlam_at, mask=inside, other=0.0) + dlam, mask=inside)


def pair_adjoint(tables: dict, part, x, coef, lo: int, a: int, b: int, dPhi2, dkhd2, dqt2, cot: dict,
                 grads: dict, *, num_warps: int = 4, block_v: int = 32, split: bool = True) -> None:
    """:meth:`PairTables.adjoint` by :func:`dla_delta_pair_adjoint_kernel`: chunks ``a .. b - 1`` (chunk ``a`` at
    index ``lo`` of the unit's ``tables`` and ``cot``); ``coef`` the chunks' read weights of their start slots.
    ``split``: the products float32-accurate, else one tf32 pass (``x.split_chains``: 16-bit inputs, as the chains).
    ``num_warps`` and ``block_v`` (the Dv block of the cross term's products): launch settings (sm_90 at 64 features:
    255 registers, ~1 KB of stack and 128-160 KB of shared memory at 8 warps, one program an SM). H100, run 76,
    ``benchmarks/delta_pair_adjoint_sweep.py`` at (2, 16384) moderate, a segment with its cotangents' clones (45 us):
    314 us at 8 warps and ``block_v`` 32, **295** at 4 and 32 (the same bits), 297-322 at the others."""
    hi = lo + b - a
    m, R, C2, Dk = dkhd2.shape
    K, Dv = coef.shape[-1], x.bv.shape[-1]
    dlam = grads["lam"][a:b]
    f32 = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
    i32 = lambda t: t.to(torch.int32).contiguous()  # noqa: E731
    for t in (cot["Phi"], cot["khd"], cot["qt"], grads["bv"]):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError("pair_adjoint: the cotangents and d(b v) must be contiguous float32 tensors")
    if dlam.dtype != torch.float32 or dlam.stride(-1) != 1:
        raise ValueError(f"pair_adjoint: the read weights' gradient must be float32 with unit stride over its slots, "
                         f"got {dlam.dtype} strides {dlam.stride()}")
    dla_delta_pair_adjoint_kernel[(R, m)](
        f32(tables["Phi"][lo:hi]), f32(tables["khd"][lo:hi]), f32(tables["qt"][lo:hi]), f32(coef), i32(part.JF[a:b]),
        i32(part.dest[a:b]), f32(x.bv[a:b]), f32(x.dOc[a:b]), f32(dPhi2), f32(dkhd2), f32(dqt2),
        cot["Phi"][lo:hi], cot["khd"][lo:hi], cot["qt"][lo:hi], grads["bv"][a:b], dlam, R, *dlam.stride()[:3],
        K, Dk, Dv, C=C2 // 2, BK=max(16, next_pow2(Dk)), BV=max(16, min(block_v, next_pow2(Dv))),
        KP=max(16, next_pow2(K)), SPLIT=split, num_warps=num_warps,
    )
