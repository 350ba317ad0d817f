"""The gated delta-rule backbone, per token: the forward over the shared torch recurrence.

All slots share the transition ``A_t(X) = a_t (X - beta_t k_t k_t^T X)``. ``dla_fast.forward`` runs the chunked
form (``chunk_torch.py``, docs/delta-rule-chunked.md) and its backward is chunked too (``chunk_torch_bwd.py``);
:func:`forward_delta_rule` runs :func:`~dla_fast.ops.common.recurrent.recurrent_step_` token by token
(vectorised over rows) and stays as the per-token baseline of ``benchmarks/delta_rule_cpu.py``.
"""

from __future__ import annotations

import torch

from ..common.layout import rows, unrows
from ..common.recurrent import recurrent_forward


def forward_delta_rule(q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, *, tau, eps, norm_eps,
                       lengths=None):
    """The delta-rule forward over ``[B, T, H, ...]`` inputs, the cache (``[B, H, ...]``) updated in place;
    ``lengths`` ``[B]`` or None as in ``scalar_decay.chunk_torch.forward_scalar_decay``.

    Returns ``(o [B, T, H, Dv], scores, starts, merged [B, T, H])`` in the states' dtype / float64 / bool / int64.
    """
    B, T, H, _ = q.shape
    K, Dk, Dv = states.shape[2:]
    cd = states.dtype
    R = B * H
    o, scores, starts, merged = recurrent_forward(
        rows(q, cd), rows(k, cd), rows(v, cd), rows(g, torch.float64), rows(slot_weights, cd),
        rows(beta, cd), rows(boundaries, torch.bool), states.view(R, K, Dk, Dv), counts.view(R, K), info.view(R, K),
        size.view(R), tau=tau, eps=eps, norm_eps=norm_eps,
        lengths=None if lengths is None else lengths.to(q.device).repeat_interleave(H),
    )
    return unrows(o, B, H), unrows(scores, B, H), unrows(starts, B, H), unrows(merged, B, H)
