"""The chunked algorithm for the scalar-decay backbone: torch matrix work around a numba scalar scan.

Follows docs/chunked-algorithm.md. Per chunk of ``C`` tokens (a Python loop over chunks, O(T / C)
iterations):

1. ``kP = K_c P_c`` for the open state ``P_c`` carried into the chunk (one batched product);
2. ``_kernels.scan_chunk``: scores, decisions and merges (scalar, numba, float64), and the operands of
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

from typing import Optional

import numpy as np
import torch

from . import _kernels

# Elements of one [block, R, C, C] tensor: bounds the memory of the per-block precomputation.
_BLOCK_ELEMENTS = 1 << 18  # measured: 1 << 22 was 20 % slower (fresh large tensors), 1 << 14 too


def _to_chunks(x: torch.Tensor, C: int, nC: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, H, *F]`` -> zero-padded ``[nC, B * H, C, *F]`` (contiguous, in ``dtype``)."""
    B, T, H = x.shape[:3]
    feat = x.shape[3:]
    pad = nC * C - T
    x = x.to(dtype)
    if pad:
        x = torch.cat([x, x.new_zeros((B, pad, H, *feat))], dim=1)
    x = x.reshape(B, nC, C, H, *feat).movedim(3, 2)  # [B, nC, H, C, *F]
    return x.transpose(0, 1).reshape(nC, B * H, C, *feat).contiguous()


def _from_chunks(x: torch.Tensor, B: int, H: int, T: int) -> torch.Tensor:
    """``[nC, B * H, C, *F]`` -> ``[B, T, H, *F]``."""
    nC, R, C = x.shape[:3]
    feat = x.shape[3:]
    x = x.view(nC, B, H, C, *feat).permute(1, 0, 3, 2, *range(4, 4 + len(feat)))
    return x.reshape(B, nC * C, H, *feat)[:, :T]


def _host(x: torch.Tensor) -> np.ndarray:
    """A NumPy view (CPU) or copy (other devices) of ``x`` for the numba kernel."""
    return x.detach().cpu().numpy()


def _on(device: torch.device, a: np.ndarray) -> torch.Tensor:
    """A tensor on ``device`` sharing (CPU) or copying ``a``."""
    t = torch.from_numpy(a)
    return t if device.type == "cpu" else t.to(device)


def forward_scalar_decay(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    slot_weights: torch.Tensor,
    tau: float,
    boundaries: Optional[torch.Tensor],
    states: torch.Tensor,
    counts: torch.Tensor,
    info: torch.Tensor,
    size: torch.Tensor,
    *,
    chunk_size: int = 64,
    eps: float = 1e-6,
    norm_eps: float = 1e-6,
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

    Returns:
        ``(o [B, T, H, Dv] cd, scores [B, T, H] float64, starts [B, T, H] bool, merged [B, T, H] int64)``.
    """
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], slot_weights.shape[-1]
    R, C = B * H, chunk_size
    nC = -(-T // C)
    cd, device = states.dtype, states.device
    f64 = torch.float64

    # Rows-first, chunk-major inputs (zero padding: padded tokens add nothing and are never decided).
    qc, kc, vc = (_to_chunks(x, C, nC, cd) for x in (q, k, v))
    lamc = _to_chunks(slot_weights, C, nC, cd)
    gc = _to_chunks(g, C, nC, f64)
    bnd = np.zeros((nC, R, C), dtype=np.bool_)
    if boundaries is not None:
        bnd = _to_chunks(boundaries, C, nC, torch.bool).cpu().numpy()

    # Slot states live in R * K storages (+ one trash row); phys maps each row's slots to storages.
    buf = torch.zeros((R * K + 1, Dk * Dv), dtype=cd, device=device)
    buf[: R * K] = states.reshape(R * K, Dk * Dv)
    storages = buf[: R * K].view(R, K * Dk, Dv)  # for the reads: rows of (storage, Dk)
    counts_np = counts.reshape(R, K).cpu().numpy().astype(np.int64, copy=True)
    info_np = info.reshape(R, K).cpu().numpy().astype(np.float64, copy=True)
    size_np = size.reshape(R).cpu().numpy().astype(np.int64, copy=True)
    live = np.arange(K) < size_np[:, None]
    pos_np = np.where(live, np.arange(K) - size_np[:, None], 0).astype(np.int64)
    phys_np = np.where(live, np.arange(K), -1).astype(np.int64)
    row_base = np.arange(R, dtype=np.int64) * K
    rows_np = np.arange(R)

    o = torch.empty((nC, R, C, Dv), dtype=cd, device=device)
    scores = np.zeros((nC, R, C))
    starts = np.zeros((nC, R, C), dtype=np.bool_)
    merged = np.full((nC, R, C), -1, dtype=np.int64)
    npd = np.float64 if cd == f64 else np.float32
    X = np.zeros((R, C, K * Dk), dtype=npd)  # the read operand of a chunk
    L = np.zeros((R, K * Dk, C), dtype=npd)  # the update operand of a chunk
    tok_target = np.zeros((R, K), dtype=np.int64)
    add_src, add_dst, zero_rows = (np.zeros(R * K, dtype=np.int64) for _ in range(3))
    X_t, L_t, tok_target_t = (_on(device, a) for a in (X, L, tok_target))

    causal = torch.ones((C, C), dtype=torch.bool, device=device).tril()
    block = max(1, _BLOCK_ELEMENTS // (R * C * C))
    for b0 in range(0, nC, block):
        b1 = min(nC, b0 + block)
        qb, kb, vb, gb, lamb = qc[b0:b1], kc[b0:b1], vc[b0:b1], gc[b0:b1], lamc[b0:b1]
        # Decays inside each chunk: Gc[t] = g[c0] + ... + g[t] in float64; the exponentials in cd.
        Gc = gb.cumsum(-1)
        Gp = torch.nn.functional.pad(Gc[..., :-1], (1, 0))  # Gc[t - 1]
        decay = torch.exp((Gc.unsqueeze(-1) - Gc.unsqueeze(-2)).to(cd).masked_fill(~causal, -torch.inf))
        decay_prev = torch.nn.functional.pad(decay[..., :-1, :], (0, 0, 1, 0))  # exp(Gc[t-1] - Gc[s]), s < t
        dgram = _host(decay_prev * (kb @ kb.transpose(-1, -2)) * (vb @ vb.transpose(-1, -2)))
        ss = _host((kb * kb).sum(-1).to(f64) * (vb * vb).sum(-1).to(f64))
        carry_decay, decay_in = _host(torch.exp(Gp).to(cd)), _host(torch.exp(Gc).to(cd))
        token_decay = _host(torch.exp(Gc[..., -1:] - Gc).to(cd))  # token s to the chunk end
        end_decay = torch.exp(Gc[..., -1]).to(cd).unsqueeze(-1)  # the chunk start to its end: [nb, R, 1]
        attn = (qb @ kb.transpose(-1, -2)) * decay  # (q_t . k_s) exp(Gc[t] - Gc[s]), s <= t
        W = np.zeros((b1 - b0, R, C, C), dtype=npd)
        q_np, k_np, v_np, g_np, lam_np = (_host(x) for x in (qb, kb, vb, gb, lamb))

        for ci in range(b1 - b0):
            c0 = (b0 + ci) * C
            # 1. The open state carried in (the trash row for an empty cache) and k_t^T P_c.
            open_rows = np.where(size_np > 0, row_base + phys_np[rows_np, np.maximum(size_np - 1, 0)], R * K)
            P = buf.index_select(0, _on(device, open_rows)).view(R, Dk, Dv)
            kP = torch.bmm(kb[ci], P)
            # 2. The scalar scan (numba): decisions, merges, and the operands of 3. and 4.
            n_store, Rt, n_add, n_zero = _kernels.scan_chunk(
                min(C, T - c0), c0, _host(kP), v_np[ci], _host(P), q_np[ci], k_np[ci], dgram[ci], ss[ci], g_np[ci],
                carry_decay[ci], decay_in[ci], token_decay[ci], lam_np[ci], bnd[b0 + ci], boundaries is not None,
                tau, eps, norm_eps, counts_np, info_np, size_np, pos_np, phys_np,
                scores[b0 + ci], starts[b0 + ci], merged[b0 + ci], W[ci], X, L, tok_target, add_src, add_dst,
                zero_rows,
            )
            if device.type != "cpu":
                X_t, L_t, tok_target_t = (_on(device, a) for a in (X, L, tok_target))
            # 3. Reads of the slots live at the chunk start: sum_p coef[t, p] q_t^T S_p, one product.
            if n_store:
                torch.bmm(X_t[:, :, : n_store * Dk], storages[:, : n_store * Dk], out=o[b0 + ci])
            else:
                o[b0 + ci].zero_()
            # 4. The storages at the chunk end: decay, merges of start slots, fresh storages, tokens.
            buf[: R * K].view(R, K * Dk * Dv).mul_(end_decay[ci])
            if n_add:
                buf.index_add_(0, _on(device, add_dst[:n_add]), buf.index_select(0, _on(device, add_src[:n_add])))
            if n_zero:
                buf.index_fill_(0, _on(device, zero_rows[:n_zero]), 0.0)
            update = torch.bmm(L_t[:, : Rt * Dk], vb[ci])  # [R, Rt * Dk, Dv]: the tokens of each end slot
            buf.index_add_(0, tok_target_t[:, :Rt].reshape(-1), update.view(R * Rt, Dk * Dv))

        # The masked intra-chunk attention of the whole block, added to the reads.
        o[b0:b1] += (attn * _on(device, W)) @ vb

    # The final cache, slots back in order (unused slots zero).
    gather_rows = torch.as_tensor(np.where(phys_np >= 0, row_base[:, None] + phys_np, R * K), device=device)
    final = buf.index_select(0, gather_rows.view(-1)).view(B, H, K, Dk, Dv)
    live_t = torch.as_tensor(phys_np >= 0, device=device).view(B, H, K, 1, 1)
    states.copy_(torch.where(live_t, final, torch.zeros_like(final)))
    counts.copy_(torch.as_tensor(counts_np, device=device).view(B, H, K))
    info.copy_(torch.as_tensor(info_np, device=device).view(B, H, K))
    size.copy_(torch.as_tensor(size_np, device=device).view(B, H))
    trace = [torch.as_tensor(x, device=device).unsqueeze(-1) for x in (scores, starts, merged)]
    return (
        _from_chunks(o, B, H, T),
        *(_from_chunks(x, B, H, T).squeeze(-1) for x in trace),
    )
