"""The chunked algorithm for the gated delta rule: torch matrix work around a numba scan.

Follows docs/delta-rule-chunked.md, and the scalar-decay torch path (``scalar_decay/chunk_torch.py``) step for
step: the same storages, scan outputs and products, with the delta rule's tables. Per chunk of ``C`` tokens:

1. the open states carried into the chunk, in float64;
2. ``chunk_torch_scan.scan_chunk_delta``: scores, decisions and merges (numba, float64; it advances each row's
   open state explicitly, token by token), and the operands;
3. the reads of the slots live at the chunk start, through the transported queries ``qt`` (one product);
4. the storages at the chunk end: every one takes the chunk's transition ``Phi`` (``[Dk, Dk]``), then the
   merges and the chunk's tokens (their keys transported to the chunk end, ``kh``).

The tables (section 1 of the doc: one unit-triangular inverse ``T`` per chunk, in float64) are computed for a
block of chunks at once before the loop, and the masked intra-chunk attention after it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..common.chunked import ScanOperands, SlotStorages, from_chunks, host, on_device, to_chunks
from . import chunk_torch_scan

# Elements of one [block, R, C, C] tensor: bounds the memory of the per-block tables (as scalar decay's).
_BLOCK_ELEMENTS = 1 << 18


def ut_tables(kb, gb, bb, cd):
    """The structure-independent tables of the state update, for a block of chunks ``[nb, R, C, ...]``; ``kb`` in
    cd, ``gb``, ``bb`` float64. (The scores read the scan's explicit open slot, not tables: section 2.)

    Returns a dict: ``T`` (``(I + diag(b) tril(K K^T, -1))^{-1}``, float64), ``kh`` (``T^T K``, cd), ``Phi`` (the
    chunk's transition, ``[nb, R, Dk, Dk]`` cd), and the cumulative log decay ``Gc`` (float64).
    """
    f64 = torch.float64
    C, Dk = kb.shape[-2:]
    k64 = kb.to(f64)
    Gc = gb.cumsum(-1)
    Gs = torch.tril(k64 @ k64.transpose(-1, -2), -1)
    eye = torch.eye(C, dtype=f64, device=kb.device)
    T = torch.linalg.solve_triangular(eye + bb.unsqueeze(-1) * Gs, eye.expand_as(Gs), upper=False, unitriangular=True)
    Z = T @ (bb.unsqueeze(-1) * k64)  # the WY factor: H_t ... H_{c0} = I - sum_{s <= t} k_s z_s^T
    Phi = torch.eye(Dk, dtype=f64, device=kb.device) - k64.transpose(-1, -2) @ Z
    return dict(
        T=T,
        kh=(T.transpose(-1, -2) @ k64).to(cd),
        Phi=(torch.exp(Gc[..., -1]).view(*Gc.shape[:-1], 1, 1) * Phi).to(cd),
        Gc=Gc,
    )


def _block_tables(qb, kb, vb, gb, bb, cd):
    """Everything that does not depend on the structure, for a block of chunks: :func:`ut_tables`, the scan's
    float64 operands, the transported queries ``qt``, the intra-chunk attention ``q_t^T Phi(s, t] k_s``."""
    f64 = torch.float64
    C = kb.shape[-2]
    tab = ut_tables(kb, gb, bb, cd)
    Gc = tab.pop("Gc")
    causal = torch.ones((C, C), dtype=torch.bool, device=kb.device).tril()
    decay = torch.exp((Gc.unsqueeze(-1) - Gc.unsqueeze(-2)).masked_fill(~causal, -torch.inf)).to(cd)
    T = tab.pop("T").to(cd)
    attn_plain = torch.tril(qb @ kb.transpose(-1, -2)) @ T  # q_t^T H_t ... H_{s+1} k_s
    bk = bb.to(cd).unsqueeze(-1) * kb
    qt = torch.exp(Gc).to(cd).unsqueeze(-1) * (qb - attn_plain @ bk)
    v64, b64 = vb.to(f64), bb
    return dict(
        Phi=tab["Phi"], k64=host(kb.to(f64)), v64=host(v64), kk=host(kb.to(f64).square().sum(-1)), beta=host(b64),
        qt=host(qt), kh=host(tab["kh"]), token_decay=host(torch.exp(Gc[..., -1:] - Gc).to(cd)),
        attn=attn_plain * decay, bv=bb.to(cd).unsqueeze(-1) * vb,
    )


def _chunk(store: SlotStorages, ops: ScanOperands, scan, ci, inputs, tables, bnd, trace, o_chunk):
    """One chunk: the carried open state, the numba scan (decisions, merges, operands), the reads of the slots
    live at the chunk start (one product), the storages at the chunk end."""
    g_np, lam_np = inputs
    device = o_chunk.device
    # 1. The open states carried in (float64; the scan advances them to the chunk end in place).
    P = host(store.open_states().to(torch.float64)).copy()
    # 2. The scan (numba): decisions, merges, and the operands of 3. and 4.
    tokens = (tables["k64"][ci], tables["v64"][ci], tables["kk"][ci], tables["beta"][ci], g_np[ci], P,
              tables["qt"][ci], tables["kh"][ci], tables["token_decay"][ci], lam_np[ci], bnd)
    out = (*trace, tables["W"][ci], ops.X, ops.L, ops.tok_target, ops.add_src, ops.add_dst, ops.zero_rows)
    n_store, Rt, n_add, n_zero = chunk_torch_scan.scan_chunk_delta(*scan, tokens, store.scalar_cache, out)
    X_t, L_t, tok_target_t = (on_device(device, a) for a in (ops.X, ops.L, ops.tok_target))
    # 3. Reads of the slots live at the chunk start: sum_p coef[t, p] qt_t^T S_p, one product.
    store.read_start_slots(X_t, n_store, o_chunk)
    # 4. The storages at the chunk end: S <- Phi S, then the merges and the chunk's tokens (values b v).
    store.advance(tables["Phi"][ci], n_add, ops.add_src, ops.add_dst, n_zero, ops.zero_rows, L_t,
                  tables["bv"][ci], tok_target_t, Rt)
    store.set_open_states(P)  # the scan's explicit open states replace the tables' (rounded) ones


def forward_delta_rule_chunked(q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, *, tau,
                               chunk_size: int = 64, eps: float = 1e-6, norm_eps: float = 1e-6, lengths=None):
    """DLA with the gated delta-rule backbone over one call, chunked: the contract of
    ``scalar_decay.chunk_torch.forward_scalar_decay`` with ``beta`` ``[B, T, H]`` (any float dtype) added. The cache
    tensors are updated in place.

    Returns ``(o [B, T, H, Dv] cd, scores [B, T, H] float64, starts [B, T, H] bool, merged [B, T, H] int64)``.
    """
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], slot_weights.shape[-1]
    R, C = B * H, chunk_size
    nC = -(-T // C)
    cd, device = states.dtype, states.device

    # Rows-first, chunk-major inputs (zero padding: padded tokens have k = 0, beta = 0, g = 0: the identity).
    qc, kc, vc, lamc = (to_chunks(x, C, nC, cd) for x in (q, k, v, slot_weights))
    gc, bc = (to_chunks(x, C, nC, torch.float64) for x in (g, beta))
    bnd = np.zeros((nC, R, C), dtype=np.bool_)
    if boundaries is not None:
        bnd = to_chunks(boundaries, C, nC, torch.bool).cpu().numpy()
    store = SlotStorages(states, counts, info, size)
    full = torch.full((B,), T, dtype=torch.int64)
    row_lengths = (full if lengths is None else lengths.cpu()).repeat_interleave(H).numpy()  # [R]: b * H + h

    o = torch.empty((nC, R, C, Dv), dtype=cd, device=device)
    trace = (np.zeros((nC, R, C)), np.zeros((nC, R, C), dtype=np.bool_), np.full((nC, R, C), -1, dtype=np.int64))
    operands = ScanOperands(R, C, K, Dk, np.float64 if cd == torch.float64 else np.float32)
    block = max(1, _BLOCK_ELEMENTS // (R * C * C))
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        tables = _block_tables(qc[b0:b1], kc[b0:b1], vc[b0:b1], gc[b0:b1], bc[b0:b1], cd)
        tables["W"] = np.zeros((b1 - b0, R, C, C), dtype=operands.dtype)
        inputs = [host(x[b0:b1]) for x in (gc, lamc)]
        for c in range(b0, b1):
            n_rows = np.clip(row_lengths - c * C, 0, C)  # each row's valid tokens in chunk c
            scan = (n_rows, c * C, tau, eps, norm_eps, boundaries is not None)
            _chunk(store, operands, scan, c - b0, inputs, tables, bnd[c], [x[c] for x in trace], o[c])
        # The masked intra-chunk attention of the whole block, added to the reads.
        o[b0:b1] += (tables["attn"] * on_device(device, tables["W"])) @ tables["bv"]

    store.write_back(states, counts, info, size)
    trace = [torch.as_tensor(x, device=device).unsqueeze(-1) for x in trace]
    return (
        from_chunks(o, B, H, T),
        *(from_chunks(x, B, H, T).squeeze(-1) for x in trace),
    )
