"""The torch backward of the gated delta rule with the partition held fixed, chunked (docs/delta-rule-chunked.md
section 6, docs/training.md).

The reverse of the chunked forward (``chunk_torch``), mirroring the scalar decay's (``scalar_decay/chunk_torch_bwd``).
With the decisions fixed, chunk c's slot states at its end are fixed sums,
``S_end[j] = Phi sum_{i -> j} F_i + sum_{s -> j} khd_s (b_s v_s)^T`` (``F``: the slots live at the chunk start),
and its outputs ``o_t = sum_{s <= t} lam_t[J[t, s]] attn[t, s] b_s v_s + sum_i lam_t[JF[t, i]] qt_t^T F_i``:
linear in the values and in the start states, and in ``q, k, g, beta`` only through the per-chunk tables
(``wy_tables``). So:

1. the tables of every chunk (blocks of chunks, float64);
2. the partition's per-chunk tables, built on the inputs' device (``common.live_starts.DevicePartition``: torch,
   no numba, no loop over tokens, one host synchronisation), and the slot states at the chunk starts, recomputed
   from square-root checkpoints (``common.partition.Partition``'s updates with the matrix transition ``Phi``);
3. the score's part (the surrogate's ``dL/dI_t``, when given): the open slot's ``y_t = P^T k_t`` per token
   from the tables, the score's and the open-norm recursion's adjoint, down to ``dy_t`` (that recursion's
   adjoint, ``common.partition.score_adjoint``, is still numba on the host: the one numba use left here);
4. a reverse pass over chunks carrying ``dS`` through ``Phi``, the merges (fixed sums), the chunk's tokens and
   the reads of the start slots: the gradients w.r.t. the tables ``qt``, ``khd``, ``Phi``, ``kt``;
5. blocks of chunks again: the intra-chunk attention's and the score run's gradients w.r.t. ``attn``,
   ``akap`` and the values, then the tables' adjoint (``wy_tables_adjoint``) into ``q, k, g, beta``.

Row layout: ``R = B * H`` rows, time second (``[R, T, ...]``); chunk-major ``[nC, R, C, ...]`` inside.
"""

from __future__ import annotations

import torch

from ...backend import interpreting
from ..common.layout import chunks, unchunk
from ..common.live_starts import DevicePartition, live_starts_from_lists
from ..common.partition import Partition, open_runs, run_mask, score_adjoint
from ..common.structure import Structure, checkpoint_interval
from .chunk_bwd import KernelPartition, reverse_pass_kernels, segment_units
from .chunk_bwd_intra import intra_adjoint
from .chunk_bwd_values import value_grads
from .chunk_fwd import FLOAT32_TABLES_WIDTH
from .wy_tables import wy_tables, wy_tables_adjoint
from .wy_tables_adjoint_triton import wy_tables_adjoint_triton
from .wy_tables_f32_triton import output_tables_rows_f32
from .wy_tables_triton import output_tables_saved_rows

# Elements of one [block, R, C, C] tensor in the blocked table passes (scalar decay's size). H200, run 25, (2, 16384,
# 16, 64) moderate, backward on kernels: fwd+bwd 325 ms at 2^20 (~350 torch operations a block, 32 blocks), 212 at
# 2^22, 200 at 2^23; peak 3.18, 3.18, 3.38 GiB.
_BLOCK_ELEMENTS = 1 << 22
F64 = torch.float64
# The operands of the tables' adjoint kernel's products for 16-bit inputs (float64 for float32 inputs): tf32 (float32
# operands and sums), within the 16-bit operands the scalar-decay backward takes (docs/precision.md section 8). H100,
# run 76, (2, 16384, 16, 64) moderate, bf16 inputs: the kernel 7.2 ms in float64, 3.9 in tf32, 3.7 with bf16 operands;
# the gradients' largest difference from float64's (relative to the largest entry) dq 3.5e-3, dk 3.2e-3 in tf32, about
# the bf16 outputs' own rounding (float32 inputs against bf16 ones: 3.4e-3), and 7.0e-3, 6.5e-3 with bf16 operands.
ADJOINT_16BIT_OPERANDS = torch.float32
# The reruns', kernel A's and kernel B's products (the slot states, their adjoints' chain, the tables' cotangents) in
# one tf32 pass for 16-bit inputs, instead of split tf32 (float32-accurate; float32 inputs keep it). H100, run 77, bf16
# at (2, 16384, 16, 64) moderate: kernel A 6.47 -> 4.68 ms, the start slots' kernel 4.65 -> 3.60, the token kernel
# 1.75 -> 0.98, the reruns -0.59; the step at (8, 4096) 44.25 -> 40.20 ms (-9.2 %). The gradients' largest change
# from the split products' (relative to the largest entry): dv 2.8e-3, dg 1.3e-4, dlam 7e-5, dq, dk, dbeta within one
# bf16 rounding; below the bf16 inputs' own spread (float32 copies of them: dv 4.2e-3, dg 1.1e-3, dlam 1.5e-3).
ONE_PASS_CHAINS_16BIT = True
# The backward's tables for 16-bit inputs by the forward's float32 table kernel, its scratch saved in float32 for the
# tables' adjoint (which multiplies in tf32 there), instead of the float64 kernel's. H100, run 77, same cell: the table
# kernels over every chunk 3.04 -> 2.08 ms (timed alone), the adjoint 3.87 -> 3.17 (half the bytes read); the step at
# (8, 4096) 44.25 -> 42.91 ms (-3.0 %), both switches 38.83 (-12.3 %). Gradients: dv 1.4e-3, the rest within 5e-7 or
# one bf16 rounding of the float64 tables'.
FLOAT32_SAVED_TABLES_16BIT = True
# (Run 77's failure at 32 features, the keys' gradient 1.04 off, came with the adjoint's 16-column wgmma launch; since
# that launch is refused, H100 run 79 measured these tables at 16, 32, 64 features within the float64 tables' errors:
# docs/performance.md "Run 79".)
# Those tables with exact bf16 key and query products (the float32 table kernel's SPLIT16, which the forward's output
# tables have taken since run 56) for bf16 inputs, whose float32 rows hold bf16 numbers (run 78). H100, run 79, the
# step's table launches at (8, 4096, 16, 64) moderate 3.28 -> 2.83 ms, the step 38.58 -> 38.21 ms (-0.9 %); (2, 16384)
# 3.29 -> 2.84 ms. Gradients 8.9e-8 to 5.7e-7 from float64 (interpreter).
BF16_KEY_TABLES = True


class _Inputs:
    """The chunk-major inputs and everything derived once: ``q, k, v, dO, lam [nC, R, C, ...]`` in cd, ``g, b``
    float64 and, on the torch path, every chunk's tables ``qt, khd, Phi`` (cd) and, for the score, ``kt, akap``
    (float64). The kernels' path (``kernels``) stores none: its units of segments compute their own.

    The tables are computed (and differentiated) in float64 when the score's part runs (its ``w = v - a y``
    cancels: docs/delta-rule-chunked.md section 5), else in the compute dtype (``T`` is well conditioned), or in
    float64 by the table and adjoint kernels on the kernels' path."""

    def __init__(self, q, k, v, g, beta, lam, dO, C: int, score: bool, kernels: bool = False,
                 v_exact: bool | None = None, keys_bf16: bool = False):
        T = q.shape[1]
        self.v_exact = v_exact  # the values exact in tf32 (16-bit inputs upcast); None: not known
        # Under Triton's interpreter (whose bf16 products are wrong) the tables' adjoint stays float64.
        self.adjoint_operands = ADJOINT_16BIT_OPERANDS if v_exact and not interpreting() else F64
        self.split_chains = not (ONE_PASS_CHAINS_16BIT and v_exact)
        self.float32_tables = (FLOAT32_SAVED_TABLES_16BIT and self.adjoint_operands != F64
                               and q.shape[-1] <= FLOAT32_TABLES_WIDTH
                               and q.dtype == torch.float32)
        self.tables_split16 = BF16_KEY_TABLES and keys_bf16 and self.float32_tables  # (a GPU: float32_tables)
        self.C, self.nC, self.T, self.cd = C, max(1, -(-T // C)), T, q.dtype
        self.tdt = F64 if score else q.dtype  # the tables' dtype
        self.score = score  # the score's tables (kt, akap) are built only for its part
        self.kernels = kernels
        self.qc, self.kc, self.vc, self.lamc = (chunks(x, C, self.nC) for x in (q, k, v, lam))
        self.gc, self.bc = (chunks(x.to(F64), C, self.nC) for x in (g, beta))
        # dO and b v chunk-major in memory: every block and segment multiplies them as whole matrices (chunk views
        # of the rows would be copied at each such read).
        self.dOc = chunks(dO, C, self.nC).contiguous()
        self.bv = torch.empty(self.vc.shape, dtype=self.cd, device=v.device)
        torch.mul(self.bc.to(self.cd).unsqueeze(-1), self.vc, out=self.bv)
        R, C = q.shape[0], self.C
        self.block = max(1, _BLOCK_ELEMENTS // max(1, R * C * C))
        keep = ("qt", "khd", "Phi") + (("kt", "akap") if score else ())
        self.tables = {} if kernels else {n: [] for n in keep}
        for b0, b1 in () if kernels else self.bounds():  # the blocks' adjoint recomputes its own
            inputs = [x[b0:b1] for x in (self.qc, self.kc, self.gc, self.bc)]
            tab = wy_tables(*(x.to(self.tdt) for x in inputs), scores=score)[0]
            for n in keep:
                self.tables[n].append(tab[n] if n in ("kt", "akap") else tab[n].to(self.cd))
        self.tables = {n: torch.cat(x) for n, x in self.tables.items()}

    def bounds(self):
        """``(b0, b1)`` of the blocks of chunks."""
        return [(b0, min(self.nC, b0 + self.block)) for b0 in range(0, self.nC, self.block)]

    def blocks(self):
        """``(b0, b1, tables, saved)`` for the blocks of chunks, the tables recomputed in ``self.tdt``."""
        for b0, b1 in self.bounds():
            inputs = [x[b0:b1] for x in (self.qc, self.kc, self.gc, self.bc)]
            yield (b0, b1, *wy_tables(*(x.to(self.tdt) for x in inputs), scores=self.score))


class _Score:
    """The score's part: ``y_t = P^T k_t`` of the open slot ``P`` before every token, from the carried open state
    (``kt_t^T P_c``) and the open run inside the chunk (``sum_s akap[t, s] b_s v_s``), and its adjoint."""

    def __init__(self, part: Partition, x: _Inputs):
        self.carried, self.lo = open_runs(part.structure, x.C, x.nC)
        self.open_at = (part.m_start[:x.nC] - 1).clamp(min=0)  # [nC, R]
        self.y_carry = torch.zeros((x.nC, part.R, x.C, x.vc.shape[-1]), dtype=F64, device=x.kc.device)
        self.x = x

    def record_carry(self, c: int, F: torch.Tensor, rows):
        """``kt_t^T P_c`` for chunk c, from the slot states ``F`` at its start."""
        self.y_carry[c] = self.x.tables["kt"][c] @ F[rows, self.open_at[c]].to(F64)

    def run(self, b0: int, b1: int) -> torch.Tensor:
        """``[nb, R, C, C]`` bool: s in the open run before t (same chunk)."""
        return run_mask(self.lo[b0:b1], self.x.C)

    def adjoint(self, structure: Structure, init, dscores, eps, norm_eps):
        """The score's adjoint down to ``dy`` (``self.dy [nC, R, C, Dv]`` float64), the direct terms
        ``(dk, dv, db, dg)`` (``[R, T, ...]`` float64) and the initial open slot's ``dinit`` term."""
        x, C, T = self.x, self.x.C, self.x.T
        bv = x.bv.to(F64)
        y = self.carried.unsqueeze(-1) * self.y_carry
        for b0 in range(0, x.nC, x.block):
            b1 = min(x.nC, b0 + x.block)
            y[b0:b1] += (x.tables["akap"][b0:b1] * self.run(b0, b1)) @ bv[b0:b1]
        y = unchunk(y, T)
        k, v, g, b = (unchunk(t, T).to(F64) for t in (x.kc, x.vc, x.gc, x.bc))
        a, kk, vv, b1 = torch.exp(g).unsqueeze(-1), k.square().sum(-1), v.square().sum(-1), b.unsqueeze(-1)
        w = v - a * y
        ww = w.square().sum(-1)
        R = k.shape[0]
        rows = torch.arange(R, device=k.device)
        P0 = init[rows, (structure.size0 - 1).clamp(min=0)]  # the initial open slot
        nP0 = torch.where(structure.size0 > 0, P0.to(F64).square().sum((1, 2)), torch.zeros_like(g[:, 0]))
        dx, dss, dfresh, dg, lam0 = score_adjoint(structure.starts, b * (y * w).sum(-1), b * b * kk * ww,
                                                  b * b * kk * vv, g, nP0, dscores, float(k.shape[-1] * v.shape[-1]),
                                                  eps, norm_eps)
        dx1, dss1, dfresh1 = dx.unsqueeze(-1), dss.unsqueeze(-1), dfresh.unsqueeze(-1)
        dw = dss1 * 2.0 * b1 * b1 * kk.unsqueeze(-1) * w  # ss = b^2 |k|^2 |w|^2, w = v - a y
        self.dy = chunks(dx1 * b1 * (v - 2.0 * a * y) - a * dw, C, x.nC)  # x = b (y.v - a y.y)
        dk = 2.0 * b1 * b1 * (dss1 * ww.unsqueeze(-1) + dfresh1 * vv.unsqueeze(-1)) * k
        dv = dx1 * b1 * y + dw + dfresh1 * 2.0 * b1 * b1 * kk.unsqueeze(-1) * v
        db = dx * (y * w).sum(-1) + 2.0 * b * kk * (dss * ww + dfresh * vv)
        dg = dg - (a * (dx1 * b1 * y.square().sum(-1, keepdim=True) + (y * dw).sum(-1, keepdim=True))).squeeze(-1)
        dinit0 = 2.0 * lam0.view(R, 1, 1) * P0.to(F64) * (structure.size0 > 0).view(R, 1, 1)
        return (dk, dv, db, dg), dinit0


def _chunk_adjoint(part: Partition, c: int, F, dS, x: _Inputs, cot, grads, score: _Score | None):
    """The adjoint of chunk c's state update and reads of its start slots: dS at its end -> dS at its start; the
    tables' cotangents ``cot`` (``qt``, ``khd``, ``Phi``, ``kt``) and ``grads`` (``bv``, ``lam``) accumulate."""
    R, K, C = part.R, part.K, part.C
    Dk, Dv = F.shape[2:]
    Mf, idx, Md = part.tables(c)
    Rt = idx.shape[1]
    m = max(1, int(part.mF[c]))  # the start slots live in some row (the others are zero)
    khd, bv, qt, dOb = x.tables["khd"][c], x.bv[c], x.tables["qt"][c], x.dOc[c]
    # S_end[j] = Phi sum_{destF[i] = j} F_i + sum_{dest[s] = j} khd_s (b_s v_s)^T.
    G = torch.bmm(Mf[:, :, :m].transpose(1, 2), dS.reshape(R, K, Dk * Dv)).view(R, m, Dk, Dv)
    cot["Phi"][c] += torch.einsum("ridv,riev->rde", G, F[:, :m])
    dF = torch.zeros_like(F)
    dF[:, :m] = part.transition(c, G, transpose=True)
    dS_t = dS.reshape(R, K, Dk * Dv).gather(1, idx.unsqueeze(-1).expand(R, Rt, Dk * Dv)).view(R, Rt, Dk, Dv)
    dSv = torch.bmm(dS_t.reshape(R, Rt * Dk, Dv), bv.transpose(1, 2)).view(R, Rt, Dk, C)  # dS_j (b_s v_s)
    cot["khd"][c] += (Md.unsqueeze(2) * dSv).sum(1).transpose(1, 2)
    dSk = torch.bmm(khd, dS_t.transpose(1, 2).reshape(R, Dk, Rt * Dv)).view(R, C, Rt, Dv)  # khd_s^T dS_j
    grads["bv"][c] += (Md.transpose(1, 2).unsqueeze(-1) * dSk).sum(2)
    # Reads of the start slots: o_t += sum_i lam_t[JF[t, i]] qt_t^T F_i (the decay is inside qt).
    JFc = part.JF[c, :, :, :m]
    validF = JFc >= 0
    coefF = torch.gather(x.lamc[c], -1, JFc.clamp(min=0)) * validF  # [R, C, m]
    Zr = torch.bmm(dOb, F[:, :m].reshape(R, m * Dk, Dv).transpose(1, 2)).view(R, C, m, Dk)  # (F_i dO_t)^T
    cot["qt"][c] += (coefF.unsqueeze(-1) * Zr).sum(2)
    grads["lam"][c].scatter_add_(-1, JFc.clamp(min=0), (Zr * qt.unsqueeze(2)).sum(-1) * validF)
    X = (coefF.unsqueeze(-1) * qt.unsqueeze(2)).reshape(R, C, m * Dk)
    dF[:, :m] += torch.bmm(X.transpose(1, 2), dOb).view(R, m, Dk, Dv)
    if score is not None:  # y_t's carried part kt_t^T P_c (P_c: the open slot at the chunk start)
        rows = torch.arange(R, device=F.device)
        dy = score.dy[c] * score.carried[c].unsqueeze(-1)  # [R, C, Dv] float64
        P = F[rows, score.open_at[c]].to(F64)
        cot["kt"][c] += dy @ P.transpose(1, 2)
        dF[rows, score.open_at[c]] += (x.tables["kt"][c].transpose(1, 2) @ dy).to(F.dtype)
    return dF


def _reverse_pass(part: Partition, checkpoints, every: int, dS, x: _Inputs, cot, grads, score):
    """Chunks in reverse, each segment's start states recomputed from its checkpoint: dS -> dS at the start."""
    for seg in range(len(checkpoints) - 1, -1, -1):
        c_a, c_b = seg * every, min(part.nC, (seg + 1) * every)
        Fs = [checkpoints[seg]]
        for c in range(c_a, c_b - 1):
            Fs.append(part.advance(Fs[-1], c))
        for c in range(c_b - 1, c_a - 1, -1):
            dS = _chunk_adjoint(part, c, Fs[c - c_a], dS, x, cot, grads, score)
    return dS


def _adjoint_outputs(x: _Inputs) -> dict:
    """The tables' adjoint's gradients (``q``, ``k``, ``g``, ``b``; chunk-major), filled block by block: ``g``, ``b``
    float64 (more terms join them); ``q``, ``k`` float64 where the score's adjoint adds to them, else in the compute
    dtype, each block's float64 result rounded once as it is stored (the same bits as rounding at the end, without
    two float64 passes over them). Left empty: every block writes all of its chunks."""
    out = {n: torch.empty_like(x.gc) for n in ("g", "b")}
    qk = F64 if x.score else x.cd
    out.update(q=torch.empty_like(x.qc, dtype=qk), k=torch.empty_like(x.kc, dtype=qk))
    return out


def _blocks_adjoint(part: Partition, x: _Inputs, cot, grads, score: _Score | None):
    """:func:`_block_adjoint` for every block of chunks (its tables recomputed), the cotangents ``cot`` of every
    chunk's tables given."""
    out = _adjoint_outputs(x)
    for b0, b1, tab, saved in x.blocks():
        _block_adjoint(part, x, b0, b1, tab, saved, {n: c[b0:b1] for n, c in cot.items() if c is not None}, grads,
                       score, out)
    return out


def _block_adjoint(part: Partition, x: _Inputs, b0: int, b1: int, tab, saved, cot, grads, score: _Score | None,
                   out) -> None:
    """Chunks ``b0 .. b1 - 1`` with their tables ``tab`` (and ``saved``, what their adjoint reads) and the tables'
    cotangents ``cot`` (``qt``, ``khd``, ``Phi``, with the score ``kt``; these chunks'): the intra-chunk attention's
    backward (``attn`` against ``lam_t[J[t, s]] dO_t . b_s v_s``), the score run's (``y_t = sum_s akap[t, s] b_s
    v_s``), then the tables' adjoint into ``out`` (``q, k, g, b``)."""
    J = part.recency(b0, b1)
    bv, dOb = x.bv[b0:b1], x.dOc[b0:b1]
    c_b = {n: cot[n].to(x.tdt) for n in ("qt", "khd", "Phi")}
    if x.kernels:  # one launch (run 73: ten torch launches and a scatter of float atomics before)
        c_b["attn"] = intra_adjoint(J, x.lamc[b0:b1], tab["attn"], bv, dOb, grads["bv"][b0:b1], grads["lam"][b0:b1])
    else:
        valid = J >= 0
        Jc = J.clamp(min=0)
        Wl = torch.gather(x.lamc[b0:b1], -1, Jc) * valid  # lam_t[J[t, s]]
        attn = tab["attn"].to(x.cd)
        dP = dOb @ bv.transpose(-1, -2)  # dO_t . b_s v_s
        grads["bv"][b0:b1] += (attn * Wl).transpose(-1, -2) @ dOb
        grads["lam"][b0:b1].scatter_add_(-1, Jc, dP * attn * valid)
        c_b["attn"] = (dP * Wl).to(x.tdt)
    if score is not None:
        run = score.run(b0, b1)
        dy, bv64 = score.dy[b0:b1], bv.to(F64)
        c_b["kt"] = cot["kt"]
        c_b["akap"] = (dy @ bv64.transpose(-1, -2)) * run
        grads["bv"][b0:b1] += ((tab["akap"] * run).transpose(-1, -2) @ dy).to(x.cd)
    if x.kernels:  # the table kernel's tables and float64 scratch; written into out (q, k rounded as stored)
        wy_tables_adjoint_triton(x.gc[b0:b1], tab, saved, c_b, out={n: t[b0:b1] for n, t in out.items()},
                                 operands=x.adjoint_operands)
    else:
        d = wy_tables_adjoint(*(t[b0:b1].to(x.tdt) for t in (x.qc, x.kc, x.gc, x.bc)), tab, saved, c_b)
        for name, dd in zip(("q", "k", "g", "b"), d):
            out[name][b0:b1] = dd


def _kernels_backward(part, init, every: int, dS, dO, x: _Inputs, grads, kept):
    """The reverse pass on kernels, then the tables' adjoint: ``(dinit, out)`` (``out`` as :func:`_blocks_adjoint`'s).
    Per unit of whole segments, last first: the table kernel once (the tables, computed in float64 and stored in the
    compute dtype, and the float64 scratch its adjoint reads), the unit's reverse pass, the unit's adjoint (H200, run
    28, fwd+bwd at (2, 16384, 16, 64) moderate: 83.1 ms against 86.0 with every chunk's tables computed first and again
    per block for the adjoint; peak 2.67 against 3.08 GiB)."""
    out = _adjoint_outputs(x)
    # The rows behind the chunk views (``[R, nC C, 1, ...]``, a view each): the table kernel reads a unit's chunks in
    # place, where chunk-major copies of q, k, g, b were made per unit.
    inputs = [unchunk(t, x.nC * x.C).unsqueeze(2).contiguous() for t in (x.qc, x.kc, x.gc, x.bc)]

    def unit_tables(u0: int, u1: int):
        # Stored in the compute dtype (float32), which the walks read and the adjoint's decay sums take as well.
        if x.float32_tables:
            tab, saved = output_tables_rows_f32(*inputs, u0, u1 - u0, save=True, split16=x.tables_split16,
                                                bf16_numbers=x.tables_split16)
        else:
            tab, saved = output_tables_saved_rows(*inputs, u0, u1 - u0, dtype=x.cd)
        return {n: tab[n] for n in ("qt", "khd", "Phi")}, (tab, saved)

    def unit_done(u0: int, u1: int, cot, payload) -> None:
        _block_adjoint(part, x, u0, u1, *payload, cot, grads, None, out)

    units = segment_units(x.nC, every, x.block)
    return reverse_pass_kernels(part, init, every, dS, dO, x, grads, units, unit_tables, unit_done, kept), out


def _partition(structure: Structure, handed, x: _Inputs, R: int, K: int, kernels: bool):
    """The partition's maps: by the partition kernel from the structure a kernel forward decided (``handed``, a
    ``SlotCheckpoints``), on the kernels' path (H200, run 28, fwd+bwd at (2, 16384, 16, 64) moderate: 98.2 ms against
    106.5 by ``DevicePartition``); else ``DevicePartition``, from that structure's live-start lists where handed over
    (on the CPU at (2, 2048, 16, 64) the rebuild's scans are 138 of its 195 torch operations; on the H200 the two
    were 106.5 and 103.8 ms, within run 28's noise), else from the trace."""
    decided = handed.decided if handed is not None else None
    if kernels and decided is not None:
        return KernelPartition(decided, x.T, K, x.lamc)
    ones = torch.ones_like(x.gc, dtype=x.cd)  # the token keys khd carry their decay to the chunk end
    # Without stored tables (the kernels' units) the partition never advances a state: its tables only place it.
    args = (structure, R, x.T, x.C, K, ones, x.tables.get("Phi"), x.tables.get("khd", x.kc), x.bv)
    if decided is not None:
        s, size0 = decided  # every row T long, as live_starts builds them
        live = live_starts_from_lists(s.masks, s.death, s.death0, s.live, s.livem, s.fpos, s.size, size0,
                                      torch.full_like(size0, x.T), K, x.C)
        return DevicePartition(*args, live=live)
    return DevicePartition(*args)


def delta_rule_backward(q, k, v, g, beta, lam, init, structure: Structure, dO, dS_final, *, chunk_size: int = 64,
                        checkpoint_every: int | None = None, dscores: torch.Tensor | None = None,
                        eps: float = 1e-6, norm_eps: float = 1e-6, kernels: bool = False,
                        v_exact: bool | None = None, keys_bf16: bool = False):
    """Gradients of ``<dO, o> + <dS_final, S_final> (+ <dscores, I>)`` for the gated delta rule, partition fixed.

    As ``scalar_decay.chunk_torch_bwd.scalar_decay_backward`` with ``beta [R, T]`` added (same layouts, compute
    dtype ``cd`` of ``q``): ``dscores`` ``[R, T]`` float64 (zero on tokens the score did not decide) is a gradient
    w.r.t. the scores, propagated into k, v, g, beta and the initial open state. ``checkpoint_every``: chunks
    between stored states (default ``ceil(sqrt(nC))``).

    Runs on the inputs' device (the structure's tensors on it too). The partition's tables are torch
    (``DevicePartition``, on every device; equal bit for bit to the numba ``Partition``'s), with one host
    synchronisation for their widths; numba runs only with ``dscores`` (the score's open-norm adjoint).
    ``kernels``: the reverse pass over chunks on the Triton kernels (``chunk_bwd.reverse_pass_kernels``; float32
    inputs, without ``dscores``, where Triton runs), else in torch chunk by chunk. ``v_exact``: whether ``v`` holds
    16-bit numbers (exact in tf32: the kernels' walks then multiply the values in one pass); None: the kernels' path
    scans ``v`` for it (a host synchronisation). ``keys_bf16``: whether ``q`` and ``k`` hold bf16 inputs upcast (the
    kernels' tables may then multiply them as bf16, exactly: ``BF16_KEY_TABLES``).

    Returns ``(dq, dk, dv, dg, dbeta, dlam, dinit)`` in the layouts of the inputs.
    """
    R, T, Dk = q.shape
    K, cd, C = lam.shape[-1], q.dtype, chunk_size
    if T == 0:  # nothing happened: the final states are the initial ones
        dinit = torch.zeros_like(init) if dS_final is None else dS_final.clone()
        return (*(torch.zeros_like(t) for t in (q, k, v, g, beta, lam)), dinit)
    kernels = kernels and dscores is None and cd == torch.float32
    x = _Inputs(q, k, v, g, beta, lam, dO, C, dscores is not None, kernels=kernels, v_exact=v_exact,
                keys_bf16=keys_bf16)
    nC = x.nC
    handed = structure.slot_checkpoints  # what a kernel forward kept: its live starts and decided structure too
    handed = handed if handed is not None and handed.chunk == C else None
    part = _partition(structure, handed, x, R, K, kernels)
    score = _Score(part, x) if dscores is not None else None
    every = checkpoint_every or checkpoint_interval(nC)
    grads = dict(bv=torch.zeros_like(x.bv), lam=torch.zeros_like(x.lamc))
    dS = torch.zeros_like(init) if dS_final is None else dS_final.clone()
    direct = dinit0 = None
    if kernels:
        # The reverse pass starts from the slot states the kernel forward kept where it did (H200, run 27, fwd+bwd at
        # (2, 16384, 16, 64) moderate: 106.5 against 121.0 ms walking to them again).
        kept = handed.states if handed is not None and handed.every == every else None
        dinit, d = _kernels_backward(part, init, every, dS, dO, x, grads, kept)
    else:
        cot = {n: torch.zeros_like(x.tables[n]) for n in ("qt", "khd", "Phi")}
        cot["kt"] = torch.zeros_like(x.tables["kt"]) if score is not None else None
        checkpoints, _ = part.checkpoints(init, every, None if score is None else score.record_carry)
        if score is not None:  # its adjoint (score.dy) enters the reverse pass
            direct, dinit0 = score.adjoint(structure, init, dscores, eps, norm_eps)
        dinit = _reverse_pass(part, checkpoints, every, dS, x, cot, grads, score)
        d = _blocks_adjoint(part, x, cot, grads, score)
    # The values enter as b v. In the compute dtype where that is float32 or float64: b and d(b v) are numbers of
    # it, so the product in it is their float64 product rounded once, the same bits; with the score, its terms join
    # dv in float64 first.
    if kernels:  # one pass (chunk_bwd_values: four over float64 copies in torch)
        dv = value_grads(x.vc, grads["bv"], x.bc, d["b"])
    else:
        dbv = grads["bv"].to(F64)
        in_cd = score is None and cd in (torch.float32, F64)
        dv = x.bc.to(cd).unsqueeze(-1) * grads["bv"] if in_cd else x.bc.unsqueeze(-1) * dbv
        d["b"] = d["b"] + (x.vc.to(F64) * dbv).sum(-1)
    dq, dk, dv, dg, db = (unchunk(t, T) for t in (d["q"], d["k"], dv, d["g"], d["b"]))
    if score is not None:
        dk, dv, db, dg = dk + direct[0], dv + direct[1], db + direct[2], dg + direct[3]
        rows = torch.arange(R, device=q.device)
        dinit = dinit.clone()
        dinit[rows, (structure.size0 - 1).clamp(min=0)] += dinit0.to(cd)
    return (dq.to(cd), dk.to(cd), dv.to(cd), dg.to(cd), db.to(cd), unchunk(grads["lam"], T), dinit)
