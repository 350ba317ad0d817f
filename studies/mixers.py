"""Token mixers whose partition of the past is fixed, for the trained comparison of :mod:`studies.recall`.

:class:`PartitionedAttention` is ``dla_fast.layers.DynamicLinearAttention`` with the partition swapped: the
same parameters (it subclasses the layer and uses its projections, short convolutions, decay ``g``, read
weights ``lambda = softmax(w_proj(x))`` over K, output gate and norm), but the slots are not DLA's
information-aware ones. Token ``s`` is read at time ``t`` with the weight ``lambda_t[index(t, s)]``:

    o_t = sum_{s <= t} lambda_t[index(t, s)] * exp(G_t - G_s) * (q_t . k_s) * v_s,    G_t = g_1 + ... + g_t

which is what a multi-state memory holding one decayed state per slot reads (the slots' states are the sums of
their tokens' decayed ``k_s v_s^T``). It is computed in the quadratic (masked attention) form, exact and cheap at
the short lengths of the recall task; there is no cache, so no decoding. The partitions (:func:`slot_index`):

- ``"fenwick"``: log-linear attention's partition (Guo et al. 2025) with its per-level weights: token ``s < t``
  is in the bucket of level ``bit_length(t xor s)`` and ``t`` itself in level 0
  (:func:`studies.partitions.fenwick_partition` gives the buckets). At matched ``K``, levels ``>= K - 1``
  share the weight ``lambda_t[K - 1]`` (one fused state), so at most ``K`` states are read.
- ``"uniform"``: ``[0, t]`` cut into ``min(K, t + 1)`` chunks of equal length at every ``t``, indexed from the
  newest (:func:`studies.partitions.uniform_partition`).
- ``"single"``: every token in slot 0: one state, the decayed linear attention backbone (``lambda_t[0]`` is a
  per-token scale, which the output norm removes).
- ``"nomerge"``: one slot per token, ``index = t - s`` (needs ``K >= T``): DLA's limit when every token opens.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from dla_fast.layers import DynamicLinearAttention
from dla_fast.layers.dla import l2_normalize

from .partitions import fenwick_partition, uniform_partition

__all__ = ["PARTITIONS", "PartitionedAttention", "slot_index"]

PARTITIONS = ("fenwick", "uniform", "single", "nomerge")


@functools.lru_cache(maxsize=64)
def index_array(partition: str, T: int, K: int) -> np.ndarray:
    """``slot_index`` as a read-only int64 NumPy array (cached per ``(partition, T, K)``)."""
    if partition not in PARTITIONS:
        raise ValueError(f"partition: expected one of {PARTITIONS}, got {partition!r}")
    if partition == "nomerge" and K < T:
        raise ValueError(f"partition 'nomerge' needs K >= T, got K = {K} < T = {T}")
    index = np.full((T, T), -1, dtype=np.int64)
    for t in range(T):
        if partition == "fenwick":
            starts = fenwick_partition(t)
            levels = [0 if s == t else int(t ^ int(s)).bit_length() for s in starts]
            slots = np.minimum(levels, K - 1)
        elif partition == "uniform":
            starts = uniform_partition(t, K)
            slots = np.arange(len(starts))[::-1]  # 0 = the newest chunk
        else:
            starts = np.arange(t + 1) if partition == "nomerge" else np.zeros(1, dtype=np.int64)
            slots = t - starts if partition == "nomerge" else np.zeros(1, dtype=np.int64)
        ends = np.append(starts[1:], t + 1)
        for start, end, slot in zip(starts, ends, slots):
            index[t, start:end] = slot
    index.setflags(write=False)
    return index


def slot_index(partition: str, T: int, K: int) -> torch.Tensor:
    """``[T, T]`` int64: which read weight ``lambda_t[j]`` token ``s`` gets at time ``t`` (row ``t``, column
    ``s``), ``-1`` for ``s > t``. Tokens with the same index at ``t`` share one state."""
    return torch.from_numpy(index_array(partition, T, K).copy())


class PartitionedAttention(DynamicLinearAttention):
    """``DynamicLinearAttention``'s parameters and parametrisation (scalar decay, ``backbone="mamba2"``) with a
    fixed partition (see the module docstring) in the quadratic form. ``forward(hidden_states [B, T, D])``
    returns ``(o [B, T, D], None, None)``; padding masks and caches are not supported."""

    def __init__(self, hidden_size: int, num_heads: int, *, partition: str = "fenwick", capacity: int = 8,
                 layer_idx: int | None = None, **kwargs):
        super().__init__(hidden_size, num_heads, backbone="mamba2", capacity=capacity, layer_idx=layer_idx, **kwargs)
        index_array(partition, 1, capacity)  # validates the name
        self.partition = partition

    def extra_repr(self) -> str:
        return f"partition={self.partition!r}, " + super().extra_repr()

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, past_key_values=None, use_cache=False,
                **kwargs):
        if attention_mask is not None or past_key_values is not None or use_cache:
            raise NotImplementedError("PartitionedAttention: no padding mask and no cache (a study module)")
        x = hidden_states
        B, T, _ = x.shape
        H, K = self.num_heads, self.capacity
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            (q, _), (k, _), (v, _) = self.q_conv1d(q), self.k_conv1d(k), self.v_conv1d(v)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q, k, v = (y.unflatten(-1, (H, -1)) for y in (q, k, v))
        q, k = l2_normalize(q), l2_normalize(k)
        cd = torch.promote_types(x.dtype, torch.float32)  # the gates' dtype, as in the layer
        g = -self.A_log.to(cd).exp() * F.softplus(self.a_proj(x).to(cd) + self.dt_bias.to(cd))  # [B, T, H]
        lam = torch.softmax(self.w_proj(x).to(cd).unflatten(-1, (H, K)), dim=-1)  # [B, T, H, K]
        G = g.cumsum(1).transpose(1, 2)  # [B, H, T]
        index = slot_index(self.partition, T, K).to(x.device)
        causal = index >= 0
        decay = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")))
        weight = lam.transpose(1, 2).gather(-1, index.clamp(min=0).expand(B, H, T, T))  # [B, H, T(t), T(s)]
        scores = torch.einsum("bthd,bshd->bhts", q.to(cd), k.to(cd)) * decay * weight
        o = torch.einsum("bhts,bshd->bthd", scores, v.to(cd)).to(x.dtype)
        gate = None if self.g_proj is None else self.g_proj(x).unflatten(-1, (H, self.head_v_dim))
        return self.o_proj(self.o_norm(o, gate).flatten(-2)), None, None
