"""The small modules around DLA in a token mixer: a short causal depthwise convolution, RMS norms, and the
padding helpers that turn a ``[B, T]`` padding mask into FLA's packed ``cu_seqlens`` form and back.

They follow flash-linear-attention's conventions (``fla.modules.ShortConvolution``, ``RMSNorm``,
``FusedRMSNormGated``, ``fla.layers.utils.get_unpad_data`` / ``pad_input``) in plain torch, so that the layer
runs on any device without FLA installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.common import varlen

ACTIVATIONS = {"silu": F.silu, "swish": F.silu, None: lambda x: x}


class RMSNorm(nn.Module):
    """RMS norm over the last axis with a learned scale; with ``gate``, ``norm(x) * silu(gate)`` (FLA's
    ``FusedRMSNormGated``). Computes in float32 (float64 for float64 inputs), returns ``x``'s dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        cd = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(cd)
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.to(cd)
        if gate is not None:
            y = y * F.silu(gate.to(cd))
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class ShortConvolution(nn.Conv1d):
    """A causal depthwise convolution over time with an activation (FLA's ``ShortConvolution``).

    ``forward(x [B, T, C], cache=None, cu_seqlens=None, output_final_state=False) -> (y [B, T, C], final)``.
    ``cache`` (``[B, C, W]``, W the kernel size) holds the last W inputs before ``x``, oldest first (zeros: none);
    ``final`` is the same for the end of ``x`` (None unless asked for; a new tensor). With ``cu_seqlens`` (``[N + 1]``),
    ``x`` is ``[1, total, C]`` holding N packed sequences, each convolved on its own from row i of ``cache``
    (``[N, C, W]``); zero-length sequences keep their row. ``step(x [B, C], cache) -> (y [B, C], new cache)``
    advances one token.
    """

    def __init__(self, hidden_size: int, kernel_size: int = 4, bias: bool = False, activation: str | None = "silu"):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, padding=0, bias=bias)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(map(str, ACTIVATIONS))}, got {activation!r}")
        self.activation = activation

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](x)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                output_final_state: bool = False):
        W = self.kernel_size[0]
        lengths = None
        if cu_seqlens is not None:
            lengths, total = varlen.lengths_of(cu_seqlens), x.shape[1]
            x = varlen.pad(x, cu_seqlens, int(lengths.max()) if lengths.numel() else 0)
        N, L, C = x.shape
        prev = x.new_zeros(N, C, W) if cache is None else cache.to(x.dtype)
        buf = torch.cat([prev, x.transpose(1, 2)], dim=-1)  # [N, C, W + L]: the inputs, oldest first
        y = self._act(F.conv1d(buf[..., 1:], self.weight, self.bias, groups=C)).transpose(1, 2)
        final = None
        if output_final_state:
            if lengths is None:
                final = buf[..., L:].contiguous()  # the layout step() returns: no recompile under torch.compile
            else:  # the W inputs ending at each sequence's last token
                index = lengths.view(N, 1, 1) + torch.arange(W, device=x.device).view(1, 1, W)
                final = buf.gather(-1, index.expand(N, C, W))
        if cu_seqlens is not None:
            y = varlen.unpad(y, cu_seqlens, total)
        return y, final

    def step(self, x: torch.Tensor, cache: torch.Tensor | None):
        """One token per sequence: ``x [B, C]`` and the last W inputs ``[B, C, W]`` (None: zeros). The cache is
        updated in place (as ``dla_fast.step`` updates its cache) and returned; None gives a new one."""
        W = self.kernel_size[0]
        window = torch.cat([x.new_zeros(*x.shape, W - 1) if cache is None else cache[..., 1:].to(x.dtype),
                            x.unsqueeze(-1)], dim=-1)
        cd = torch.promote_types(x.dtype, torch.float32)  # accumulate as conv1d does, round once
        y = (window.to(cd) * self.weight[:, 0].to(cd)).sum(-1)
        if self.bias is not None:
            y = y + self.bias.to(cd)
        if cache is not None:
            window = cache.copy_(window)
        return self._act(y.to(x.dtype)), window


def unpad_input(hidden_states: torch.Tensor, mask: torch.Tensor):
    """Gather the unmasked tokens of each row: ``[B, T, ...]`` and a bool mask ``[B, T]`` (True = token) ->
    ``(packed [1, total, ...], indices [total] into B * T, cu_seqlens [B + 1] int64)``. Rows keep their
    order; a row without tokens is a zero-length sequence. Left, right or any other padding."""
    B, T = mask.shape
    indices = torch.nonzero(mask.reshape(-1)).flatten()
    cu_seqlens = F.pad(mask.sum(1, dtype=torch.int64).cumsum(0), (1, 0))
    packed = hidden_states.reshape(B * T, *hidden_states.shape[2:]).index_select(0, indices)
    return packed.unsqueeze(0), indices, cu_seqlens


def pad_output(packed: torch.Tensor, indices: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """Scatter packed outputs ``[1, total, ...]`` back to ``[B, T, ...]``; padded positions get zeros."""
    out = packed.new_zeros(B * T, *packed.shape[2:])
    return out.index_copy(0, indices, packed[0]).view(B, T, *packed.shape[2:])
