"""NumPy-in / NumPy-out adapters of ``dla_fast`` and the reference's decision margins, for tests.

``numpy_adapter(dtype, ...)`` wraps ``dla_fast.forward`` (or a loop of ``dla_fast.step``) in the
reference's signature, as ``properties.harness.check_equivalent`` and ``DLA_PROPERTIES_IMPL`` expect:
float64 NumPy arrays and ``dla_ref.Cache`` in, ``(o, dla_ref.Cache, dla_ref.Trace)`` out.
``forward_float64`` is such an adapter at float64, for ``DLA_PROPERTIES_IMPL=dla_fast.testing:forward_float64``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

import dla_ref

from .api import _step, forward
from .cache import Cache, Trace

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(getattr(dtype, "__name__", dtype)).replace("torch.", "")
    return _DTYPES[name]


def numpy_adapter(dtype="float64", *, chunk_size: int = 64, via: str = "forward", device: str = "cpu"):
    """An adapter with ``dla_ref.forward``'s signature running ``dla_fast`` with inputs in ``dtype``.

    ``via="forward"`` runs one ``dla_fast.forward`` call; ``via="step"`` feeds the tokens one at a time
    through the decoding step (``dla_fast.step`` after its validation, with the override and the trace).
    ``device="cuda"`` runs on the GPU (the Triton kernels for scalar decay in float32/16-bit inputs).
    """
    dt = _torch_dtype(dtype)
    state_dt = torch.float64 if dt == torch.float64 else torch.float32

    def to_t(x):
        return None if x is None else torch.as_tensor(np.asarray(x, dtype=np.float64)).to(device=device, dtype=dt)

    def adapter(q, k, v, g, slot_weights, *, tau=0.6, beta=None, boundaries=None, initial_cache=None,
                eps=1e-6, norm_eps=1e-6):
        cache = None if initial_cache is None else Cache.from_ref(initial_cache, dtype=state_dt, device=device)
        if via == "forward":
            o, final, trace = forward(
                to_t(q), to_t(k), to_t(v), to_t(g), to_t(slot_weights), tau=tau, beta=to_t(beta),
                boundaries=None if boundaries is None else torch.as_tensor(np.asarray(boundaries, dtype=bool), device=device),
                initial_cache=cache, return_trace=True, chunk_size=chunk_size, eps=eps, norm_eps=norm_eps,
            )
            return o.to(torch.float64).cpu().numpy(), final.to_ref(), trace.to_ref()
        bnd = None if boundaries is None else torch.as_tensor(np.asarray(boundaries, dtype=bool), device=device)
        return _stepwise(to_t(q), to_t(k), to_t(v), to_t(g), to_t(slot_weights), to_t(beta), bnd, cache, tau,
                         eps, norm_eps, state_dt, device)

    adapter.__name__ = f"dla_fast_{via}_{str(dt).replace('torch.', '')}_{device}"
    return adapter


def _stepwise(q, k, v, g, w, beta, boundaries, cache, tau, eps, norm_eps, state_dt, device="cpu"):
    B, T, H, _ = q.shape
    if cache is None:
        cache = Cache.empty(B, H, w.shape[-1], q.shape[-1], v.shape[-1], dtype=state_dt, device=device)
    outs, trace = [], [[], [], []]
    for t in range(T):
        o, *events = _step(q[:, t], k[:, t], v[:, t], g[:, t], w[:, t], cache, tau=tau,
                           beta=None if beta is None else beta[:, t],
                           boundary=None if boundaries is None else boundaries[:, t], eps=eps, norm_eps=norm_eps)
        outs.append(o.to(torch.float64))
        for acc, x in zip(trace, events):
            acc.append(x)
    if T == 0:
        o = np.zeros((B, 0, H, v.shape[-1]))
        trace = dla_ref.Trace(np.zeros((B, 0, H)), np.zeros((B, 0, H), bool), np.zeros((B, 0, H), np.int64))
    else:
        o = torch.stack(outs, 1).cpu().numpy()
        scores, starts, merged = (torch.stack(x, 1).cpu().numpy() for x in trace)
        trace = dla_ref.Trace(scores.astype(np.float64), starts, merged)
    return o, cache.to_ref(), trace


forward_float64 = numpy_adapter("float64")


def reference_margins(trace, tau: float, initial_cache: Optional[dla_ref.Cache] = None, boundaries=None):
    """The reference's own margins: ``(decision, density)``.

    ``decision``: the smallest ``|I_t - tau|`` over tokens whose decision the score took (not forced by
    an empty cache or by ``boundaries``); ``inf`` if none. ``density``: the smallest relative gap, over
    all merges, between the lowest pair density and the next lowest; ``inf`` if no merge.
    """
    scores, starts = np.asarray(trace.scores), np.asarray(trace.starts)
    B, T, H = scores.shape
    decision, density = np.inf, np.inf
    for b in range(B):
        for h in range(H):
            slots = []
            if initial_cache is not None:
                m = int(initial_cache.size[b, h])
                slots = [[int(initial_cache.counts[b, h, i]), float(initial_cache.info[b, h, i])] for i in range(m)]
            K = None if initial_cache is None else initial_cache.counts.shape[-1]
            for t in range(T):
                I = float(scores[b, t, h])
                if slots and boundaries is None:
                    decision = min(decision, abs(I - tau))
                if starts[b, t, h]:
                    if K is not None and len(slots) == K or (np.asarray(trace.merged)[b, t, h] >= 0):
                        d = sorted((slots[i][1] + slots[i + 1][1]) / (slots[i][0] + slots[i + 1][0])
                                   for i in range(len(slots) - 1))
                        if len(d) > 1:
                            density = min(density, (d[1] - d[0]) / max(abs(d[1]), 1e-300))
                        i = int(np.asarray(trace.merged)[b, t, h])
                        slots[i : i + 2] = [[slots[i][0] + slots[i + 1][0], slots[i][1] + slots[i + 1][1]]]
                    slots.append([1, I])
                else:
                    slots[-1][0] += 1
                    slots[-1][1] += I
    return decision, density


__all__ = ["numpy_adapter", "forward_float64", "reference_margins", "Cache", "Trace"]
