"""NumPy-in / NumPy-out adapters of ``dla_fast``, with the reference's signature.

``numpy_adapter(dtype, ...)`` wraps ``dla_fast.forward`` (or a loop of ``dla_fast.step``) in the
reference's signature, as :func:`dla_fast.testing.check_equivalent` and the property suite's
``--dla-impl`` expect: float64 NumPy arrays and ``dla_ref.Cache`` in, ``(o, dla_ref.Cache, dla_ref.Trace)``
out. ``forward_float64`` is such an adapter at float64 (``--dla-impl=dla_fast.testing:forward_float64``).
``in_pieces(adapter, points)`` runs any such adapter as a stream split at ``points``.
"""

from __future__ import annotations

import numpy as np
import torch

import dla_fast
import dla_ref

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(getattr(dtype, "__name__", dtype)).replace("torch.", "")
    return _DTYPES[name]


def numpy_adapter(dtype="float64", *, chunk_size: int = 64, via: str = "forward", device: str = "cpu"):
    """An adapter with ``dla_ref.forward``'s signature running ``dla_fast`` with inputs in ``dtype``.

    ``via="forward"`` runs one ``dla_fast.forward`` call; ``via="step"`` feeds the tokens one at a time
    through the decoding step (``dla_fast.step`` with the override ``boundary=`` and ``return_trace=True``).
    ``device="cuda"`` runs on the GPU (the Triton kernels for scalar decay in float32/16-bit inputs).
    """
    dt = _torch_dtype(dtype)
    state_dt = torch.float64 if dt == torch.float64 else torch.float32

    def to_t(x):
        return None if x is None else torch.as_tensor(np.asarray(x, dtype=np.float64)).to(device=device, dtype=dt)

    def adapter(q, k, v, g, slot_weights, *, tau=0.6, beta=None, boundaries=None, initial_cache=None,
                eps=1e-6, norm_eps=1e-6):
        cache = None if initial_cache is None else dla_fast.Cache.from_ref(initial_cache, dtype=state_dt,
                                                                           device=device)
        bnd = None if boundaries is None else torch.as_tensor(np.asarray(boundaries, dtype=bool), device=device)
        if via == "forward":
            o, final, trace = dla_fast.forward(
                to_t(q), to_t(k), to_t(v), to_t(g), to_t(slot_weights), tau=tau, beta=to_t(beta), boundaries=bnd,
                initial_cache=cache, return_trace=True, chunk_size=chunk_size, eps=eps, norm_eps=norm_eps,
            )
            return o.to(torch.float64).cpu().numpy(), final.to_ref(), trace.to_ref()
        return _stepwise(to_t(q), to_t(k), to_t(v), to_t(g), to_t(slot_weights), to_t(beta), bnd, cache, tau,
                         eps, norm_eps, state_dt, device)

    adapter.__name__ = f"dla_fast_{via}_{str(dt).replace('torch.', '')}_{device}"
    return adapter


def _stepwise(q, k, v, g, w, beta, boundaries, cache, tau, eps, norm_eps, state_dt, device="cpu"):
    B, T, H, _ = q.shape
    if cache is None:
        cache = dla_fast.Cache.empty(B, H, w.shape[-1], q.shape[-1], v.shape[-1], dtype=state_dt, device=device)
    outs, trace = [], [[], [], []]
    for t in range(T):
        o, cache, events = dla_fast.step(q[:, t], k[:, t], v[:, t], g[:, t], w[:, t], cache, tau=tau,
                                         beta=None if beta is None else beta[:, t],
                                         boundary=None if boundaries is None else boundaries[:, t],
                                         return_trace=True, eps=eps, norm_eps=norm_eps)
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

__all__ = ["numpy_adapter", "forward_float64"]


def in_pieces(adapter, points):
    """An adapter (same signature) that runs ``adapter`` on the time slices between ``points`` (sorted token
    indices; repeats and empty pieces allowed), each call continuing from the previous call's cache: a stream.
    :func:`dla_fast.testing.check_equivalent` on it checks that streaming matches one reference call."""

    def run(q, k, v, g, slot_weights, *, beta=None, boundaries=None, initial_cache=None, **scalars):
        edges = [0, *points, np.shape(q)[1]]
        cache, outs, traces = initial_cache, [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            piece = [None if x is None else np.asarray(x)[:, lo:hi] for x in (q, k, v, g, slot_weights, beta,
                                                                              boundaries)]
            o, cache, trace = adapter(*piece[:5], beta=piece[5], boundaries=piece[6], initial_cache=cache, **scalars)
            outs.append(o)
            traces.append(trace)
        if cache is None:  # no piece ran (T = 0 and no split): the reference's answer for an empty call
            return adapter(q, k, v, g, slot_weights, beta=beta, boundaries=boundaries, initial_cache=None, **scalars)
        fields = [np.concatenate([getattr(t, f) for t in traces], 1) for f in ("scores", "starts", "merged")]
        return np.concatenate(outs, 1), cache, dla_ref.Trace(*fields)

    run.__name__ = f"{getattr(adapter, '__name__', 'adapter')}_in_pieces_at_{'_'.join(map(str, points)) or 'none'}"
    return run
