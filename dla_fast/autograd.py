"""Gradients through ``dla_fast.forward`` with the partition held fixed (docs/training.md).

The forward's discrete decisions (which tokens open a slot, which pair merges) are recorded and treated as
constants for the step, as with argmax routing. :class:`DLAFunction` wires a forward result to the backward
of the path that computed it: the Triton backward (``ops/scalar_decay/chunk_bwd``) after a Triton forward,
else the torch backward of the backbone (``ops/scalar_decay/chunk_torch_bwd``, ``ops/delta_rule/chunk_torch_bwd``).
The straight-through surrogate for ``tau`` (``surrogate_temperature``) sends ``dL/dI_t`` to ``tau`` and,
through the score's adjoint, into the inputs. :func:`partition_backward` is that backward as a function;
:func:`grads_with_partition` runs it from a trace alone (the backward of the ``dla::forward`` op that
``torch.compile`` sees, ``dla_fast/custom_ops.py``: always the torch backward).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .backend import uses_delta_kernels
from .ops.common.layout import rows, unrows
from .ops.common.structure import Structure
from .ops.delta_rule.chunk_torch_bwd import delta_rule_backward
from .ops.scalar_decay.chunk_torch_bwd import scalar_decay_backward
from .validation import compute_dtype


def torch_backward(q, k, v, g, beta, lam, init, structure, dO, dS_final, *, chunk_size, dscores=None, eps=1e-6,
                   norm_eps=1e-6, values_16bit: bool | None = None, keys_bf16: bool = False):
    """The torch backward (any device; the delta rule's reverse pass over chunks on Triton kernels where they run,
    without ``dscores``): ``(dq, dk, dv, dg, dbeta, dlam, dinit)`` in row layout.

    ``beta`` None: scalar decay. ``dscores`` ``[R, T]`` float64 or None: a gradient w.r.t. the scores (the
    surrogate's), propagated into the inputs (docs/training.md). ``values_16bit``: whether ``v`` holds 16-bit
    inputs upcast (the delta rule's kernels then take it as exact in tf32; None: they scan it); ``keys_bf16``: whether
    ``q`` and ``k`` hold bf16 inputs upcast (``delta_rule_backward``'s).
    """
    if beta is None:
        dq, dk, dv, dg, dlam, dinit = scalar_decay_backward(q, k, v, g, lam, init, structure, dO, dS_final,
                                                            chunk_size=chunk_size, dscores=dscores, eps=eps,
                                                            norm_eps=norm_eps)
        return dq, dk, dv, dg, None, dlam, dinit
    kernels = dscores is None and uses_delta_kernels(q, q.shape[-1], v.shape[-1], lam.shape[-1])  # its reverse pass
    return delta_rule_backward(q, k, v, g, beta, lam, init, structure, dO, dS_final, chunk_size=chunk_size,
                               dscores=dscores, eps=eps, norm_eps=norm_eps, kernels=kernels, v_exact=values_16bit,
                               keys_bf16=keys_bf16)


def shifted_weights(lam: torch.Tensor) -> torch.Tensor:
    """``lam'_t[j] = lam_t[j + 1] - lam_t[j]`` with ``lam_t[K] = 0``: the read weight change when one more
    slot boundary separates a token from the reader (the surrogate's slope)."""
    return torch.cat([lam[..., 1:], torch.zeros_like(lam[..., :1])], -1) - lam


@dataclass
class _Record:
    """What the forward hands to :class:`DLAFunction` (not autograd inputs)."""

    o: torch.Tensor  # [B, T, H, Dv], computed without grad
    final_states: torch.Tensor | None  # [B, H, K, Dk, Dv]; None when the caller asked for no final cache
    structure: Structure
    scores: torch.Tensor | None  # [R, T] float64, for the surrogate
    decided: torch.Tensor | None  # [R, T] bool: the score took the decision
    chunk_size: int
    temperature: float | None
    tau: float = 0.6
    eps: float = 1e-6
    norm_eps: float = 1e-6


class DLAFunction(torch.autograd.Function):
    """``(o, final_states) = DLA(q, k, v, g, slot_weights, beta, initial_states, tau)`` with the partition the
    forward recorded held fixed.

    The forward result is computed by ``dla_fast.forward`` (without grad) and passed in through
    :class:`_Record`; ``forward`` only saves. Saved: the inputs themselves (references), the initial
    states ``[B, H, K, Dk, Dv]`` and the compact structure (``starts`` bool and ``merged`` int per token, the
    initial size per row) — ``O(T (Dk + Dv + K))`` inputs plus ``O(T)`` structure plus ``O(K Dk Dv)`` per
    row, independent of the boundary rate; no slot state of any chunk or token is stored, but for the delta rule's
    kernel forward: the slot states at its backward's ``ceil(sqrt(T / 64))`` checkpoints (``Structure.
    slot_checkpoints``, what that backward would otherwise walk the slots again for).
    """

    @staticmethod
    def forward(ctx, q, k, v, g, slot_weights, beta, init_states, tau, record: _Record):
        # The outputs are handed back, not kept: the context holds the structure and the scalars only.
        ctx.record = dataclasses.replace(record, o=None, final_states=None)
        # An output the loss does not reach gets None, not a zero tensor: a final cache left out of the loss
        # then costs the backward no [B, H, K, Dk, Dv] gradient and no work on it (docs/training.md, memory).
        ctx.set_materialize_grads(False)
        # The Triton backward needs the final states for dg (the torch one recomputes them): an output, so
        # saved through save_for_backward, the documented way to keep an output for the backward.
        final = record.final_states if record.structure.triton is not None else None
        ctx.save_for_backward(q, k, v, g, slot_weights, beta, init_states, tau, final)
        return record.o, record.final_states

    @staticmethod
    @once_differentiable
    def backward(ctx, dO, dS_final):
        grads = partition_backward(*ctx.saved_tensors, ctx.record, dO, dS_final)
        needs = ctx.needs_input_grad
        return tuple(x if (i < len(needs) and needs[i]) else None for i, x in enumerate([*grads, None]))


def partition_backward(q, k, v, g, lam, beta, init, tau, S_final, rec: _Record, dO, dS_final):
    """:class:`DLAFunction`'s backward: ``[dq, dk, dv, dg, dslot_weights, dbeta, dinit_states, dtau]`` (None where
    the input is None), with the partition ``rec.structure`` held fixed. ``dO`` and ``dS_final`` may be None.

    The Triton backward serves a Triton forward (``rec.structure.triton`` kept, scalar decay), in the inputs' own
    layout and dtype; everything else (and the score part of the surrogate) runs :func:`torch_backward` on rows.
    """
    B, T, H, Dk = q.shape
    Dv, K = v.shape[-1], lam.shape[-1]
    R = B * H
    cd = compute_dtype(q)
    dSf = None
    if dS_final is not None:
        live = torch.arange(K, device=q.device).view(1, K) < rec.structure.final_size().view(R, 1)
        dSf = dS_final.to(cd).reshape(R, K, Dk, Dv) * live.view(R, K, 1, 1)
    fast = rec.structure.triton is not None and beta is None

    def torchrows(lam_rows):
        init_r = (torch.zeros((R, K, Dk, Dv), dtype=cd, device=q.device) if init is None
                  else init.detach().to(cd).reshape(R, K, Dk, Dv))
        dO_r = torch.zeros((R, T, Dv), dtype=cd, device=q.device) if dO is None else rows(dO, cd)
        return (*(rows(x, cd) for x in (q, k, v, g)), rows(beta, cd), lam_rows, init_r, rec.structure, dO_r)

    with torch.no_grad():
        dtau = None if tau is None else torch.zeros((), dtype=torch.float64, device=q.device)
        dI = None
        if rec.temperature is not None and rec.decided is not None and bool(rec.decided.any()):
            # The surrogate: eps_r = dL/dh_r is the "dg" of the same backward with the shifted weights;
            # dL/dI_r = eps_r h_r (1 - h_r) / T on decided tokens, dL/dtau = -sum_r dL/dI_r.
            if fast:
                eps_r = rows(_triton_grads(q, k, v, g, shifted_weights(lam), init, rec, dO, None)[3], torch.float64)
            else:
                eps_r = torch_backward(*torchrows(shifted_weights(rows(lam, cd))), None,
                                       chunk_size=rec.chunk_size)[3]
            h_slope = _sigmoid_slope(rec.scores, rec.tau, rec.temperature) * rec.decided
            dI = eps_r.to(torch.float64) * h_slope
            if dtau is not None:
                dtau = -dI.sum()
        if fast and dI is None:
            dq, dk, dv, dg, dlam, dinit = _triton_grads(q, k, v, g, lam, init, rec, dO, dSf, S_final)
            dbeta = None
        else:
            dq, dk, dv, dg, dbeta, dlam, dinit = torch_backward(
                *torchrows(rows(lam, cd)), dSf, chunk_size=rec.chunk_size, dscores=dI, eps=rec.eps,
                norm_eps=rec.norm_eps, values_16bit=v.dtype in (torch.bfloat16, torch.float16),
                keys_bf16=q.dtype == torch.bfloat16)  # (q, k and v share one dtype)
            dq, dk, dv, dg, dbeta, dlam = (unrows(x, B, H) for x in (dq, dk, dv, dg, dbeta, dlam))
    back = lambda x, like: None if x is None else x.to(like.dtype)  # noqa: E731
    grads = [back(dq, q), back(dk, k), back(dv, v), back(dg, g), back(dlam, lam), back(dbeta, beta) if
             beta is not None else None]
    dinit_out = None if init is None else dinit.reshape(B, H, K, Dk, Dv).to(init.dtype)
    dtau_out = None if (tau is None or dtau is None) else dtau.to(tau.dtype).reshape(tau.shape)
    return grads + [dinit_out, dtau_out]


def grads_with_partition(q, k, v, g, slot_weights, beta, init_states, starts, merged, size0, dO, dS_final, *,
                         chunk_size: int, eps: float, norm_eps: float):
    """The gradients of ``(o, final states)`` w.r.t. ``(q, k, v, g, slot_weights, beta, init_states)`` with the
    partition ``starts`` / ``merged`` (``[B, T, H]``, a forward's trace) held fixed, by :func:`torch_backward`:
    :func:`partition_backward` without a recorded forward (the backward of ``dla::forward``,
    ``dla_fast.custom_ops``). ``size0``: ``[B, H]`` the initial cache's size; ``beta``, ``init_states``, ``dO``
    and ``dS_final`` may be None. Returns 7 entries, None where the input is None.
    """
    structure = partition_structure(starts, merged, size0, slot_weights.shape[-1])
    rec = _Record(None, None, structure, None, None, chunk_size, None, eps=eps, norm_eps=norm_eps)
    return partition_backward(q, k, v, g, slot_weights, beta, init_states, None, None, rec, dO, dS_final)[:7]


def partition_structure(starts, merged, size0, K: int, triton=None) -> Structure:
    """The :class:`Structure` of a forward's trace (``starts``, ``merged`` ``[B, T, H]``; ``size0`` the initial
    sizes, any shape with ``B * H`` entries), in rows, with ``merged`` in the smallest integer type."""
    small = torch.int8 if K <= 128 else torch.int16 if K <= 32768 else torch.int64  # merged < K - 1
    return Structure(rows(starts, torch.bool), rows(merged, small).contiguous(), size0.reshape(-1), K, triton=triton)


def _triton_grads(q, k, v, g, lam, init, rec: _Record, dO, dS_final, S_final=None):
    """The Triton backward (``ops/scalar_decay/chunk_bwd``) in the API's layout: ``(dq, dk, dv, dg, dlam, dinit)``
    as ``[B, T, H, ...]`` (``dinit`` ``[B * H, K, Dk, Dv]`` or None)."""
    from .ops.scalar_decay.chunk_bwd import backward_scalar_decay_triton

    B, T, H, Dk = q.shape
    if dO is None:
        dO = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype, device=q.device)
    return backward_scalar_decay_triton(q.detach(), k.detach().to(q.dtype), v.detach().to(q.dtype), g.detach(),
                                        lam.detach(), None if init is None else init.detach(), rec.structure.size0,
                                        rec.structure.triton, dO,
                                        None if dS_final is None else dS_final.float().contiguous(), S_final)


def _sigmoid_slope(scores: torch.Tensor, tau: float, temperature: float) -> torch.Tensor:
    """``d sigmoid((I - tau) / T) / dI``; scores ``[R, T]`` float64 (infinite tau: slope 0)."""
    h = torch.sigmoid((scores.to(torch.float64) - tau) / temperature)
    return h * (1.0 - h) / temperature


def check_temperature(surrogate_temperature) -> None:
    """``surrogate_temperature`` must be None (off) or a positive finite number."""
    t = surrogate_temperature
    if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0):
        raise ValueError(f"surrogate_temperature: expected a positive finite number or None, got {t!r}")


def needs_grad(*tensors) -> bool:
    """Whether ``forward`` must build a differentiable result."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def attach_gradients(o, final, trace, handover, q, k, v, g, slot_weights, *, tau, beta, boundaries,
                     initial_cache, chunk_size: int, eps: float, norm_eps: float,
                     surrogate_temperature: float | None, lengths: torch.Tensor | None = None):
    """Make a forward result (computed without grad, with its trace) differentiable: ``(o, final)`` with
    ``o`` and ``final.states`` attached to :class:`DLAFunction`. ``final`` None (no final cache asked for, a
    Triton forward: it then computes none): ``(o, None)``, and the backward keeps no final states.

    ``o`` and the final cache's ``states`` are differentiable w.r.t. q, k, v, g, slot_weights, beta (delta
    rule), ``initial_cache.states`` (a torch cache) and, with ``surrogate_temperature``, ``tau`` (a 0-d
    tensor). The cache's counts, info and size and the trace are not differentiable. ``lengths`` ``[B]``: rows
    of a variable-length batch end early (their padding takes no part in the surrogate).
    """
    B, T, H = o.shape[:3]
    K = slot_weights.shape[-1]
    R = B * H
    tau_t = tau if isinstance(tau, torch.Tensor) else None
    init_states, size0 = None, torch.zeros(R, dtype=torch.int64, device=o.device)
    if initial_cache is not None:
        size0 = torch.as_tensor(np.asarray(initial_cache.size) if not isinstance(initial_cache.size, torch.Tensor)
                                else initial_cache.size).to(o.device, torch.int64).reshape(R)
        if isinstance(initial_cache.states, torch.Tensor):
            init_states = initial_cache.states
        else:
            init_states = torch.as_tensor(np.asarray(initial_cache.states), device=o.device).to(compute_dtype(q))
    # What the kernel forward handed its backward: the scalar decay's structure or the delta rule's checkpoints.
    structure = partition_structure(trace.starts, trace.merged, size0, K, handover if beta is None else None)
    structure.slot_checkpoints = handover if beta is not None else None
    decided = None
    if surrogate_temperature is not None and boundaries is None:
        decided = structure.sizes_before() > 0  # the score took the decision (not an empty cache, no override)
        if lengths is not None:  # nor the padding of a variable-length batch
            row_lengths = lengths.to(o.device).repeat_interleave(H).view(R, 1)
            decided &= torch.arange(T, device=o.device).view(1, T) < row_lengths
    scores = None if decided is None else rows(trace.scores, torch.float64)  # only the surrogate reads them
    tau_value = float(tau_t.detach()) if tau_t is not None else float(tau)  # validated by the forward
    record = _Record(o, None if final is None else final.states, structure, scores, decided, chunk_size,
                     None if surrogate_temperature is None else float(surrogate_temperature), tau_value, eps, norm_eps)
    as_t = lambda x: x if (x is None or isinstance(x, torch.Tensor)) else torch.as_tensor(np.asarray(x))  # noqa: E731
    o, states = DLAFunction.apply(as_t(q), as_t(k), as_t(v), as_t(g), as_t(slot_weights), as_t(beta), init_states,
                                  tau_t, record)
    if final is not None:
        final.states = states
    return o, final
