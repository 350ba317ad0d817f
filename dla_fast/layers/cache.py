"""``DLACache``: the model-wide decoding cache, flash-linear-attention's protocol (``fla.models.utils.Cache``).

A list-like of per-layer dicts indexed by ``layer_idx``. Each layer reads ``cache[layer_idx]`` when
``len(cache) > layer_idx`` and writes back with ``cache.update(recurrent_state=..., conv_state=...,
layer_idx=..., offset=T)``. ``DynamicLinearAttention`` stores

- ``"recurrent_state"``: a :class:`dla_fast.Cache` (the ordered slot states of every (sequence, head));
- ``"conv_state"``: ``(q, k, v)`` short-convolution states, ``[B, C, W]`` each, or None without convolutions.

An FLA model can host the layer with its own cache object (the layer only uses ``len``, ``[]`` and
``update``); ``DLACache`` is the small stand-alone version, with nothing of ``transformers`` required.
"""

from __future__ import annotations

from typing import Any

import torch

from ..cache import Cache

FIELDS = ("recurrent_state", "attn_state", "conv_state", "ffn_state")


class DLACache:
    """Per-layer states of a model, ``cache[layer_idx] -> dict`` with the keys in ``FIELDS``.

    ``update`` stores the fields that are not None and returns the layer's dict; the tokens seen are counted
    when layer 0 updates (FLA's rule), so ``get_seq_length()`` is the length of the processed prefix
    (padding included, as in FLA).
    """

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        self.seen_tokens = 0

    def __getitem__(self, layer_idx: int) -> dict[str, Any]:
        return self.states[layer_idx]

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self):
        return iter(self.states)

    def __repr__(self) -> str:
        return f"DLACache(layers={len(self)}, seen_tokens={self.seen_tokens})"

    def update(self, recurrent_state=None, attn_state=None, conv_state=None, ffn_state=None, layer_idx: int = 0,
               offset: int = 1, cache_kwargs: dict | None = None) -> dict[str, Any]:
        """Store a layer's new states (fields left None keep their value); returns the layer's dict."""
        if not isinstance(layer_idx, int) or layer_idx < 0:
            raise ValueError(f"layer_idx: expected a non-negative integer, got {layer_idx!r}")
        while len(self.states) <= layer_idx:
            self.states.append(dict.fromkeys(FIELDS))
        state = self.states[layer_idx]
        for name, value in zip(FIELDS, (recurrent_state, attn_state, conv_state, ffn_state)):
            if value is not None:
                state[name] = value
        if layer_idx == 0:
            self.seen_tokens += offset
        return state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens processed so far (0 before the layer's first update)."""
        return self.seen_tokens if len(self) > layer_idx else 0

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Keep/reorder the batch rows (beam search): every state indexed by ``beam_idx`` along the batch."""
        for state in self.states:
            for name, value in state.items():
                state[name] = _select(value, beam_idx)

    def to_legacy_cache(self) -> tuple[dict[str, Any], ...]:
        return tuple(self.states)

    @classmethod
    def from_legacy_cache(cls, past_key_values=None, seen_tokens: int = 0) -> DLACache:
        cache = cls()
        for state in past_key_values or ():
            cache.states.append({**dict.fromkeys(FIELDS), **state})
        cache.seen_tokens = seen_tokens
        return cache


def _select(value, index: torch.Tensor):
    if value is None:
        return None
    if isinstance(value, Cache):
        fields = (value.states, value.counts, value.info, value.size)
        return Cache(*(x.index_select(0, index.to(x.device)) for x in fields), checked=value.checked)
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device))
    if isinstance(value, (tuple, list)):
        return type(value)(_select(x, index) for x in value)
    raise TypeError(f"reorder_cache: cannot index a state of type {type(value).__name__}")
