"""The public torch API: ``forward`` (a whole call) and ``step`` (decoding, one token per sequence)."""

from __future__ import annotations

import torch

from dla_ref.validation import check_shapes

from . import autograd as _autograd
from .backend import uses_delta_kernels, uses_triton
from .cache import Cache, Trace
from .custom_ops import forward_op, forward_traced, step_op, triton_step_applies
from .ops.common import varlen
from .ops.common.recurrent import recurrent_step_
from .ops.delta_rule.chunk_torch import forward_delta_rule_chunked
from .ops.scalar_decay.chunk_torch import forward_scalar_decay
from .validation import (
    as_float_tensor,
    compute_dtype,
    forward_checks,
    input_value_checks,
    raise_first,
    step_signature,
    validate_step,
)


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    slot_weights: torch.Tensor,
    *,
    tau: float = 0.6,
    beta: torch.Tensor | None = None,
    boundaries: torch.Tensor | None = None,
    initial_cache: Cache | None = None,
    output_final_cache: bool = True,
    return_trace: bool = False,
    chunk_size: int = 64,
    eps: float = 1e-6,
    norm_eps: float = 1e-6,
    surrogate_temperature: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
):
    """Dynamic Linear Attention on torch tensors, with ``dla_ref.forward``'s semantics.

    Inputs may be float16, bfloat16, float32 or float64; states and scores are kept in float32 (float64
    for float64 inputs), and ``o`` comes back in the input dtype. Any device: on the CPU the
    scalar-decay backbone runs the chunked algorithm (docs/fast-path.md); the delta-rule backbone runs
    its chunked form (docs/delta-rule-chunked.md) on any device.

    Args:
        q, k: ``[B, T, H, Dk]`` queries and keys, used as given.
        v: ``[B, T, H, Dv]`` values.
        g: ``[B, T, H]`` log decays, ``g <= 0``; the step's decay is ``exp(g)``.
        slot_weights: ``[B, T, H, K]`` read weights; ``K >= 2`` is the cache capacity;
            ``slot_weights[..., 0]`` weighs the open (newest) slot.
        tau: boundary threshold: a token opens a new slot iff its score ``>= tau`` (default 0.6).
        beta: ``[B, T, H]`` in ``[0, 1]`` for the gated delta-rule backbone; None for scalar decay.
        boundaries: bool ``[B, T, H]`` overriding the decisions (scores are still computed).
        initial_cache: a :class:`Cache` (or ``dla_ref.Cache``) to continue from; not modified.
        output_final_cache: return the final cache (else None; saves the final copy, and with gradients the
            final states the backward would keep).
        return_trace: return the :class:`Trace` (else None).
        chunk_size: tokens per chunk of the chunked algorithm (default 64; any positive integer).
        eps, norm_eps: the score's denominator guard and the RMS-norm guard (default 1e-6).
        surrogate_temperature: None (default, off) or ``T > 0``: a straight-through gradient through
            ``sigmoid((I_t - tau) / T)`` into ``tau`` (pass a 0-d tensor requiring grad) and through the
            scores into the inputs (docs/training.md); the outputs are unchanged.
        cu_seqlens: None, or ``[N + 1]`` integer offsets for N sequences packed along time (FLA's convention):
            the inputs are ``[1, total_T, H, ...]``, sequence i is tokens ``cu_seqlens[i] .. cu_seqlens[i+1] - 1``
            and runs exactly as a call of its own, from ``initial_cache`` row i (a cache of batch N) or an empty
            cache; ``o`` and the trace come back packed, the final cache has batch N (``ops/common/varlen.py``).

    Gradients (docs/training.md): when an input requires grad, ``o`` and the final cache's ``states`` are
    differentiable w.r.t. q, k, v, g, slot_weights, beta and ``initial_cache.states``, with the boundary and
    merge decisions of this call held fixed (explicit backward passes, ``dla_fast.autograd``).

    Returns:
        ``(o, cache, trace)``: ``o`` ``[B, T, H, Dv]`` in q's dtype; the final :class:`Cache` or None;
        the :class:`Trace` ``[B, T, H]`` or None.
    """
    _autograd.check_temperature(surrogate_temperature)
    options = dict(tau=tau, beta=beta, boundaries=boundaries, initial_cache=initial_cache,
                   output_final_cache=output_final_cache, return_trace=return_trace, chunk_size=chunk_size, eps=eps,
                   norm_eps=norm_eps, surrogate_temperature=surrogate_temperature)
    if torch.compiler.is_compiling():  # torch.compile traces the dla::forward op, not the paths (custom_ops.py)
        return forward_traced(q, k, v, g, slot_weights, cu_seqlens=cu_seqlens, **options)
    if cu_seqlens is not None:
        return _forward_packed(q, k, v, g, slot_weights, cu_seqlens, **options)
    return _forward_batch(q, k, v, g, slot_weights, lengths=None, **options)


def _forward_packed(q, k, v, g, slot_weights, cu_seqlens, *, beta, boundaries, return_trace, **options):
    """``forward`` on sequences packed along time: pad to a batch (one gather), run it with each row's length,
    pack ``o`` and the trace back."""
    cu, T_max = varlen.check_cu_seqlens(cu_seqlens, q)
    packed = [as_float_tensor(n, x, q.device) for n, x in zip(("q", "k", "v", "g", "slot_weights"), (q, k, v, g,
                                                                                                 slot_weights))]
    bnd = None if boundaries is None else torch.as_tensor(boundaries, device=q.device)
    beta = None if beta is None else as_float_tensor("beta", beta, q.device)
    check_shapes(*packed, beta, bnd, is_bool=lambda x: x.dtype == torch.bool)  # the packed shapes, named
    q, k, v, g, slot_weights = packed
    lengths = varlen.lengths_of(cu)
    total = q.shape[1]
    padded = [varlen.pad(x, cu, T_max) for x in (q, k, v, g, slot_weights, beta, bnd)]
    o, final, trace = _forward_batch(*padded[:5], beta=padded[5], boundaries=padded[6], return_trace=return_trace,
                                     lengths=lengths, **options)
    if trace is not None:
        trace = Trace(*(varlen.unpad(x, cu, total) for x in (trace.scores, trace.starts, trace.merged)))
    return varlen.unpad(o, cu, total), final, trace


def _forward_batch(q, k, v, g, slot_weights, *, lengths, tau, beta, boundaries, initial_cache, output_final_cache,
                   return_trace, chunk_size, eps, norm_eps, surrogate_temperature):
    """``forward`` on a batch whose rows may end early (``lengths [B]``, zero padding after; None: all T)."""
    tau_value = tau.detach() if isinstance(tau, torch.Tensor) else tau  # validation makes it a Python float
    grad = _autograd.needs_grad(q, k, v, g, slot_weights, beta, tau, getattr(initial_cache, "states", None))
    with torch.no_grad():
        o, final, trace, handover = _forward(
            q, k, v, g, slot_weights, tau=tau_value, beta=beta, boundaries=boundaries, initial_cache=initial_cache,
            return_trace=return_trace or grad, output_final_cache=output_final_cache, chunk_size=chunk_size,
            eps=eps, norm_eps=norm_eps, lengths=lengths, for_backward=grad,
        )
    if grad:
        o, final = _autograd.attach_gradients(
            o, final, trace, handover, q, k, v, g, slot_weights, tau=tau, beta=beta, boundaries=boundaries,
            initial_cache=initial_cache, chunk_size=chunk_size, eps=eps, norm_eps=norm_eps,
            surrogate_temperature=surrogate_temperature, lengths=lengths,
        )
    return o, (final if output_final_cache else None), (trace if return_trace else None)


def _forward(q, k, v, g, slot_weights, *, tau, beta, boundaries, initial_cache, return_trace, chunk_size, eps,
             norm_eps, lengths=None, output_final_cache=True, for_backward=False):
    """Validate, then run the path this call belongs to (``backend.uses_triton``); no gradients.

    Returns ``(o, final Cache, Trace or None, what the kernel forward hands its backward or None)``: the scalar
    decay's Triton ``DecidedStructure``, or with ``for_backward`` the delta rule's ``SlotCheckpoints``. The final
    cache may be None without ``output_final_cache`` (the Triton prefill then skips it).
    """
    # The Triton prefill checks the inputs' values itself: one kernel, read back with its own host synchronisation
    # (as ~40 small torch ops and a synchronisation of their own, they cost more host time than its GPU time at few
    # rows: docs/benchmarks.md run 20). The delta rule's kernels run the same check kernel, read when the forward
    # is queued: a synchronisation before it left the GPU idle while the host queued its first blocks (run 45). An
    # initial cache's checks guard the kernels' indexing: raised here, first.
    (q, k, v, g, slot_weights, beta, boundaries), tau, dims, cache, pending = forward_checks(
        q, k, v, g, slot_weights, beta, boundaries, tau, eps, norm_eps, initial_cache, chunk_size, input_values=False
    )
    B, H, K, Dk, Dv = dims.B, dims.H, dims.K, dims.Dk, dims.Dv
    triton_prefill = beta is None and uses_triton(q, Dk, Dv)
    delta_kernels = beta is not None and uses_delta_kernels(q, Dk, Dv, K)
    if delta_kernels:
        from .ops.common.value_checks import checks_raised_later

        raise_violated = checks_raised_later(q, k, v, g, slot_weights, beta)
    elif not triton_prefill:
        pending = input_value_checks(q, k, v, g, slot_weights, beta) + pending
    raise_first(pending)
    if triton_prefill:
        return _forward_triton(q, k, v, g, slot_weights, tau, boundaries, cache, eps=eps, norm_eps=norm_eps,
                               lengths=lengths, final_cache=output_final_cache, trace=return_trace)
    cd = compute_dtype(q)
    if cache is None:
        cache = Cache.empty(B, H, K, Dk, Dv, dtype=cd, device=q.device)
    # A working copy (the caller's cache is not modified); info accumulates in float64.
    states = cache.states.to(cd, copy=True)
    counts = cache.counts.to(torch.int64, copy=True)
    info = cache.info.to(torch.float64, copy=True)
    size = cache.size.to(torch.int64, copy=True)
    handover = None
    if beta is None:
        o, scores, starts, merged = forward_scalar_decay(
            q, k, v, g, slot_weights, tau, boundaries, states, counts, info, size,
            chunk_size=chunk_size, eps=eps, norm_eps=norm_eps, lengths=lengths,
        )
    elif delta_kernels:
        from .ops.delta_rule.chunk_fwd import forward_delta_rule_triton

        try:
            o, scores, starts, merged, *kept = forward_delta_rule_triton(
                q, k.to(q.dtype), v.to(q.dtype), g, slot_weights, beta, boundaries, states, counts, info, size,
                tau=tau, eps=eps, norm_eps=norm_eps, lengths=lengths, keep_checkpoints=for_backward,
            )
        except Exception:
            raise_violated()  # a failure on bad values is reported as the bad value
            raise
        raise_violated()  # the results of unchecked values are dropped
        handover = kept[0] if kept else None
    else:
        o, scores, starts, merged = forward_delta_rule_chunked(
            q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, tau=tau,
            chunk_size=chunk_size, eps=eps, norm_eps=norm_eps, lengths=lengths,
        )
    final = Cache(states, counts, info.to(torch.float64 if cd == torch.float64 else torch.float32), size, checked=True)
    trace = Trace(scores.to(cd), starts, merged) if return_trace else None
    return o.to(q.dtype), final, trace, handover


def _forward_triton(q, k, v, g, slot_weights, tau, boundaries, cache: Cache | None, *, eps, norm_eps, lengths=None,
                    final_cache=True, trace=True):
    """The Triton prefill (docs/triton.md): ``(o, final Cache or None, Trace or None, DecidedStructure)``; it
    checks the inputs' values itself (``check_values``). It neither modifies the initial cache nor needs a working
    copy of it; without one (``cache`` None) the kernels are told so, rather than given an empty one: they then
    skip the initial slots' prefix states and pseudo starts (zeros)."""
    from .ops.scalar_decay.chunk_fwd import forward_scalar_decay_triton

    initial = {} if cache is None else dict(states=cache.states, counts=cache.counts.long(), info=cache.info.float(),
                                            size=cache.size.long())
    o, final, call_trace, structure = forward_scalar_decay_triton(
        q, k, v, g, slot_weights, tau=tau, boundaries=boundaries, eps=eps, norm_eps=norm_eps, lengths=lengths,
        check_values=True, final_cache=final_cache, trace=trace, **initial,
    )
    return (o, None if final is None else Cache(*final, checked=True),
            None if call_trace is None else Trace(*call_trace), structure)


def step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    slot_weights: torch.Tensor,
    cache: Cache | None,
    *,
    tau: float = 0.6,
    beta: torch.Tensor | None = None,
    boundary: torch.Tensor | None = None,
    return_trace: bool = False,
    eps: float = 1e-6,
    norm_eps: float = 1e-6,
):
    """Decode one token per sequence: ``forward`` with ``T = 1`` continuing from ``cache``.

    The cache is updated **in place** (no copy of its states per token) and returned; pass ``None`` to
    start from an empty cache. Vectorised over (batch, head) with gathers and scatters, no host sync on an
    accelerator (on the CPU the merge is skipped when no row needs one).

    Args:
        q, k: ``[B, H, Dk]``; v: ``[B, H, Dv]``; g: ``[B, H]`` (``<= 0``); slot_weights: ``[B, H, K]``.
        cache: a :class:`Cache` on q's device (states float32 or float64: the compute dtype), or None.
        tau, beta (``[B, H]`` or None), eps, norm_eps: as in :func:`forward`.
        boundary: bool ``[B, H]`` overriding the decision (the score is still computed), or None.
        return_trace: also return what happened: ``(score [B, H], started bool [B, H], merged int64 [B, H])``.

    Returns:
        ``(o, cache)``: ``o`` ``[B, H, Dv]`` in q's dtype and the same cache object, advanced by one token;
        ``(o, cache, (score, started, merged))`` with ``return_trace=True``.
    """
    launch = _repeated_launch(q, k, v, g, slot_weights, beta, boundary, tau, eps, norm_eps, cache)
    if launch is not None:  # a decode loop's later tokens: one signature check, then the launch (docs/triton.md)
        o, trace = launch.step(q, k, v, g, slot_weights, beta, boundary, launch.cache,
                               (float(tau), float(eps), float(norm_eps)), return_trace)
        return (o, cache, trace) if return_trace else (o, cache)
    (q, k, v, g, slot_weights, beta), boundary, tau, dims, cache = validate_step(
        q, k, v, g, slot_weights, beta, boundary, tau, eps, norm_eps, cache
    )
    if torch.compiler.is_compiling():  # Dynamo sees the dla::step op (_step, opaque to it: custom_ops.py)
        o, score, started, merged = step_op(q, k, v, g, slot_weights, beta, boundary, cache.states, cache.counts,
                                            cache.info, cache.size, tau, eps, norm_eps)
    else:
        o, score, started, merged = _step(q, k, v, g, slot_weights, cache, tau=tau, beta=beta, boundary=boundary,
                                          eps=eps, norm_eps=norm_eps, fresh_trace=return_trace)
    return (o, cache, (score, started, merged)) if return_trace else (o, cache)


def _repeated_launch(q, k, v, g, slot_weights, beta, boundary, tau, eps, norm_eps, cache):
    """The Triton step's launch this cache kept (``_step``) when the call repeats the cache's last signature
    on a GPU, else None. Such a call has nothing left to check (``validate_step``: the token's values are
    checked on the CPU only, the cache's once). None while torch.compile traces (the ``dla::step`` op) and while
    a CUDA graph captures (the graph's own buffers: ``_step``)."""
    if torch.compiler.is_compiling() or type(cache) is not Cache or q.is_cpu:
        return None
    launch = cache.scratch.get("step_launch")
    if (launch is None or not cache.checked or launch.kernel is None
            or cache.scratch.get("signature") != step_signature(q, k, v, g, slot_weights, beta, boundary, tau, eps,
                                                            norm_eps, cache)
            or torch.cuda.is_current_stream_capturing()):
        return None
    return launch


def _step(q, k, v, g, slot_weights, cache, *, tau, beta=None, boundary=None, eps, norm_eps, fresh_trace=True):
    """``step`` after validation, also taking a ``boundary`` override ``[B, H]`` and returning the trace.

    ``fresh_trace=False``: the Triton step writes the trace into the cache's scratch buffers (the caller drops it).
    Returns ``(o [B, H, Dv] in q's dtype, score [B, H] float64, start [B, H] bool, merged [B, H] int64)``.
    """
    step_triton_ = cache.scratch.get("step_triton_", False)
    if step_triton_ is False:  # the backend for this signature, decided once (the cache's scratch)
        step_triton_ = None
        if triton_step_applies(q, beta, cache.states, cache.counts, cache.info, cache.size):
            from .ops.scalar_decay.fused_recurrent import step_triton_
        cache.scratch["step_triton_"] = step_triton_
    if step_triton_ is not None:
        # In place: the cache's tensors keep their storage (a CUDA graph can capture the step).
        o, (score, start, merged) = step_triton_(
            q, k, v, g, slot_weights, tau=tau, beta=beta, boundary=boundary, states=cache.states, counts=cache.counts,
            info=cache.info, size=cache.size, eps=eps, norm_eps=norm_eps, fresh_trace=fresh_trace,
            # Buffers made before a CUDA graph's capture are not the graph's to keep: none while capturing.
            scratch=None if q.is_cuda and torch.cuda.is_current_stream_capturing() else cache.scratch,
        )
        return o, score, start, merged
    B, H, Dk = q.shape
    K, Dv = cache.states.shape[2], cache.states.shape[4]
    cd = cache.states.dtype
    R = B * H
    o, score, start, merged = recurrent_step_(
        cache.states.view(R, K, Dk, Dv), cache.counts.view(R, K), cache.info.view(R, K), cache.size.view(R),
        q.reshape(R, Dk).to(cd), k.reshape(R, Dk).to(cd), v.reshape(R, Dv).to(cd), g.reshape(R),
        slot_weights.reshape(R, K).to(cd), None if beta is None else beta.reshape(R),
        None if boundary is None else boundary.reshape(R), tau=tau, eps=eps, norm_eps=norm_eps,
    )
    return o.view(B, H, Dv).to(q.dtype), score.view(B, H), start.view(B, H), merged.view(B, H)


# The kernels of dla::forward and dla::step (custom_ops.py): the eager functions above, on the ops' tensors.
@forward_op.register_kernel(None)
def _forward_kernel(q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, tau, chunk_size, eps,
                    norm_eps):
    initial = None if states is None else Cache(states, counts, info, size)  # its values checked, as eagerly
    o, final, trace, _ = _forward(q, k, v, g, slot_weights, tau=tau, beta=beta, boundaries=boundaries,
                                  initial_cache=initial, return_trace=True, chunk_size=chunk_size, eps=eps,
                                  norm_eps=norm_eps)
    outs = (o, final.states, final.counts, final.info, final.size, trace.scores, trace.starts.to(torch.bool),
            trace.merged.to(torch.int64))
    return tuple(x.contiguous() for x in outs)


@step_op.register_kernel(None)
def _step_kernel(q, k, v, g, slot_weights, beta, boundary, states, counts, info, size, tau, eps, norm_eps):
    outs = _step(q, k, v, g, slot_weights, Cache(states, counts, info, size), tau=tau, beta=beta, boundary=boundary,
                 eps=eps, norm_eps=norm_eps)
    return tuple(x.contiguous() for x in outs)
