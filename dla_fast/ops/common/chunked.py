"""The chunked torch paths' shared machinery: chunk-major layouts, host views, and the slot storages.

Both backbones' chunked torch forwards (``scalar_decay/chunk_torch.py``, ``delta_rule/chunk_torch.py``) keep the
slot states in :class:`SlotStorages` (a merge moves nothing) and receive the numba scan's operands in
:class:`ScanOperands`; they differ in the per-chunk tables and in the transition the storages take at a chunk
end (a decay, or the delta rule's ``[Dk, Dk]`` chunk operator).
"""

from __future__ import annotations

import numpy as np
import torch

from .layout import chunk_major, unchunk, unrows


def to_chunks(x: torch.Tensor, C: int, nC: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, H, *F]`` -> zero-padded ``[nC, B * H, C, *F]`` (contiguous, in ``dtype``): what the scan reads."""
    return chunk_major(x, C, nC, dtype)


def from_chunks(x: torch.Tensor, B: int, H: int, T: int) -> torch.Tensor:
    """``[nC, B * H, C, *F]`` -> ``[B, T, H, *F]``."""
    return unrows(unchunk(x, T), B, H)


def host(x: torch.Tensor) -> np.ndarray:
    """A NumPy view (CPU) or copy (other devices) of ``x`` for the numba kernel."""
    return x.detach().cpu().numpy()


def on_device(device: torch.device, a: np.ndarray) -> torch.Tensor:
    """A tensor on ``device`` sharing (CPU) or copying ``a``."""
    t = torch.from_numpy(a)
    return t if device.type == "cpu" else t.to(device)


class SlotStorages:
    """Slot states in ``R * K`` storages (+ one trash row, index ``R * K``) with an indirection ``phys`` (each
    row's slots -> its storages), so that a merge moves nothing; and the scalar cache the numba scan keeps."""

    def __init__(self, states, counts, info, size):
        R = states.shape[0] * states.shape[1]
        K, Dk, Dv = states.shape[2:]
        self.R, self.K, self.Dk, self.Dv = R, K, Dk, Dv
        self.buf = torch.zeros((R * K + 1, Dk * Dv), dtype=states.dtype, device=states.device)
        self.buf[: R * K] = states.reshape(R * K, Dk * Dv)
        self.counts = counts.reshape(R, K).cpu().numpy().astype(np.int64, copy=True)
        self.info = info.reshape(R, K).cpu().numpy().astype(np.float64, copy=True)
        self.size = size.reshape(R).cpu().numpy().astype(np.int64, copy=True)
        live = np.arange(K) < self.size[:, None]
        self.pos = np.where(live, np.arange(K) - self.size[:, None], 0).astype(np.int64)  # first token of each slot
        self.phys = np.where(live, np.arange(K), -1).astype(np.int64)
        self.row_base = np.arange(R, dtype=np.int64) * K

    @property
    def scalar_cache(self):
        return self.counts, self.info, self.size, self.pos, self.phys

    def by_slot(self):
        """``[R, K * Dk, Dv]``: the storages as rows of (storage, Dk), for the reads."""
        return self.buf[: self.R * self.K].view(self.R, self.K * self.Dk, self.Dv)

    def open_states(self) -> torch.Tensor:
        """``[R, Dk, Dv]``: each row's open slot (the trash row, zero, for an empty cache)."""
        R, K = self.R, self.K
        open_rows = np.where(self.size > 0, self.row_base + self.phys[np.arange(R), np.maximum(self.size - 1, 0)],
                             R * K)
        return self.buf.index_select(0, on_device(self.buf.device, open_rows)).view(R, self.Dk, self.Dv)

    def read_start_slots(self, X: torch.Tensor, n_store: int, out: torch.Tensor) -> None:
        """``out [R, C, Dv] = sum_p X[:, t, p] . S_p`` over the storages ``[0, n_store)`` live at the chunk start
        (the scan's read operand ``X [R, C, >= n_store * Dk]``): one product."""
        if n_store:
            torch.bmm(X[:, :, : n_store * self.Dk], self.by_slot()[:, : n_store * self.Dk], out=out)
        else:
            out.zero_()

    def set_open_states(self, P: np.ndarray) -> None:
        """Write ``P`` ``[R, Dk, Dv]`` into each row's open slot (rows with an empty cache are left alone)."""
        rows = np.nonzero(self.size > 0)[0]
        if len(rows):
            dst = self.row_base[rows] + self.phys[rows, self.size[rows] - 1]
            device = self.buf.device
            values = torch.as_tensor(P[rows], device=device).to(self.buf.dtype)
            self.buf.index_copy_(0, on_device(device, dst), values.view(len(rows), *self.buf.shape[1:]))

    def advance(self, end, n_add, add_src, add_dst, n_zero, zero_rows, L, v_chunk, tok_target, Rt):
        """The storages at the chunk end: the transition ``end`` (``[R, 1]``: a decay; ``[R, Dk, Dk]``: the delta
        rule's chunk operator), merges of start slots, fresh storages, the chunk's tokens."""
        R, K, device = self.R, self.K, self.buf.device
        if end.dim() == 2:
            self.buf[: R * K].view(R, K * self.Dk * self.Dv).mul_(end)
        else:  # every slot S <- Phi S: one [Dk, Dk] @ [Dk, Dv] product per storage
            slots = self.buf[: R * K].view(R, K, self.Dk, self.Dv)
            slots.copy_(torch.matmul(end.unsqueeze(1), slots))
        if n_add:
            src = self.buf.index_select(0, on_device(device, add_src[:n_add]))
            self.buf.index_add_(0, on_device(device, add_dst[:n_add]), src)
        if n_zero:
            self.buf.index_fill_(0, on_device(device, zero_rows[:n_zero]), 0.0)
        update = torch.bmm(L[:, : Rt * self.Dk], v_chunk)  # [R, Rt * Dk, Dv]: the tokens of each end slot
        self.buf.index_add_(0, tok_target[:, :Rt].reshape(-1), update.view(R * Rt, self.Dk * self.Dv))

    def write_back(self, states, counts, info, size):
        """The final cache, slots back in order (unused slots zero), into the caller's tensors."""
        B, H = states.shape[:2]
        R, K, device = self.R, self.K, states.device
        gather_rows = torch.as_tensor(np.where(self.phys >= 0, self.row_base[:, None] + self.phys, R * K),
                                      device=device)
        final = self.buf.index_select(0, gather_rows.view(-1)).view(B, H, K, self.Dk, self.Dv)
        live = torch.as_tensor(self.phys >= 0, device=device).view(B, H, K, 1, 1)
        states.copy_(torch.where(live, final, torch.zeros_like(final)))
        counts.copy_(torch.as_tensor(self.counts, device=device).view(B, H, K))
        info.copy_(torch.as_tensor(self.info, device=device).view(B, H, K))
        size.copy_(torch.as_tensor(self.size, device=device).view(B, H))


class ScanOperands:
    """The numba scan's per-chunk outputs that the torch products read (reused across chunks)."""

    def __init__(self, R, C, K, Dk, dtype):
        self.dtype = dtype
        self.X = np.zeros((R, C, K * Dk), dtype=dtype)  # the read operand of a chunk
        self.L = np.zeros((R, K * Dk, C), dtype=dtype)  # the update operand of a chunk
        self.tok_target = np.zeros((R, K), dtype=np.int64)
        self.add_src, self.add_dst, self.zero_rows = (np.zeros(R * K, dtype=np.int64) for _ in range(3))
