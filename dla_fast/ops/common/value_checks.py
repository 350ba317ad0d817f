"""The forward's input value checks in one kernel: finite q, k, v, g, slot_weights and g <= 0.

``dla_ref.validation.value_checks`` as torch ops is ~40 small ops per call (a reduction and a few elementwise
ops per tensor), each costing the host 10-40 us on the H200's host against a few us of GPU time (a host-bound
forward at few rows: docs/benchmarks.md run 20). Here: one zeroed word and one launch. Each program checks one
block of every tensor and sets the bit of a check it finds violated (``atomic_or``, only then); the word is
read back with the caller's own host synchronisation, and :func:`raise_flagged` raises the first violated check
in ``dla_ref``'s order, with its message.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dla_ref.validation import G_POSITIVE_MESSAGE, finite_message

from .triton_utils import cached

CHECKED = ("q", "k", "v", "g", "slot_weights")  # bit i: CHECKED[i] has a NaN or an infinity
G_POSITIVE_BIT = len(CHECKED)  # then: some g > 0
BLOCK = 1024  # elements of each tensor per program: 8 per thread (4096 took 230 registers on sm_90)


@triton.jit
def _flag_nonfinite(x_ptr, n, offs, flags_ptr, BIT: tl.constexpr):
    """Set bit BIT of the flags when ``x[offs]`` (masked to ``n``) holds a NaN or an infinity."""
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    bad = (x != x) | (tl.abs(x) == float("inf"))  # compared in x's own dtype: a float64 g is judged as given
    if tl.max(bad.to(tl.int32), 0) > 0:
        tl.atomic_or(flags_ptr, 1 << BIT)


@triton.jit
def dla_check_values_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, w_ptr, flags_ptr, n_qk, n_v, n_g, n_w,
    BLOCK: tl.constexpr, GBIT: tl.constexpr,
):
    """Program i: elements ``i*BLOCK .. (i+1)*BLOCK - 1`` of each (flat, contiguous) tensor that has them."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _flag_nonfinite(q_ptr, n_qk, offs, flags_ptr, 0)
    _flag_nonfinite(k_ptr, n_qk, offs, flags_ptr, 1)
    _flag_nonfinite(v_ptr, n_v, offs, flags_ptr, 2)
    _flag_nonfinite(g_ptr, n_g, offs, flags_ptr, 3)
    _flag_nonfinite(w_ptr, n_w, offs, flags_ptr, 4)
    g = tl.load(g_ptr + offs, mask=offs < n_g, other=0.0)
    if tl.max((g > 0).to(tl.int32), 0) > 0:
        tl.atomic_or(flags_ptr, 1 << GBIT)


def launch_value_checks(q, k, v, g, slot_weights) -> torch.Tensor:
    """The checks' flags, a 1-element int64 tensor (0: every check passed), computed on the current stream.
    The inputs must be contiguous."""
    flags = torch.zeros(1, device=q.device, dtype=torch.int64)
    sizes = (q.numel(), v.numel(), g.numel(), slot_weights.numel())
    grid = (max(triton.cdiv(max(sizes), BLOCK), 1),)
    cached(dla_check_values_kernel)[grid](q, k, v, g, slot_weights, flags, *sizes, BLOCK=BLOCK, GBIT=G_POSITIVE_BIT,
                                          num_warps=4)
    return flags


def raise_flagged(flags: int) -> None:
    """Raise ``ValueError`` for the first check whose bit is set in ``flags`` (read back), as
    ``dla_ref.validation.value_checks`` orders them."""
    for bit, name in enumerate(CHECKED):
        if flags >> bit & 1:
            raise ValueError(finite_message(name))
    if flags >> G_POSITIVE_BIT & 1:
        raise ValueError(G_POSITIVE_MESSAGE)
