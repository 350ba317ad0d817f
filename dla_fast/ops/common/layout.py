"""Layouts: the API's ``[B, T, H, ...]`` and the paths' rows-first ``[B * H, T, ...]`` and chunk-major forms."""

from __future__ import annotations

import torch


def rows(x: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """``[B, T, H, *F]`` -> ``[B * H, T, *F]`` (in ``dtype`` if given); None stays None."""
    if x is None:
        return None
    B, T, H = x.shape[:3]
    if dtype is None or dtype == x.dtype:
        return x.movedim(2, 1).reshape(B * H, T, *x.shape[3:])
    # Cast and reordered in one copy (a cast, then a reshape of the moved axes, is two).
    out = torch.empty((B, H, T, *x.shape[3:]), dtype=dtype, device=x.device)
    out.copy_(x.movedim(2, 1))
    return out.view(B * H, T, *x.shape[3:])


def unrows(x: torch.Tensor | None, B: int, H: int) -> torch.Tensor | None:
    """``[B * H, T, *F]`` -> ``[B, T, H, *F]``; None stays None."""
    if x is None:
        return None
    T = x.shape[1]
    return x.reshape(B, H, T, *x.shape[2:]).movedim(1, 2)


def chunks(x: torch.Tensor, C: int, nC: int) -> torch.Tensor:
    """Rows-first ``[R, T, *F]`` -> zero-padded chunk-major ``[nC, R, C, *F]`` (a view when no padding)."""
    R, T = x.shape[:2]
    pad = nC * C - T
    if pad:
        x = torch.cat([x, x.new_zeros((R, pad, *x.shape[2:]))], 1)
    return x.view(R, nC, C, *x.shape[2:]).transpose(0, 1)


def chunk_major(x: torch.Tensor, C: int, nC: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[B, T, H, *F]`` -> zero-padded, contiguous chunk-major ``[nC, B * H, C, *F]`` (in ``dtype`` if given),
    written in one copy: ``chunks(rows(x, dtype), C, nC).contiguous()`` casts, reorders and pads in three."""
    B, T, H = x.shape[:3]
    F = tuple(x.shape[3:])
    out = torch.empty(nC, B, H, C, *F, dtype=dtype or x.dtype, device=x.device)
    whole = min(T // C, nC)
    moved = lambda y: y.permute(1, 0, 3, 2, *range(4, 4 + len(F)))  # noqa: E731 ([B, n, C, H, *F] -> [n, B, H, C])
    out[:whole].copy_(moved(x[:, :whole * C].reshape(B, whole, C, H, *F)))
    if whole < nC:  # the last chunk, partly past T
        out[whole:].zero_()
        out[whole, :, :, :T - whole * C].copy_(x[:, whole * C:].movedim(2, 1))
    return out.view(nC, B * H, C, *F)


def unchunk(x: torch.Tensor, T: int) -> torch.Tensor:
    """Chunk-major ``[nC, R, C, *F]`` -> rows-first ``[R, T, *F]`` (the padding dropped)."""
    nC, R, C = x.shape[:3]
    return x.transpose(0, 1).reshape(R, nC * C, *x.shape[3:])[:, :T]
