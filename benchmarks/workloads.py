"""CPU benchmark workloads and the baselines they are timed against.

Workloads come from ``dla_ref.synthetic.piecewise_stationary``: tokens jitter around per-regime key and
value directions, and the decay and the jitter set how often a token's score reaches ``tau``:

| workload | decay ``a`` | jitter | mean regime length (min) | slots opened (T = 8192, seed 0) |
| --- | --- | --- | --- | --- |
| sparse   | 0.5 | 0.2 | 100 (8) | about 1 % of tokens |
| moderate | 0.5 | 0.5 | 16 (4)  | about 9 % |
| dense    | 0.5 | 1.0 | 8 (2)   | about 100 % (every token; a merge at almost every token) |

The benchmark shape is the issue's: ``B = 1, H = 4, Dk = Dv = 64, K = 30, tau = 0.6``; ``lambda_t[j] = 0.7^j``.
Rates are measured, not assumed: :func:`boundary_rate` reports them from the trace.

Baselines:

- ``dla_ref.forward`` (float64 NumPy, plain loops);
- :func:`recurrent_forward`: the straightforward per-token torch recurrence, ``dla_fast.ops.common.recurrent``
  (the decode step, vectorised over (batch, head), in a Python loop over tokens) in float32.
"""

from __future__ import annotations

import numpy as np
import torch

from dla_fast.ops.common.recurrent import recurrent_forward as _recurrent_rows
from dla_ref.synthetic import piecewise_stationary

B, H, DK, DV, K, TAU = 1, 4, 64, 64, 30, 0.6
THREADS = 2  # torch threads for every timing (2 cores here; report.py takes --threads)

WORKLOADS = {
    "sparse": dict(decay=0.5, jitter=0.2, regime_length=100.0, min_regime_length=8),
    "moderate": dict(decay=0.5, jitter=0.5, regime_length=16.0, min_regime_length=4),
    "dense": dict(decay=0.5, jitter=1.0, regime_length=8.0, min_regime_length=2),
}


def inputs(workload: str, T: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(q, k, v, g, slot_weights)`` float64 NumPy arrays ``[B, T, H, ...]`` of the named workload."""
    return piecewise_stationary(B, T, H, DK, DV, K, seed=seed, recency=0.7, **WORKLOADS[workload])


def torch_inputs(workload: str, T: int, seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    return [torch.as_tensor(x).to(dtype) for x in inputs(workload, T, seed)]


def boundary_rate(trace) -> float:
    """The fraction of tokens that opened a slot."""
    return float(np.asarray(trace.starts).mean())


def recurrent_forward(q, k, v, g, slot_weights, *, tau=TAU):
    """The per-token torch recurrence (scalar decay) on ``[B, T, H, ...]`` tensors: ``o [B, T, H, Dv]``."""
    Bq, T, Hq, Dk = q.shape
    Dv, Kq = v.shape[-1], slot_weights.shape[-1]
    rows = lambda x: x.movedim(2, 1).reshape(Bq * Hq, T, *x.shape[3:]).contiguous()  # noqa: E731
    R = Bq * Hq
    states = torch.zeros((R, Kq, Dk, Dv), dtype=q.dtype)
    counts = torch.zeros((R, Kq), dtype=torch.int64)
    info = torch.zeros((R, Kq), dtype=torch.float64)
    size = torch.zeros((R,), dtype=torch.int64)
    o, *_ = _recurrent_rows(rows(q), rows(k), rows(v), rows(g), rows(slot_weights), None, None,
                            states, counts, info, size, tau=tau, eps=1e-6, norm_eps=1e-6)
    return o.view(Bq, Hq, T, Dv).movedim(1, 2)
