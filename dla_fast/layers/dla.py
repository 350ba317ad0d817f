"""``DynamicLinearAttention``: a DLA token mixer shaped like flash-linear-attention's layers
(``fla.layers.GatedDeltaNet``): projections, short convolutions, L2-normalised q/k, ``dla_fast.forward`` for
a prompt and ``dla_fast.step`` for decoding, an output gate and norm. docs/model.md explains the
parametrisation, the cache, padding, decoding and torch.compile.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..api import forward as dla_forward
from ..api import step as dla_step
from .cache import DLACache
from .modules import RMSNorm, ShortConvolution, pad_output, unpad_input

BACKBONES = ("mamba2", "gated_deltanet")

# cu_seqlens, a tensor tau and the surrogate are eager-only in dla_fast.forward (docs/api.md, "torch.compile"):
# under torch.compile the layer calls it through this (a graph break; fullgraph=True refuses it).
EAGER_ONLY = ("DynamicLinearAttention runs dla_fast.forward eagerly with a padding mask or cu_seqlens, a learned tau "
              "or surrogate_temperature; for fullgraph=True pass attention_mask=None, a fixed tau (docs/model.md)")
try:
    _eager_forward = torch.compiler.disable(dla_forward, reason=EAGER_ONLY)
except TypeError:  # torch < 2.6: no reason
    _eager_forward = torch.compiler.disable(dla_forward)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(||x||^2 + eps)`` over the last axis, in float32 (FLA's ``l2norm``); ``x``'s dtype out."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


class DynamicLinearAttention(nn.Module):
    """Dynamic Linear Attention as a token mixer (FLA layer conventions).

    Args:
        hidden_size: model width D.
        num_heads: H.
        head_dim: Dk per head (default ``hidden_size // num_heads``); Dv = ``head_dim * expand_v``.
        expand_v: value width per head relative to ``head_dim`` (default 1).
        backbone: ``"mamba2"`` (scalar decay, ``S' = exp(g) S + k v^T``) or ``"gated_deltanet"``
            (``S' = exp(g) (S - beta k k^T S) + beta k v^T``).
        capacity: K, the slots per (sequence, head) (default 30).
        tau: the boundary threshold (default 0.6).
        learn_tau: make ``tau`` a learned 0-d parameter (needs ``surrogate_temperature``: the hard threshold
            has no gradient).
        surrogate_temperature: None (off) or ``T > 0``: the straight-through gradient of the boundary decisions
            (docs/training.md), into ``tau`` and through the scores into the inputs.
        use_short_conv, conv_size, conv_bias: causal depthwise convolutions (width ``conv_size``) with SiLU on
            q, k and v (default on, width 4, no bias); without them q, k, v get a SiLU.
        use_output_gate: ``o_norm(o) * silu(g_proj(x))`` before the output projection (default on).
        norm_eps: the RMS norms' epsilon.
        chunk_size: ``dla_fast.forward``'s chunk (default 64).
        layer_idx: this layer's index in the model-wide cache (needed with a cache).

    ``forward(hidden_states [B, T, D], attention_mask=None, past_key_values=None, use_cache=False)`` returns
    ``(o [B, T, D], None, past_key_values)``.
    """

    def __init__(self, hidden_size: int = 1024, num_heads: int = 8, head_dim: int | None = None,
                 expand_v: float = 1.0, backbone: str = "mamba2", capacity: int = 30, tau: float = 0.6,
                 learn_tau: bool = False, surrogate_temperature: float | None = None, use_short_conv: bool = True,
                 conv_size: int = 4, conv_bias: bool = False, use_output_gate: bool = True, norm_eps: float = 1e-5,
                 chunk_size: int = 64, layer_idx: int | None = None):
        super().__init__()
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_heads = _positive_int("num_heads", num_heads)
        if head_dim is None:
            head_dim = hidden_size // num_heads
        self.head_dim = _positive_int("head_dim", head_dim)
        if isinstance(expand_v, bool) or not isinstance(expand_v, (int, float)) or int(head_dim * expand_v) < 1:
            raise ValueError(f"expand_v: expected a positive number with head_dim * expand_v >= 1, got {expand_v!r}")
        self.head_v_dim = int(head_dim * expand_v)
        if backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {backbone!r}")
        self.backbone = backbone
        self.capacity = _positive_int("capacity", capacity, minimum=2)
        self.conv_size = _positive_int("conv_size", conv_size)
        self.chunk_size = _positive_int("chunk_size", chunk_size)
        if layer_idx is not None:
            _positive_int("layer_idx", layer_idx, minimum=0)
        self.layer_idx = layer_idx
        if surrogate_temperature is not None and not (isinstance(surrogate_temperature, (int, float))
                                                      and math.isfinite(surrogate_temperature)
                                                      and surrogate_temperature > 0):
            raise ValueError("surrogate_temperature: expected None or a positive number, got "
                             f"{surrogate_temperature!r}")
        if learn_tau and surrogate_temperature is None:
            raise ValueError("learn_tau: needs surrogate_temperature > 0 (the hard threshold alone has no gradient)")
        self.surrogate_temperature = surrogate_temperature
        try:
            tau = float(tau)
        except (TypeError, ValueError):
            raise ValueError(f"tau: expected a real number, got {tau!r}") from None
        if math.isnan(tau):
            raise ValueError("tau: expected a real number, got NaN")
        self.tau = nn.Parameter(torch.tensor(tau)) if learn_tau else tau
        self.use_short_conv, self.use_output_gate, self.norm_eps = use_short_conv, use_output_gate, norm_eps
        self._build(conv_bias)

    def _build(self, conv_bias: bool) -> None:
        D, H, K = self.hidden_size, self.num_heads, self.capacity
        self.key_dim, self.value_dim = H * self.head_dim, H * self.head_v_dim
        self.q_proj = nn.Linear(D, self.key_dim, bias=False)
        self.k_proj = nn.Linear(D, self.key_dim, bias=False)
        self.v_proj = nn.Linear(D, self.value_dim, bias=False)
        # g = -exp(A_log) * softplus(a_proj(x) + dt_bias): Mamba-2's decay (FLA's initialisation).
        self.a_proj = nn.Linear(D, H, bias=False)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        # Read weights: K logits per head, softmax over slots; zero bias = uniform = the single-state backbone / K.
        self.w_proj = nn.Linear(D, H * K, bias=True)
        nn.init.zeros_(self.w_proj.bias)
        self.b_proj = nn.Linear(D, H, bias=False) if self.backbone == "gated_deltanet" else None
        if self.use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, self.conv_size, bias=conv_bias)
            self.k_conv1d = ShortConvolution(self.key_dim, self.conv_size, bias=conv_bias)
            self.v_conv1d = ShortConvolution(self.value_dim, self.conv_size, bias=conv_bias)
        self.g_proj = nn.Linear(D, self.value_dim, bias=False) if self.use_output_gate else None
        self.o_norm = RMSNorm(self.head_v_dim, eps=self.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, D, bias=False)

    def extra_repr(self) -> str:
        tau = f"{float(self.tau):g}" + (" (learned)" if isinstance(self.tau, torch.Tensor) else "")
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"head_v_dim={self.head_v_dim}, backbone={self.backbone!r}, capacity={self.capacity}, tau={tau}, "
                f"layer_idx={self.layer_idx}")

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, past_key_values=None,
                use_cache: bool = False, cu_seqlens: torch.Tensor | None = None, **kwargs):
        """``(o [B, T, D], None, past_key_values)``; see the class docstring and docs/model.md.

        ``attention_mask``: None or a 0/1 padding mask ``[B, T]`` (its last T columns are used: FLA's rule),
        1 = token; padded positions get zero outputs and leave the state unchanged. ``cu_seqlens``: FLA's packed
        input (``hidden_states [1, total, D]``, N sequences), instead of a mask. ``past_key_values``: an FLA-style
        cache (``DLACache``), read at ``layer_idx`` and updated; ``use_cache=True`` without one creates it.
        Other keyword arguments (``output_attentions`` ...) are accepted and ignored, as FLA's layers do.
        """
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden_states: expected shape [B, T, {self.hidden_size}], got "
                             f"{tuple(hidden_states.shape)}")
        B, T = hidden_states.shape[:2]
        mask = self._padding_mask(attention_mask, B, T)
        if mask is not None and cu_seqlens is not None:
            raise ValueError("cu_seqlens: pass either a padding mask or cu_seqlens, not both")
        if use_cache and past_key_values is None:
            past_key_values = DLACache()
        if past_key_values is not None and self.layer_idx is None:
            raise ValueError("layer_idx: a layer needs its layer_idx (its index in the model's cache) to use a cache")
        last = past_key_values[self.layer_idx] if past_key_values is not None and \
            len(past_key_values) > self.layer_idx else None
        recurrent = None if last is None else last.get("recurrent_state")
        conv = None if last is None else last.get("conv_state")
        keep = past_key_values is not None
        if self._decodes(hidden_states, recurrent, mask, cu_seqlens):
            o, recurrent, conv = self._decode(hidden_states, recurrent, conv)
        elif mask is not None:
            o, recurrent, conv = self._forward_padded(hidden_states, mask, recurrent, conv, keep)
        else:
            o, recurrent, conv = self._prefill(hidden_states, recurrent, conv, cu_seqlens, keep)
        if keep:
            past_key_values.update(recurrent_state=recurrent, conv_state=conv, layer_idx=self.layer_idx, offset=T)
        return o, None, past_key_values

    @staticmethod
    def _padding_mask(attention_mask, B: int, T: int) -> torch.Tensor | None:
        """A bool ``[B, T]`` mask, or None when there is none or (outside torch.compile) it masks nothing."""
        if attention_mask is None:
            return None
        if attention_mask.ndim != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
            raise ValueError(f"attention_mask: expected a 0/1 padding mask of shape [B, T] = [{B}, {T}] (1 = token, "
                             f"0 = padding), got shape {tuple(attention_mask.shape)}; [B, T, T] masks are not "
                             "supported (DLA is causal)")
        mask = attention_mask[:, attention_mask.shape[1] - T:] != 0
        if not torch.compiler.is_compiling() and bool(mask.all()):
            return None
        return mask

    def _decodes(self, hidden_states, recurrent, mask, cu_seqlens) -> bool:
        """One token per row on an existing state, no padding and no gradient wanted: ``dla_fast.step``."""
        if hidden_states.shape[1] != 1 or recurrent is None or mask is not None or cu_seqlens is not None:
            return False
        wants_grad = hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())
        return not (torch.is_grad_enabled() and wants_grad)

    def _qkv(self, x, conv, cu_seqlens, keep):
        """``[B, T, D] -> q, k [B, T, H, Dk] (unit norm), v [B, T, H, Dv]`` and the new convolution states."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            cq, ck, cv = (None, None, None) if conv is None else conv
            q, cq = self.q_conv1d(q, cq, cu_seqlens, keep)
            k, ck = self.k_conv1d(k, ck, cu_seqlens, keep)
            v, cv = self.v_conv1d(v, cv, cu_seqlens, keep)
            conv = (cq, ck, cv) if keep else None
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        H = self.num_heads
        q, k, v = (x.unflatten(-1, (H, -1)) for x in (q, k, v))
        return l2_normalize(q), l2_normalize(k), v, conv

    def _gates(self, x):
        """The log decay ``g``, the read weights and ``beta`` (or None) of every token, in float32 (float64 for
        a float64 model): ``x [..., D] -> [..., H], [..., H, K], [..., H] or None``."""
        cd = torch.promote_types(x.dtype, torch.float32)
        g = -self.A_log.to(cd).exp() * F.softplus(self.a_proj(x).to(cd) + self.dt_bias.to(cd))
        slot_weights = torch.softmax(self.w_proj(x).to(cd).unflatten(-1, (self.num_heads, self.capacity)), dim=-1)
        beta = None if self.b_proj is None else torch.sigmoid(self.b_proj(x).to(cd))
        return g, slot_weights, beta

    def _output(self, o, x):
        """``o [..., H, Dv]`` -> gate and norm per head -> ``o_proj`` -> ``[..., D]``."""
        gate = None if self.g_proj is None else self.g_proj(x).unflatten(-1, (self.num_heads, self.head_v_dim))
        return self.o_proj(self.o_norm(o, gate).flatten(-2))

    def _prefill(self, x, recurrent, conv, cu_seqlens, keep):
        """``dla_fast.forward`` over ``x [B, T, D]`` (or packed ``[1, total, D]`` with ``cu_seqlens``)."""
        q, k, v, conv = self._qkv(x, conv, cu_seqlens, keep)
        g, slot_weights, beta = self._gates(x)
        eager_only = cu_seqlens is not None or isinstance(self.tau, torch.Tensor) or \
            self.surrogate_temperature is not None
        run = _eager_forward if eager_only and torch.compiler.is_compiling() else dla_forward
        o, recurrent, _ = run(q, k, v.to(q.dtype), g, slot_weights, tau=self.tau, beta=beta, initial_cache=recurrent,
                              output_final_cache=keep, chunk_size=self.chunk_size,
                              surrogate_temperature=self.surrogate_temperature, cu_seqlens=cu_seqlens)
        return self._output(o, x), recurrent, conv

    def _forward_padded(self, hidden_states, mask, recurrent, conv, keep):
        """A padded batch: the rows' tokens packed into ``[1, total, D]`` (``cu_seqlens``, one sequence per row),
        run as ``_prefill``, the outputs scattered back (zeros at padding)."""
        B, T = mask.shape
        packed, indices, cu_seqlens = unpad_input(hidden_states, mask)
        o, recurrent, conv = self._prefill(packed, recurrent, conv, cu_seqlens, keep)
        return pad_output(o, indices, B, T), recurrent, conv

    def _decode(self, hidden_states, recurrent, conv):
        """One token per row through ``dla_fast.step`` (the recurrent state is advanced in place)."""
        x = hidden_states[:, 0]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            cq, ck, cv = (None, None, None) if conv is None else conv
            (q, cq), (k, ck), (v, cv) = self.q_conv1d.step(q, cq), self.k_conv1d.step(k, ck), self.v_conv1d.step(v, cv)
            conv = (cq, ck, cv)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        H = self.num_heads
        q, k, v = (x.unflatten(-1, (H, -1)) for x in (q, k, v))
        q, k = l2_normalize(q), l2_normalize(k)
        g, slot_weights, beta = self._gates(x)
        o, recurrent = dla_step(q, k, v.to(q.dtype), g, slot_weights, recurrent, tau=self.tau, beta=beta)
        return self._output(o, x).unsqueeze(1), recurrent, conv
