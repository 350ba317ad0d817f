"""``forward`` and ``step`` as torch custom ops, so that ``torch.compile`` sees one opaque call (docs/api.md).

Dynamo cannot trace the paths (numba scans, Triton launches, host reads of the decided partition). While
``torch.compile`` traces ``dla_fast.forward`` / ``dla_fast.step``, they run the checks that need no host read
and call these ops, whose fake implementations give the outputs' shapes and dtypes without running anything:

- ``dla::forward(q, k, v, g, slot_weights, beta?, boundaries?, states?, counts?, info?, size?, tau, chunk_size,
  eps, norm_eps) -> (o, states, counts, info, size, scores, starts, merged)``: the final cache and the trace;
  differentiable in q, k, v, g, slot_weights, beta and the initial states, through
- ``dla::forward_backward``: the backward with the forward's partition (starts, merged) held fixed, by the
  torch backward (``autograd.torch_backward``) on every device: an op's outputs are tensors, so the Triton
  forward's own structure (the Triton backward's input) does not cross it.
- ``dla::step(q, k, v, g, slot_weights, beta?, boundary?, states!, counts!, info!, size!, tau, eps, norm_eps)
  -> (o, score, started, merged)``: the cache advanced in place (no gradients, as eagerly).

Here: the schemas, the fake implementations and the autograd formula. The kernels are ``api``'s own eager
functions (``_forward``, ``_step``), registered there with ``register_kernel``: ``api`` imports this module,
so this module cannot import ``api`` back (no import cycle), and the ops run exactly the code an eager call
runs. Outside ``torch.compile``, ``api`` calls its functions directly (the Triton forward's structure then
reaches the Triton backward).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .autograd import grads_with_partition
from .backend import uses_triton
from .cache import Cache, Trace
from .validation import compute_dtype, validate_forward


def triton_step_applies(q, beta, states, counts, info, size) -> bool:
    """Whether ``step`` runs the in-place Triton step (whose score is float32; the torch step's is float64):
    a call ``backend.uses_triton`` sends to the kernels, either backbone (``beta`` does not matter: the step
    kernel has the delta rule too), on a cache of contiguous float32 states and info with int64 counts and size
    (the layout ``forward`` and ``Cache.empty`` produce; any other cache takes the torch step). One rule for
    ``api._step`` and this op's fake."""
    layout = (states.dtype == torch.float32 and info.dtype == torch.float32 and counts.dtype == torch.int64
              and size.dtype == torch.int64 and all(x.is_contiguous() for x in (states, counts, info, size)))
    return layout and uses_triton(q, q.shape[-1], states.shape[-1])


# --- dla::forward ------------------------------------------------------------------------------------------


@torch.library.custom_op("dla::forward", mutates_args=())
def forward_op(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, slot_weights: Tensor, beta: Tensor | None, boundaries: Tensor | None,
    states: Tensor | None, counts: Tensor | None, info: Tensor | None, size: Tensor | None, tau: float,
    chunk_size: int, eps: float, norm_eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``forward`` without gradients: ``(o, states, counts, info, size, scores, starts, merged)``, new contiguous
    tensors (the initial cache: all four tensors or none). The kernel is ``api``'s (see the module's docstring)."""
    raise NotImplementedError("dla::forward: its kernel is registered by dla_fast.api")


@forward_op.register_fake
def _forward_fake(q, k, v, g, slot_weights, beta, boundaries, states, counts, info, size, tau, chunk_size, eps,
                  norm_eps):
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], slot_weights.shape[-1]
    cd = compute_dtype(q)
    shapes = (((B, T, H, Dv), q.dtype), ((B, H, K, Dk, Dv), cd), ((B, H, K), torch.int64), ((B, H, K), cd),
              ((B, H), torch.int64), ((B, T, H), cd), ((B, T, H), torch.bool), ((B, T, H), torch.int64))
    return tuple(q.new_empty(shape, dtype=dtype) for shape, dtype in shapes)


def _forward_setup_context(ctx, inputs, output):
    q, k, v, g, slot_weights, beta, _, states, _, _, size, _, chunk_size, eps, norm_eps = inputs
    _, _, _, info, _, scores, starts, merged = output
    ctx.mark_non_differentiable(info, scores)  # as eagerly: only o and the final states carry gradients
    ctx.save_for_backward(q, k, v, g, slot_weights, beta, states, size, starts, merged)
    ctx.scalars = (chunk_size, eps, norm_eps)


def _forward_backward(ctx, d_o, d_states, *_):
    q, k, v, g, slot_weights, beta, states, size, starts, merged = ctx.saved_tensors
    chunk_size, eps, norm_eps = ctx.scalars
    grads = forward_backward_op(q, k, v, g, slot_weights, beta, states, size, starts, merged, d_o, d_states,
                                chunk_size, eps, norm_eps)
    dq, dk, dv, dg, dlam, dbeta, dinit = grads
    # One entry per input of dla::forward: q, k, v, g, slot_weights, beta, boundaries, the cache, the scalars.
    return (dq, dk, dv, dg, dlam, None if beta is None else dbeta, None, None if states is None else dinit,
            None, None, None, None, None, None, None)


forward_op.register_autograd(_forward_backward, setup_context=_forward_setup_context)


# --- dla::forward_backward ---------------------------------------------------------------------------------


@torch.library.custom_op("dla::forward_backward", mutates_args=())
def forward_backward_op(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, slot_weights: Tensor, beta: Tensor | None, states: Tensor | None,
    size: Tensor | None, starts: Tensor, merged: Tensor, d_o: Tensor | None, d_states: Tensor | None,
    chunk_size: int, eps: float, norm_eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dk, dv, dg, dslot_weights, dbeta, dstates)`` of ``dla::forward`` with its partition held fixed
    (``autograd.grads_with_partition``); ``dbeta`` / ``dstates`` are empty when ``beta`` / ``states`` are None."""
    B, _, H, _ = q.shape
    size0 = (torch.zeros((B, H), dtype=torch.int64, device=q.device) if size is None
             else size.to(torch.int64).reshape(B, H))
    grads = grads_with_partition(q, k, v, g, slot_weights, beta, states, starts, merged, size0, d_o, d_states,
                                 chunk_size=chunk_size, eps=eps, norm_eps=norm_eps)
    return tuple(q.new_empty(0) if x is None else x.contiguous() for x in grads)


@forward_backward_op.register_fake
def _forward_backward_fake(q, k, v, g, slot_weights, beta, states, size, starts, merged, d_o, d_states, chunk_size,
                           eps, norm_eps):
    like = lambda x: q.new_empty(0) if x is None else x.new_empty(x.shape)  # noqa: E731
    return tuple(like(x) for x in (q, k, v, g, slot_weights, beta, states))


# --- dla::step ---------------------------------------------------------------------------------------------


@torch.library.custom_op("dla::step", mutates_args=("states", "counts", "info", "size"))
def step_op(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, slot_weights: Tensor, beta: Tensor | None, boundary: Tensor | None,
    states: Tensor, counts: Tensor, info: Tensor, size: Tensor, tau: float, eps: float, norm_eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``step`` on validated inputs: the cache tensors advanced in place; ``(o, score, started, merged)``. The
    kernel is ``api``'s (see the module's docstring)."""
    raise NotImplementedError("dla::step: its kernel is registered by dla_fast.api")


@step_op.register_fake
def _step_fake(q, k, v, g, slot_weights, beta, boundary, states, counts, info, size, tau, eps, norm_eps):
    B, H, _ = q.shape
    score = torch.float32 if triton_step_applies(q, beta, states, counts, info, size) else torch.float64
    shapes = (((B, H, states.shape[-1]), q.dtype), ((B, H), score), ((B, H), torch.bool), ((B, H), torch.int64))
    return tuple(q.new_empty(shape, dtype=dtype) for shape, dtype in shapes)


# --- what dla_fast.forward runs while torch.compile traces it -----------------------------------------------


def forward_traced(q, k, v, g, slot_weights, *, tau, beta, boundaries, initial_cache, output_final_cache: bool,
                   return_trace: bool, chunk_size: int, eps: float, norm_eps: float, surrogate_temperature,
                   cu_seqlens=None):
    """``dla_fast.forward`` while ``torch.compile`` traces it: the checks without host reads (``validate_forward``
    leaves the value checks to the op's kernel), then ``dla::forward``. Returns ``(o, cache, trace)``."""
    if surrogate_temperature is not None or isinstance(tau, torch.Tensor) or cu_seqlens is not None:
        raise ValueError("under torch.compile, dla_fast.forward takes tau as a Python number, no "
                         "surrogate_temperature and no cu_seqlens (those run eagerly only: docs/api.md)")
    (q, k, v, g, slot_weights, beta, boundaries), tau, _, cache = validate_forward(
        q, k, v, g, slot_weights, beta, boundaries, tau, eps, norm_eps, initial_cache, chunk_size
    )
    initial = (None,) * 4 if cache is None else (cache.states, cache.counts, cache.info, cache.size)
    o, states, counts, info, size, scores, starts, merged = forward_op(
        q, k, v, g, slot_weights, beta, boundaries, *initial, tau, chunk_size, eps, norm_eps
    )
    final = Cache(states, counts, info, size, checked=True) if output_final_cache else None
    return o, final, (Trace(scores, starts, merged) if return_trace else None)
