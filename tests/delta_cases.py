"""Inputs and an empty cache for the delta rule's device forward (``chunk_fwd.forward_delta_rule_triton``), shared by
``test_delta_stage3.py`` and ``benchmarks/delta_walk_read_error.py``: on the GPU where the kernels run there, else on
the CPU (``triton_here.DEV``)."""

from __future__ import annotations

import numpy as np
import torch
from triton_here import DEV

from dla_ref.synthetic import jittered_regimes as regimes


def delta_inputs(B, T, H, D, K, dtype, seed, decay=0.97) -> list:
    """``[q, k, v, g, slot_weights, beta]``: regimes with unit keys, betas in [0.2, 1] and a mild decay (the slots
    live at a chunk start weigh in the whole chunk); for 16-bit cases q, k, v, beta and the read weights in that
    dtype (g float32)."""
    q, k, v, g, w = regimes(B, T, H, D, D, K, seed=seed, decay=decay, regime_length=5.0, jitter=0.8)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    beta = np.random.default_rng(seed).uniform(0.2, 1.0, (B, T, H))
    return [torch.tensor(a, dtype=dtype if i != 3 else torch.float32, device=DEV)
            for i, a in enumerate((q, k, v, g, w, beta))]


def empty_cache(B, H, K, D) -> tuple:
    """``(states, counts, info, size)`` of an empty cache of ``K`` slots of ``D x D`` states."""
    i64 = dict(device=DEV, dtype=torch.int64)
    return (torch.zeros(B, H, K, D, D, device=DEV), torch.zeros(B, H, K, **i64),
            torch.zeros(B, H, K, device=DEV, dtype=torch.float64), torch.zeros(B, H, **i64))
