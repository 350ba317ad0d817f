"""The chunked algorithm for the scalar-decay backbone: torch matrix work around a numba scalar scan.

Follows docs/chunked-algorithm.md. Per chunk of ``C`` tokens (a Python loop over chunks, O(T / C)
iterations):

1. ``kP = K_c P_c`` for the open state ``P_c`` carried into the chunk (one batched product);
2. ``chunk_torch_scan.scan_chunk``: scores, decisions and merges (scalar, numba, float64), and the operands of
   steps 3 and 4;
3. the reads of the slots live at the chunk start: one product ``X @ S`` over (storage, Dk);
4. the slot states at the chunk end. States live in storages with an indirection (``phys``), so a merge
   moves nothing: one in-place decay, an ``index_add`` of the start slots merged into an older one's
   storage, fresh storages zeroed for slots made only of this chunk's tokens, and one product ``L^T V``
   adding the chunk's tokens to the end slots that receive them (merges only join neighbours, so every
   end slot is a union of whole start slots and a run of this chunk's tokens).

Everything that does not depend on the structure (Gram matrices, decays, ``Q K^T``) is computed for a
block of chunks at once before the loop, and the masked intra-chunk attention after it.

Internal layout: rows ``R = B * H`` and chunk-major ``[nC, R, C, ...]`` so that every chunk is a
contiguous ``[R, C, ...]`` block (what the numba kernel reads).
"""

from __future__ import annotations

import numpy as np
import torch

from ..common.chunked import ScanOperands, SlotStorages, from_chunks, host, on_device, to_chunks
from . import chunk_torch_scan

# Elements of one [block, R, C, C] tensor: bounds the memory of the per-block precomputation.
_BLOCK_ELEMENTS = 1 << 18  # measured: 1 << 22 was 20 % slower (fresh large tensors), 1 << 14 too


def _block_tables(qb, kb, vb, gb, causal, cd):
    """What does not depend on the structure, for a block of chunks at once: the decays inside each chunk
    (``Gc[t] = g[c0] + ... + g[t]`` in float64, exponentials in cd), the decayed Gram matrix and norms the
    scores read, and the intra-chunk attention ``(q_t . k_s) exp(Gc[t] - Gc[s])``."""
    f64 = torch.float64
    Gc = gb.cumsum(-1)
    Gp = torch.nn.functional.pad(Gc[..., :-1], (1, 0))  # Gc[t - 1]
    decay = torch.exp((Gc.unsqueeze(-1) - Gc.unsqueeze(-2)).to(cd).masked_fill(~causal, -torch.inf))
    decay_prev = torch.nn.functional.pad(decay[..., :-1, :], (0, 0, 1, 0))  # exp(Gc[t-1] - Gc[s]), s < t
    return dict(
        dgram=host(decay_prev * (kb @ kb.transpose(-1, -2)) * (vb @ vb.transpose(-1, -2))),
        ss=host((kb * kb).sum(-1).to(f64) * (vb * vb).sum(-1).to(f64)),
        carry_decay=host(torch.exp(Gp).to(cd)),
        decay_in=host(torch.exp(Gc).to(cd)),
        token_decay=host(torch.exp(Gc[..., -1:] - Gc).to(cd)),  # token s to the chunk end
        end_decay=torch.exp(Gc[..., -1]).to(cd).unsqueeze(-1),  # the chunk start to its end: [nb, R, 1]
        attn=(qb @ kb.transpose(-1, -2)) * decay,
    )


def _chunk(store: SlotStorages, ops: ScanOperands, scan, c, ci, k_chunk, v_chunk, inputs, tables, bnd, trace, o_chunk):
    """One chunk: the carried open state, the numba scan (decisions, merges, operands), the reads of the slots
    live at the chunk start (one product), the storages at the chunk end."""
    q_np, k_np, v_np, g_np, lam_np = inputs
    device = o_chunk.device
    # 1. The open state carried in and k_t^T P_c.
    P = store.open_states()
    kP = torch.bmm(k_chunk, P)
    # 2. The scalar scan (numba): decisions, merges, and the operands of 3. and 4.
    tokens = (host(kP), v_np[ci], host(P), q_np[ci], k_np[ci], tables["dgram"][ci], tables["ss"][ci], g_np[ci],
              tables["carry_decay"][ci], tables["decay_in"][ci], tables["token_decay"][ci], lam_np[ci], bnd)
    out = (*trace, tables["W"][ci], ops.X, ops.L, ops.tok_target, ops.add_src, ops.add_dst, ops.zero_rows)
    n_store, Rt, n_add, n_zero = chunk_torch_scan.scan_chunk(*scan, tokens, store.scalar_cache, out)
    X_t, L_t, tok_target_t = (on_device(device, a) for a in (ops.X, ops.L, ops.tok_target))
    # 3. Reads of the slots live at the chunk start: sum_p coef[t, p] q_t^T S_p, one product.
    store.read_start_slots(X_t, n_store, o_chunk)
    # 4. The storages at the chunk end.
    store.advance(tables["end_decay"][ci], n_add, ops.add_src, ops.add_dst, n_zero, ops.zero_rows, L_t, v_chunk,
                  tok_target_t, Rt)


def forward_scalar_decay(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    slot_weights: torch.Tensor,
    tau: float,
    boundaries: torch.Tensor | None,
    states: torch.Tensor,
    counts: torch.Tensor,
    info: torch.Tensor,
    size: torch.Tensor,
    *,
    chunk_size: int = 64,
    eps: float = 1e-6,
    norm_eps: float = 1e-6,
    lengths: torch.Tensor | None = None,
):
    """DLA with the scalar-decay backbone over one call: the seam the Triton path replaces on CUDA.

    Inputs are validated already. The cache tensors are the state to continue from and are updated in
    place to the state after the call.

    Args:
        q, k: ``[B, T, H, Dk]``; v: ``[B, T, H, Dv]``; slot_weights: ``[B, T, H, K]`` (any float dtype;
            cast to the states' dtype). g: ``[B, T, H]`` (used in float64). tau: Python float.
        boundaries: bool ``[B, T, H]`` or None.
        states: ``[B, H, K, Dk, Dv]`` float32 or float64: the compute dtype ``cd``.
        counts: ``[B, H, K]`` int64. info: ``[B, H, K]`` float32/float64 (accumulated in float64 inside).
        size: ``[B, H]`` int64.
        chunk_size, eps, norm_eps: as in ``dla_fast.forward``.
        lengths: ``[B]`` int64 or None: batch b's tokens are ``0 .. lengths[b] - 1`` (variable-length batches;
            the padding beyond must be zero q/k/v/slot_weights and g = 0, so that it changes no state, and it
            takes no decision and counts in no slot). None: every row has T tokens.

    Returns:
        ``(o [B, T, H, Dv] cd, scores [B, T, H] float64, starts [B, T, H] bool, merged [B, T, H] int64)``.
    """
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], slot_weights.shape[-1]
    R, C = B * H, chunk_size
    nC = -(-T // C)
    cd, device = states.dtype, states.device

    # Rows-first, chunk-major inputs (zero padding: padded tokens add nothing and are never decided).
    qc, kc, vc, lamc = (to_chunks(x, C, nC, cd) for x in (q, k, v, slot_weights))
    gc = to_chunks(g, C, nC, torch.float64)
    bnd = np.zeros((nC, R, C), dtype=np.bool_)
    if boundaries is not None:
        bnd = to_chunks(boundaries, C, nC, torch.bool).cpu().numpy()
    store = SlotStorages(states, counts, info, size)
    full = torch.full((B,), T, dtype=torch.int64)
    row_lengths = (full if lengths is None else lengths.cpu()).repeat_interleave(H).numpy()  # [R]: b * H + h

    o = torch.empty((nC, R, C, Dv), dtype=cd, device=device)
    trace = (np.zeros((nC, R, C)), np.zeros((nC, R, C), dtype=np.bool_), np.full((nC, R, C), -1, dtype=np.int64))
    operands = ScanOperands(R, C, K, Dk, np.float64 if cd == torch.float64 else np.float32)
    causal = torch.ones((C, C), dtype=torch.bool, device=device).tril()
    block = max(1, _BLOCK_ELEMENTS // (R * C * C))
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        tables = _block_tables(qc[b0:b1], kc[b0:b1], vc[b0:b1], gc[b0:b1], causal, cd)
        tables["W"] = np.zeros((b1 - b0, R, C, C), dtype=operands.dtype)
        inputs = [host(x[b0:b1]) for x in (qc, kc, vc, gc, lamc)]
        for c in range(b0, b1):
            n_rows = np.clip(row_lengths - c * C, 0, C)  # each row's valid tokens in chunk c
            scan = (n_rows, c * C, tau, eps, norm_eps, boundaries is not None)
            _chunk(store, operands, scan, c, c - b0, kc[c], vc[c], inputs, tables, bnd[c], [x[c] for x in trace], o[c])
        # The masked intra-chunk attention of the whole block, added to the reads.
        o[b0:b1] += (tables["attn"] * on_device(device, tables["W"])) @ vc[b0:b1]

    store.write_back(states, counts, info, size)
    trace = [torch.as_tensor(x, device=device).unsqueeze(-1) for x in trace]
    return (
        from_chunks(o, B, H, T),
        *(from_chunks(x, B, H, T).squeeze(-1) for x in trace),
    )
