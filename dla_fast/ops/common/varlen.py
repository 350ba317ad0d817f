"""Variable-length batches: FLA's ``cu_seqlens`` packing, to and from a zero-padded batch.

FLA's convention: N sequences packed along time, ``x [1, total_T, H, ...]`` with ``cu_seqlens [N + 1]``
(``cu_seqlens[0] = 0``, nondecreasing, ``cu_seqlens[N] = total_T``): sequence i is tokens
``cu_seqlens[i] .. cu_seqlens[i + 1] - 1``. The paths run the sequences as the rows of a padded batch
``[N, T_max, H, ...]`` and take each row's length: padding is zero q/k/v/slot_weights/beta and ``g = 0`` (it
changes no state) and the paths give it no decision and no slot count, so each row is exactly its sequence
run alone. Padding and unpadding are one gather each (no loop over sequences; differentiable).
"""

from __future__ import annotations

import torch


def check_cu_seqlens(cu_seqlens, q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Validate ``cu_seqlens`` against packed inputs ``q [1, total_T, H, Dk]``; return it as int64 on q's device,
    and the longest sequence's length ``T_max``.

    One host read of the offsets (their values decide the padded shape)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        cu_seqlens = torch.as_tensor(cu_seqlens)
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens: expected an integer tensor, got dtype {cu_seqlens.dtype}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected shape [N + 1] with N >= 1, got {tuple(cu_seqlens.shape)}")
    if q.ndim != 4 or q.shape[0] != 1:
        raise ValueError(f"q: with cu_seqlens, expected packed sequences of shape [1, total_T, H, Dk], got "
                         f"{tuple(q.shape)}")
    offsets = cu_seqlens.detach().to("cpu", torch.int64)
    total = q.shape[1]
    if int(offsets[0]) != 0 or int(offsets[-1]) != total or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"cu_seqlens: expected nondecreasing offsets from 0 to total_T = {total}, got "
                         f"{offsets.tolist()}")
    return cu_seqlens.to(q.device, torch.int64), int((offsets[1:] - offsets[:-1]).max())


def pad(x: torch.Tensor | None, cu_seqlens: torch.Tensor, T_max: int) -> torch.Tensor | None:
    """Packed ``[1, total_T, H, ...]`` -> zero-padded ``[N, T_max, H, ...]`` (None stays None)."""
    if x is None:
        return None
    N = cu_seqlens.numel() - 1
    t = torch.arange(T_max, device=x.device)
    valid = t.view(1, T_max) < lengths_of(cu_seqlens).view(N, 1)  # [N, T_max]
    index = (cu_seqlens[:-1].view(N, 1) + t.view(1, T_max)).clamp(max=max(x.shape[1] - 1, 0))
    rows = x[0].index_select(0, index.reshape(-1)).view(N, T_max, *x.shape[2:])
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(valid.view(N, T_max, *([1] * (x.ndim - 2))), rows, zero)


def unpad(x: torch.Tensor, cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Padded ``[N, T_max, H, ...]`` -> packed ``[1, total, H, ...]``."""
    N, T_max = x.shape[:2]
    tokens = torch.arange(total, device=x.device)
    seq = torch.searchsorted(cu_seqlens[1:], tokens, right=True)  # the sequence of each packed token
    flat = seq * T_max + tokens - cu_seqlens[seq]
    return x.reshape(N * T_max, *x.shape[2:]).index_select(0, flat).unsqueeze(0)


def lengths_of(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``[N]`` int64: each sequence's length."""
    return cu_seqlens[1:] - cu_seqlens[:-1]
